"""Expressions in run files: `${{ … }}` inside a string, read by `parse`.

Run files use it through `runsvc.domain.templates`: a task's `run`, `command` and `env`
are checked when a run is created and rendered when an attempt starts.

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
                | "secrets" selector
                | "item" ;
    selector    = "." segment | "[" string "]" ;
    segment     = ( letter | digit | "_" | "-" ) { letter | digit | "_" | "-" } ;
    name        = ( letter | "_" ) { letter | digit | "_" | "-" } ;
    string      = "'" { any character but "'" | "''" } "'" ;
    number      = [ "-" ] int [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ] ;
    int         = "0" | ( digit - "0" ) { digit } ;
    digits      = digit { digit } ;
    letter      = "A" | … | "Z" | "a" | … | "z" ;   (* ASCII only, as are digits *)
    digit       = "0" | … | "9" ;

- `text` is any run of characters that does not start `${{`; an expression ends at the
  first `}}` outside a string. To write `${{` itself: `${{ '${{' }}`.
- Strings are single-quoted; `''` inside one is a quote (as in GitHub Actions). Numbers
  are JSON's: `1`, `-2.5`, `1e3`.
- A selector spells a task name, an output key or a variable name: `.build-linux`, or
  `['v1.2']` for one with other characters (a task named `v1.2` is `tasks['v1.2']`).
- Precedence, tightest first: `!`, then `==` `!=`, then `&&`, then `||`. Comparisons
  do not chain (`a == b == c` is refused); `(a == b) == c` says what is meant.
- The parser accepts a call of any name, as it accepts any task name; `check` reports
  one that is not a function. The functions are `fromJSON(string)` and `toJSON(value)`.
- Nothing else is in the language: no attribute access beyond the references above, no
  indexing of values, no arithmetic, no evaluation of Python.
- Limits: an expression (from `${{` to `}}`) is at most 1000 characters, and nests at
  most 32 levels of parentheses, `!` and calls.

Values are JSON's: strings, numbers, booleans, null, arrays and objects. A reference's
value is a string, as the `Context` gives it (a task's result is how it ended, such as
`success` or `failed`), except `item`, the foreach item as given, and `env.X` of an
unset variable, which is null.

Evaluation (`evaluate`, in a `Context`), deterministic and side-effect free:

- A template that is exactly one `${{ … }}`, nothing around it, has its expression's
  value, of any type (a `foreach` list from `fromJSON`). Any other template is a string:
  its text with each value written in — a string as it is, null as nothing, anything
  else as its JSON (`true`, `2`, `["a","b"]`). `render` always gives that string.
- `==` and `!=` compare without converting: a string equals only the same string (case
  counts: `'Main' != 'main'`), so `'1' != 1` and `'true' != true`; numbers compare by
  value (`1 == 1.0`); arrays and objects item by item. Compare a number in an output as
  `fromJSON(tasks.t.outputs.n) == 3`, or as a string, `tasks.t.outputs.n == '3'`.
- Truth (for `!`, `&&`, `||` and `when`, see `holds`): false, null, `''` and 0 are false;
  everything else is true, including the strings `'false'` and `'0'` and empty arrays.
- `!` gives a boolean. `a && b` gives a when a is false, else b; `a || b` gives a when
  a is true, else b (`env.TARGET || 'staging'`). Both stop at the first operand that
  decides, so the rest is not evaluated.
- `fromJSON(s)` reads a string of JSON (at most 64 levels deep); `toJSON(v)` writes
  canonical JSON (no spaces, object keys sorted), so `toJSON(fromJSON(s))` is `s` for a
  canonical `s`.
- A reference without a value raises `Unresolved`, naming it: an output the task never
  set, the result of a task that has not ended, `item` outside a foreach child. A
  function that fails (`fromJSON('nope')`, an unknown function) raises
  `EvaluationError`.

`secrets.NAME` is a secret of the run's group (see docs/secrets.md). It may stand only
in a task's `env`, and only alone in its `${{ … }}` (`Bearer ${{ secrets.TOKEN }}` is
fine, `${{ secrets.TOKEN == 'x' }}` is not): nothing is ever computed on a secret, so
nothing derived from one can reach the log.

Static checks, before a run starts: `references` lists what a template refers to, and
`check` reports, each with where it stands: an unknown task (with the name meant), a
task that is not a dependency (direct or indirect) of the task the template belongs to,
`item` outside a foreach task, an unknown function (with the name meant) and a call
with the wrong number of arguments. A template that passes can still meet `Unresolved`
when it runs: a dependency that failed or was skipped may not have set its outputs.

Errors: every error is an `ExpressionError`. `parse` raises only `ExpressionSyntaxError`,
which says where (`column 7`, or `line 3, column 7` in a text of several lines).
"""

from runsvc.domain.expressions.checks import check, referenced_tasks, references
from runsvc.domain.expressions.errors import (
    EvaluationError,
    ExpressionError,
    ExpressionSyntaxError,
    Unresolved,
)
from runsvc.domain.expressions.evaluator import Attempt, Context, evaluate, holds, render
from runsvc.domain.expressions.lexer import MAX_EXPRESSION_LENGTH
from runsvc.domain.expressions.nodes import (
    AttemptOutput,
    EnvVar,
    ExitCode,
    Item,
    Reference,
    RunField,
    SecretRef,
    Segment,
    TaskOutput,
    TaskResult,
    Template,
)
from runsvc.domain.expressions.parser import MAX_DEPTH, parse
from runsvc.domain.expressions.values import MAX_JSON_DEPTH, Value, is_truthy

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_JSON_DEPTH",
    "Attempt",
    "AttemptOutput",
    "Context",
    "EnvVar",
    "EvaluationError",
    "ExitCode",
    "ExpressionError",
    "ExpressionSyntaxError",
    "Item",
    "Reference",
    "RunField",
    "SecretRef",
    "Segment",
    "TaskOutput",
    "TaskResult",
    "Template",
    "Unresolved",
    "Value",
    "check",
    "evaluate",
    "holds",
    "is_truthy",
    "parse",
    "referenced_tasks",
    "references",
    "render",
]
