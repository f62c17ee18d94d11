"""Shell completion, generated from the command's own parser: the scripts are valid, completing works in a real
bash (and zsh, driven through a terminal), and a subcommand or option added to the parser is completed with no
other change."""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from flows.cli import _parser
from flows.completion import describe, environment_names, script
from tests.helpers import PROJECT, cli

ENVIRONMENTS = """
[environments.staging]
tier = "staging"
[environments.staging.policy]
lint_blocks_on = "error"

[environments.production]
tier = "production"

[environments.qa-eu]
tier = "staging"
"""
TOOLS = ["knex", "flyway", "golang-migrate"]
ZSH = shutil.which("zsh")
needs_zsh = pytest.mark.skipif(ZSH is None, reason="zsh is not installed here (apt-get install zsh): its script is "
                                                   "still checked as text by the tests that do not run it")


def parser_options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Every subcommand's visible option strings, read from argparse directly (not through flows.completion)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {name: {s for a in sub._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
            for name, sub in commands.items()}


def extended_parser() -> argparse.ArgumentParser:
    """The command's parser with one more subcommand, as a change to flows/cli.py would add it."""
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    frobnicate = commands.add_parser("frobnicate", help="a subcommand the scripts were never told about")
    frobnicate.add_argument("--widget", choices=["sprocket", "gear"], help="which one")
    frobnicate.add_argument("--into", metavar="DIR", help="where")
    frobnicate.add_argument("--env", metavar="NAME", help="an environment")
    frobnicate.add_argument("--list-everything", action="store_true", help=argparse.SUPPRESS)
    frobnicate.add_argument("shell", nargs="?", choices=["bash", "zsh"])
    return parser


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, str]:
    """A directory to complete in (two directories, a file), an environments file, and an `rds-migrations` on PATH
    that answers `completion --list-environments` as the wired command does (with environment_names())."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations-old").mkdir()
    (tmp_path / "migrations.md").write_text("notes\n")
    (tmp_path / "environments.toml").write_text(ENVIRONMENTS)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "rds-migrations"
    stub.write_text(f"""#!/bin/sh
[ "$1 $2" = "completion --list-environments" ] || exit 2
exec {sys.executable} -c "from flows.completion import environment_names; print(*environment_names(), sep=chr(10))"
""")
    stub.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(PROJECT),
            "RDS_MIGRATIONS_ENVIRONMENTS": str(tmp_path / "environments.toml"), "HOME": str(tmp_path),
            "TERM": "dumb", "cwd": str(tmp_path)}


# ---- bash ---------------------------------------------------------------------------------------------------------

BASH_DRIVER = r"""
source "$0"
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=()
_rds_migrations
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(line: str, env: dict[str, str] | None = None, parser: argparse.ArgumentParser | None = None,
                  tmp: Path | None = None) -> list[str]:
    """What bash offers for `line`, the last word being completed (as readline splits it: `--from=g` is
    `--from`, `=`, `g`)."""
    words = line.replace("=", " = ").split(" ")
    text = script("bash", parser or _parser())
    path = Path(env["cwd"] if env else tmp) / "rds-migrations.bash"
    path.write_text(text)
    environment = {**os.environ, **(env or {})}
    cwd = environment.pop("cwd", None)
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", BASH_DRIVER, str(path), *words],
                          capture_output=True, text=True, timeout=60, env=environment, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_the_bash_script_is_valid_bash(tmp_path: Path) -> None:
    path = tmp_path / "rds-migrations.bash"
    path.write_text(script("bash", _parser()))
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "complete -F _rds_migrations rds-migrations" in path.read_text()


def test_bash_completes_a_subcommand_an_option_and_choices(workspace: dict[str, str]) -> None:
    assert bash_complete("rds-migrations ru", workspace) == ["run"]
    assert bash_complete("rds-migrations run --da", workspace) == ["--database-url", "--database-urls"]
    assert bash_complete("rds-migrations baseline --from ", workspace) == TOOLS
    assert bash_complete("rds-migrations baseline --from=g", workspace) == ["golang-migrate"]
    assert bash_complete("rds-migrations --ver", workspace) == ["--version"]


def test_bash_completes_environments_asked_of_the_command(workspace: dict[str, str]) -> None:
    assert bash_complete("rds-migrations run --env ", workspace) == ["production", "qa-eu", "staging"]
    assert bash_complete("rds-migrations plan --env=st", workspace) == ["staging"]
    assert bash_complete("rds-migrations setup-prefect staging ", workspace) == ["production", "qa-eu", "staging"]
    # a value already given is skipped when counting, and the next option is offered
    assert bash_complete("rds-migrations run --env staging --dr", workspace) == ["--dry-run"]


def test_bash_completes_directories_for_dir_and_files_for_file(workspace: dict[str, str]) -> None:
    assert sorted(bash_complete("rds-migrations run --migrations mig", workspace)) == ["migrations",
                                                                                        "migrations-old"]
    assert "migrations.md" in bash_complete("rds-migrations validate --markdown mig", workspace)
    assert bash_complete("rds-migrations run --database-url ", workspace) == []  # free text: nothing offered


def test_bash_offers_every_subcommand_and_each_ones_options_exactly_as_the_parser_has_them(tmp_path: Path) -> None:
    options = parser_options(_parser())
    assert bash_complete("rds-migrations ", tmp=tmp_path) == list(options)
    for command, expected in options.items():
        assert set(bash_complete(f"rds-migrations {command} -", tmp=tmp_path)) == expected, command


# ---- generated, so it cannot drift --------------------------------------------------------------------------------


def test_a_subcommand_added_to_the_parser_is_completed_with_no_other_change(workspace: dict[str, str]) -> None:
    parser = extended_parser()
    assert bash_complete("rds-migrations frob", workspace, parser) == ["frobnicate"]
    assert set(bash_complete("rds-migrations frobnicate -", workspace, parser)) == {
        "-h", "--help", "--widget", "--into", "--env"}  # the hidden option is not offered
    assert bash_complete("rds-migrations frobnicate --widget ", workspace, parser) == ["sprocket", "gear"]
    assert bash_complete("rds-migrations frobnicate --into migrations-", workspace, parser) == ["migrations-old"]
    assert bash_complete("rds-migrations frobnicate --env q", workspace, parser) == ["qa-eu"]
    assert bash_complete("rds-migrations frobnicate ", workspace, parser) == ["bash", "zsh"]
    zsh = script("zsh", parser)
    assert "'frobnicate:a subcommand the scripts were never told about'" in zsh
    assert "--widget=[which one]:WIDGET:(sprocket gear)" in zsh and "--list-everything" not in zsh
    assert "'1::SHELL:(bash zsh)'" in zsh


def test_the_zsh_script_names_every_subcommand_and_each_ones_options() -> None:
    text = script("zsh", _parser())
    arms = {arm.split("'", 1)[0]: arm for arm in text.split("\n                '")[1:]}
    for command, options in parser_options(_parser()).items():
        assert f"'{command}:" in text, command  # in the list of subcommands
        for option in options:
            assert f"){option}" in arms[command], f"{command} {option}"


def test_the_model_reads_choices_values_and_positionals_from_the_parser() -> None:
    top, commands = describe(_parser())
    assert {n for o in top.options for n in o.names} == {"-h", "--help", "--version"}
    baseline = next(c for c in commands if c.name == "baseline")
    tool = next(o for o in baseline.options if "--from" in o.names)
    assert tool.value.kind == "choices" and tool.value.choices == tuple(TOOLS)
    env = next(o for o in baseline.options if "--env" in o.names)
    assert env.value.kind == "environments" and env.excludes == ("--env", "--database-url")
    setup = next(c for c in commands if c.name == "setup-prefect")
    [environments] = setup.positionals
    assert environments.value.kind == "environments" and environments.last is None  # ENV [ENV ...]


# ---- zsh ----------------------------------------------------------------------------------------------------------

ZSH_INIT = r"""
PS1='' PROMPT='' RPROMPT=''
fpath=($COMPLETIONS $fpath)
autoload -Uz compinit && compinit -u -D
# Every match the completion adds is written to $OUT, one a line (as zsh-capture-completion does).
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
    local -a hits
    builtin compadd -A hits "$@"
    (( $#hits )) && print -rl -- $hits >> $OUT
    builtin compadd "$@"
}
finished() { print -r -- '<done>' >> $OUT }
comppostfuncs=(finished)
bindkey '^I' complete-word
"""


def zsh_complete(line: str, env: dict[str, str], parser: argparse.ArgumentParser | None = None, *,
                 sourced: bool = False) -> list[str]:
    """What zsh's completion system adds for `line` + TAB, in an interactive zsh on a terminal, with the script
    installed as the docstring says: a `_rds-migrations` file on fpath, autoloaded by compinit, or sourced."""
    home = Path(env["cwd"])
    completions, out = home / "zfunc", home / "zsh-matches.txt"
    completions.mkdir(exist_ok=True)
    installed = home / "rds-migrations.zsh" if sourced else completions / "_rds-migrations"
    installed.write_text(script("zsh", parser or _parser()))
    (home / "init.zsh").write_text(ZSH_INIT + (f"source {installed}\n" if sourced else ""))
    out.unlink(missing_ok=True)
    environment = {**os.environ, **env, "COMPLETIONS": str(completions), "OUT": str(out), "TERM": "xterm"}
    environment.pop("cwd")
    main, terminal = pty.openpty()
    shell = subprocess.Popen([ZSH, "-f", "-i"], stdin=terminal, stdout=terminal, stderr=terminal, cwd=home,
                             env=environment, start_new_session=True)
    os.close(terminal)
    try:
        os.write(main, f"source {home / 'init.zsh'}\n{line}\t".encode())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "<done>" not in (out.read_text() if out.exists() else ""):
            if select.select([main], [], [], 0.1)[0]:
                os.read(main, 65536)  # keep the terminal drained
        assert out.exists() and "<done>" in out.read_text(), f"zsh never completed {line!r}"
    finally:
        shell.kill()
        shell.wait(timeout=10)
        os.close(main)
    return [m for m in out.read_text().splitlines() if m != "<done>"]


def test_the_zsh_script_is_valid_zsh(tmp_path: Path) -> None:
    if ZSH is None:
        pytest.skip("zsh is not installed here (apt-get install zsh)")
    path = tmp_path / "_rds-migrations"
    path.write_text(script("zsh", _parser()))
    done = subprocess.run([ZSH, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert path.read_text().startswith("#compdef rds-migrations\n")


@needs_zsh
def test_zsh_completes_a_subcommand_an_option_choices_and_environments(workspace: dict[str, str]) -> None:
    assert zsh_complete("rds-migrations ru", workspace) == ["run"]
    assert zsh_complete("rds-migrations run --da", workspace) == ["--database-url", "--database-urls"]
    assert sorted(zsh_complete("rds-migrations baseline --from ", workspace)) == sorted(TOOLS)
    assert zsh_complete("rds-migrations run --env ", workspace) == ["production", "qa-eu", "staging"]
    # _files tries directories under more than one tag, so a directory may be added twice
    assert set(zsh_complete("rds-migrations run --migrations migrations-", workspace)) == {"migrations-old"}


@needs_zsh
def test_zsh_completes_a_subcommand_added_to_the_parser(workspace: dict[str, str]) -> None:
    parser = extended_parser()
    assert zsh_complete("rds-migrations frob", workspace, parser) == ["frobnicate"]
    assert sorted(zsh_complete("rds-migrations frobnicate --widget ", workspace, parser)) == ["gear", "sprocket"]


@needs_zsh
def test_zsh_completes_when_the_script_is_sourced_instead_of_installed(workspace: dict[str, str]) -> None:
    assert zsh_complete("rds-migrations baseline --from=fl", workspace, sourced=True) == ["flyway"]


# ---- the environments, and --version ------------------------------------------------------------------------------


def test_environment_names_are_read_without_validating_and_nothing_on_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "environments.toml"
    path.write_text(ENVIRONMENTS + '\n[environments.Bad_Name]\ntier = "x"\n[environments.half-written]\nnonsense = 1\n')
    assert environment_names(path) == ["half-written", "production", "qa-eu", "staging"]
    path.write_text("[environments.staging\n")
    assert environment_names(path) == []
    assert environment_names(tmp_path / "missing.toml") == []
    assert {"production", "staging"} <= set(environment_names(PROJECT / "deployments" / "environments.toml"))


def test_version_prints_the_installed_version_from_pyproject() -> None:
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
    done = subprocess.run([sys.executable, "-m", "flows.cli", "--version"], capture_output=True, text=True,
                          timeout=120, cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert done.returncode == 0 and done.stdout == f"rds-migrations {declared}\n"


# ---- completion --help: what a user reads, and install lines that work as printed -------------------------------


def test_completion_help_speaks_to_the_user_and_its_install_lines_work_in_a_fresh_home(tmp_path: Path) -> None:
    """`completion --help` is for the person installing it (it said how the script is generated, naming
    `flows.cli._parser()`), and its install lines, run as printed in a home with no ~/.local/share yet, install
    both scripts (the bash line failed: no such directory)."""
    done = cli("completion", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "_parser" not in done.stdout and "flows.cli" not in done.stdout and "handed in" not in done.stdout
    lines = [line.strip() for line in done.stdout.splitlines()
             if line.startswith("    ") and not line.strip().startswith("#")]
    assert any("completion bash >" in line for line in lines), done.stdout
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    command = bin_dir / "rds-migrations"  # the command as a user's PATH has it
    command.write_text(f'#!/bin/sh\nexec {sys.executable} -m flows.cli "$@"\n')
    command.chmod(0o755)
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(PROJECT)}
    installed = subprocess.run(["bash", "--norc", "--noprofile", "-e", "-c", "\n".join(lines)], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    bash_file = home / ".local/share/bash-completion/completions/rds-migrations"
    assert "complete -F _rds_migrations rds-migrations" in bash_file.read_text()
    assert (home / ".zfunc/_rds-migrations").read_text().startswith("#compdef rds-migrations")
