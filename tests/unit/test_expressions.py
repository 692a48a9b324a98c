"""The expression language of run files: grammar, evaluation and static checks."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runsvc.domain.expressions import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_JSON_DEPTH,
    Attempt,
    Context,
    EnvVar,
    EvaluationError,
    ExpressionError,
    ExpressionSyntaxError,
    Item,
    Reference,
    RunField,
    Segment,
    TaskOutput,
    TaskResult,
    Template,
    Unresolved,
    Value,
    check,
    evaluate,
    holds,
    is_truthy,
    parse,
    referenced_tasks,
    references,
    render,
)
from runsvc.domain.expressions.nodes import (
    And,
    Call,
    Compare,
    Constant,
    Node,
    Not,
    Or,
    Ref,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expression(text: str) -> Node:
    """The tree of the one expression in `text`."""
    single = parse(text).single
    assert single is not None
    return single.expression


def syntax_error(text: str) -> str:
    with pytest.raises(ExpressionSyntaxError) as refused:
        parse(text)
    return str(refused.value)


# -- grammar: what parses, into what


def test_text_without_expressions_is_one_literal_part() -> None:
    """Text around and between segments is kept as it is, `}}` and `$` included."""
    assert parse("").parts == ()
    assert parse("make }} $HOME {x}").parts == ("make }} $HOME {x}",)
    template = parse("v${{ env.A }}-${{ env.B }}")
    assert template.parts[0] == "v"
    assert template.parts[2] == "-"
    assert [s.source for s in template.segments] == ["${{ env.A }}", "${{ env.B }}"]
    assert template.single is None


def test_a_lone_expression_is_single_and_surrounding_whitespace_is_text() -> None:
    """Only a string that is exactly one `${{ … }}` may evaluate to a non-string."""
    assert isinstance(parse("${{ item }}").single, Segment)
    assert parse(" ${{ item }}").single is None


@pytest.mark.parametrize(
    ("text", "reference"),
    [
        ("tasks.build.result", TaskResult("build")),
        ("tasks.build.outputs.version", TaskOutput("build", "version")),
        ("tasks.build-linux.outputs.x_1", TaskOutput("build-linux", "x_1")),
        ("tasks.1st.result", TaskResult("1st")),
        ("tasks['v1.2'].outputs['a.b']", TaskOutput("v1.2", "a.b")),
        ("tasks['it''s'].result", TaskResult("it's")),
        ("env.VERSION", EnvVar("VERSION")),
        ("env['VERSION']", EnvVar("VERSION")),
        ("item", Item()),
        ("run.id", RunField("id")),
        ("run.group", RunField("group")),
        ("tasks . build . result", TaskResult("build")),
    ],
)
def test_references(text: str, reference: Reference) -> None:
    """Dotted and bracketed selectors name the same thing; spaces around dots are fine."""
    assert expression("${{ " + text + " }}") == Ref(reference, 4)


def test_a_reference_prints_as_it_would_be_written() -> None:
    """Messages name a reference in the form that parses back to it."""
    for reference in (
        TaskOutput("build", "version"),
        TaskOutput("v1.2", "it's"),
        TaskResult("a b"),
        EnvVar("X"),
        Item(),
        RunField("group"),
    ):
        assert expression("${{ " + str(reference) + " }}") == Ref(reference, 4)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("'it''s'", "it's"),
        ("''", ""),
        ("'}}'", "}}"),
        ("'${{'", "${{"),
        ("0", 0),
        ("-12", -12),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        ("-1.5E-2", -0.015),
        ("true", True),
        ("false", False),
        ("null", None),
    ],
)
def test_literals(text: str, value: object) -> None:
    """Strings as in GitHub Actions; numbers as in JSON (an integer unless written with a
    fraction or exponent)."""
    node = expression("${{ " + text + " }}")
    assert isinstance(node, Constant)
    assert node.value == value
    assert type(node.value) is type(value)


def test_precedence_not_then_comparison_then_and_then_or() -> None:
    """`!a == b || c && d` is `((!a) == b) || (c && d)`."""
    node = expression("${{ !item == 'x' || env.C && env.D }}")
    assert isinstance(node, Or)
    left, right = node.operands
    assert isinstance(left, Compare)
    assert left.equal
    assert isinstance(left.left, Not)
    assert isinstance(right, And)
    assert len(right.operands) == 2


def test_parentheses_group_and_chains_stay_flat() -> None:
    """A chain of `&&` is one node whatever its length, so its depth does not grow."""
    node = expression("${{ (item || env.A) && env.B && env.C && run.id != 'x' }}")
    assert isinstance(node, And)
    assert len(node.operands) == 4
    assert isinstance(node.operands[0], Or)
    assert isinstance(node.operands[3], Compare)
    assert not node.operands[3].equal


def test_calls_parse_whatever_their_name() -> None:
    """The parser knows a call's shape; `check` knows the functions."""
    node = expression("${{ toJSON(fromJSON(env.A)) }}")
    assert isinstance(node, Call)
    assert node.function == "toJSON"
    assert isinstance(node.arguments[0], Call)
    assert expression("${{ nope() }}") == Call("nope", (), 4)
    assert expression("${{ f(1, 'a') }}") == Call("f", (Constant(1, 6), Constant("a", 9)), 4)


def test_an_expression_may_span_lines_and_strings_may_hold_close() -> None:
    """The lexer, not a search for `}}`, ends an expression."""
    template = parse("echo ${{\n  fromJSON('{\"a\": {}}')\n}} done")
    assert template.parts[-1] == " done"
    node = template.segments[0].expression
    assert isinstance(node, Call)
    assert node.arguments[0] == Constant('{"a": {}}', 20)


# -- grammar: what is refused, and where


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${{ }}", "column 1: empty expression"),
        ("a ${{ env.A", "column 3: ${{ is not closed by }}"),
        ("${{ 'abc }}", "column 5: unterminated string"),
        ("${{ 01 }}", "column 5: invalid number"),
        ("${{ 1.5.2 }}", "column 5: invalid number"),
        ("${{ 2x }}", "column 5: invalid number"),
        ("${{ - }}", "column 5: invalid number"),
        ("${{ 1e999 }}", "column 5: number out of range"),
        ("${{ env.A = 'x' }}", "column 11: use == to compare"),
        ("${{ item & item }}", "column 10: use && for and"),
        ("${{ item | item }}", "column 10: use || for or"),
        ("${{ item ; }}", "column 10: unexpected character ';'"),
        ("${{ item item }}", "column 10: unexpected 'item'; expected an operator or }}"),
        ("${{ (item }}", "column 11: unexpected end of expression }}; expected ')'"),
        ("${{ item == }}", "column 13: unexpected end of expression }}; expected a value"),
        ("${{ f(1,) }}", "column 9: unexpected ')'; expected a value"),
        ("${{ f(1 2) }}", "column 9: unexpected number 2; expected ')'"),
        (
            "${{ 1 == 2 != 3 }}",
            "column 12: comparisons do not chain; put one of them in parentheses",
        ),
        ("${{ build }}", "column 5: unknown name 'build'"),
        ("${{ itme }}", "column 5: unknown name 'itme' (did you mean 'item'?)"),
        ("${{ True }}", "column 5: unknown name 'True' (did you mean 'true'?)"),
        ("${{ tasks }}", "column 11: expected tasks.<name>.result or tasks.<name>.outputs.<key>"),
        ("${{ tasks.b }}", "column 13: expected tasks.<name>.result"),
        (
            "${{ tasks.b.output.v }}",
            "column 13: a task has no field 'output' (did you mean 'outputs'?)",
        ),
        ("${{ tasks.b.outputs }}", "column 21: expected tasks.<name>.result"),
        ("${{ tasks[b].result }}", "column 11: expected tasks.<name>.result"),
        ("${{ tasks['b'.result }}", "column 14: unexpected '.'; expected ']'"),
        ("${{ env.'A' }}", "column 9: expected env.<NAME>"),
        ("${{ run.ID }}", "column 9: run has no field 'ID' (did you mean 'id'?)"),
        ("${{ run['id'] }}", "column 8: expected run.id or run.group"),
        ("${{ tasks.b['result'] }}", "column 12: expected tasks.<name>.result"),
        ("${{ item.name }}", "column 9: item has no fields"),
        ("${{ tasks.b.result.x }}", "column 19: tasks.b.result has no fields"),
        ("${{ env.A['b'] }}", "column 10: env.A has no fields"),
        ("${{ 'a' }} ${{ ) }}", "column 16: unexpected ')'; expected a value"),
        ("run: |\n  make\n  echo ${{ env.X == }}", "line 3, column 21: unexpected end"),
    ],
)
def test_syntax_errors_say_what_and_where(text: str, message: str) -> None:
    """Columns are 1-based characters of the whole string; a text of several lines gets
    a line as well. The first mistake is reported."""
    assert syntax_error(text).startswith(message)


def test_an_error_carries_its_offset_and_reason() -> None:
    with pytest.raises(ExpressionSyntaxError) as refused:
        parse("ab\ncd ${{ x }}")
    assert refused.value.offset == 10
    assert refused.value.location == "line 2, column 8"
    assert refused.value.reason.startswith("unknown name 'x'")


def test_an_expression_longer_than_the_limit_is_refused() -> None:
    """The limit counts from `${{` to `}}`; text around expressions is not limited."""
    longest = "${{ '" + "x" * (MAX_EXPRESSION_LENGTH - 9) + "' }}"
    assert len(longest) == MAX_EXPRESSION_LENGTH
    assert parse("x" * 10_000 + longest).single is None
    too_long = "${{ '" + "x" * (MAX_EXPRESSION_LENGTH - 8) + "' }}"
    assert syntax_error("abc " + too_long) == (
        f"column 5: an expression may be at most {MAX_EXPRESSION_LENGTH} characters long"
    )


@pytest.mark.parametrize(("opening", "closing"), [("(", ")"), ("!", ""), ("toJSON(", ")")])
def test_nesting_deeper_than_the_limit_is_refused(opening: str, closing: str) -> None:
    """Parentheses, `!` and calls count alike; the top of the expression is a level."""
    deepest = MAX_DEPTH - 1
    parse("${{ " + opening * deepest + "item" + closing * deepest + " }}")
    deeper = MAX_DEPTH
    assert "nested too deeply" in syntax_error(
        "${{ " + opening * deeper + "item" + closing * deeper + " }}"
    )


def test_a_long_chain_of_operators_is_not_nesting() -> None:
    """`&&`, `||` chains and comparisons inside them cost no depth."""
    chain = " || ".join(["item == 'x' && env.A"] * 40)
    node = expression("${{ " + chain + " }}")
    assert isinstance(node, Or)
    assert len(node.operands) == 40


# -- grammar: properties

_PIECES = st.sampled_from(
    [
        "${{",
        "}}",
        "'",
        "''",
        "(",
        ")",
        "[",
        "]",
        ".",
        ",",
        "!",
        "==",
        "!=",
        "&&",
        "||",
        "=",
        "&",
        "|",
        "-",
        "0",
        "1.5",
        "1e9",
        "1e999",
        "tasks",
        "env",
        "item",
        "run",
        "exit_code",
        "result",
        "outputs",
        "id",
        "group",
        "true",
        "null",
        "fromJSON",
        "x",
        " ",
        "\n",
        "é",
    ]
)


def outcome(text: str) -> Template | ExpressionSyntaxError:
    try:
        return parse(text)
    except ExpressionSyntaxError as refused:
        return refused


@SETTINGS
@given(st.one_of(st.text(), st.lists(_PIECES, max_size=40).map("".join)))
def test_parse_raises_nothing_but_its_own_error(text: str) -> None:
    """Any string at all parses or is refused with an `ExpressionSyntaxError` whose
    offset lies inside the string; what parses keeps every character."""
    parsed = outcome(text)
    if isinstance(parsed, ExpressionSyntaxError):
        assert 0 <= parsed.offset <= len(text)
    else:
        assert "".join(p if isinstance(p, str) else p.source for p in parsed.parts) == text


@SETTINGS
@given(st.integers(min_value=0, max_value=200), st.sampled_from(["(", "!", "toJSON("]))
def test_deep_nesting_never_recurses_past_the_limit(depth: int, opening: str) -> None:
    """Nesting of any depth ends in a template or in the limit's error, never in a
    RecursionError."""
    closing = ")" if opening.endswith("(") else ""
    parsed = outcome("${{ " + opening * depth + "item" + closing * depth + " }}")
    assert isinstance(parsed, Template) == (depth < MAX_DEPTH)


# -- evaluation

CONTEXT = Context(
    run_id="0193a0c2-run",
    run_group="/acme/shop",
    env={"BRANCH": "main", "EMPTY": "", "N": "3", "FALSE": "false", "LIST": '["a", "b"]'},
    results={"build": "success", "lint": "failed"},
    outputs={"build": {"version": "1.2.3", "meta": '{"b": [1, 2.5], "a": null}', "empty": ""}},
    item="linux",
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # references
        ("${{ env.BRANCH }}", "main"),
        ("${{ env['BRANCH'] }}", "main"),
        ("${{ env.UNSET }}", None),
        ("${{ tasks.build.result }}", "success"),
        ("${{ tasks.build.outputs.version }}", "1.2.3"),
        ("${{ item }}", "linux"),
        ("${{ run.id }}", "0193a0c2-run"),
        ("${{ run.group }}", "/acme/shop"),
        # a lone expression keeps its type; text around it makes a string
        ("${{ true }}", True),
        ("${{ 2 }}", 2),
        ("${{ null }}", None),
        ("${{ fromJSON(env.LIST) }}", ["a", "b"]),
        ("v${{ tasks.build.outputs.version }}", "v1.2.3"),
        ("${{ env.BRANCH }}-${{ item }}", "main-linux"),
        ("[${{ null }}|${{ env.UNSET }}|${{ true }}|${{ 2.5 }}|${{ 1e16 }}]", "[||true|2.5|1e16]"),
        ("${{ fromJSON(env.LIST) }} ", '["a","b"] '),
        ("plain text", "plain text"),
        ("", ""),
        # equality: no conversion
        ("${{ env.BRANCH == 'main' }}", True),
        ("${{ env.BRANCH == 'Main' }}", False),
        ("${{ env.BRANCH != 'main' }}", False),
        ("${{ env.N == 3 }}", False),
        ("${{ env.N == '3' }}", True),
        ("${{ fromJSON(env.N) == 3 }}", True),
        ("${{ fromJSON(env.N) == 3.0 }}", True),
        ("${{ env.FALSE == false }}", False),
        ("${{ fromJSON(env.FALSE) == false }}", True),
        ("${{ 1 == true }}", False),
        ("${{ 0 == false }}", False),
        ("${{ null == false }}", False),
        ("${{ env.UNSET == null }}", True),
        ("${{ env.UNSET != 'main' }}", True),
        ("${{ env.EMPTY == '' }}", True),
        ('${{ fromJSON(env.LIST) == fromJSON(\'["a","b"]\') }}', True),
        ("${{ fromJSON('{\"a\": 1}') == fromJSON('{\"a\": 1.0}') }}", True),
        ("${{ fromJSON('[1]') == fromJSON('[true]') }}", False),
        ("${{ fromJSON('{\"a\": 1}') == fromJSON('{\"b\": 1}') }}", False),
        # ! gives a boolean; && and || give an operand
        ("${{ !env.EMPTY }}", True),
        ("${{ !env.FALSE }}", False),
        ("${{ !!item }}", True),
        ("${{ env.UNSET || 'staging' }}", "staging"),
        ("${{ env.BRANCH || 'staging' }}", "main"),
        ("${{ env.EMPTY || null || 0 }}", 0),
        ("${{ item && env.BRANCH }}", "main"),
        ("${{ env.EMPTY && item }}", ""),
        ("${{ env.BRANCH == 'main' && tasks.build.result == 'success' }}", True),
        ("${{ tasks.lint.result == 'success' || tasks.build.result == 'success' }}", True),
        ("${{ !(env.BRANCH == 'main') }}", False),
        # functions
        ("${{ toJSON(fromJSON(tasks.build.outputs.meta)) }}", '{"a":null,"b":[1,2.5]}'),
        ("${{ toJSON(env.BRANCH) }}", '"main"'),
        ("${{ toJSON(env.UNSET) }}", "null"),
        ("${{ toJSON('it''s \u00e9') }}", '"it\'s \u00e9"'),
        ("${{ fromJSON(' \"x\" ') }}", "x"),
    ],
)
def test_evaluation(text: str, value: Value) -> None:
    """Each row is one rule of the package docstring."""
    result = evaluate(parse(text), CONTEXT)
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize(
    ("value", "truth"),
    [
        (False, False),
        (None, False),
        ("", False),
        (0, False),
        (0.0, False),
        (True, True),
        ("false", True),
        ("0", True),
        (" ", True),
        (-1, True),
        ([], True),
        ({}, True),
    ],
)
def test_truth(value: Value, truth: bool) -> None:
    assert is_truthy(value) is truth


def test_render_and_holds_are_for_strings_and_conditions() -> None:
    """`render` writes any value as text (`run`, `env`), `holds` asks whether it is true
    (`when`)."""
    assert render(parse("${{ fromJSON(env.LIST) }}"), CONTEXT) == '["a","b"]'
    assert render(parse("${{ env.UNSET }}"), CONTEXT) == ""
    assert render(parse("${{ 1 == 1 }}"), CONTEXT) == "true"
    assert holds(parse("${{ env.BRANCH == 'main' }}"), CONTEXT)
    assert not holds(parse("${{ env.EMPTY }}"), CONTEXT)
    assert holds(parse("${{ env.FALSE }}"), CONTEXT)


@pytest.mark.parametrize(
    ("text", "reference", "message"),
    [
        (
            "${{ tasks.build.outputs.nope }}",
            TaskOutput("build", "nope"),
            "tasks.build.outputs.nope was never set: task 'build' set no such output",
        ),
        (
            "x ${{ tasks.deploy.outputs['url.v2'] }}",
            TaskOutput("deploy", "url.v2"),
            "tasks.deploy.outputs['url.v2'] was never set: task 'deploy' set no such output",
        ),
        (
            "${{ tasks.test.result == 'success' }}",
            TaskResult("test"),
            "tasks.test.result is not known: task 'test' has not ended",
        ),
    ],
)
def test_an_unresolved_reference_is_named(text: str, reference: Reference, message: str) -> None:
    with pytest.raises(Unresolved) as unresolved:
        evaluate(parse(text), CONTEXT)
    assert unresolved.value.reference == reference
    assert str(unresolved.value) == message


def test_item_outside_a_foreach_child_is_unresolved() -> None:
    """An item may be any value, null and false included; only its absence is unresolved."""
    outside = Context()
    with pytest.raises(Unresolved, match="item is only defined in a child of a foreach task"):
        evaluate(parse("${{ item }}"), outside)
    for item in (None, False, 0, ""):
        assert evaluate(parse("${{ item }}"), Context(item=item)) == item


def test_operands_that_do_not_decide_are_not_evaluated() -> None:
    """`&&` and `||` stop early, so an unresolved reference after the deciding operand
    raises nothing."""
    assert evaluate(parse("${{ true || tasks.x.outputs.y }}"), CONTEXT) is True
    assert evaluate(parse("${{ false && tasks.x.outputs.y }}"), CONTEXT) is False
    with pytest.raises(Unresolved):
        evaluate(parse("${{ false || tasks.x.outputs.y }}"), CONTEXT)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${{ fromJSON('nope') }}", "column 5: fromJSON: not JSON"),
        ("${{ fromJSON(1) }}", "column 5: fromJSON: takes a string, got a number"),
        ("${{ fromJSON(env.UNSET) }}", "column 5: fromJSON: takes a string, got null"),
        ("${{ fromJSON('1e999') }}", "column 5: fromJSON: not JSON"),
        ("ab ${{ toJSON() }}", "column 8: toJSON takes 1 argument, got 0"),
        ("${{ toJSON(1, 2) }}", "column 5: toJSON takes 1 argument, got 2"),
        ("${{ fromJson(env.LIST) }}", "column 5: unknown function 'fromJson'"),
    ],
)
def test_functions_that_fail_say_which_and_where(text: str, message: str) -> None:
    """The message names the function and where its call starts."""
    with pytest.raises(EvaluationError) as failed:
        evaluate(parse(text), CONTEXT)
    assert str(failed.value).startswith(message)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_from_json_refuses_json_nested_too_deep(depth: int) -> None:
    """Equality and `toJSON` recurse into values, so `fromJSON` bounds their depth like
    the parser bounds an expression's; msgspec's own limit is not reached first."""
    context = Context(env={"J": "[" * depth + "]" * depth})
    with pytest.raises(EvaluationError, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        evaluate(parse("${{ fromJSON(env.J) }}"), context)
    deepest = Context(env={"J": "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH})
    assert render(parse("${{ fromJSON(env.J) }}"), deepest) == deepest.env["J"]


# -- evaluation: properties

_LEAVES = st.sampled_from(
    [
        "item",
        "env.A",
        "env.J",
        "env.UNSET",
        "tasks.a.result",
        "tasks.a.outputs.x",
        "tasks.a.outputs.missing",
        "run.id",
        "run.group",
        "exit_code",
        "outputs.x",
        "outputs.missing",
        "'a'",
        "''",
        "0",
        "1.5",
        "-2",
        "true",
        "false",
        "null",
        "fromJSON(env.J)",
        "toJSON(item)",
    ]
)
_EXPRESSIONS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        inner.map(lambda e: f"!{e}"),
        inner.map(lambda e: f"toJSON({e})"),
        inner.map(lambda e: f"fromJSON({e})"),
        st.tuples(inner, st.sampled_from(["==", "!=", "&&", "||"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
    ),
    max_leaves=12,
)
_TEMPLATES = st.lists(
    st.one_of(
        st.text(alphabet="ab -\n", max_size=4), _EXPRESSIONS.map(lambda e: f"${{{{ {e} }}}}")
    ),
    min_size=1,
    max_size=4,
).map("".join)
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
_CONTEXTS = st.builds(
    Context,
    run_id=st.text(max_size=8),
    run_group=st.just("/g"),
    env=st.dictionaries(
        st.sampled_from(["A", "J"]),
        st.one_of(st.text(max_size=6), _JSON.map(msgspec.json.encode).map(bytes.decode)),
    ),
    results=st.dictionaries(st.just("a"), st.sampled_from(["success", "failed", "skipped"])),
    outputs=st.dictionaries(st.just("a"), st.dictionaries(st.just("x"), st.text(max_size=6))),
    item=st.one_of(st.just(msgspec.UNSET), _JSON),
    attempt=st.one_of(
        st.none(),
        st.builds(
            Attempt,
            exit_code=st.one_of(st.none(), st.integers(-1, 255)),
            outputs=st.dictionaries(st.just("x"), st.text(max_size=6)),
        ),
    ),
)


def outcome_of(text: str, context: Context) -> tuple[str, str]:
    """What evaluating `text` gives, as comparable text: the value's type and JSON, or
    the error's type and message."""
    try:
        value = evaluate(parse(text), context)
    except ExpressionError as refused:
        return type(refused).__name__, str(refused)
    return type(value).__name__, msgspec.json.encode(value).decode()


@SETTINGS
@given(_TEMPLATES, _CONTEXTS)
def test_evaluation_is_deterministic(text: str, context: Context) -> None:
    """The same template in the same context gives the same value or the same error,
    also when the context's maps were built in another order, and raises nothing but
    the package's errors."""
    reordered = msgspec.structs.replace(
        context,
        env=dict(reversed(context.env.items())),
        outputs={k: dict(reversed(v.items())) for k, v in reversed(context.outputs.items())},
    )
    first = outcome_of(text, context)
    assert outcome_of(text, context) == first
    assert outcome_of(text, reordered) == first


@SETTINGS
@given(_JSON)
def test_to_json_of_from_json_round_trips_canonical_json(value: Any) -> None:
    """For canonical JSON (what `toJSON` writes), `toJSON(fromJSON(s))` is `s`, and
    `fromJSON` gives back a value equal to the one written."""
    canonical = msgspec.json.encode(value, order="sorted").decode()
    context = Context(env={"J": canonical})
    assert evaluate(parse("${{ toJSON(fromJSON(env.J)) }}"), context) == canonical
    assert evaluate(parse("${{ toJSON(fromJSON(toJSON(fromJSON(env.J)))) }}"), context) == canonical
    same = parse("${{ fromJSON(env.J) == fromJSON(toJSON(fromJSON(env.J))) }}")
    assert evaluate(same, context) is True


# -- static checks

TASKS = {"checkout", "build", "test", "deploy", "v1.2"}


def problems(text: str, *ancestors: str, in_foreach: bool = False) -> list[str]:
    return check(parse(text), ancestors=set(ancestors), known_tasks=TASKS, in_foreach=in_foreach)


def test_references_are_listed_once_in_order() -> None:
    """What validation needs to know which tasks, outputs and variables a template reads."""
    template = parse(
        "${{ tasks.build.outputs.v }} ${{ env.A || tasks['v1.2'].result }} "
        "${{ toJSON(item) == tasks.build.outputs.v && run.id }}"
    )
    assert references(template) == [
        TaskOutput("build", "v"),
        EnvVar("A"),
        TaskResult("v1.2"),
        Item(),
        RunField("id"),
    ]
    assert referenced_tasks(template) == {"build", "v1.2"}
    assert references(parse("no expressions")) == []


def test_a_template_that_reads_its_dependencies_has_no_problems() -> None:
    """Indirect dependencies count: `checkout` is an ancestor through `build`."""
    text = (
        "${{ tasks.build.outputs.version }} ${{ tasks.checkout.result == 'success' }} "
        "${{ toJSON(fromJSON(env.X)) }} ${{ item }} ${{ run.group }}"
    )
    assert problems(text, "build", "checkout", in_foreach=True) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("${{ tasks.biuld.result }}", "column 5: unknown task 'biuld' (did you mean 'build'?)"),
        ("${{ tasks.nothing.outputs.x }}", "column 5: unknown task 'nothing'"),
        (
            "${{ tasks.deploy.outputs.url }}",
            "column 5: task 'deploy' is not a dependency of this task, direct or indirect",
        ),
        ("echo ${{ item }}", "column 10: item is only defined in a task with foreach"),
        (
            "${{ fromJson(env.X) }}",
            "column 5: unknown function 'fromJson' (did you mean 'fromJSON'?); "
            "the functions are fromJSON and toJSON",
        ),
        (
            "${{ len(env.X) }}",
            "column 5: unknown function 'len'; the functions are fromJSON and toJSON",
        ),
        ("${{ toJSON() }}", "column 5: toJSON takes 1 argument, got 0"),
        ("${{ fromJSON(env.X, 1) }}", "column 5: fromJSON takes 1 argument, got 2"),
        (
            "make\n  ${{ env.A && tasks.tset.result }}",
            "line 2, column 16: unknown task 'tset' (did you mean 'test'?)",
        ),
    ],
)
def test_each_problem_says_what_and_where(text: str, problem: str) -> None:
    assert problems(text, "build", "checkout") == [problem]


def test_every_problem_is_reported_once() -> None:
    """All problems of a template at once, in order; the same problem found again later
    is not repeated, so a script that reads ten outputs of a wrong task says so once."""
    text = (
        "${{ tasks.deploy.outputs.a }} ${{ item }} ${{ tasks.deploy.outputs.b }} "
        "${{ nope(item) }} ${{ tasks.x.result }}"
    )
    assert problems(text, "build") == [
        "column 5: task 'deploy' is not a dependency of this task, direct or indirect",
        "column 35: item is only defined in a task with foreach",
        "column 77: unknown function 'nope'; the functions are fromJSON and toJSON",
        "column 95: unknown task 'x'",
    ]


def test_a_task_that_is_no_ancestor_cannot_be_read_even_if_it_is_this_one() -> None:
    """A task's own result does not exist while it runs; `ancestors` never holds it."""
    assert problems("${{ tasks.test.result }}", "build") == [
        "column 5: task 'test' is not a dependency of this task, direct or indirect"
    ]


_MISCALLED = st.tuples(_TEMPLATES, st.sampled_from(["toJSON(", "tojson(", "toJSON(1, "])).map(
    lambda t: t[0].replace("toJSON(", t[1])
)


@SETTINGS
@given(_MISCALLED)
def test_check_and_evaluation_agree_on_the_functions(text: str) -> None:
    """`check` finds a miscalled function exactly when there is one, and what it passes
    never meets an unknown function or a wrong argument count when evaluated."""
    parsed = outcome(text)
    if isinstance(parsed, ExpressionSyntaxError):
        return
    found = check(parsed, ancestors={"a"}, known_tasks={"a"}, in_foreach=True, judges_attempt=True)
    miscalled = any(s in text for s in ("tojson(", "toJSON(1, "))
    assert bool(found) == miscalled
    if not found:
        result = outcome_of(text, Context(item=1))
        assert "unknown function" not in result[1]
        assert "argument" not in result[1]
