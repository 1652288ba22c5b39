"""Real Jupyter kernels: the tutorial runs headless, interrupts cancel, panel clicks arrive.

The kernel is this venv's Python with ipykernel (a kernelspec written to a
temp ``JUPYTER_PATH``); the stand-in ``lean``/``lake`` are first on its PATH.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "notebooks" / "01-getting-started.ipynb"
KERNEL = "atp-notebook-test"
MAGICS = "m = next(c for c in get_ipython().configurables if type(c).__name__ == 'LeanSandbox')"


@pytest.fixture
def kernel_env(tmp_path, standin_env, monkeypatch):
    """A kernelspec for this interpreter, found through JUPYTER_PATH; returns its name."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "atp-notebook tests",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for knob in ("STANDIN_SLEEP", "STANDIN_LINE_DELAY", "STANDIN_FLOOD"):
        monkeypatch.delenv(knob, raising=False)
    return KERNEL


# -- the tutorial ---------------------------------------------------------------------------------


def test_the_committed_tutorial_carries_no_outputs():
    nb = nbformat.read(TUTORIAL, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def _texts(cell) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def test_the_tutorial_runs_headless_and_shows_the_error_then_the_fix(tmp_path, kernel_env):
    nb = nbformat.read(TUTORIAL, as_version=4)
    run = tmp_path / "run"
    run.mkdir()
    NotebookClient(nb, timeout=120, kernel_name=kernel_env, resources={"metadata": {"path": str(run)}}).execute()
    nbformat.write(nb, run / "executed.ipynb")  # saved, and read back as a user would
    saved = nbformat.read(run / "executed.ipynb", as_version=4)
    cells = {c.source.splitlines()[0]: c for c in saved.cells if c.cell_type == "code"}
    assert not [o for c in cells.values() for o in c.outputs if o.output_type == "error"]

    first = cells["%%lean_sandbox"]
    assert "✓ Scratch.lean: no messages" in _texts(first)
    assert "Created a Lean project" in _texts(first)

    broken = cells["%%lean_sandbox --no-raise --out broken"]
    text = _texts(broken)
    assert "✗ Scratch.lean: 1 error" in text
    assert "Scratch.lean:3:6: error(lean.unknownIdentifier): Unknown identifier `reverse_reverse`" in text
    [view] = [o for o in broken.outputs if o.output_type == "display_data"]
    html = view.data["text/html"]
    assert 'class="atp-error"' in html and ">reverse_reverse</span>" in html and ">3:6<" in html

    assert _texts(cells["first = broken.diagnostics[0]"]) == (
        "False 1\nline 3, column 6: error: Unknown identifier `reverse_reverse`\n"
    )
    assert "✓ Scratch.lean: no messages" in _texts(cells["%%lean_sandbox --out fixed"])
    assert _texts(cells["fixed.ok, fixed.diagnostics"]) == "(True, [])"
    status = cells["%lean_sandbox status"]
    assert "application/vnd.jupyter.widget-view+json" in status.outputs[0].data
    assert "state      idle" in _texts(status)
    assert "Scratch.lean" in _texts(cells["%lean_sandbox run ls"])
    assert "Closed the local session" in _texts(cells["%lean_sandbox close"])
    assert (run / "lean_workdir" / "Scratch.lean").read_text() == (
        REPO / "tests" / "standin" / "fixtures" / "tutorial_fixed.lean"
    ).read_text()


# -- a live kernel ---------------------------------------------------------------------------------


class Kernel:
    """A started kernel and its client, with small helpers."""

    def __init__(self, name: str, cwd: Path) -> None:
        self.manager = KernelManager(kernel_name=name)
        self.manager.start_kernel(cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60) -> tuple[dict, str]:
        """Execute and wait: (reply content, stdout text)."""
        out: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"], "".join(out)

    def reply_to(self, msg_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path, kernel_env):
    k = Kernel(kernel_env, tmp_path)
    content, _ = k.run(f"%load_ext atp_notebook\n%lean_sandbox use local\n{MAGICS}")
    assert content["status"] == "ok"
    yield k
    k.close()


def _lean_cell(name: str, line: str = "") -> str:
    source = (REPO / "tests" / "standin" / "fixtures" / f"{name}.lean").read_text()
    return f"%%lean_sandbox {line}\n{source}"


def test_interrupting_the_kernel_cancels_the_check_and_keeps_the_session(kernel):
    content, _ = kernel.run(_lean_cell("ok_add"))
    assert content["status"] == "ok"
    kernel.run("import os; os.environ['STANDIN_SLEEP'] = '30'")
    msg_id = kernel.client.execute(_lean_cell("ok_add", "--out res"))
    time.sleep(1.5)
    start = time.monotonic()
    kernel.manager.interrupt_kernel()
    reply = kernel.reply_to(msg_id, timeout=30)
    assert time.monotonic() - start < 10
    assert reply["status"] == "error" and reply["ename"] == "LeanCheckInterrupted"
    assert len(reply["traceback"]) == 1 and "session kept" in reply["traceback"][0]
    kernel.run("del os.environ['STANDIN_SLEEP']")
    content, _ = kernel.run(_lean_cell("unknown_ident", "--no-raise --out r"))
    assert content["status"] == "ok"
    content, out = kernel.run("print(res.exit_code, r.errors[0].column, m.kernel.opened, m.kernel.is_open)")
    assert out.split() == ["130", "44", "1", "True"]


def test_a_failed_check_is_a_one_line_error_reply(kernel):
    msg_id = kernel.client.execute(_lean_cell("tutorial_broken"))
    reply = kernel.reply_to(msg_id)
    assert reply["status"] == "error" and reply["ename"] == "LeanCheckFailed"
    assert reply["traceback"] == [
        "LeanCheckFailed: Scratch.lean: 1 error (first at line 3: Unknown identifier `reverse_reverse`)"
    ]


def _click(kernel: Kernel, model_id: str) -> str:
    """Send what JupyterLab sends when a button is clicked; returns the message id."""
    msg = kernel.client.session.msg(
        "comm_msg", {"comm_id": model_id, "data": {"method": "custom", "content": {"event": "click"}}}
    )
    kernel.client.shell_channel.send(msg)
    return msg["header"]["msg_id"]


def test_panel_cancel_reaches_a_background_run_but_waits_for_a_busy_cell(kernel):
    """What the panel's docs claim: a click is handled when the kernel is free, not during a cell."""
    content, _ = kernel.run(
        "import time\n%lean_sandbox run --bg --out bg sleep 60\nt_bg = time.monotonic()\n"
        "from atp_notebook.widgets import SessionPanel\npanel = SessionPanel(m.kernel)"
    )
    assert content["status"] == "ok"
    _, out = kernel.run("print(panel.buttons['cancel'].model_id)")
    model_id = out.strip()
    # a busy cell: the click sent while it runs is handled only after it ends
    busy = kernel.client.execute("t0 = time.monotonic(); time.sleep(3); t1 = time.monotonic()")
    time.sleep(0.5)
    _click(kernel, model_id)
    assert kernel.reply_to(busy)["status"] == "ok"
    _, out = kernel.run("r = bg.wait(15); print(r.exit_code, t_bg + r.duration_s >= t1 - 0.05)")
    assert out.split() == ["130", "True"]  # cancelled, but only once the busy cell had ended
    # with the kernel idle, a click acts at once
    content, _ = kernel.run("%lean_sandbox run --bg --out bg2 sleep 60\nt_bg2 = time.monotonic()")
    _, out = kernel.run("p2 = SessionPanel(m.kernel); print(p2.buttons['cancel'].model_id)")
    _click(kernel, out.strip())
    time.sleep(1)
    _, out = kernel.run("r2 = bg2.wait(15); print(r2.exit_code, r2.duration_s < 5)")
    assert out.split() == ["130", "True"]


def test_shutting_the_kernel_down_closes_the_session(tmp_path, kernel_env):
    """A graceful kernel shutdown ends the interpreter; the atexit hook kills what still runs."""
    k = Kernel(kernel_env, tmp_path)
    pidfile = tmp_path / "pid"
    try:
        content, _ = k.run(f"%load_ext atp_notebook\n%lean_sandbox use local\n"
                           f"%lean_sandbox run --bg echo $$ > {pidfile}; exec sleep 60")
        assert content["status"] == "ok"
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        assert _alive(pid)
    finally:
        k.client.stop_channels()
        k.manager.shutdown_kernel(now=False)  # a shutdown_request, as JupyterLab sends
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
