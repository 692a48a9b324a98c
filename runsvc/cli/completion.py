"""`runsvc completion bash|zsh`: a completion script generated from the parser itself, so
it always knows every command, subcommand and option of this version."""

from __future__ import annotations

import argparse
from typing import Any

SCRIPT = """# runsvc completion; load with:  source <(runsvc completion {shell})
{zsh_prelude}_runsvc_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word
    # The command words typed so far; option values and arguments (a run id) are skipped.
    local known=":{known}:"
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$known" in *":${{path:+$path }}$word:"*) path="${{path:+$path }}$word" ;; esac
    done
    local words files=1
    case "$path" in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=( $(compgen -W "$words" -- "$cur") )
    # Files (a run config) only where no subcommand is expected.
    if [ "$files" = 1 ]; then COMPREPLY+=( $(compgen -f -- "$cur") ); fi
}}
complete -o default -F _runsvc_complete runsvc
"""


def register(commands: Any, parser: argparse.ArgumentParser) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        epilog="example:\n  source <(runsvc completion bash)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(handler=lambda args: print_script(parser, args.shell))


def _choices(
    parser: argparse.ArgumentParser, path: str, cases: list[str], known: list[str]
) -> None:
    words: list[str] = []
    children: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            children.update(action.choices)
        words += [o for o in action.option_strings if o.startswith("--")]
    words += list(children)
    files = "" if not children else " files=0;"
    cases.append(f'        "{path}") words="{" ".join(words)}";{files} ;;')
    for name, child in children.items():
        known.append(f"{path} {name}".strip())
        _choices(child, f"{path} {name}".strip(), cases, known)


def print_script(parser: argparse.ArgumentParser, shell: str) -> int:
    cases: list[str] = []
    known: list[str] = []
    _choices(parser, "", cases, known)
    prelude = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    script = SCRIPT.format(
        shell=shell, zsh_prelude=prelude, cases="\n".join(cases), known=":".join(known)
    )
    print(script)
    return 0
