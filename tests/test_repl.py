"""Warm checks: the session's Lean REPL, header environments, chained cells, goals, restarts.

Real processes on the local backend; the REPL is the stand-in
``tests/standin/bin/repl`` replaying recorded transcripts
(``tests/standin/fixtures/repl``), the cold check the stand-in ``lean``
replaying the same files' recorded ``--json`` output. ``STANDIN_REPL_LOG``
makes the stand-in write down every request it receives, so what was sent
is counted at the REPL's end, not by the code under test.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from atp_notebook.backends import get_backend
from atp_notebook.check import run_check, write_cell
from atp_notebook.kernel import KernelSession
from atp_notebook.repl import ReplUnavailable, split_header
from tests.conftest import FIXTURES

COLD = sorted(p.stem for p in FIXTURES.glob("*.lean"))


def source(name: str) -> str:
    return (FIXTURES / f"{name}.lean").read_text(encoding="utf-8")


@pytest.fixture
def requests_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "requests.log"
    monkeypatch.setenv("STANDIN_REPL_LOG", str(log))
    for knob in ("STANDIN_REPL_SLOW", "STANDIN_REPL_CRASH", "STANDIN_SLEEP", "STANDIN_FLOOD", "STANDIN_LINE_DELAY"):
        monkeypatch.delenv(knob, raising=False)
    return log


def sent(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


@pytest.fixture
def notes() -> list[str]:
    return []


@pytest.fixture
def kernel(tmp_path, standin_env, requests_log, notes):
    k = KernelSession("local", workdir=tmp_path / "work", say=notes.append,
                      backend_factory=lambda name, **c: get_backend("local", kill_grace_s=0.5, **c))
    yield k
    k.close()


def check(kernel: KernelSession, name: str, file: str = "Scratch.lean", **kw):
    text = source(name)
    write_cell(kernel.workdir, file, text)
    return kernel.warm_checker().check(file, text, **kw)


def triple(d):
    return (d.severity, d.line, d.column, d.end_line, d.end_column, d.message.strip())


def test_a_second_check_with_the_same_header_sends_no_import(kernel, requests_log):
    first = check(kernel, "mathlib_first")
    second = check(kernel, "mathlib_first")
    other = check(kernel, "mathlib_error")  # another body, same imports
    cmds = [r["cmd"] for r in sent(requests_log)]
    assert cmds.count("import Mathlib") == 1
    assert len(cmds) == 4  # one header, three bodies
    assert (first.engine, first.warm, first.how) == ("repl", False, "repl")
    assert (second.warm, second.how, other.warm) == (True, "warm", True)
    assert first.ok and second.ok and not other.ok
    assert kernel.repl.starts == 1
    assert "warm" in second.headline() and "warm" in repr(second)


@pytest.mark.parametrize("name", COLD)
def test_warm_diagnostics_equal_the_cold_check_of_the_same_file(kernel, name):
    write_cell(kernel.workdir, "Scratch.lean", source(name))
    cold = run_check(kernel, "Scratch.lean")
    warm = check(kernel, name)
    assert cold.engine == "lean" and warm.engine == "repl"
    assert [triple(d) for d in warm.diagnostics] == [triple(d) for d in cold.diagnostics]
    assert {d.file for d in warm.diagnostics} <= {"Scratch.lean"}
    assert warm.ok == cold.ok and (warm.exit_code == 0) == (cold.exit_code == 0)
    assert warm.counts == cold.counts
    # the output reads as lake env lean --json would print it; only the error's name
    # (`kind`, as in error(lean.unknownIdentifier)) is lost: the REPL does not report it
    def lean_json(stdout):
        return [{**obj, "data": obj["data"].rstrip("\n"), "kind": None}
                for obj in map(json.loads, stdout.splitlines())]

    assert lean_json(warm.stdout) == lean_json(cold.stdout)


def test_positions_shift_by_the_header(kernel):
    text = source("mathlib_error")
    header = split_header(text)
    assert header.offset == 2
    result = check(kernel, "mathlib_error")
    (error,) = result.errors
    assert (error.line, error.column) == (4, 2)  # the body's line 2, the file's line 4


def test_goals_at_sorries_and_tactic_steps_are_at_file_lines(kernel):
    result = check(kernel, "sorry_warn")
    sorries = [g for g in result.goals if g.kind == "sorry"]
    assert [(g.line, g.column) for g in sorries] == [(2, 2)]
    assert "⊢ n < n + 1" in sorries[0].goal
    steps = check(kernel, "unsolved_goals").goals
    assert [g.tactic for g in steps if g.kind == "tactic"] == ["constructor", "exact hq"]
    assert all(g.line >= 2 for g in steps)
    # goals off: no allTactics asked; the sorries' goals come anyway
    assert [g.kind for g in check(kernel, "sorry_warn", goals=False).goals] == ["sorry"]
    assert "allTactics" not in sent_last(kernel)


def sent_last(kernel) -> dict:
    return kernel.repl.process.log[-1]


def test_chained_cells_see_earlier_definitions_and_reruns_do_not_stack(kernel, requests_log):
    c = kernel.warm_checker()
    a = "def double (n : Nat) : Nat := 2 * n\n"
    b = "theorem double_two : double 2 = 4 := rfl\n"
    a2 = "def double (n : Nat) : Nat := n + n\n"
    alone = c.check("B.lean", b)  # not chained: B on its own does not know `double`
    assert not alone.ok and "double" in alone.errors[0].message
    assert c.check("A.lean", a, cell="A", chain=True).ok
    assert c.check("B.lean", b, cell="B", chain=True).ok
    # re-running A starts again where A started: no "already declared"
    again = c.check("A.lean", a2, cell="A", chain=True)
    assert again.ok, again.headline()
    assert c.check("B.lean", b, cell="B", chain=True).ok
    envs = [r.get("env") for r in sent(requests_log) if r["cmd"] in (a, a2)]
    assert len(set(envs)) == 1  # both runs of A started from the same (header) env
    assert "2 chained cells" in c.describe() and "MiB" in c.describe()  # the memory probe answered


def test_a_chained_cell_replays_after_a_restart(kernel, requests_log):
    c = kernel.warm_checker()
    a = "def double (n : Nat) : Nat := 2 * n\n"
    b = "theorem double_two : double 2 = 4 := rfl\n"
    assert c.check("A.lean", a, cell="A", chain=True).ok
    c.reset()  # as a timeout or the memory bound would
    result = c.check("B.lean", b, cell="B", chain=True)
    assert result.ok and c.starts == 2
    cmds = [r["cmd"] for r in sent(requests_log)]
    assert cmds == ["", a, "", a, b]  # header, A; then after the restart: header, A replayed, B


def test_a_timeout_kills_the_repl_and_the_next_check_works(kernel, requests_log, monkeypatch):
    monkeypatch.setenv("STANDIN_REPL_SLOW", "two_mul_pos:30")
    started = time.monotonic()
    slow = check(kernel, "mathlib_first", timeout_s=1.5)
    assert slow.timed_out and slow.exit_code == 124 and not slow.ok
    assert time.monotonic() - started < 15
    assert "timed out" in slow.stderr and "REPL" in slow.stderr
    monkeypatch.delenv("STANDIN_REPL_SLOW")
    # the next check restarts the REPL (the env var of the old one no longer matters: new process)
    kernel.repl.command = "env -u STANDIN_REPL_SLOW lake env repl"
    nxt = check(kernel, "mathlib_error")
    assert nxt.exit_code == 1 and nxt.errors and kernel.repl.starts == 2
    assert [r["cmd"] for r in sent(requests_log)].count("import Mathlib") == 2  # header replayed


def test_a_crashed_repl_is_reported_with_its_stderr_and_restarted(kernel, monkeypatch):
    kernel.warm_checker(command="env STANDIN_REPL_CRASH=two_lt_two_mul lake env repl")
    crashed = check(kernel, "mathlib_error")
    assert not crashed.ok and crashed.exit_code != 0
    assert "INTERNAL PANIC" in crashed.stderr and "crashed" in crashed.stderr
    ok = check(kernel, "mathlib_first")
    assert ok.ok and kernel.repl.starts == 2


def test_the_memory_bound_restarts_the_repl_before_the_next_check(kernel, notes):
    checker = kernel.warm_checker(memory_mb=0.001)  # ~1 KiB: any process is over it
    assert check(kernel, "ok_add").ok
    assert check(kernel, "ok_add").ok
    assert checker.starts == 2
    assert any("over its bound" in n for n in notes)
    unbounded = kernel.warm_checker(memory_mb=0)
    check(kernel, "ok_add")
    assert unbounded.starts == 2


def test_no_repl_in_the_sandbox_raises_unavailable(kernel):
    checker = kernel.warm_checker(command="lake env no-such-repl")
    with pytest.raises(ReplUnavailable):
        check(kernel, "ok_add")
    assert checker.unavailable and "not started" not in checker.describe()


def test_an_interrupt_kills_the_repl_and_keeps_the_session(kernel, monkeypatch):
    import _thread

    kernel.warm_checker(command="env STANDIN_REPL_SLOW=two_mul_pos:30 lake env repl")
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    try:
        result = check(kernel, "mathlib_first")
    finally:
        timer.cancel()
    assert result.interrupted and result.exit_code == 130
    assert kernel.is_open
    kernel.warm_checker(command="lake env repl")
    assert check(kernel, "ok_add").ok


def test_closing_the_kernel_stops_the_repl(kernel):
    check(kernel, "ok_add")
    proc = kernel.repl.process
    kernel.close()
    deadline = time.monotonic() + 10
    while proc.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proc.alive
    assert kernel.describe()["lean repl"].startswith("stopped")


# -- in cells ----------------------------------------------------------------------------------

from IPython.core.error import UsageError  # noqa: E402

from atp_notebook.check import LeanSandboxError  # noqa: E402
from tests.conftest import cell, magics_of  # noqa: E402


@pytest.fixture
def warm_ip(ip, requests_log):
    """The test shell with the default engine: checks go through the REPL where there is one."""
    ip.run_line_magic("config", "LeanSandbox.engine = 'auto'")
    return ip


def test_cells_run_warm_and_say_so(warm_ip, capsys, requests_log):
    assert warm_ip.run_cell(cell("mathlib_first", "--out r")).success
    first = warm_ip.user_ns["r"]
    assert warm_ip.run_cell(cell("mathlib_error", "--no-raise --out r")).success
    second = warm_ip.user_ns["r"]
    assert (first.how, second.how) == ("repl", "warm")
    out = capsys.readouterr().out
    assert "imports loaded" in out and "warm" in out
    assert "Scratch.lean:4:2: error: linarith failed" in out  # at the cell's own line
    assert [r["cmd"] for r in sent(requests_log)].count("import Mathlib") == 1


def test_goals_are_shown_under_the_cell_plain_and_rich(warm_ip, capsys, rich):
    assert warm_ip.run_cell(cell("sorry_warn", "--out r")).success
    view = magics_of(warm_ip).last_view
    text = view.text()
    assert "goals (" in text and "2:2 sorry" in text and "⊢ n < n + 1" in text
    html = view.html()
    assert '<details class="atp-goals">' in html and "⊢ n &lt; n + 1" in html
    assert warm_ip.user_ns["r"].goals


def test_goals_off(warm_ip, capsys):
    warm_ip.run_line_magic("config", "LeanSandbox.goals = False")
    assert warm_ip.run_cell(cell("unsolved_goals", "--no-raise --out r")).success
    assert all(g.kind == "sorry" for g in warm_ip.user_ns["r"].goals)


def chained(line: str, body: str) -> str:
    return f"%%lean_sandbox {line}\n{body}"


def test_chained_cells_in_a_notebook(warm_ip, capsys):
    a = "def double (n : Nat) : Nat := 2 * n\n"
    b = "theorem double_two : double 2 = 4 := rfl\n"
    assert warm_ip.run_cell(chained("A.lean --chain --out r", a)).success
    assert warm_ip.user_ns["r"].ok
    assert warm_ip.run_cell(chained("B.lean --chain --out r", b)).success
    assert warm_ip.user_ns["r"].ok
    assert warm_ip.run_cell(chained("A.lean --chain --out r", a)).success  # re-run: no duplicate
    assert warm_ip.user_ns["r"].ok
    # without --chain, B stands alone and fails
    assert not warm_ip.run_cell(chained("B.lean --no-raise --out r", b)).error_in_exec
    assert not warm_ip.user_ns["r"].ok
    # LeanSandbox.mode = 'chain' is the same as --chain on every cell
    warm_ip.run_line_magic("config", "LeanSandbox.mode = 'chain'")
    assert warm_ip.run_cell(chained("A.lean --out r", a)).success and warm_ip.user_ns["r"].ok
    assert warm_ip.run_cell(chained("B.lean --out r", b)).success and warm_ip.user_ns["r"].ok


def test_chain_needs_the_repl(warm_ip):
    result = warm_ip.run_cell(chained("--chain --cold", "def x := 1\n"))
    assert isinstance(result.error_in_exec, UsageError) and "--chain needs the Lean REPL" in str(result.error_in_exec)
    warm_ip.run_line_magic("config", "LeanSandbox.repl_command = 'lake env no-such-repl'")
    result = warm_ip.run_cell(chained("--chain", "def x := 1\n"))
    assert isinstance(result.error_in_exec, LeanSandboxError) and "No Lean REPL" in str(result.error_in_exec)


def test_without_a_repl_cells_fall_back_to_cold_and_say_so_once(warm_ip, capsys):
    warm_ip.run_line_magic("config", "LeanSandbox.repl_command = 'lake env no-such-repl'")
    assert warm_ip.run_cell(cell("ok_add", "--out r")).success
    assert warm_ip.user_ns["r"].engine == "lean" and warm_ip.user_ns["r"].ok
    assert warm_ip.run_cell(cell("sorry_warn", "--out r")).success
    assert warm_ip.user_ns["r"].how == "cold"
    out = capsys.readouterr().out
    assert out.count("No Lean REPL in this sandbox") == 1 and "checks run cold" in out
    warm_ip.run_line_magic("config", "LeanSandbox.engine = 'repl'")
    result = warm_ip.run_cell(cell("ok_add"))
    assert isinstance(result.error_in_exec, LeanSandboxError)


def test_cold_flag_and_custom_check_commands_run_cold(warm_ip, requests_log):
    assert warm_ip.run_cell(cell("ok_add", "--cold --out r")).success
    assert warm_ip.user_ns["r"].engine == "lean"
    warm_ip.run_line_magic("config", 'LeanSandbox.check_command = "lake env lean {file}"')
    assert warm_ip.run_cell(cell("ok_add", "--out r")).success
    assert warm_ip.user_ns["r"].engine == "lean"
    assert sent(requests_log) == []


def test_status_shows_the_repl(warm_ip, capsys):
    assert warm_ip.run_cell(cell("ok_add")).success
    status = magics_of(warm_ip).kernel.status_text()
    assert "lean repl" in status and "1 header loaded" in status


# -- the same on every backend (called from test_docker.py and test_modal.py) --------------------


def exercise_warm_checks(kernel: KernelSession) -> None:
    """Warm checks, a chain, and a timeout restart through ``kernel``'s backend (stand-in inside)."""
    first = check(kernel, "mathlib_first")
    second = check(kernel, "mathlib_error")
    assert (first.how, second.how) == ("repl", "warm"), (first.headline(), second.headline())
    assert first.ok and [(d.line, d.column) for d in second.errors] == [(4, 2)]
    sent_cmds = [r["cmd"] for r in kernel.repl.process.log]
    assert sent_cmds.count("import Mathlib") == 1 and len(sent_cmds) == 3
    c = kernel.repl
    assert c.check("A.lean", "def double (n : Nat) : Nat := 2 * n\n", cell="A", chain=True).ok
    assert c.check("B.lean", "theorem double_two : double 2 = 4 := rfl\n", cell="B", chain=True).ok
    # a timeout kills the REPL (its whole process tree, in the sandbox); the next check replays the chain
    c.command = "env STANDIN_REPL_SLOW=two_mul_pos:30 lake env repl"
    c.reset()
    slow = check(kernel, "mathlib_first", timeout_s=2)
    assert slow.timed_out, slow.headline()
    c.command = "lake env repl"
    again = c.check("B.lean", "theorem double_two : double 2 = 4 := rfl\n", cell="B", chain=True)
    assert again.ok and c.starts == 3, again.headline()


def test_cancel_from_another_thread_ends_the_check_as_cancelled(kernel):
    checker = kernel.warm_checker(command="env STANDIN_REPL_SLOW=two_mul_pos:30 lake env repl")
    assert not checker.cancel()  # nothing to cancel while no check runs
    timer = threading.Timer(1.0, kernel.cancel)  # the panel's cancel button
    timer.start()
    try:
        result = check(kernel, "mathlib_first")
    finally:
        timer.cancel()
    assert result.cancelled and not result.interrupted and "cancelled" in result.stderr
    assert "was cancelled" in result.headline()
    kernel.warm_checker(command="lake env repl")
    assert check(kernel, "ok_add").ok


def test_header_envs_are_bounded_least_recently_used_first(kernel, requests_log):
    kernel.warm_checker(max_headers=1)
    check(kernel, "mathlib_first")
    assert check(kernel, "mathlib_first").warm
    check(kernel, "ok_add")  # another header: the Mathlib one is dropped
    again = check(kernel, "mathlib_first")
    assert not again.warm and again.ok
    assert [r["cmd"] for r in sent(requests_log)].count("import Mathlib") == 2


def test_a_header_importing_the_project_is_reloaded_after_a_command(kernel, requests_log):
    assert check(kernel, "project_main").how == "repl"
    assert check(kernel, "project_main").how == "warm"
    kernel.run("true")  # could have been `lake build`: Project.Basic's olean may be new
    assert check(kernel, "project_main").how == "repl"
    check(kernel, "mathlib_first")
    kernel.run("true")
    assert check(kernel, "mathlib_first").how == "warm"  # Mathlib's oleans don't change in a session
    assert [r["cmd"] for r in sent(requests_log)].count("import Project.Basic") == 2


def test_a_view_keeps_ticking_while_the_repl_works(kernel):
    class Sink:
        ticks = 0
        lines: list[str] = []

        def tick(self) -> float:
            self.ticks += 1
            return 0.1

        def feed_lines(self, lines, parsed):
            self.lines += lines

    kernel.warm_checker(command="env STANDIN_REPL_SLOW=two_mul_pos:1.5 lake env repl")
    sink = Sink()
    result = check(kernel, "mathlib_first", sink=sink)
    assert result.ok and sink.ticks >= 8  # ~every 0.1 s for 1.5 s: the spinner and the clock move
    error = check(kernel, "mathlib_error", sink=sink)
    assert sink.lines == error.stdout.splitlines()  # the view gets the messages as Lean's JSON lines
