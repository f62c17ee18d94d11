"""The embedded default: a throwaway local PostgreSQL server the tool starts itself.

Its binaries, and the unprivileged user that runs them as root, are found by `server_binaries.py`. The server
listens on 127.0.0.1 only, on a free port, and its superuser has a password made for it (a server made by an
earlier version, which trusted every local login, is given one when it next starts). A test server can take TLS
connections only (`ServerTls`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql
from pydantic import SecretStr

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import ConfigError, EmbeddedServerError
from tasks.engine.processes import child_environment, server_environment
from tasks.engine.server_binaries import free_port, server_bindir, server_user

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTls:
    """TLS for a test server: one CA that signed the server's certificate (127.0.0.1, localhost) and a client's.
    A server started with it refuses plain connections and any without a client certificate from that CA, so a
    connection that lost any of its TLS settings on the way is refused."""

    directory: Path

    @classmethod
    def self_signed(cls, directory: Path, client: str = "postgres") -> ServerTls:
        """A new CA, server certificate and client certificate (for user `client`), made with openssl."""
        directory.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            result = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True)
            if result.returncode != 0:
                raise EmbeddedServerError(f"openssl {args[0]} failed: {result.stderr.strip()[-1000:]}")

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *key, "-days", "2", "-subj", "/CN=rds-migrations test CA", "-keyout", "ca.key",
                "-out", "ca.crt", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        for name, subject, extensions in (
            ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
            ("client", f"/CN={client}", "extendedKeyUsage=clientAuth\n"),
        ):
            (directory / f"{name}.ext").write_text(extensions)
            openssl("req", *key, "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr")
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                    "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
        for private in directory.glob("*.key"):
            private.chmod(0o600)  # libpq refuses a client key others can read
        return cls(directory)

    def client_settings(self) -> dict[str, str]:
        """What a client of this server connects with: verify-full against the CA, and its client certificate."""
        return {"sslmode": "verify-full", "sslrootcert": str(self.directory / "ca.crt"),
                "sslcert": str(self.directory / "client.crt"), "sslkey": str(self.directory / "client.key")}


@dataclass
class LocalServer:
    """One PostgreSQL data directory on this machine, started and stopped with pg_ctl."""

    data_dir: Path
    superuser: str = "postgres"
    password: SecretStr | None = None  # None: one made for it, kept beside its data (password_file)
    tls: ServerTls | None = None  # a test server that takes TLS connections with a client certificate only
    _stored: SecretStr | None = field(default=None, init=False, repr=False)  # the password file's, once read

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.bindir = server_bindir()
        self.run_as = server_user()
        if self.run_as and not self._reachable(self.data_dir.parent):
            # A parent the server's user cannot traverse (e.g. a 0700 temp dir): keep the data under /tmp,
            # at a path derived from the requested one so later runs find the same server.
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
            relocated = Path(tempfile.gettempdir()) / f"rds-migrations-pg-{digest}"
            relocated.mkdir(mode=0o755, exist_ok=True)
            _check_private(relocated, relocated.lstat())
            self.data_dir = relocated / self.data_dir.name

    def _reachable(self, directory: Path) -> bool:
        directory.mkdir(parents=True, exist_ok=True)
        probe = subprocess.run(["runuser", "-u", str(self.run_as), "--", "test", "-x", str(directory)],
                               env=child_environment())
        return probe.returncode == 0

    # -- process control ----------------------------------------------------------------------------------
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd="/", env=server_environment())
        if check and result.returncode != 0:
            raise EmbeddedServerError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result

    def _prepare_directory(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    @property
    def password_file(self) -> Path:
        """Where a server made without a password keeps the one made for it: beside its data directory, readable
        by this user alone. Every other local user could otherwise log in over TCP as its superuser."""
        return self.data_dir.with_name(f"{self.data_dir.name}.password")

    def _secret(self, *, make: bool = False) -> SecretStr | None:
        """The superuser's password: the one given, else the stored one (made first when `make`); None for a
        server made before servers had one (trust on 127.0.0.1, as it was)."""
        if self.password is not None:
            return self.password
        if self._stored is None:  # read once: every connection() asks
            self._stored = _read_private(self.password_file)
        if self._stored is not None or not make:
            return self._stored
        self.password_file.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then linked into place: never an empty file, never two passwords.
        descriptor, draft = tempfile.mkstemp(dir=self.password_file.parent, prefix=".password-")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(secrets.token_urlsafe(24))
            try:
                os.link(draft, self.password_file)
            except FileExistsError:  # another process made it first: its password is the one
                pass
        finally:
            os.unlink(draft)
        self._stored = _read_private(self.password_file)
        return self._stored

    def initialise(self) -> None:
        self._prepare_directory()
        args = ["initdb", "-D", str(self.data_dir), "-U", self.superuser, "-E", "UTF8", "--locale=C"]
        password = self._secret(make=True)
        assert password is not None
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir.parent, delete=False) as pwfile:
            pwfile.write(password.get_secret_value())
        try:
            if self.run_as:
                user = pwd.getpwnam(self.run_as)
                os.chown(pwfile.name, user.pw_uid, user.pw_gid)
            self._run(*args, "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile.name}")
        finally:
            os.unlink(pwfile.name)
        self._configure_tls()

    def _configure_tls(self) -> None:
        """With `tls`: the certificates in the data directory, `ssl = on`, and TCP over TLS with a client
        certificate only (the local socket stays open, for pg_ctl)."""
        if self.tls is None:
            return
        for name in ("server.crt", "server.key", "ca.crt"):
            copy = self.data_dir / name
            shutil.copyfile(self.tls.directory / name, copy)
            copy.chmod(0o600)
            if self.run_as:
                user = pwd.getpwnam(self.run_as)
                os.chown(copy, user.pw_uid, user.pw_gid)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                       "ssl_ca_file = 'ca.crt'\n")
        method = "trust" if self._secret() is None else "scram-sha-256"
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhostnossl all all all reject\n"
            f"hostssl all all all {method} clientcert=verify-ca\n"
        )

    @property
    def port(self) -> int | None:
        """The port of the running server, read from postmaster.pid; None when it is not running."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return port

    def start(self, port: int | None = None) -> int:
        if not self.initialised:
            self.initialise()
        port = self.port or self._start(port or free_port())
        self._require_password()
        return port

    def _start(self, port: int) -> int:
        # pg_ctl hands these to a shell: the socket directory is quoted (a project under "My Projects/").
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {shlex.quote(str(self.data_dir))} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = self.data_dir / "server.log"
        started = self._run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(log), "-w", "-t", "60",
                            "start", check=False)
        if started.returncode != 0:
            raise EmbeddedServerError(f"the embedded server in {self.data_dir} did not start "
                                      f"({started.stderr.strip()[-500:]}); its log, {log}, ends:\n{_tail(log)}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.port:
                return port
            time.sleep(0.1)
        raise EmbeddedServerError(f"server in {self.data_dir} did not report its port")

    def _require_password(self) -> None:
        """A server made by an earlier version of this tool let every local user log in over TCP as its superuser
        without a password (`trust`): its superuser gets the password made for it, and the server asks for it."""
        if self.password is not None or self.tls is not None:
            return
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text(encoding="utf-8").splitlines()
        rewritten = [_asking(line) for line in lines]
        if rewritten == lines:
            return
        password = self._secret(make=True)
        assert password is not None
        with connected(self.connection()) as conn:  # still trusted: the password is not asked for yet
            # Hashed here (SCRAM, whatever the server's password_encryption): the password never crosses as text.
            verifier = conn.pgconn.encrypt_password(password.get_secret_value().encode(), self.superuser.encode(),
                                                    b"scram-sha-256").decode()
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(self.superuser),
                                                                    sql.Literal(verifier)))
        # Whole or not at all: a server whose pg_hba.conf was cut short would not start again.
        draft = hba.with_name(".pg_hba.conf.rds-migrations")
        draft.write_text("\n".join(rewritten) + "\n", encoding="utf-8")
        draft.chmod(0o600)
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(draft, user.pw_uid, user.pw_gid)
        os.replace(draft, hba)
        self._run("pg_ctl", "-D", str(self.data_dir), "reload")
        logger.warning("The embedded server in %s was made by an earlier version, which let every local user log "
                       "in as its superuser without a password: it has one now, kept in %s", self.data_dir,
                       self.password_file)

    def stop(self) -> None:
        if self.port:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)

    def destroy(self) -> None:
        """Stop the server and delete its data directory (throwaway servers: tests, rehearsals)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.password_file.unlink(missing_ok=True)
        self._stored = None
        if self.data_dir.parent.name.startswith("rds-migrations-pg-"):  # our relocation directory under /tmp
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    # -- databases ----------------------------------------------------------------------------------------
    def connection(self, dbname: str = "postgres") -> Connection:
        port = self.port
        if port is None:
            raise EmbeddedServerError(f"the local server in {self.data_dir} is not running")
        return Connection(
            host="127.0.0.1",
            port=port,
            dbname=dbname,
            user=self.superuser,
            password=self._secret() or SecretStr(""),
            source=f"embedded:{self.data_dir}",
            **(self.tls.client_settings() if self.tls else {}),
        )

    def ensure_database(self, dbname: str) -> Connection:
        with connected(self.connection()) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.connection(dbname)

    def drop_database(self, dbname: str) -> None:
        with connected(self.connection()) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def _asking(line: str) -> str:
    """A pg_hba.conf line with a TCP `trust` method made `scram-sha-256`; any other line as it was. The method is
    the field after the address (`host DATABASE USER ADDRESS METHOD`, or ADDRESS MASK METHOD, an IPv4 or IPv6
    mask). A field in double quotes is one field, and a `#` in it starts no comment."""
    fields = _HBA_FIELD.findall(_HBA_COMMENT.sub(r"\1", line, count=1))
    if len(fields) < 5 or not fields[0].startswith("host"):
        return line
    method = 5 if len(fields) > 5 and _HBA_MASK.fullmatch(fields[4]) else 4  # no method name is hex digits
    if fields[method] != "trust":
        return line
    fields[method] = "scram-sha-256"
    return " ".join(fields)


_HBA_FIELD = re.compile(r'(?:"[^"]*"|[^\s"])+')  # pg_hba.conf's tokens: quoted parts kept, quotes and all
_HBA_COMMENT = re.compile(r'^((?:"[^"]*"|[^"#])*)#.*$', re.DOTALL)  # from the first `#` outside quotes
_HBA_MASK = re.compile(r"[0-9A-Fa-f:.]+")


def _tail(log: Path, lines: int = 10) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(not readable: {exc.strerror})"


def _check_private(path: Path, found: os.stat_result) -> None:
    """`path` (its `found` status) belongs to this user, and others can neither change it nor, for a file, read
    it: else refused, as someone else may have put it there first (the relocated directory's name is easy to
    guess)."""
    directory = stat.S_ISDIR(found.st_mode)
    if found.st_uid != os.geteuid() or found.st_mode & (0o022 if directory else 0o077) or stat.S_ISLNK(found.st_mode):
        raise EmbeddedServerError(f"the embedded server's {'directory' if directory else 'password file'} {path} is "
                                  f"not this user's alone (owner uid {found.st_uid}, mode {found.st_mode & 0o777:o}): "
                                  "remove it, then run again")


def _read_private(path: Path) -> SecretStr | None:
    """A password file only this user can read; None when there is none."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError:  # a symbolic link, which O_NOFOLLOW refuses
        _check_private(path, path.lstat())
        raise
    with os.fdopen(descriptor, encoding="utf-8") as stored:
        _check_private(path, os.fstat(descriptor))
        return SecretStr(stored.read().strip())


def embedded_home() -> Path:
    """Where the embedded server and local snapshots live: `RDS_MIGRATIONS_HOME` or `./.rds-migrations`."""
    home = Path(os.environ.get("RDS_MIGRATIONS_HOME") or ".rds-migrations").resolve()
    if home.exists() and not home.is_dir():
        named = "RDS_MIGRATIONS_HOME" if os.environ.get("RDS_MIGRATIONS_HOME") else "./.rds-migrations"
        raise ConfigError(f"{named} ({home}) is a file, not a directory: the embedded server and local snapshots "
                          "live in that directory; point RDS_MIGRATIONS_HOME at a directory (it is made if missing)")
    return home


def embedded_server() -> LocalServer:
    return LocalServer(embedded_home() / "postgres")

