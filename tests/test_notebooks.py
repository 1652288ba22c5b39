"""Real Jupyter kernels: the notebooks run headless, interrupts cancel, panel clicks arrive.

The kernel is this venv's Python with ipykernel (a kernelspec written to a
temp ``JUPYTER_PATH``); the stand-in ``lean``/``lake`` are first on its PATH,
then this venv's scripts (``!atp-notebook doctor``).

The notebooks say ``%lean_sandbox use auto``. Here ``auto`` must mean
``local`` (the stand-in): Docker comes first in ``auto``'s order, so a
machine where the default image exists would pick it. The notebook runs pin
``auto`` to ``local`` through the environment (``DOCKER_HOST`` names no
engine, no Modal credentials) instead of changing the notebooks.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from tests.conftest import FIXTURES, REPO, process_alive, unavailable

NOTEBOOKS = REPO / "notebooks"
TUTORIAL = NOTEBOOKS / "01-getting-started.ipynb"
PROJECT = NOTEBOOKS / "02-iterating-on-a-project.ipynb"
BACKENDS = NOTEBOOKS / "03-backends.ipynb"
KERNEL = "atp-notebook-test"
MAGICS = "m = next(c for c in get_ipython().configurables if type(c).__name__ == 'LeanSandbox')"
#: A Docker engine address where none listens: ``auto`` then cannot pick Docker.
NO_DOCKER = "unix:///nonexistent/atp-notebook-tests/docker.sock"


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


@pytest.fixture
def notebook_env(kernel_env, tmp_path, monkeypatch):
    """``kernel_env``, with ``auto`` pinned to the local stand-in and the venv's scripts on PATH."""
    monkeypatch.setenv("PATH", f"{os.environ['PATH']}{os.pathsep}{Path(sys.executable).parent}")
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    return kernel_env


def execute(path: Path, run: Path, kernel: str, *, after_parameters: str = "") -> nbformat.NotebookNode:
    """Run a notebook top to bottom in ``run`` (its folder); returns it as saved and read back.

    ``after_parameters``: code inserted after the cell tagged ``parameters``
    (papermill's convention), to run the notebook with other parameters.
    """
    nb = nbformat.read(path, as_version=4)
    if after_parameters:
        [at] = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        nb.cells.insert(at + 1, new_code_cell(after_parameters))
    run.mkdir(parents=True, exist_ok=True)
    try:
        NotebookClient(nb, timeout=120, kernel_name=kernel, resources={"metadata": {"path": str(run)}}).execute()
    finally:
        nbformat.write(nb, run / "executed.ipynb")  # saved, and read back as a user would
    saved = nbformat.read(run / "executed.ipynb", as_version=4)
    errors = [(c.source, o.ename, o.evalue) for c in saved.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors
    return saved


def _cell(nb, text: str):
    """The one code cell whose source contains ``text``."""
    [cell] = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    return cell


# -- the notebooks as committed -----------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_the_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_notebooks_are_all_tested():
    assert sorted(NOTEBOOKS.glob("*.ipynb")) == [TUTORIAL, PROJECT, BACKENDS]


# -- 1: the tutorial ---------------------------------------------------------------------------------


def _texts(cell) -> str:
    # A print can reach the notebook as several stream messages ("text", then
    # "\n") when the kernel flushes between them: consecutive pieces of one
    # stream are one output, as a front end shows them.
    parts: list[str] = []
    previous = None
    for out in cell.outputs:
        if out.output_type == "stream":
            if previous == out.name:
                parts[-1] += out.text
            else:
                parts.append(out.text)
            previous = out.name
            continue
        previous = None
        if out.output_type in ("display_data", "execute_result") and "text/plain" in out.data:
            parts.append(out.data["text/plain"])
    return "\n".join(parts)


def test_the_tutorial_runs_headless_and_shows_the_error_then_the_fix(tmp_path, notebook_env):
    run = tmp_path / "run"
    saved = execute(TUTORIAL, run, notebook_env)
    cells = {c.source.splitlines()[0]: c for c in saved.cells if c.cell_type == "code"}
    assert "Using the local backend (auto picked local)" in _texts(cells["%lean_sandbox use auto"])

    first = cells["%%lean_sandbox"]
    assert "✓ Scratch.lean: no messages" in _texts(first)
    assert "Created a Lean project" in _texts(first)

    broken = cells["%%lean_sandbox --no-raise --out broken"]
    text = _texts(broken)
    assert "✗ Scratch.lean: 1 error · warm" in text  # the REPL had the (empty) header loaded already
    assert "Scratch.lean:3:6: error: Unknown identifier `reverse_reverse`" in text
    assert "goals (1):\n  3:2 rw [reverse_reverse]\n    xs : List Nat\n    ⊢ xs.reverse.reverse = xs" in text
    [view] = [o for o in broken.outputs if o.output_type == "display_data"]
    html = view.data["text/html"]
    assert 'class="atp-error"' in html and ">reverse_reverse</span>" in html and ">3:6<" in html

    assert _texts(cells["first = broken.diagnostics[0]"]) == (
        "False 1\nline 3, column 6: error: Unknown identifier `reverse_reverse`\n"
    )
    assert "✓ Scratch.lean: no messages" in _texts(cells["%%lean_sandbox --out fixed"])
    assert _texts(cells["fixed.ok, fixed.diagnostics"]) == "(True, [])"
    examples = _texts(cells["%%lean_sandbox Examples.lean"])
    assert "✓ Examples.lean: 2 info messages" in examples
    assert "Examples.lean:1:0: info: 4\nExamples.lean:2:0: info: Nat.succ (n : Nat) : Nat" in examples
    goals = _texts(cells["%%lean_sandbox Sorry.lean --out open_goal"])
    assert "✓ Sorry.lean: 1 warning · warm" in goals and "goals (1):\n  2:2 sorry\n    n : Nat\n    ⊢ n < n + 1" in goals
    assert _texts(cells["[(g.line, g.column, g.kind, g.goal) for g in open_goal.goals]"]) == (
        "[(2, 2, 'sorry', 'n : Nat\\n⊢ n < n + 1')]"
    )
    assert "✓ Double.lean: no messages · warm" in _texts(cells["%%lean_sandbox Double.lean --chain"])
    assert "✓ DoubleTwo.lean: no messages · warm" in _texts(cells["%%lean_sandbox DoubleTwo.lean --chain"])
    status = cells["%lean_sandbox status"]
    assert "application/vnd.jupyter.widget-view+json" in status.outputs[0].data
    assert "state      idle" in _texts(status)
    assert "Scratch.lean" in _texts(cells["%lean_sandbox run ls"])
    assert "Closed the local session" in _texts(cells["%lean_sandbox close"])
    assert (run / "lean_workdir" / "Scratch.lean").read_text() == (FIXTURES / "tutorial_fixed.lean").read_text()
    assert (run / "lean_workdir" / "Examples.lean").read_text() == (FIXTURES / "eval_info.lean").read_text()


# -- 2: a project, edits both ways, a conflict ---------------------------------------------------------


def test_the_project_notebook_imports_syncs_and_resolves_a_conflict(tmp_path, notebook_env):
    run = tmp_path / "run"
    nb = execute(PROJECT, run, notebook_env)
    project = run / "lean_project"
    assert "Using the local backend (auto picked local)" in _texts(_cell(nb, "%lean_sandbox use auto"))
    # two modules, written by cells, known to the stand-in by their content
    assert (project / "Project" / "Basic.lean").read_text() == (FIXTURES / "project_basic.lean").read_text()
    assert (project / "Project.lean").read_text() == (FIXTURES / "project_main.lean").read_text()
    assert "✓ Project/Basic.lean: no messages" in _texts(_cell(nb, "%%lean_sandbox Project/Basic.lean"))
    # the sandbox's edit of the lakefile, read on the host
    lakefile = (project / "lakefile.toml").read_text()
    assert lakefile.endswith('\n[[lean_lib]]\nname = "Project"\n') and lakefile.count("[[lean_lib]]") == 1
    assert '[[lean_lib]]\nname = "Project"' in _texts(_cell(nb, 'print(open("lean_project/lakefile.toml")'))
    assert "Built Project.Basic" in _texts(_cell(nb, "%lean_sandbox run lake build Project.Basic"))
    main = _texts(_cell(nb, "%%lean_sandbox Project.lean --out main"))
    assert "✓ Project.lean: 1 info message" in main and "Project.lean:5:0: info: 42" in main
    assert _texts(_cell(nb, "main.ok, [")) == "(True, [(5, 'information', '42')])"
    # the host's file, read in the sandbox
    assert "`double n = n + n`, proved in `Project/Basic.lean`." in _texts(_cell(nb, "%lean_sandbox run cat README.md"))
    assert "Synced in: ok; out: ok." in _texts(_cell(nb, "%lean_sandbox sync"))
    # the conflict, through the real sync engine over a second folder
    assert re.match(r"sync in: 2 copied \(", _texts(_cell(nb, "files = TwoWaySync(")))
    assert re.fullmatch(
        r"sync out: 1 conflict \([^)]*\); Project/Basic\.lean changed on both sides: kept the host's version, "
        r"the sandbox's is in Project/Basic\.lean\.conflict-sandbox\n",
        _texts(_cell(nb, "report = files.sync_out()")),
    )
    listing = _texts(_cell(nb, "import difflib"))
    assert "['Project.lean', 'Project/Basic.lean', 'Project/Basic.lean.conflict-sandbox']" in listing
    assert "-/-- Two times a number. -/\n+/-- Twice a number. -/" in listing
    assert "+theorem double_zero : double 0 = 0 := rfl" in listing
    resolved = _texts(_cell(nb, "conflict.unlink()"))
    assert re.match(r"sync in: 1 copied \(", resolved) and "sandbox == host: True" in resolved
    demo = run / "sync_demo"
    merged = (demo / "host" / "Project" / "Basic.lean").read_text()
    assert merged == (demo / "sandbox" / "Project" / "Basic.lean").read_text()
    assert "/-- Two times a number. -/" in merged and "theorem double_zero" in merged
    assert not list(demo.rglob("*.conflict-*"))
    assert "Closed the local session" in _texts(_cell(nb, "%lean_sandbox close"))


# -- 3: the backends ----------------------------------------------------------------------------------


def _doctor_lines(text: str) -> dict[str, str]:
    """``{backend: "ok " or "no "}`` from the doctor's output."""
    return {name: mark for mark, name in re.findall(r"^\[(ok |no )\] (local|docker|modal) ", text, re.M)}


def test_the_backends_notebook_runs_what_can_run_and_says_why_the_rest_was_skipped(tmp_path, notebook_env):
    run = tmp_path / "run"
    nb = execute(BACKENDS, run, notebook_env)
    doctor = _texts(_cell(nb, "!atp-notebook doctor"))
    assert _doctor_lines(doctor) == {"local": "ok ", "docker": "no ", "modal": "no "}, doctor
    assert "usable here: local" in doctor
    assert _texts(_cell(nb, "DOCKER_OK = docker_check.ok")) == (
        "Docker cells: skipped (no Docker daemon answered)\nModal cells:  skipped (no Modal credentials)\n"
    )
    assert "LeanSandbox.backend=<Enum>" in _texts(_cell(nb, "%config LeanSandbox"))
    fields = _texts(_cell(nb, "for field in dataclasses.fields(config_class)"))
    assert re.search(r"^DockerConfig\n(  .*\n)*  network +'none'\n(  .*\n)*  sync +'bind'\n", fields, re.M)
    assert re.search(r"^ModalConfig\n(  .*\n)*  block_network +True\n", fields, re.M)
    assert "Using the local backend (auto picked local)" in _texts(_cell(nb, "%lean_sandbox use auto --workdir"))
    assert "✓ Scratch.lean: no messages · imports loaded · local" in _texts(_cell(nb, "theorem reverse_twice"))
    local = _texts(_cell(nb, "measure(LocalBackend()"))
    assert re.match(r"local: open \d+\.\d\d s, command \d+\.\d ms \(median\), close \d+\.\d\d s\n", local)
    assert "lean            Lean (version 4.26.0" in local
    for text in ("DockerBackend(DockerConfig(image=IMAGE))", "DockerConfig(image=IMAGE, sync=\"copy\")"):
        assert _texts(_cell(nb, text)).startswith("skipped: Docker cannot run here: no Docker daemon answered\n  -> ")
    assert _texts(_cell(nb, "if MODAL_OK:")).startswith("skipped: Modal cannot run here: no Modal credentials\n")


@pytest.fixture
def docker_test_image():
    """The Docker test image's tag (built if missing); fails under CI when Docker cannot run it."""
    from atp_notebook.backends.base import BackendUnavailableError
    from atp_notebook.backends.docker_client import connect_docker
    from tests.docker_image import ImageUnavailable, ensure_test_image

    try:
        client = connect_docker(timeout=60)
    except BackendUnavailableError as exc:
        unavailable(str(exc))
    try:
        yield client, ensure_test_image(client)
    except ImageUnavailable as exc:
        unavailable(f"cannot build the Docker test image: {exc}")
    finally:
        client.close()


def test_the_backends_notebook_runs_its_docker_cells_on_a_docker_image(tmp_path, kernel_env, monkeypatch,
                                                                       docker_test_image):
    from atp_notebook.backends.docker import LABEL_WORKDIR
    from tests.docker_image import WORKDIR

    client, tag = docker_test_image
    monkeypatch.setenv("PATH", f"{os.environ['PATH']}{os.pathsep}{Path(sys.executable).parent}")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / "run"
    nb = execute(BACKENDS, run, kernel_env, after_parameters=(
        f"IMAGE = Image(tag={tag!r}, toolchain=DEFAULT_IMAGE.toolchain, "
        f"mathlib_rev=DEFAULT_IMAGE.mathlib_rev, workdir={WORKDIR!r})"
    ))
    doctor = _texts(_cell(nb, "!atp-notebook doctor"))
    assert _doctor_lines(doctor) == {"local": "ok ", "docker": "ok ", "modal": "no "}, doctor
    assert _texts(_cell(nb, "DOCKER_OK = docker_check.ok")).startswith("Docker cells: run\n")
    # the magics, on Docker in copy mode through --option
    assert f"Using the docker backend: image {tag}" in _texts(
        _cell(nb, "%lean_sandbox use auto --workdir"))
    assert "✓ Scratch.lean: no messages · imports loaded · docker" in _texts(_cell(nb, "theorem reverse_twice"))
    assert re.fullmatch(r"Synced in: up to date \([^)]*\); out: up to date \([^)]*\)\.\n",
                        _texts(_cell(nb, "%lean_sandbox sync")))
    # what a command sees in a container
    bind = _texts(_cell(nb, "DockerBackend(DockerConfig(image=IMAGE))"))
    assert re.match(r"docker: open \d+\.\d\d s, command \d+\.\d ms \(median\)", bind)
    for line in (f"user            {os.getuid()}:{os.getgid()}\n", "interfaces      lo \n", "CapEff: 0000000000000000\n", "NoNewPrivs: 1\n",
                 "lean            Lean (version 4.26.0"):
        assert line in bind, bind
    copy = _texts(_cell(nb, 'DockerConfig(image=IMAGE, sync="copy")'))
    assert re.search(r"^sync in, nothing changed +\d+\.\d\d s   sync in: up to date", copy, re.M), copy
    assert re.search(r"^sync in, one file changed +\d+\.\d\d s   sync in: 1 copied", copy, re.M), copy
    assert re.search(r"^sync out, one file made +\d+\.\d\d s   sync out: 1 copied", copy, re.M), copy
    assert "on the host: made in the sandbox" in copy
    # every container the notebook started is gone
    left = [c for c in client.api.containers(all=True, filters={"label": LABEL_WORKDIR})
            if c["Labels"].get(LABEL_WORKDIR, "").startswith(str(run))]
    assert not left


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
    source = (FIXTURES / f"{name}.lean").read_text()
    return f"%%lean_sandbox {line}\n{source}"


def _interrupt_while_running(kernel: Kernel, code: str) -> dict:
    """Run ``code``, interrupt the kernel 1.5 s in; the reply, a one-line LeanCheckInterrupted within 10 s."""
    msg_id = kernel.client.execute(code)
    time.sleep(1.5)
    start = time.monotonic()
    kernel.manager.interrupt_kernel()
    reply = kernel.reply_to(msg_id, timeout=30)
    assert time.monotonic() - start < 10
    assert reply["status"] == "error" and reply["ename"] == "LeanCheckInterrupted", reply.get("traceback")
    return reply


def test_interrupting_the_kernel_cancels_the_check_and_keeps_the_session(kernel):
    content, _ = kernel.run(_lean_cell("ok_add"))
    assert content["status"] == "ok"
    kernel.run("import os; os.environ['STANDIN_SLEEP'] = '30'")
    reply = _interrupt_while_running(kernel, _lean_cell("ok_add", "--cold --out res"))
    assert len(reply["traceback"]) == 1 and "session kept" in reply["traceback"][0]
    kernel.run("del os.environ['STANDIN_SLEEP']")
    content, _ = kernel.run(_lean_cell("unknown_ident", "--no-raise --out r"))
    assert content["status"] == "ok"
    content, out = kernel.run("print(res.exit_code, r.errors[0].column, m.kernel.opened, m.kernel.is_open)")
    assert out.split() == ["130", "44", "1", "True"]


def test_interrupting_a_warm_check_kills_the_repl_and_the_next_cell_works(kernel):
    # a REPL that takes 30 s over this body (the env of the REPL started next)
    kernel.run("import os; os.environ['STANDIN_REPL_SLOW'] = \"add_zero':30\"")
    _interrupt_while_running(kernel, _lean_cell("ok_add", "--out res"))
    kernel.run("del os.environ['STANDIN_REPL_SLOW']")
    content, _ = kernel.run(_lean_cell("unknown_ident", "--no-raise --out r"))
    assert content["status"] == "ok"
    content, out = kernel.run("print(res.exit_code, res.how, r.how, r.errors[0].column, m.kernel.repl.starts, "
                              "m.kernel.opened)")
    assert out.split() == ["130", "repl", "repl", "44", "2", "1"]


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
        assert process_alive(pid)
    finally:
        k.client.stop_channels()
        k.manager.shutdown_kernel(now=False)  # a shutdown_request, as JupyterLab sends
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid)

