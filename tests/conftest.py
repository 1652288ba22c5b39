"""Shared fixtures: the Lean corpus, the stand-in toolchain, temp workdirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.interactiveshell import InteractiveShell

from atp_notebook.backends import get_backend
from atp_notebook.magics import LeanSandbox

REPO = Path(__file__).resolve().parents[1]
#: The stand-in toolchain (``lean``, ``lake``, ``repl``) and the Lean files it knows.
STANDIN = REPO / "tests" / "standin"
STANDIN_BIN = STANDIN / "bin"
FIXTURES = STANDIN / "fixtures"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """A test's prerequisite is missing: skip with ``reason``, but fail under ``CI=true``."""
    if in_ci():
        pytest.fail(f"{reason} -- under CI=true this test must run, not skip")
    pytest.skip(reason)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def corpus_path() -> Path:
    """Where the recorded Lean corpus lives: ``$ATP_LEAN_CORPUS`` or ``../shared/lean-corpus``."""
    env = os.environ.get("ATP_LEAN_CORPUS")
    return Path(env) if env else REPO.parent / "shared" / "lean-corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The corpus directory; skips outside CI when absent, fails under ``CI=true``."""
    path = corpus_path()
    if not (path / "README.md").is_file():
        msg = f"Lean corpus not found at {path} (set ATP_LEAN_CORPUS)"
        if in_ci():
            pytest.fail(msg + " -- under CI=true the corpus tests must run")
        pytest.skip(msg)
    return path


@pytest.fixture
def standin_env(monkeypatch) -> dict[str, str]:
    """Put the stand-in ``lean``/``lake`` first on PATH (for the local backend)."""
    path = f"{STANDIN_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    return {"PATH": path}


# -- IPython with the extension loaded --------------------------------------------------------

def lean(name: str) -> str:
    """A stand-in fixture's source, as a cell body (the stand-in knows it by content)."""
    return (FIXTURES / f"{name}.lean").read_text(encoding="utf-8")


def cell(name: str, line: str = "") -> str:
    return f"%%lean_sandbox {line}\n{lean(name)}".replace("%%lean_sandbox \n", "%%lean_sandbox\n")


def magics_of(shell: InteractiveShell) -> LeanSandbox:
    return next(c for c in shell.configurables if isinstance(c, LeanSandbox))


@pytest.fixture
def ip(tmp_path, standin_env, monkeypatch):
    """IPython with the extension loaded, its cwd in a fresh temp folder."""
    monkeypatch.chdir(tmp_path)
    for knob in ("STANDIN_SLEEP", "STANDIN_LINE_DELAY", "STANDIN_FLOOD"):
        monkeypatch.delenv(knob, raising=False)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "atp_notebook")
    # whatever the backend asked for, run locally (with a short kill grace)
    magics_of(shell).kernel.backend_factory = lambda name, **config: get_backend("local", **{"kill_grace_s": 1.0, **config})
    # these shells test the cold check (streaming, floods, timeouts of `lake env lean`);
    # warm checks through the REPL get `warm_ip` (tests/test_repl.py)
    shell.run_line_magic("config", "LeanSandbox.engine = 'lean'")
    yield shell
    shell.run_line_magic("unload_ext", "atp_notebook")
    shell.config.pop("LeanSandbox", None)
    for name in ("res", "r", "bg", "broken", "fixed"):
        shell.user_ns.pop(name, None)


@pytest.fixture
def rich(ip):
    """The same shell, showing runs as a Jupyter kernel does (display + updates), captured."""
    publisher = CapturingDisplayPublisher()
    saved = ip.display_pub
    ip.display_pub = publisher
    ip.run_line_magic("config", "LeanSandbox.view = 'rich'")
    yield publisher
    ip.display_pub = saved


