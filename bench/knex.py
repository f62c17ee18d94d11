"""Knex (node) as a reference point, when node is on the machine: `npm install knex pg` into a cache directory
outside the repository, JS migrations generated from the same SQL, one transaction per migration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tasks.engine.connection import Connection

KNEX_VERSION = "3"
RUNNER = """
const [directory, connection] = [process.argv[2], JSON.parse(process.env.BENCH_KNEX_CONNECTION)];
const knex = require('knex')({
  client: 'pg', connection, pool: { min: 1, max: 1 },
  // No batch-wide transaction: each migration's own `config.transaction` puts it in a transaction of its own.
  migrations: { directory, disableTransactions: true, loadExtensions: ['.js'] },
});
knex.migrate.latest()
  .then(([, log]) => { console.log(JSON.stringify({ applied: log.length })); return knex.destroy(); })
  .catch((error) => { console.error(error.message); process.exit(1); });
"""


def cache_directory() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rds-migrations-bench" / "knex"


def install() -> tuple[Path | None, str]:
    """The directory holding node_modules/knex, installing it on first use; (None, why) when unavailable."""
    if not shutil.which("node") or not shutil.which("npm"):
        return None, "node/npm not found"
    directory = cache_directory()
    if (directory / "node_modules" / "knex").is_dir() and (directory / "node_modules" / "pg").is_dir():
        return directory, ""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "package.json").exists():
        (directory / "package.json").write_text('{"name": "rds-migrations-bench-knex", "private": true}\n')
    try:
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", f"knex@{KNEX_VERSION}", "pg"],
            cwd=directory, capture_output=True, text=True, timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"npm install failed: {exc}"
    if done.returncode != 0:
        return None, f"npm install failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return directory, ""


def version(directory: Path) -> str:
    try:
        return json.loads((directory / "node_modules" / "knex" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "?"


def write_migrations(sql_files: list[Path], target: Path) -> Path:
    """One JS migration per SQL file, running its statements with knex.raw inside the migration's transaction."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sql_files:
        statements = [s.strip() for s in path.read_text().split(";") if s.strip() and not _only_comments(s)]
        body = "\n".join(f"  await knex.raw({json.dumps(s)});" for s in statements)
        (target / f"{path.stem}.js").write_text(
            "exports.config = { transaction: true };\n"
            f"exports.up = async (knex) => {{\n{body}\n}};\n"
            "exports.down = async () => {};\n"
        )
    (target.parent / "knex-runner.js").write_text(RUNNER)
    return target


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


def run(directory: Path, migrations: Path, connection: Connection) -> int:
    """Apply the migrations with Knex; return how many it says it applied."""
    env = {
        **os.environ,
        "NODE_PATH": str(directory / "node_modules"),
        "BENCH_KNEX_CONNECTION": json.dumps({
            "host": connection.host, "port": connection.port, "user": connection.user,
            "password": connection.password.get_secret_value(), "database": connection.dbname,
        }),
    }
    done = subprocess.run(["node", str(migrations.parent / "knex-runner.js"), str(migrations)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"knex failed: {done.stderr.strip()[-500:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["applied"])
