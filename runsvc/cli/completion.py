"""`runsvc completion bash|zsh`: a completion script generated from the parser itself, so
it always knows every command, subcommand and option of this version."""

from __future__ import annotations

import argparse
from typing import Any

SCRIPT = """# runsvc completion; load with:  source <(runsvc completion {shell})
{zsh_prelude}_runsvc_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) ;; *) path="${{path:+$path }}$word" ;; esac
    done
    local words
    case "$path" in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=( $(compgen -W "$words" -- "$cur") $(compgen -f -- "$cur") )
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


def _choices(parser: argparse.ArgumentParser, path: str, cases: list[str]) -> None:
    words: list[str] = []
    children: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            children.update(action.choices)
        words += [o for o in action.option_strings if o.startswith("--")]
    words += list(children)
    cases.append(f'        "{path}") words="{" ".join(words)}" ;;')
    for name, child in children.items():
        _choices(child, f"{path} {name}".strip(), cases)


def print_script(parser: argparse.ArgumentParser, shell: str) -> int:
    cases: list[str] = []
    _choices(parser, "", cases)
    prelude = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    print(SCRIPT.format(shell=shell, zsh_prelude=prelude, cases="\n".join(cases)))
    return 0
