"""KernelSession: the kernel's one session, on the real local backend."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import process_alive

from atp_notebook.backends import get_backend
from atp_notebook.backends.base import SandboxDiedError
from atp_notebook.images import DEFAULT_IMAGE
from atp_notebook.kernel import KernelSession, close_all
from tests.test_magics import MortalBackend

REPO = Path(__file__).resolve().parents[1]


def local(name: str, **config):
    return get_backend("local", kill_grace_s=1.0, **config)


@pytest.fixture
def notes() -> list[str]:
    return []


@pytest.fixture
def kernel(tmp_path, notes):
    k = KernelSession("local", workdir=tmp_path / "work", say=notes.append, backend_factory=local)
    yield k
    k.close()


def test_nothing_opens_until_first_use(kernel, tmp_path):
    assert kernel.session is None and kernel.state == "not started"
    assert not (tmp_path / "work").exists()
    info = kernel.describe()
    assert info["backend"] == "local" and info["state"] == "not started" and info["last sync"] == "never"
    assert info["image"].startswith(DEFAULT_IMAGE.tag)
    session = kernel.ensure()
    assert kernel.ensure() is session and kernel.opened == 1 and kernel.state == "idle"
    assert (tmp_path / "work").is_dir() and kernel.workdir == tmp_path / "work"


def test_relative_workdir_is_resolved_against_the_cwd_when_the_session_opens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    k = KernelSession("local", workdir="lean_workdir", backend_factory=local)
    try:
        k.ensure()
        assert k.workdir == tmp_path / "lean_workdir"
    finally:
        k.close()


def test_commands_are_tracked_while_they_run(kernel):
    handle = kernel.start("sleep 0.5; echo done")
    assert [cmd for _, cmd in kernel.running] == ["sleep 0.5; echo done"]
    assert kernel.state == "running" and "sleep 0.5" in kernel.describe()["running"]
    assert handle.wait().stdout == "done\n"
    kernel.done(handle)
    assert kernel.running == [] and kernel.state == "idle"


def test_cancel_from_another_thread_stops_the_command_and_keeps_the_session(kernel):
    handle = kernel.start("sleep 30")
    session = kernel.session
    threading.Timer(0.3, kernel.cancel).start()
    start = time.monotonic()
    result = handle.wait()
    assert result.exit_code == 130 and time.monotonic() - start < 5
    assert kernel.session is session and kernel.is_open
    assert kernel.start("echo next").wait().stdout == "next\n"
    assert kernel.cancel() == 0


def test_a_dead_sandbox_is_closed_reopened_and_the_command_retried_once(tmp_path, notes):
    markers = tmp_path / "markers"
    markers.mkdir()
    backend = MortalBackend(markers)
    k = KernelSession("local", workdir=tmp_path / "w", say=notes.append, backend_factory=lambda *a, **c: backend)
    try:
        k.ensure()
        dead = k.session
        (markers / "alive-1").unlink()
        assert k.start("echo retried").wait().stdout == "retried\n"
        assert k.session is not dead and dead.closed and k.opened == 2
        assert len(notes) == 1 and "The local sandbox had died" in notes[0] and "ran the command again" in notes[0]
        # two deaths in a row are not papered over
        (markers / "alive-2").unlink()
        backend.session = _dead_on_arrival(backend.session)
        with pytest.raises(SandboxDiedError, match="simulated death"):
            k.start("echo never")
    finally:
        k.close()


def _dead_on_arrival(make):
    def session(*args, **kwargs):
        s = make(*args, **kwargs)
        s.marker.unlink()
        return s

    return session


def test_close_is_idempotent_and_the_next_use_reopens(kernel):
    handle = kernel.start("sleep 30")
    session = kernel.session
    kernel.close()
    kernel.close()
    assert session.closed and kernel.session is None and kernel.state == "closed"
    assert handle.wait().exit_code == 130  # closing killed what ran
    assert kernel.start("echo again").wait().stdout == "again\n" and kernel.opened == 2


def test_restart_gives_a_fresh_session(kernel):
    first = kernel.ensure()
    second = kernel.restart()
    assert first.closed and second is kernel.session and not second.closed


def test_configure_closes_an_open_session_and_says_so(kernel, notes, tmp_path):
    assert kernel.configure(workdir=tmp_path / "other") is False  # nothing open: no note
    assert notes == []
    kernel.ensure()
    old = kernel.session
    assert kernel.configure(workdir=tmp_path / "other") is False  # unchanged
    assert kernel.configure(image="my/image:2") is True
    assert old.closed and len(notes) == 1 and "Closed the local session" in notes[0]
    kernel.ensure()
    assert kernel.image.tag == "my/image:2" and kernel.workdir == tmp_path / "other"


def test_sync_records_when_and_what(kernel):
    assert kernel.sync() == "in: ok; out: ok"
    assert kernel.last_sync is not None and kernel.last_sync_report == "out: ok"
    assert kernel.sync("in") == "in: ok"
    with pytest.raises(ValueError, match="in, out or both"):
        kernel.sync("sideways")
    assert "(in: ok)" in kernel.describe()["last sync"]


def test_listeners_hear_state_changes_and_bound_methods_are_held_weakly(kernel):
    seen: list[str] = []
    unsubscribe = kernel.subscribe(lambda: seen.append(kernel.state))
    kernel.ensure()
    assert "opening" in seen and seen[-1] == "idle"

    class Panel:
        hits = 0

        def refresh(self) -> None:
            Panel.hits += 1

    panel = Panel()
    kernel.subscribe(panel.refresh)
    kernel.close()
    assert Panel.hits >= 1
    del panel
    gc.collect()
    before = Panel.hits
    kernel.ensure()
    assert Panel.hits == before
    unsubscribe()
    count = len(seen)
    kernel.close()
    assert len(seen) == count


def test_status_text_lines_up(kernel):
    kernel.ensure()
    lines = kernel.status_text().splitlines()
    assert [line.split()[0] for line in lines] == ["backend", "image", "workdir", "state", "last", "running", "lean"]
    assert lines[3].endswith("idle")


def test_close_all_closes_every_live_session(tmp_path):
    kernels = [KernelSession("local", workdir=tmp_path / str(i), backend_factory=local) for i in range(2)]
    sessions = [k.ensure() for k in kernels]
    close_all()
    assert all(s.closed for s in sessions)


def test_the_session_is_closed_when_the_interpreter_exits(tmp_path):
    """The kernel shutting down = its process exiting: the atexit hook kills what still runs."""
    pidfile = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import os, time
        from atp_notebook.kernel import KernelSession
        k = KernelSession("local", workdir={str(tmp_path / 'w')!r})
        k.start("echo $$ > {pidfile}; exec sleep 60")
        while not (os.path.exists({str(pidfile)!r}) and os.path.getsize({str(pidfile)!r})):
            time.sleep(0.05)
        # exit without closing anything
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env=env)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid)



def test_conflicts_found_by_an_automatic_sync_are_said(tmp_path):
    """A copy-mode session (here: the local backend over a second folder through the
    sync engine, real files and processes) reports a both-sides edit to the user."""
    import subprocess

    from atp_notebook.backends.local import LocalBackend
    from atp_notebook.kernel import KernelSession
    from atp_notebook.sync import RemoteTree, TwoWaySync

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()

    def run(script, stdin):
        p = subprocess.run(["sh", "-c", script], input=stdin or b"", capture_output=True)
        return p.returncode, p.stdout, p.stderr

    class CopyBackend(LocalBackend):
        def session(self, workdir, **kw):
            s = super().session(workdir, **kw)
            engine = TwoWaySync(s.workdir, RemoteTree(run, str(sandbox)))
            s.sync_in, s.sync_out = engine.sync_in, engine.sync_out
            return s

    notes = []
    kernel = KernelSession("local", workdir=tmp_path / "host", say=notes.append,
                           backend_factory=lambda name, **c: CopyBackend())
    try:
        kernel.ensure()
        (tmp_path / "host" / "A.lean").write_text("one\n")
        kernel.sync("both")
        (sandbox / "A.lean").write_text("sandbox\n")
        (tmp_path / "host" / "A.lean").write_text("host!!\n")
        kernel.start("true").wait()
        assert any("A.lean changed on both sides" in n and "A.lean.conflict-host" in n for n in notes), notes
        assert (sandbox / "A.lean.conflict-host").read_text() == "host!!\n"
        assert (sandbox / "A.lean").read_text() == "sandbox\n"
    finally:
        kernel.close()


def test_status_writes_the_home_directory_as_a_tilde(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    inside = KernelSession("local", workdir=home / "notebooks" / "w", backend_factory=local)
    outside = KernelSession("local", workdir=tmp_path / "elsewhere", backend_factory=local)
    assert inside.describe()["workdir"] == "~/notebooks/w"
    assert outside.describe()["workdir"] == str((tmp_path / "elsewhere").resolve())
    assert inside.workdir == (home / "notebooks" / "w").resolve()  # only the display is short
