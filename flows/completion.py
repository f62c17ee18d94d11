"""Shell completion for `rds-migrations`, bash and zsh, generated from the argument parser the command itself
uses (`flows.cli._parser()`, handed in): a subcommand or an option added to the parser is completed the next
time the script is printed, and none can be forgotten. No completion library: the scripts are plain shell.
`HELP` is what `rds-migrations completion --help` says to the person installing it.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.engine.environments import ENVIRONMENT_NAME, environments_file

HELP = """Print a script that completes rds-migrations's commands, options and values as you type (TAB): the
subcommands, each one's options (with their help in zsh), choices such as `baseline --from
knex|flyway|golang-migrate`, the environment names of your environments file for `--env` and `setup-prefect`
(read at each TAB, so RDS_MIGRATIONS_ENVIRONMENTS is honoured), directories for DIR and files for FILE.

Install (then open a new shell; from a clone, run `source .venv/bin/activate` first, or prefix `uv run`):

    # bash (needs the bash-completion package, or source the file from ~/.bashrc)
    mkdir -p ~/.local/share/bash-completion/completions
    rds-migrations completion bash > ~/.local/share/bash-completion/completions/rds-migrations
    # zsh: a directory on fpath, before compinit runs in ~/.zshrc
    mkdir -p ~/.zfunc && rds-migrations completion zsh > ~/.zfunc/_rds-migrations
    # and in ~/.zshrc:  fpath=(~/.zfunc $fpath); autoload -Uz compinit && compinit

Or load it into the current shell only: `source <(rds-migrations completion bash)` (or `zsh`).
"""

PROGRAM = "rds-migrations"
FUNCTION = "_rds_migrations"
ENVIRONMENT_DESTS = frozenset({"env", "environment", "environments"})
# What a value is completed with: its choices, the environments, directories, files, or nothing (free text).
Kind = Literal["choices", "environments", "directories", "files", "text"]


@dataclass(frozen=True)
class Value:
    kind: Kind
    label: str  # the metavar, shown by zsh
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    help: str
    value: Value | None  # None: a flag
    excludes: tuple[str, ...]  # its own names and those of its mutually exclusive group
    ends_line: bool = False  # --help, --version: nothing else follows


@dataclass(frozen=True)
class Positional:
    first: int  # its index among the subcommand's positional words
    last: int | None  # None: it repeats (nargs + or *)
    optional: bool
    value: Value


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...]


def script(shell: Literal["bash", "zsh"], parser: argparse.ArgumentParser) -> str:
    """The completion script for `shell`, from `parser` (pass `flows.cli._parser()`)."""
    top, commands = describe(parser)
    if shell == "bash":
        return _bash(top, commands)
    if shell == "zsh":
        return _zsh(top, commands)
    raise ValueError(f"no completion for {shell!r}: bash or zsh")


def environment_names(path: Path | None = None) -> list[str]:
    """The environments of the environments file, for completing: read without validating them (a half-written
    file still completes), and nothing at all on any error (a TAB never prints a traceback)."""
    try:
        raw = tomllib.loads((path or environments_file()).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    environments = raw.get("environments")
    if not isinstance(environments, dict):
        return []
    return sorted(name for name, body in environments.items()
                  if isinstance(body, dict) and ENVIRONMENT_NAME.match(name))


# ---- the parser, read --------------------------------------------------------------------------------------


def describe(parser: argparse.ArgumentParser) -> tuple[Command, tuple[Command, ...]]:
    """(the top level, its subcommands in the parser's order): what the scripts complete."""
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    commands: list[Command] = []
    if subparsers is not None:
        helps = {a.dest: a.help or "" for a in subparsers._choices_actions}
        for name, sub in subparsers.choices.items():
            commands.append(_command(name, helps.get(name, ""), sub))
    return _command("", parser.description or "", parser), tuple(commands)


def _command(name: str, help_text: str, parser: argparse.ArgumentParser) -> Command:
    partners: dict[argparse.Action, tuple[str, ...]] = {}
    for group in parser._mutually_exclusive_groups:
        names = tuple(n for a in group._group_actions for n in a.option_strings)
        for action in group._group_actions:
            partners[action] = names
    formatter = parser._get_formatter()
    options, positionals, index = [], [], 0
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        help_line = _one_line(formatter._expand_help(action) if action.help else "")
        if action.option_strings:
            options.append(Option(
                names=tuple(action.option_strings), help=help_line,
                value=None if action.nargs == 0 else _value(action),
                excludes=tuple(dict.fromkeys((*action.option_strings, *partners.get(action, ())))),
                ends_line=isinstance(action, argparse._HelpAction | argparse._VersionAction)))
            continue
        count = action.nargs if isinstance(action.nargs, int) else 1
        repeats = action.nargs in ("+", "*", argparse.REMAINDER)
        positionals.append(Positional(first=index, last=None if repeats else index + count - 1,
                                      optional=action.nargs in ("?", "*"), value=_value(action)))
        index += count
    return Command(name, _one_line(help_text), tuple(options), tuple(positionals))


def _value(action: argparse.Action) -> Value:
    label = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    if action.choices is not None:
        return Value("choices", label, tuple(str(c) for c in action.choices))
    if action.dest in ENVIRONMENT_DESTS or label == "ENV":
        return Value("environments", label)
    if label == "DIR":
        return Value("directories", label)
    if label == "FILE" or action.type is Path:
        return Value("files", label)
    return Value("text", label)


def _one_line(text: str, limit: int = 72) -> str:
    """A help text short enough for one line of a completion menu: its first clause, or its first words."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = re.split(r"; |: | \(", flat, maxsplit=1)[0]
    return flat if len(flat) <= limit else flat[: limit - 3].rsplit(" ", 1)[0] + "..."


# ---- bash --------------------------------------------------------------------------------------------------


def _bash(top: Command, commands: tuple[Command, ...]) -> str:
    every = (top, *commands)
    takes_value = [_q(f"{c.name} {n}") for c in every for o in c.options if o.value for n in o.names]
    value_arms = ["        " + "|".join(_q(f"{c.name} {n}") for n in o.names) + f") {_bash_values(o.value)} ;;"
                  for c in every for o in c.options if o.value and o.value.kind != "text"]
    option_arms = [f'        {_q(c.name)}) words={_q(" ".join(n for o in c.options for n in o.names))} ;;'
                   for c in commands]
    positional_arms = []
    for c in commands:
        tests = [f'(( $2 {">=" if p.last is None else "=="} {p.first} ))' if p.last in (None, p.first)
                 else f'(( $2 >= {p.first} && $2 <= {p.last} ))' for p in c.positionals]
        branches = " ".join(f"if {t}; then {_bash_values(p.value)}; return 0; fi;"
                            for t, p in zip(tests, c.positionals, strict=True))
        if branches:
            positional_arms.append(f"        {_q(c.name)}) {branches} ;;")
    names = " ".join(c.name for c in commands)
    top_options = " ".join(n for o in top.options for n in o.names)
    return _BASH.format(
        program=PROGRAM, function=FUNCTION, commands=names, top_options=top_options,
        takes_value="|".join(takes_value) or '"-"', value_arms="\n".join(value_arms),
        option_arms="\n".join(option_arms), positional_arms="\n".join(positional_arms))


def _bash_values(value: Value) -> str:
    return {
        "choices": f"{FUNCTION}_words {_q(' '.join(value.choices))}",
        "environments": f"{FUNCTION}_environments",
        "directories": f"{FUNCTION}_paths -d",
        "files": f"{FUNCTION}_paths -f",
        "text": ":",
    }[value.kind]


def _q(text: str) -> str:
    """`text` as one double-quoted shell word (only what the parser holds: names, choices)."""
    return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'


_BASH = r"""# bash completion for {program}: generated from its argument parser by flows/completion.py; do not edit.
# Install: mkdir -p ~/.local/share/bash-completion/completions
#          {program} completion bash > ~/.local/share/bash-completion/completions/{program}

{function}_reply() {{  # each line of stdin becomes one completion (names with spaces stay whole)
    local line
    COMPREPLY=()
    while IFS= read -r line; do COMPREPLY+=("$line"); done
}}

{function}_words() {{  # $1: the words to offer, separated by white space
    {function}_reply < <(compgen -W "$1" -- "$cur")
}}

{function}_paths() {{  # $1: -d for directories, -f for files
    compopt -o filenames 2>/dev/null  # a slash after a directory, names quoted as needed
    {function}_reply < <(compgen "$1" -- "$cur")
}}

{function}_environments() {{  # asked of the command itself, which reads the environments file as a run does
    {function}_words "$("${{COMP_WORDS[0]}}" completion --list-environments 2>/dev/null)"
}}

{function}_takes_value() {{  # $1: the subcommand ("" before it), $2: an option
    case "$1 $2" in
        {takes_value}) return 0 ;;
    esac
    return 1
}}

{function}_value() {{  # $1: the subcommand, $2: the option whose value is being written
    case "$1 $2" in
{value_arms}
    esac  # any other value is free text: nothing to offer
}}

{function}_positional() {{  # $1: the subcommand, $2: how many positional words come before this one
    case $1 in
{positional_arms}
    esac
    return 1
}}

{function}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" command="" word words="" i skip=0 positionals=0
    # `--option=value`: bash splits it at "=" (COMP_WORDBREAKS)
    if [[ $cur == "=" ]]; then
        cur="" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    elif (( COMP_CWORD > 1 )) && [[ ${{COMP_WORDS[COMP_CWORD-1]}} == "=" ]]; then
        prev="${{COMP_WORDS[COMP_CWORD-2]}}"
    elif (( COMP_CWORD > 0 )); then
        prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    fi
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${{COMP_WORDS[i]}}"
        if (( skip )); then skip=0; continue; fi
        case $word in
            =) skip=1 ;;
            -*) {function}_takes_value "$command" "$word" && [[ ${{COMP_WORDS[i+1]}} != "=" ]] && skip=1 ;;
            *) if [[ -z $command ]]; then command="$word"; else (( positionals++ )); fi ;;
        esac
    done
    if [[ $prev == -* ]] && {function}_takes_value "$command" "$prev"; then
        {function}_value "$command" "$prev"
        return 0
    fi
    if [[ -z $command ]]; then
        if [[ $cur == -* ]]; then {function}_words "{top_options}"; else {function}_words "{commands}"; fi
        return 0
    fi
    if [[ $cur != -* ]] && {function}_positional "$command" "$positionals"; then
        return 0
    fi
    case $command in
{option_arms}
    esac
    {function}_words "$words"
}}

complete -F {function} {program}
"""


# ---- zsh ---------------------------------------------------------------------------------------------------


def _zsh(top: Command, commands: tuple[Command, ...]) -> str:
    described = "\n".join(f"        {_zq(_zsh_escape_colon(c.name) + ':' + c.help)}" for c in commands)
    arms = "\n".join(f"                {_zq(c.name)}) _arguments -s \\\n{_zsh_specs(c, 20)} ;;" for c in commands)
    return _ZSH.format(program=PROGRAM, function=FUNCTION, top_specs=_zsh_specs(top, 8), commands=described,
                       arms=arms)


def _zsh_specs(command: Command, indent: int) -> str:
    specs = []
    for option in command.options:
        excludes = "(- *)" if option.ends_line else f"({' '.join(option.excludes)})"
        for name in option.names:
            head = f"{excludes}{name}"
            if option.value is not None:
                head += "=" if name.startswith("--") else "+"
            spec = f"{head}[{_zsh_brackets(option.help)}]"
            if option.value is not None:
                spec += f":{_zsh_escape_colon(option.value.label)}:{_zsh_action(option.value)}"
            specs.append(spec)
    for p in command.positionals:
        colons = "::" if p.optional else ":"
        label, action = _zsh_escape_colon(p.value.label), _zsh_action(p.value)
        if p.last is None:
            specs.append(f"*{colons}{label}:{action}")
        else:
            specs += [f"{i + 1}{colons}{label}:{action}" for i in range(p.first, p.last + 1)]
    if not command.name:  # the top level: then a subcommand and its own words
        specs += [f"1:command:{FUNCTION}_commands", "*::argument:->argument"]
    return " \\\n".join(" " * indent + _zq(s) for s in specs)


def _zsh_action(value: Value) -> str:
    return {
        "choices": "(" + " ".join(re.sub(r"([\s()\\:'])", r"\\\1", c) for c in value.choices) + ")",
        "environments": f"{FUNCTION}_environments",
        "directories": "_files -/",
        "files": "_files",
        "text": " ",
    }[value.kind]


def _zsh_brackets(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "(").replace("]", ")")


def _zsh_escape_colon(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _zq(text: str) -> str:
    """`text` as one single-quoted zsh word."""
    return "'" + text.replace("'", "'\\''") + "'"


_ZSH = r"""#compdef {program}
# zsh completion for {program}: generated from its argument parser by flows/completion.py; do not edit.
# Install: {program} completion zsh > ~/.zfunc/_{program}  (with ~/.zfunc on fpath before compinit)

{function}_environments() {{  # asked of the command itself, which reads the environments file as a run does
    local -a names
    names=( ${{(f)"$(${{~{function}_command}} completion --list-environments 2>/dev/null)"}} )
    _wanted environments expl 'environment' compadd -a names
}}

{function}_commands() {{
    local -a commands
    commands=(
{commands}
    )
    _describe -t commands '{program} command' commands
}}

{function}() {{
    local curcontext="$curcontext" state state_descr line {function}_command="${{words[1]}}"
    typeset -A opt_args
    _arguments -C -s \
{top_specs} && return 0
    case $state in
        argument)
            curcontext="${{curcontext%:*:*}}:{program}-$line[1]:"
            case $line[1] in
{arms}
            esac ;;
    esac
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    {function} "$@"  # autoloaded from fpath: this is the first completion
else
    compdef {function} {program}  # sourced
fi
"""
