"""``%lean_sandbox`` / ``%%lean_sandbox`` in a real IPython shell, local backend, stand-in Lean.

Cells run through ``InteractiveShell.run_cell`` exactly as typed in a
notebook; commands are real subprocesses (the stand-in ``lake``/``lean``
replaying recorded Lean output). Terminal IPython is not a Jupyter kernel, so
runs are shown in plain mode (lines on stdout) unless a test asks for rich.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from atp_notebook.backends.base import SandboxDiedError
from atp_notebook.backends.local import LocalBackend, LocalConfig, LocalSession
from atp_notebook.check import CommandFailed, LeanCheckFailed, LeanCheckInterrupted, LeanSandboxError
from atp_notebook.cli import main as cli_main
from atp_notebook.images import DEFAULT_IMAGE
from tests.conftest import cell, lean, magics_of

class Stamped:
    """A stdout that remembers when each write happened."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.writes.append((time.monotonic(), text))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.writes)


def workdir(ip) -> Path:
    return magics_of(ip).kernel.workdir


# -- a check writes its file and reports diagnostics against the cell ------------------------------


def test_cell_writes_its_file_and_reports_diagnostics_at_the_cells_lines(ip, capsys):
    result = ip.run_cell(cell("tutorial_broken", "--no-raise --out res"))
    assert result.success
    assert (workdir(ip) / "Scratch.lean").read_text(encoding="utf-8") == lean("tutorial_broken")
    res = ip.user_ns["res"]
    assert not res.ok and res.exit_code == 1 and res.file == "Scratch.lean"
    [d] = res.diagnostics
    assert (d.line, d.column, d.end_line, d.end_column) == (3, 6, 3, 21)
    assert d.severity == "error" and d.message == "Unknown identifier `reverse_reverse`"
    # line 3 of the file is line 3 of the cell (the %% line does not count), columns 0-based
    assert lean("tutorial_broken").splitlines()[2][d.column:d.end_column] == "reverse_reverse"
    out = capsys.readouterr().out
    assert "Scratch.lean:3:6: error(lean.unknownIdentifier): Unknown identifier `reverse_reverse`" in out
    assert '"severity"' not in out  # the JSON is shown as Lean's text


def test_named_file_in_a_subfolder_and_warnings_do_not_fail(ip, capsys):
    result = ip.run_cell(cell("sorry_warn", "Algebra/Basic.lean --out res"))
    assert result.success
    assert (workdir(ip) / "Algebra" / "Basic.lean").read_text(encoding="utf-8") == lean("sorry_warn")
    res = ip.user_ns["res"]
    assert res.ok and res.exit_code == 0 and res.file == "Algebra/Basic.lean"
    assert [d.severity for d in res.diagnostics] == ["warning"] and res.diagnostics[0].is_sorry
    assert "Algebra/Basic.lean:1:8: warning: declaration uses `sorry`" in capsys.readouterr().out


def test_result_object_has_the_documented_fields(ip):
    assert ip.run_cell(cell("eval_info", "--out res")).success
    res = ip.user_ns["res"]
    assert res.ok is True and res.exit_code == 0
    assert [d.message for d in res.diagnostics] == ["4", "Nat.succ (n : Nat) : Nat"]
    assert [d.severity for d in res.diagnostics] == ["information", "information"]
    assert res.stdout.count("\n") == 2 and '"data":"4"' in res.stdout
    assert 0 < res.duration_s < 30
    assert res.file == "Scratch.lean" and res.path == workdir(ip) / "Scratch.lean"
    assert res.log_path.is_file() and res.log_path.parent == workdir(ip) / ".atp" / "logs"


def test_failed_check_fails_the_cell_with_a_one_line_error(ip, capsys):
    result = ip.run_cell(cell("decide_false"))
    assert not result.success
    error = result.error_in_exec
    assert isinstance(error, LeanCheckFailed)
    lines = error._render_traceback_()
    assert len(lines) == 1
    assert lines[0].startswith("LeanCheckFailed: Scratch.lean: 1 error (first at line 1: ")
    shown = capsys.readouterr().out
    assert lines[0] in shown and "Traceback" not in shown
    assert error.result.exit_code == 1


def test_no_raise_keeps_the_cell_green_and_still_stores_the_result(ip):
    result = ip.run_cell(cell("unknown_ident", "--no-raise --out r"))
    assert result.success and result.error_in_exec is None
    assert ip.user_ns["r"].errors[0].line == 1 and ip.user_ns["r"].errors[0].column == 44


def test_an_unknown_input_fails_with_the_toolchains_message(ip):
    result = ip.run_cell("%%lean_sandbox --out res\ntheorem nobody_recorded_this : True := trivial\n")
    assert isinstance(result.error_in_exec, LeanCheckFailed)
    res = ip.user_ns["res"]
    assert res.exit_code == 2 and res.diagnostics == []
    assert "exited with code 2" in str(result.error_in_exec)
    assert "no recorded output" in str(result.error_in_exec)


def test_text_mode_check_command_is_parsed_as_lean_text(ip):
    ip.run_line_magic("config", 'LeanSandbox.check_command = "lake env lean {file}"')
    ip.run_cell(cell("unsolved_goals", "--no-raise --out res"))
    res = ip.user_ns["res"]
    assert res.command == "lake env lean Scratch.lean"
    [d] = res.diagnostics
    assert (d.line, d.column, d.severity) == (1, 60, "error")
    assert d.message.startswith("unsolved goals\ncase right")


def test_config_lists_the_options(ip, capsys):
    ip.run_line_magic("config", "LeanSandbox")
    out = capsys.readouterr().out
    for option in ("backend", "image", "workdir", "timeout", "check_command", "default_file", "view"):
        assert f"LeanSandbox.{option}=" in out
    assert "lake env lean --json {file}" in out and "lean_workdir" in out


def test_config_sets_the_default_file(ip):
    ip.run_line_magic("config", "LeanSandbox.default_file = 'Main.lean'")
    assert ip.run_cell(cell("ok_add", "--out res")).success
    assert ip.user_ns["res"].file == "Main.lean" and (workdir(ip) / "Main.lean").is_file()


def test_timeout_kills_the_check_and_fails_the_cell(ip, monkeypatch):
    monkeypatch.setenv("STANDIN_SLEEP", "20")
    start = time.monotonic()
    result = ip.run_cell(cell("ok_add", "--timeout 1 --out res"))
    assert time.monotonic() - start < 10
    assert isinstance(result.error_in_exec, LeanCheckFailed)
    assert "timed out" in str(result.error_in_exec)
    assert ip.user_ns["res"].exit_code == 124


# -- streaming --------------------------------------------------------------------------------------


def test_output_lines_are_written_as_they_arrive(ip, monkeypatch):
    monkeypatch.setenv("STANDIN_LINE_DELAY", "0.6")
    out = Stamped()
    monkeypatch.setattr(sys, "stdout", out)
    start = time.monotonic()
    assert ip.run_cell(cell("eval_info")).success
    end = time.monotonic()
    first = next(t for t, text in out.writes if "info: 4" in text)
    second = next(t for t, text in out.writes if "Nat.succ" in text)
    assert first - start >= 0.5  # it did wait for the line...
    assert end - first >= 0.4  # ...and showed it well before the command ended
    assert second - first >= 0.4


def test_rich_view_shows_the_first_line_before_the_command_ends(ip, rich, monkeypatch):
    monkeypatch.setenv("STANDIN_LINE_DELAY", "0.6")
    stamps: list[tuple[float, dict]] = []
    original = rich.publish

    def publish(data, *args, **kwargs):
        stamps.append((time.monotonic(), data))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(rich, "publish", publish)
    assert ip.run_cell(cell("eval_info")).success
    end = time.monotonic()
    first = next(t for t, data in stamps if "info: 4" in data["text/plain"])
    assert end - first >= 0.4
    assert all("text/plain" in data and "text/html" in data for _, data in stamps)
    assert "⠋" in stamps[0][1]["text/plain"] or "·" in stamps[0][1]["text/plain"]
    final = stamps[-1][1]
    assert final["text/plain"].startswith("✓ Scratch.lean: 2 info messages")
    assert "<table" in final["text/html"]


def test_rich_view_marks_the_error_span_in_the_cells_source(ip, rich):
    ip.run_cell(cell("tutorial_broken", "--no-raise"))
    html = rich.outputs[-1]["data"]["text/html"]
    assert '<span class="atp-error"' in html
    marked = html.split('<span class="atp-error"', 1)[1].split(">", 1)[1].split("</span>", 1)[0]
    assert marked == "reverse_reverse"
    assert ">3:6<" in html  # line:col in the table, against the cell


# -- interrupt ---------------------------------------------------------------------------------------


def _alive_with_arg(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in args and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_interrupt_cancels_the_command_and_keeps_the_session(ip, monkeypatch):
    assert ip.run_cell(cell("ok_add")).success
    kernel = magics_of(ip).kernel
    session = kernel.session
    monkeypatch.setenv("STANDIN_SLEEP", "31.25")  # unmistakable in the process table
    timer = threading.Timer(0.8, _thread.interrupt_main)
    timer.start()
    start = time.monotonic()
    result = ip.run_cell(cell("ok_add", "--out res"))
    timer.join()
    assert time.monotonic() - start < 8
    error = result.error_in_exec
    assert isinstance(error, LeanCheckInterrupted) and isinstance(error, KeyboardInterrupt)
    assert len(error._render_traceback_()) == 1 and "session kept" in str(error)
    assert ip.user_ns["res"].exit_code == 130 and ip.user_ns["res"].interrupted
    deadline = time.monotonic() + 5
    while _alive_with_arg("31.25") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with_arg("31.25") == []  # the whole tree is gone, the sleep included
    # the next cell runs in the same session
    monkeypatch.delenv("STANDIN_SLEEP")
    assert ip.run_cell(cell("ok_add", "--out res")).success
    assert kernel.session is session and kernel.opened == 1 and ip.user_ns["res"].ok


def test_interrupting_run_cancels_it_too(ip):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    result = ip.run_cell("%lean_sandbox run --out r sleep 30")
    timer.join()
    assert isinstance(result.error_in_exec, LeanCheckInterrupted)
    assert ip.user_ns["r"].exit_code == 130
    assert ip.run_cell("%lean_sandbox run --out r echo still here").success
    assert ip.user_ns["r"].stdout == "still here\n"


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("", "Say what to do; valid: use, status, sync, restart, close, run"),
        ("bogus", "Unknown action 'bogus'; valid: use, status, sync, restart, close, run"),
        ("use nowhere", "invalid choice: 'nowhere' (choose from 'local', 'docker', 'modal', 'auto')"),
        ("use local --timeout 0", "--timeout must be a positive number"),
        ("use local --frobnicate", "unrecognized arguments: --frobnicate"),
        ("sync sideways", "invalid choice: 'sideways'"),
        ("status now", "`status` takes no arguments"),
        ("close please", "`close` takes no arguments"),
        ("run", "`run` needs a shell command"),
        ("run --timeout", "--timeout needs a value"),
        ("run --timeout soon ls", "--timeout needs a number of seconds"),
        ("run --out 1x ls", "--out needs a Python variable name"),
        ("run --verbose ls", "Unknown option '--verbose' for `run`"),
    ],
)
def test_bad_line_arguments_say_what_is_valid(ip, line, says):
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("lean_sandbox", line)
    assert says in str(info.value)
    assert "usage:" in str(info.value)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("notes.txt", "FILE must be a .lean file"),
        ("--timeout soon", "invalid float value: 'soon'"),
        ("--timeout -3", "--timeout must be a positive number"),
        ("--out class", "--out needs a Python variable name"),
        ("--bogus", "unrecognized arguments: --bogus"),
        ("../Escape.lean", "leads outside the workdir"),
        ("/etc/Escape.lean", "is absolute"),
        ("A.lean B.lean", "unrecognized arguments: B.lean"),
    ],
)
def test_bad_cell_arguments_say_what_is_valid(ip, line, says, tmp_path):
    result = ip.run_cell(f"%%lean_sandbox {line}\n{lean('ok_add')}")
    assert isinstance(result.error_in_exec, UsageError)
    assert says in str(result.error_in_exec)
    assert "%%lean_sandbox [FILE.lean] [--chain] [--cold] [--timeout S] [--out NAME] [--no-raise]" in str(result.error_in_exec)
    assert not (tmp_path / "Escape.lean").exists()


def test_a_symlink_leading_out_of_the_workdir_is_refused(ip, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = workdir(ip)
    root.mkdir(parents=True, exist_ok=True)
    (root / "link").symlink_to(outside)
    result = ip.run_cell(cell("ok_add", "link/Evil.lean"))
    assert isinstance(result.error_in_exec, UsageError)
    assert not (outside / "Evil.lean").exists()


def test_bad_input_does_not_open_a_session(ip):
    ip.run_cell(cell("ok_add", "../x.lean"))
    assert magics_of(ip).kernel.session is None and magics_of(ip).kernel.state == "not started"


# -- the session: lazy, reused, reopened after death, closed ------------------------------------------


def test_session_opens_lazily_and_is_reused_across_cells(ip):
    kernel = magics_of(ip).kernel
    assert kernel.session is None
    for name in ("ok_add", "sorry_warn", "eval_info"):
        assert ip.run_cell(cell(name)).success
    assert kernel.opened == 1 and kernel.is_open and kernel.state == "idle"


def test_scaffolds_a_project_matching_the_image_once(ip, capsys):
    ip.run_cell(cell("ok_add"))
    first = capsys.readouterr().out
    assert first.count("Created a Lean project") == 1
    root = workdir(ip)
    assert (root / "lean-toolchain").read_text() == DEFAULT_IMAGE.toolchain + "\n"
    lakefile = (root / "lakefile.toml").read_text()
    assert f'rev = "{DEFAULT_IMAGE.mathlib_rev}"' in lakefile and 'name = "mathlib"' in lakefile
    ip.run_cell(cell("ok_add"))
    assert "Created a Lean project" not in capsys.readouterr().out


def test_use_picks_backend_workdir_and_image_and_opens_now(ip, tmp_path, capsys):
    ip.run_line_magic("lean_sandbox", f"use local --workdir {tmp_path / 'proofs'} --image my/lean:1 --timeout 60")
    magics = magics_of(ip)
    kernel = magics.kernel
    assert kernel.is_open and kernel.workdir == tmp_path / "proofs"
    assert kernel.image.tag == "my/lean:1" and kernel.image.toolchain == DEFAULT_IMAGE.toolchain
    assert magics.timeout == 60
    assert "Using the local backend: image my/lean:1" in capsys.readouterr().out
    ip.run_cell(cell("ok_add"))
    assert (tmp_path / "proofs" / "Scratch.lean").is_file()


def test_changing_the_config_closes_the_open_session_with_a_note(ip, tmp_path, capsys):
    ip.run_cell(cell("ok_add"))
    kernel = magics_of(ip).kernel
    old = kernel.session
    ip.run_line_magic("config", f"LeanSandbox.workdir = {str(tmp_path / 'other')!r}")
    assert old.closed and kernel.session is None
    assert "Closed the local session; the next cell opens a new one" in capsys.readouterr().out
    ip.run_cell(cell("ok_add"))
    assert kernel.workdir == tmp_path / "other" and kernel.opened == 2


def test_status_restart_sync_close(ip, capsys):
    kernel = magics_of(ip).kernel
    ip.run_line_magic("lean_sandbox", "status")
    out = capsys.readouterr().out
    assert "state      not started" in out and "backend    auto" in out
    ip.run_cell(cell("ok_add"))
    ip.run_line_magic("lean_sandbox", "sync")
    assert "Synced in: ok; out: ok." in capsys.readouterr().out
    ip.run_line_magic("lean_sandbox", "sync in")
    assert kernel.last_sync_report == "in: ok"
    first = kernel.session
    ip.run_line_magic("lean_sandbox", "restart")
    assert first.closed and kernel.session is not first and kernel.is_open and kernel.opened == 2
    ip.run_line_magic("lean_sandbox", "close")
    assert kernel.session is None and kernel.state == "closed"
    assert "Closed the local session" in capsys.readouterr().out
    ip.run_line_magic("lean_sandbox", "close")
    assert "No session is open." in capsys.readouterr().out
    assert ip.run_cell(cell("ok_add")).success  # and the next cell reopens
    assert kernel.opened == 3


def test_unload_closes_the_session(ip):
    kernel = magics_of(ip).kernel
    ip.run_cell(cell("ok_add"))
    session = kernel.session
    ip.run_line_magic("unload_ext", "atp_notebook")
    assert session.closed
    assert "lean_sandbox" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "atp_notebook")  # for the fixture's teardown


# -- a sandbox that dies -------------------------------------------------------------------------------


class MortalSession(LocalSession):
    """A real local session whose "sandbox" is dead once its marker file is gone."""

    def __init__(self, backend: LocalBackend, workdir: Path, marker: Path, **kwargs) -> None:
        super().__init__(backend, workdir, **kwargs)
        self.marker = marker

    def _check_alive(self) -> None:
        if not self.marker.exists():
            raise SandboxDiedError(f"its marker {self.marker.name} is gone (simulated death)")


class MortalBackend(LocalBackend):
    def __init__(self, markers: Path) -> None:
        super().__init__(LocalConfig(kill_grace_s=1.0))
        self.markers = markers
        self.count = 0

    def session(self, workdir, *, env=None, mounts=None, timeout_s=None):
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        self.count += 1
        marker = self.markers / f"alive-{self.count}"
        marker.touch()
        return MortalSession(self, workdir, marker, env=env, timeout_s=timeout_s)


def test_a_dead_sandbox_is_reopened_with_a_note_and_the_cell_still_runs(ip, tmp_path, capsys):
    markers = tmp_path / "markers"
    markers.mkdir()
    backend = MortalBackend(markers)
    kernel = magics_of(ip).kernel
    kernel.backend_factory = lambda name, **config: backend
    assert ip.run_cell(cell("ok_add")).success
    dead = kernel.session
    (markers / "alive-1").unlink()  # the sandbox dies between cells
    capsys.readouterr()
    assert ip.run_cell(cell("unknown_ident", "--no-raise --out res")).success
    out = capsys.readouterr().out
    assert "sandbox had died (its marker alive-1 is gone (simulated death))" in out
    assert "Opened a new session and ran the command again" in out
    assert kernel.session is not dead and dead.closed and kernel.opened == 2
    assert ip.user_ns["res"].errors[0].column == 44  # the retried check really ran


def test_a_sandbox_that_keeps_dying_fails_the_cell_in_one_line(ip, tmp_path):
    class AlwaysDead(MortalBackend):
        def session(self, workdir, **kwargs):
            session = super().session(workdir, **kwargs)
            session.marker.unlink()
            return session

    markers = tmp_path / "markers"
    markers.mkdir()
    magics_of(ip).kernel.backend_factory = lambda name, **config: AlwaysDead(markers)
    result = ip.run_cell(cell("ok_add"))
    assert isinstance(result.error_in_exec, LeanSandboxError)
    assert "simulated death" in result.error_in_exec._render_traceback_()[0]


def test_no_backend_available_is_one_clear_line(ip, monkeypatch):
    from atp_notebook.backends.base import BackendUnavailableError

    def unavailable(name, **config):
        raise BackendUnavailableError("No backend can run here. Run `atp-notebook doctor`.")

    magics_of(ip).kernel.backend_factory = unavailable
    result = ip.run_cell(cell("ok_add"))
    assert isinstance(result.error_in_exec, LeanSandboxError)
    assert result.error_in_exec._render_traceback_() == [
        "LeanSandboxError: No backend can run here. Run `atp-notebook doctor`."
    ]


# -- %lean_sandbox run ----------------------------------------------------------------------------------


def test_run_streams_a_shell_command_and_vars_reach_the_shell(ip, monkeypatch, capsys):
    monkeypatch.setenv("ATP_TEST_GREETING", "hello from the host")
    ip.user_ns["ATP_TEST_GREETING"] = "python value must not leak"
    assert ip.run_cell("%lean_sandbox run --out r echo $ATP_TEST_GREETING; echo \"${ATP_TEST_GREETING}\" | wc -w").success
    r = ip.user_ns["r"]
    assert r.exit_code == 0
    assert r.stdout.splitlines() == ["hello from the host", "4"]
    assert "hello from the host" in capsys.readouterr().out


def test_run_failure_is_one_line_unless_no_raise(ip):
    result = ip.run_cell("%lean_sandbox run echo oops >&2; exit 3")
    assert isinstance(result.error_in_exec, CommandFailed)
    assert result.error_in_exec._render_traceback_() == ["CommandFailed: `echo oops >&2; exit 3` exited with code 3: oops"]
    assert ip.run_cell("%lean_sandbox run --no-raise --out r exit 3").success
    assert ip.user_ns["r"].exit_code == 3


def test_run_in_the_background_can_be_cancelled_and_waited_for(ip):
    assert ip.run_cell("%lean_sandbox run --bg --out bg sleep 30").success
    bg = ip.user_ns["bg"]
    kernel = magics_of(ip).kernel
    assert not bg.done and [cmd for _, cmd in kernel.running] == ["sleep 30"]
    assert kernel.cancel() == 1
    result = bg.wait(10)
    assert result is not None and result.exit_code == 130
    assert kernel.running == [] and kernel.is_open


# -- the same pipeline from the command line ---------------------------------------------------------


def test_cli_check_streams_diagnostics_and_exits_by_the_verdict(tmp_path, standin_env, capsys):
    broken = tmp_path / "proj" / "Broken.lean"
    broken.parent.mkdir()
    broken.write_text(lean("tutorial_broken"), encoding="utf-8")
    assert cli_main(["check", str(broken), "--backend", "local"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "Broken.lean:3:6: error(lean.unknownIdentifier): Unknown identifier `reverse_reverse`\n"
    assert "Broken.lean: 1 error (first at line 3" in captured.err
    assert "Created a Lean project" in captured.err and (broken.parent / "lakefile.toml").is_file()
    fine = broken.parent / "sub" / "Fine.lean"
    fine.parent.mkdir()
    fine.write_text(lean("sorry_warn"), encoding="utf-8")
    assert cli_main(["check", str(fine), "--backend", "local"]) == 0  # workdir found upwards: proj/
    captured = capsys.readouterr()
    assert captured.out == "sub/Fine.lean:1:8: warning: declaration uses `sorry`\n"
    assert cli_main(["check", str(tmp_path / "missing.lean"), "--backend", "local"]) == 2


def test_a_finished_check_leaves_nothing_running_and_its_log_on_disk(ip):
    ip.run_cell(cell("ok_add", "--out res"))
    assert magics_of(ip).kernel.running == []
    log = ip.user_ns["res"].log_path.read_text(encoding="utf-8")
    assert log.startswith("$ lake env lean --json Scratch.lean\n") and "--- ok: no messages" in log
    assert os.path.isdir(workdir(ip) / ".atp" / "logs")


# -- the same cells on a real Docker container -------------------------------------------------------


@pytest.fixture
def docker_backend_factory(tmp_path):
    """A DockerBackend on the test image, syncing by archive (as with a remote engine)."""
    import uuid

    from atp_notebook.backends.base import BackendUnavailableError
    from atp_notebook.backends.docker_client import connect_docker
    from tests.conftest import unavailable
    from tests.docker_image import WORKDIR, ImageUnavailable, ensure_test_image

    try:
        client = connect_docker(timeout=60)
    except BackendUnavailableError as exc:
        unavailable(str(exc))
    label = {"atp-notebook.test-run": uuid.uuid4().hex}
    try:
        tag = ensure_test_image(client)
    except ImageUnavailable as exc:
        client.close()
        unavailable(f"cannot build the Docker test image: {exc}")

    from atp_notebook.backends.docker import DockerBackend, DockerConfig
    from atp_notebook.images import Image

    image = Image(tag=tag, toolchain=DEFAULT_IMAGE.toolchain, mathlib_rev=DEFAULT_IMAGE.mathlib_rev,
                  workdir=WORKDIR)
    yield lambda name, **config: DockerBackend(DockerConfig(image=image, sync="copy", kill_grace_s=1.0,
                                                            labels=label))
    left = client.api.containers(all=True, filters={"label": "atp-notebook.test-run=" + label["atp-notebook.test-run"]})
    for info in left:
        client.api.remove_container(info["Id"], force=True)
    client.close()
    assert not left, "the cells left a container behind"


def test_cells_on_docker_with_copy_sync(ip, docker_backend_factory):
    magics = magics_of(ip)
    magics.kernel.backend_factory = docker_backend_factory
    ip.run_line_magic("lean_sandbox", "use docker")
    assert magics.kernel.backend.name == "docker"
    # the file is written on the host, travels in, is checked in the container
    assert ip.run_cell(cell("tutorial_broken", "Proofs/Reverse.lean --no-raise --out res")).success
    res = ip.user_ns["res"]
    assert [(d.line, d.column) for d in res.errors] == [(3, 6)] and res.file == "Proofs/Reverse.lean"
    # what a command makes in the sandbox comes back out
    assert ip.run_cell("%lean_sandbox run --out r pwd; echo made-inside > Inside.txt").success
    assert ip.user_ns["r"].stdout.startswith("/workspace")
    assert (workdir(ip) / "Inside.txt").read_text() == "made-inside\n"
    assert ip.run_cell(cell("tutorial_fixed", "Proofs/Reverse.lean --out res")).success
    assert ip.user_ns["res"].ok
    ip.run_line_magic("lean_sandbox", "close")


@pytest.mark.parametrize("engine", ["lean", "repl"])
def test_a_cell_wins_over_a_sandbox_edit_of_its_own_file(ip, docker_backend_factory, capsys, engine):
    """Copy mode, the file edited in the sandbox and in the cell since the last sync:
    the cell's text is what gets checked, and the sandbox's edit comes back beside it."""
    magics = magics_of(ip)
    magics.kernel.backend_factory = docker_backend_factory
    ip.run_line_magic("config", f"LeanSandbox.engine = '{engine}'")
    ip.run_line_magic("lean_sandbox", "use docker")
    assert ip.run_cell(cell("tutorial_broken", "Proofs/Reverse.lean --no-raise")).success
    session = magics.kernel.session
    edit = session.exec("printf 'theorem edited_in_the_sandbox : True := trivial\\n' > Proofs/Reverse.lean").wait()
    assert edit.exit_code == 0, edit.stderr
    capsys.readouterr()

    assert ip.run_cell(cell("tutorial_fixed", "Proofs/Reverse.lean --out res")).success
    res = ip.user_ns["res"]
    assert res.ok and res.how == ("warm" if engine == "repl" else "cold")
    said = capsys.readouterr().out
    assert ("Proofs/Reverse.lean was changed in the sandbox too: the cell's text is checked, "
            "the sandbox's version is now Proofs/Reverse.lean.conflict-sandbox") in said, said
    host = workdir(ip) / "Proofs"
    assert (host / "Reverse.lean").read_text() == lean("tutorial_fixed")
    assert (host / "Reverse.lean.conflict-sandbox").read_text() == "theorem edited_in_the_sandbox : True := trivial\n"
    inside = session.exec("cat Proofs/Reverse.lean; ls Proofs").wait().stdout
    assert inside == lean("tutorial_fixed") + "Reverse.lean\nReverse.lean.conflict-sandbox\n"
    assert sorted(p.name for p in host.iterdir()) == ["Reverse.lean", "Reverse.lean.conflict-sandbox"]
    # once more: the first copy is taken, on both sides
    assert session.exec("echo again > Proofs/Reverse.lean").wait().exit_code == 0
    assert ip.run_cell(cell("tutorial_broken", "Proofs/Reverse.lean --no-raise --out res")).success
    assert [(d.line, d.column) for d in ip.user_ns["res"].errors] == [(3, 6)]  # the cell's text, checked
    assert (host / "Reverse.lean.conflict-sandbox.1").read_text() == "again\n"
    assert (host / "Reverse.lean.conflict-sandbox").read_text() == "theorem edited_in_the_sandbox : True := trivial\n"
    ip.run_line_magic("lean_sandbox", "close")


def test_use_with_backend_options(ip):
    from IPython.core.error import UsageError

    ip.run_line_magic("lean_sandbox", "use local --option kill_grace_s=0.5 --option timeout_s=77")
    config = magics_of(ip).kernel.backend.config
    assert (config.kill_grace_s, config.timeout_s) == (0.5, 77)
    with pytest.raises(UsageError, match="KEY=VALUE"):
        ip.run_line_magic("lean_sandbox", "use local --option nonsense")
    with pytest.raises(LeanSandboxError, match="valid: .*kill_grace_s"):
        ip.run_line_magic("lean_sandbox", "use local --option grace=1")


def test_config_backend_options_reopen_the_session(ip, capsys):
    ip.run_line_magic("lean_sandbox", "use local")
    first = magics_of(ip).kernel.session
    ip.run_line_magic("config", "LeanSandbox.backend_options = {'kill_grace_s': 0.25}")
    assert "Closed the local session" in capsys.readouterr().out
    ip.run_cell(cell("ok_add"))
    kernel = magics_of(ip).kernel
    assert kernel.session is not first and kernel.backend.config.kill_grace_s == 0.25
