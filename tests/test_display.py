"""The live view: plain and rich output, throttling, bounded memory, the log, HTML marks."""

from __future__ import annotations

import io
import os
import time
import tracemalloc

import pytest

from atp_notebook import display as display_module
from atp_notebook.diagnostics import Diagnostic, OutputLine, parse_json_line
from atp_notebook.display import LiveView, RunLog, render_diagnostics_html, render_source_html
from tests.conftest import cell, magics_of

FLOOD = 100_000
JSON_INFO = (
    '{"caption":"","data":"DATA","endPos":{"column":5,"line":1},"fileName":"F.lean","isSilent":false,'
    '"keepFullRange":false,"kind":"[anonymous]","pos":{"column":0,"line":1},"severity":"information"}'
)


def diag(line, column, end_line=None, end_column=None, severity="error", message="boom", name=None):
    return Diagnostic("F.lean", line, column, end_line, end_column, severity, message, name)


class FakeHandle:
    """Stands in for IPython's DisplayHandle: records every bundle sent."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, str]] = []

    def update(self, obj) -> None:
        self.bundles.append(obj._repr_mimebundle_())


@pytest.fixture
def shown(monkeypatch) -> FakeHandle:
    handle = FakeHandle()

    def fake_display(obj, display_id=None):
        assert display_id is True
        handle.bundles.append(obj._repr_mimebundle_())
        return handle

    monkeypatch.setattr("IPython.display.display", fake_display)
    return handle


# -- plain mode -----------------------------------------------------------------------------------


def test_plain_mode_writes_each_line_as_it_is_fed():
    out, err = io.StringIO(), io.StringIO()
    view = LiveView(title="F.lean", mode="plain", out=out, err=err).start()
    assert out.getvalue() == ""
    view.feed(diag(3, 8, message="unknown identifier `x`", name="lean.unknownIdentifier"))
    assert out.getvalue() == "F.lean:3:8: error(lean.unknownIdentifier): unknown identifier `x`\n"
    view.feed(OutputLine("✔ [2/3] Built Foo"))
    assert out.getvalue().endswith("✔ [2/3] Built Foo\n")
    view.finish(status="failed", summary="1 error", duration_s=0.5, stderr="lake: oops")
    assert out.getvalue().splitlines()[-1] == "✗ F.lean: 1 error · 0.50 s"
    assert err.getvalue() == "lake: oops\n"


# -- rich mode ------------------------------------------------------------------------------------


def test_rich_mode_bundles_always_carry_text_plain_and_html(shown):
    view = LiveView(title="F.lean", backend="local", command="lake env lean --json F.lean", interval=0).start()
    view.feed(OutputLine("<b>not bold</b> & more"))
    view.tick()
    view.finish(status="ok", summary="no messages", duration_s=0.1)
    assert len(shown.bundles) == 3 == view.updates
    for bundle in shown.bundles:
        assert set(bundle) == {"text/plain", "text/html"}
    running = shown.bundles[1]
    assert "lake env lean --json F.lean" in running["text/plain"] and "local" in running["text/plain"]
    assert "&lt;b&gt;not bold&lt;/b&gt; &amp; more" in running["text/html"]
    assert "<b>not bold" not in running["text/html"]
    assert shown.bundles[-1]["text/plain"].startswith("✓ F.lean: no messages")


def test_updates_are_throttled_and_a_quiet_run_still_ticks(shown):
    view = LiveView(title="F.lean", interval=0.2).start()
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        view.feed(OutputLine("x"))
        view.tick()
    assert 4 <= view.updates <= 8  # ~5 per second at 0.2 s, plus the first display
    quiet = view.updates
    wait = view.tick()
    assert 0 < wait <= 1.0  # nothing new: the next refresh (elapsed time) is up to a second away
    time.sleep(wait + 0.01)
    view.tick()
    assert view.updates == quiet + 1


def test_the_interval_stretches_for_long_runs(shown):
    view = LiveView(title="F.lean", interval=0.1).start()
    view.started -= 300  # pretend it has run for five minutes
    view.feed(OutputLine("x"))
    view._last_update = time.monotonic()
    assert view.tick() == pytest.approx(3.0, abs=0.1)
    view.started -= 3000
    assert view.tick() <= display_module.MAX_INTERVAL_S


def test_a_flood_keeps_the_view_bounded_in_updates_and_memory(shown, tmp_path):
    log = RunLog(tmp_path, "F.lean")
    view = LiveView(title="F.lean", log=log, tail=200, parse=parse_json_line).start()
    tracemalloc.start()
    try:
        for i in range(FLOOD):
            view.feed(JSON_INFO.replace("DATA", str(i)) if i % 2 else f"plain {i}")
            if i % 500 == 0:
                view.tick()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    view.finish(status="ok", summary="lots", duration_s=1.0)
    assert peak < 4 * 2**20, f"view peak {peak / 2**20:.1f} MiB"
    assert len(view.lines) == 200 and view.total_lines == FLOOD
    assert view.updates <= 200
    text = shown.bundles[-1]["text/plain"]
    assert f"… {FLOOD - 200} earlier lines" in text and "full log: " in text
    assert text.splitlines()[-2] == "F.lean:1:0: info: 99999"  # the tail is shown as Lean's text
    logged = log.path.read_text(encoding="utf-8").splitlines()
    assert logged[0] == "plain 0" and logged[FLOOD - 1] == JSON_INFO.replace("DATA", "99999")  # as printed
    assert logged[-1].startswith("--- ok: lots")


def test_a_100k_line_check_through_a_cell_stays_bounded(ip, rich, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STANDIN_FLOOD", str(FLOOD))
    start = time.monotonic()
    assert ip.run_cell(cell("ok_add", "--out res")).success
    elapsed = time.monotonic() - start
    res = ip.user_ns["res"]
    assert res.ok and len(res.diagnostics) == FLOOD
    assert len(rich.outputs) <= 200, f"{len(rich.outputs)} display messages"
    assert all("text/plain" in o["data"] for o in rich.outputs)
    view = magics_of(ip).last_view
    assert len(view.lines) <= 200 and view.total_lines == FLOOD
    with open(res.log_path, encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    assert lines >= FLOOD
    assert elapsed < 60


# -- the log ----------------------------------------------------------------------------------------


def test_log_link_is_relative_to_the_cwd_when_it_can_be(tmp_path, monkeypatch, shown):
    monkeypatch.chdir(tmp_path)
    log = RunLog(tmp_path / "work", "Algebra/Basic.lean", header="$ lake env lean --json Algebra/Basic.lean")
    assert log.path.parent == tmp_path / "work" / ".atp" / "logs"
    assert log.path.name.endswith("-Algebra_Basic.lean.log")
    view = LiveView(title="Algebra/Basic.lean", log=log).start()
    view.finish(status="ok", summary="no messages")
    html = shown.bundles[-1]["text/html"]
    rel = os.path.relpath(log.path, tmp_path)
    assert f'<a href="{rel}"' in html
    assert log.path.read_text(encoding="utf-8").startswith("$ lake env lean --json Algebra/Basic.lean\n")
    monkeypatch.chdir(tmp_path / "work" / ".atp")
    view2 = LiveView(title="x", log=RunLog(tmp_path / "elsewhere", "x")).start()
    view2.finish(status="ok", summary="")
    assert "<a href" not in shown.bundles[-1]["text/html"]  # outside the cwd: shown, not linked


def test_old_logs_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(display_module, "KEEP_LOGS", 5)
    logs = []
    for i in range(8):
        logs.append(RunLog(tmp_path, f"run{i}"))
        logs[-1].close()
    assert sorted((tmp_path / ".atp" / "logs").glob("*.log")) == sorted(log.path for log in logs[-5:])


# -- diagnostics as HTML ------------------------------------------------------------------------------


def _marked(html: str) -> list[tuple[str, str]]:
    """(severity class, marked text) pairs of a rendered source."""
    out = []
    for part in html.split('<span class="atp-')[1:]:
        severity = part.split('"', 1)[0]
        text = part.split(">", 1)[1].split("</span>", 1)[0]
        out.append((severity, text))
    return out


def test_source_marks_land_on_the_cells_own_columns():
    source = "theorem t : 1 = 1 := by\n  exact foo\n"
    html = render_source_html(source, [diag(2, 8, 2, 11, message="Unknown identifier `foo`")])
    assert _marked(html) == [("error", "foo")]
    assert 'title="error: Unknown identifier `foo`"' in html


def test_source_and_messages_are_escaped():
    source = 'def x := "<script>alert(1)</script>" & 1\n'
    html = render_source_html(source, [diag(1, 9, 1, 37, message='bad "<img src=x>"')])
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&quot;&lt;img src=x&gt;&quot;" in html
    table = render_diagnostics_html([diag(1, 0, message="<b>&</b>", name="x<y>")])
    assert "<b>&" not in table and "&lt;b&gt;&amp;&lt;/b&gt;" in table and "x&lt;y&gt;" in table


def test_multi_line_open_ended_and_empty_spans():
    source = "abc\ndef\nghi\n"
    multi = _marked(render_source_html(source, [diag(1, 1, 3, 2)]))
    assert multi == [("error", "bc"), ("error", "def"), ("error", "gh")]
    open_ended = _marked(render_source_html(source, [diag(2, 1, severity="warning")]))
    assert open_ended == [("warning", "ef")]
    empty = _marked(render_source_html(source, [diag(1, 3, 1, 3)]))
    assert empty == [("error", " ")]  # a zero-width span at the end of a line still shows
    assert _marked(render_source_html(source, [diag(9, 0, 9, 1)])) == []  # out of range: ignored
    past_end = _marked(render_source_html(source, [diag(3, 1, 7, 0)]))
    assert past_end == [("error", "hi")]


def test_overlapping_spans_show_the_worst_and_list_all_messages():
    source = "abcdef\n"
    html = render_source_html(source, [diag(1, 0, 1, 4, severity="warning", message="w"), diag(1, 2, 1, 6, message="e")])
    assert _marked(html) == [("warning", "ab"), ("error", "cd"), ("error", "ef")]
    assert 'title="warning: w\nerror: e"' in html


def test_the_table_is_bounded():
    html = render_diagnostics_html([diag(i + 1, 0) for i in range(250)], limit=200)
    assert html.count("<tr>") == 201  # header + 200 rows
    assert "… and 50 more messages" in html


def test_finish_with_a_source_shows_table_source_and_output(shown):
    view = LiveView(title="F.lean", source="example : False := by\n  simp\n").start()
    d = diag(2, 2, 2, 6, message="simp made no progress")
    view.feed(d)
    view.finish(status="failed", summary="1 error", diagnostics=[d])
    html = shown.bundles[-1]["text/html"]
    assert html.index("atp-diagnostics") < html.index("atp-source") < html.index("<details>")
    assert _marked(html.split('class="atp-source"', 1)[1]) == [("error", "simp")]
    assert ">2:2<" in html


def test_a_view_needs_a_known_mode():
    with pytest.raises(ValueError, match="rich' or 'plain"):
        LiveView(title="x", mode="fancy")

