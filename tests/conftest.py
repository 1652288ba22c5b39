"""Shared fixtures: the Lean corpus, the stand-in toolchain, temp workdirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STANDIN_BIN = REPO / "tests" / "standin" / "bin"


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
