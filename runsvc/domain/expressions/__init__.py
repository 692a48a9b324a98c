"""Expressions in run files: `${{ … }}` inside a string, read by `parse`.

Not yet wired into run files: nothing in validation or the executor calls this package.

Grammar (EBNF; `{ x }` repeats, `[ x ]` is optional; whitespace — space, tab, newline —
may stand between the tokens of an expression):

    template    = { text | "${{" expression "}}" } ;
    expression  = or ;
    or          = and { "||" and } ;
    and         = comparison { "&&" comparison } ;
    comparison  = unary [ ( "==" | "!=" ) unary ] ;
    unary       = "!" unary | primary ;
    primary     = string | number | "true" | "false" | "null"
                | reference | call | "(" expression ")" ;
    call        = name "(" [ expression { "," expression } ] ")" ;
    reference   = "tasks" selector "." "result"
                | "tasks" selector "." "outputs" selector
                | "env" selector
                | "run" "." ( "id" | "group" )
                | "item" ;
    selector    = "." segment | "[" string "]" ;
    segment     = ( letter | digit | "_" | "-" ) { letter | digit | "_" | "-" } ;
    name        = ( letter | "_" ) { letter | digit | "_" | "-" } ;
    string      = "'" { any character but "'" | "''" } "'" ;
    number      = [ "-" ] int [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ] ;
    int         = "0" | nonzero { digit } ;

- `text` is any run of characters that does not start `${{`; an expression ends at the
  first `}}` outside a string. To write `${{` itself: `${{ '${{' }}`.
- Strings are single-quoted; `''` inside one is a quote (as in GitHub Actions). Numbers
  are JSON's: `1`, `-2.5`, `1e3`.
- A selector spells a task name, an output key or a variable name: `.build-linux`, or
  `['v1.2']` for one with other characters (a task named `v1.2` is `tasks['v1.2']`).
- Precedence, tightest first: `!`, then `==` `!=`, then `&&`, then `||`. Comparisons
  do not chain (`a == b == c` is refused); `(a == b) == c` says what is meant.
- The parser accepts a call of any name, as it accepts any task name; the functions
  are `fromJSON(string)` and `toJSON(value)`.
- Nothing else is in the language: no attribute access beyond the references above, no
  indexing of values, no arithmetic, no evaluation of Python.
- Limits: an expression (from `${{` to `}}`) is at most 1000 characters, and nests at
  most 32 levels of parentheses, `!` and calls.

Errors: every error is an `ExpressionError`. `parse` raises only `ExpressionSyntaxError`,
which says where (`column 7`, or `line 3, column 7` in a text of several lines).
"""

from runsvc.domain.expressions.errors import ExpressionError, ExpressionSyntaxError
from runsvc.domain.expressions.lexer import MAX_EXPRESSION_LENGTH
from runsvc.domain.expressions.nodes import (
    EnvVar,
    Item,
    Reference,
    RunField,
    Segment,
    TaskOutput,
    TaskResult,
    Template,
)
from runsvc.domain.expressions.parser import MAX_DEPTH, parse

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "EnvVar",
    "ExpressionError",
    "ExpressionSyntaxError",
    "Item",
    "Reference",
    "RunField",
    "Segment",
    "TaskOutput",
    "TaskResult",
    "Template",
    "parse",
]
