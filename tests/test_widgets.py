"""The session panel, without a browser: widget state, comm messages, and real session effects.

Clicks come either from ``button.click()`` or as the comm message a frontend
sends; either way the action must really happen on the kernel's session (real
local processes). What a *running* cell does to clicks is a property of the
Jupyter kernel and is tested against a real kernel in ``test_notebooks.py``.
"""

from __future__ import annotations

import comm
import pytest
from comm.base_comm import BaseComm

from atp_notebook.backends import get_backend
from atp_notebook.backends.base import BackendUnavailableError
from atp_notebook.kernel import KernelSession
from atp_notebook.widgets import SessionPanel
from tests.conftest import magics_of


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, dict]]:
    """The comm messages widgets send to the frontend: (msg_type, data)."""
    messages: list[tuple[str, dict]] = []

    class RecordingComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            messages.append((msg_type, {**(data or {}), "comm_id": self.comm_id}))

    monkeypatch.setattr(comm, "create_comm", lambda *args, **kwargs: RecordingComm(*args, **kwargs))
    return messages


@pytest.fixture
def kernel(tmp_path, standin_env):
    k = KernelSession(
        "local", workdir=tmp_path / "work", say=lambda text: None,
        backend_factory=lambda name, **config: get_backend("local", kill_grace_s=1.0, **config),
    )
    yield k
    k.close()


def frontend_click(button) -> None:
    """What JupyterLab sends when the button is clicked."""
    button._handle_msg({"content": {"data": {"method": "custom", "content": {"event": "click"}}}, "buffers": []})


def updates_of(sent, widget) -> list[dict]:
    return [d["state"] for t, d in sent if t == "comm_msg" and d["comm_id"] == widget.comm.comm_id
            and d.get("method") == "update"]


def test_the_panel_shows_the_session_and_opens_with_its_state(kernel, sent):
    panel = SessionPanel(kernel)
    assert any(t == "comm_open" and d["comm_id"] == panel.comm.comm_id for t, d in sent)
    info = panel.info.value
    for key in ("backend", "image", "workdir", "state", "last sync"):
        assert f">{key}<" in info
    assert "not started" in info and "local" in info
    assert panel.buttons["cancel"].disabled and panel.buttons["close"].disabled
    assert not panel.buttons["sync"].disabled and not panel.buttons["restart"].disabled
    assert panel.text() == kernel.status_text() == repr(panel)


def test_sync_button_syncs_and_tells_the_frontend(kernel, sent):
    panel = SessionPanel(kernel)
    sent.clear()
    panel.buttons["sync"].click()
    assert kernel.last_sync is not None and kernel.is_open
    assert "synced (in: ok; out: ok)" in panel.message.value
    assert any("synced" in state.get("value", "") for state in updates_of(sent, panel.message))
    assert any("idle" in state.get("value", "") for state in updates_of(sent, panel.info))


def test_restart_button_gives_a_fresh_session(kernel):
    panel = SessionPanel(kernel)
    first = kernel.ensure()
    frontend_click(panel.buttons["restart"])
    assert first.closed and kernel.is_open and kernel.session is not first and kernel.opened == 2
    assert "restarted" in panel.message.value


def test_close_button_closes_and_disables_itself(kernel, sent):
    kernel.ensure()
    panel = SessionPanel(kernel)
    assert not panel.buttons["close"].disabled
    session = kernel.session
    sent.clear()
    frontend_click(panel.buttons["close"])
    assert session.closed and kernel.session is None and kernel.state == "closed"
    assert panel.buttons["close"].disabled
    assert {"disabled": True} in updates_of(sent, panel.buttons["close"])
    assert ">closed<" in panel.info.value.replace("<code>", ">").replace("</code>", "<")


def test_cancel_button_kills_a_running_command_and_keeps_the_session(kernel, sent):
    panel = SessionPanel(kernel)
    handle = kernel.start("sleep 30")
    session = kernel.session
    assert not panel.buttons["cancel"].disabled  # the panel heard the command start
    assert "sleep 30" in panel.info.value
    frontend_click(panel.buttons["cancel"])
    assert handle.wait().exit_code == 130
    assert kernel.session is session and kernel.is_open
    assert "cancelled 1 command" in panel.message.value
    kernel.done(handle)
    assert panel.buttons["cancel"].disabled
    panel.buttons["cancel"].disabled = False
    panel.buttons["cancel"].click()
    assert "nothing was running" in panel.message.value


def test_a_failing_action_is_shown_in_the_panel(tmp_path):
    def unavailable(name, **config):
        raise BackendUnavailableError("Docker is not running; start it or pick another backend.")

    panel = SessionPanel(KernelSession("docker", workdir=tmp_path, backend_factory=unavailable))
    panel.buttons["sync"].click()
    assert "sync failed: Docker is not running" in panel.message.value
    assert "#c62828" in panel.message.value


def test_the_panel_follows_changes_made_elsewhere(kernel):
    panel = SessionPanel(kernel)
    kernel.ensure()
    assert "idle" in panel.info.value
    kernel.close()
    assert "closed" in panel.info.value


def test_the_panel_lists_the_workdirs_lean_files(kernel):
    kernel.ensure()
    (kernel.workdir / "B.lean").write_text("")
    (kernel.workdir / "A.lean").write_text("")
    panel = SessionPanel(kernel)
    assert "A.lean, B.lean" in panel.info.value


def test_closing_the_panel_stops_its_refreshes(kernel):
    panel = SessionPanel(kernel)
    before = panel.info.value
    panel.close()
    kernel.ensure()
    assert panel.info.value == before


# -- through the magics --------------------------------------------------------------------------


def test_status_shows_the_panel_in_a_widget_frontend(ip, rich, sent):  # noqa: F811
    ip.run_line_magic("lean_sandbox", "status")
    [output] = rich.outputs
    data = output["data"]
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/plain"] == magics_of(ip).kernel.status_text()  # whole, not cut at 110 chars
    assert "state" in data["text/plain"] and "not started" in data["text/plain"]


def test_panel_cancel_stops_a_background_run(ip, rich, sent):  # noqa: F811
    assert ip.run_cell("%lean_sandbox run --bg --out bg sleep 30").success
    panel = SessionPanel(magics_of(ip).kernel)
    assert not panel.buttons["cancel"].disabled
    frontend_click(panel.buttons["cancel"])
    result = ip.user_ns["bg"].wait(10)
    assert result.exit_code == 130 and magics_of(ip).kernel.is_open
    # the background view ended with the outcome, text/plain included
    final = rich.outputs[-1]["data"]
    assert final["text/plain"].startswith("✗ $ sleep 30: exit 130")
