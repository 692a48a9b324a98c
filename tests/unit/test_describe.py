"""What `runs show` and `watch` say about a task, from the view alone: where a chain of
skips began, an approval, a long item."""

from __future__ import annotations

from runsvc.cli.describe import ITEM_WIDTH, first_cause, item_of, note
from runsvc.cli.runs import show_run
from runsvc.domain.view import run_view
from tests.unit.histories import History, config, task


def test_a_chain_of_skips_names_the_failure_that_started_it() -> None:
    """A skip names its parent already; one further down also names the failure at the
    top, through any number of skipped tasks, whichever dependency refused."""
    history = History(
        config(
            task("ok"),
            task("flaky"),
            task("after", "flaky"),
            task("last", "ok", "after"),
            task("cleanup", {"task": "flaky", "on": ["failure"]}),
        )
    )
    history.run_task("ok")
    history.run_task("flaky", ok=False)
    view = run_view(history.state)
    assert note(view, view.tasks["after"]) == "flaky ended failed; needs success"
    assert note(view, view.tasks["last"]) == (
        "after ended skipped; needs success (because flaky failed)"
    )
    first = first_cause(view, view.tasks["last"])
    assert first is not None
    assert first.name == "flaky"
    assert note(view, view.tasks["cleanup"]) == "waiting for an executor"


def test_a_skip_begun_by_a_condition_says_so() -> None:
    """A task skipped by its `when` is the start of its chain: below it, the note names
    it with its reason; the task itself says only its reason."""
    history = History(
        config(
            task("deploy", when={"env": "BRANCH", "equals": "main"}),
            task("announce", "deploy"),
            task("celebrate", "announce"),
        ),
        environment={"BRANCH": "dev"},
    )
    view = run_view(history.state)
    assert note(view, view.tasks["deploy"]) == "when BRANCH == 'main' does not hold"
    assert first_cause(view, view.tasks["deploy"]) is None
    assert note(view, view.tasks["celebrate"]) == (
        "announce ended skipped; needs success "
        "(because deploy skipped: when BRANCH == 'main' does not hold)"
    )


def test_an_approval_is_the_note_once_nothing_else_is() -> None:
    history = History(config(task("deploy", approval=True)))
    history.at(90).approve("deploy", approver="carol", comment="release 1.4")
    history.run_task("deploy")
    view = run_view(history.state)
    expected = 'approved by carol at 2026-01-01 00:01:30: "release 1.4"'
    assert note(view, view.tasks["deploy"]) == expected
    assert note(view, view.tasks["deploy"], approvals=False) == ""


def test_a_long_item_is_cut_to_fit_a_line() -> None:
    history = History(config(task("each", foreach=["short", "x" * 100])))
    view = run_view(history.state)
    assert item_of(view.tasks["each[0]"]) == "short"
    assert item_of(view.tasks["each[1]"]) == "x" * (ITEM_WIDTH - 1) + "…"
    assert item_of(view.tasks["each"]) == ""


def test_runs_show_lists_each_tasks_outputs_one_line_each() -> None:
    """Below the table, every output of every task, on one line each: a long value cut,
    a multi-line one as its first line and a count of the rest; none, no section."""
    history = History(config(task("version"), task("deploy", "version")))
    assert "outputs:" not in show_run(run_view(history.state))
    history.start("version")
    history.finish("version", outputs={"v": "1.2.3", "notes": "line one\nline two\nline three"})
    history.start("deploy")
    history.finish("deploy", outputs={"url": "https://example.com/" + "x" * 100})
    text = show_run(run_view(history.state))
    section = text.split("\noutputs:\n", 1)[1].splitlines()
    assert section[:2] == ["  version.v = 1.2.3", "  version.notes = line one (+2 more lines)"]
    assert section[2].startswith("  deploy.url = https://example.com/xxx")
    assert section[2].endswith("…")
    assert len(section[2]) == len("  deploy.url = ") + 80
