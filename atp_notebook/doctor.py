"""Which backends can run here, and for each one that can't, what to do about it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from atp_notebook.images import DEFAULT_IMAGE

__all__ = ["Check", "check_docker", "check_local", "check_modal", "report", "run_all"]


@dataclass(frozen=True)
class Check:
    """The verdict on one backend."""

    backend: str
    ok: bool
    detail: str  # what was found
    fix: str = ""  # what to do when not ok

    def line(self) -> str:
        mark = "ok " if self.ok else "no "
        text = f"[{mark}] {self.backend:<6} {self.detail}"
        return text if self.ok else f"{text}\n         -> {self.fix}"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc.__class__.__name__})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def check_local() -> Check:
    """The local backend needs ``lake`` and ``lean`` (elan's) on PATH; ``repl`` makes its checks warm."""
    lake, lean = shutil.which("lake"), shutil.which("lean")
    if lake and lean:
        warm = ("warm checks: Lean REPL found" if shutil.which("repl") else
                "no `repl` on PATH: checks run cold (build leanprover-community/repl at this toolchain "
                "and put it on PATH for warm checks)")
        return Check("local", True, f"{_version([lean, '--version'])}; {warm} (not isolated: #eval runs on this host)")
    missing = " and ".join(n for n, p in (("lean", lean), ("lake", lake)) if not p)
    return Check(
        "local",
        False,
        f"{missing} not found on PATH",
        "install elan (https://github.com/leanprover/elan), then "
        f"`elan default {DEFAULT_IMAGE.toolchain}`",
    )


def check_docker(tag: str = DEFAULT_IMAGE.tag) -> Check:
    """Docker needs the SDK, a reachable daemon, and the image built locally."""
    try:
        import docker  # noqa: F401
    except ImportError:
        return Check("docker", False, "the docker SDK is not installed", "pip install 'atp-notebook[docker]'")
    from atp_notebook.backends.docker_client import connect_docker

    try:
        client = connect_docker(timeout=5)
    except Exception as exc:  # noqa: BLE001 - the message is the verdict
        return Check("docker", False, "no Docker daemon answered", str(exc))
    try:
        import docker.errors

        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            return Check(
                "docker",
                False,
                f"daemon {client.version().get('Version', '?')} is up, image {tag} is missing",
                "build it: `atp-notebook image build` (or pass --image TAG of an image you have)",
            )
        return Check("docker", True, f"daemon {client.version().get('Version', '?')}, image {tag}")
    finally:
        client.close()


def check_modal() -> Check:
    """Modal needs the SDK and credentials (``modal setup`` or the token variables)."""
    try:
        import modal  # noqa: F401
    except ImportError:
        return Check("modal", False, "the modal SDK is not installed", "pip install 'atp-notebook[modal]'")
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return Check("modal", True, "credentials from MODAL_TOKEN_ID/MODAL_TOKEN_SECRET")
    config = Path(os.environ.get("MODAL_CONFIG_PATH", Path.home() / ".modal.toml"))
    if config.is_file():
        return Check("modal", True, f"credentials in {config}")
    return Check(
        "modal",
        False,
        "no Modal credentials",
        "run `modal setup`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET",
    )


def run_all(tag: str = DEFAULT_IMAGE.tag) -> list[Check]:
    return [check_local(), check_docker(tag), check_modal()]


def report(tag: str = DEFAULT_IMAGE.tag) -> tuple[str, bool]:
    """The doctor's text, and whether at least one backend can run."""
    checks = run_all(tag)
    usable = [c.backend for c in checks if c.ok]
    lines = [c.line() for c in checks]
    lines.append(
        f"usable here: {', '.join(usable)}" if usable else "no backend can run here yet: follow one '->' above"
    )
    return "\n".join(lines), bool(usable)
