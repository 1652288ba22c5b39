"""What the browser test needs around it: Chromium, a private JupyterLab, screenshots.

Not a conftest: only ``tests/test_browser.py`` imports it.

* :func:`find_chromium`: the system's Chromium (Debian's ``chromium``); no
  browser is downloaded (Playwright's own builds need the network).
* :class:`JupyterLab`: a JupyterLab server started for one test on loopback,
  on a free port, with a random token, over a folder of its own, with every
  Jupyter directory (config, data, runtime, settings, workspaces) private to
  the test, so nothing of the user's set-up leaks in and nothing is left behind.
  Its process group is terminated on :meth:`JupyterLab.stop`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

__all__ = ["JupyterLab", "find_chromium", "free_port"]

#: JupyterLab settings for a test: every cell in the DOM (no windowing, so
#: cells out of view can be found and read), no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def find_chromium() -> str | None:
    """The path of the system's Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLab:
    """A JupyterLab server over ``root`` for one test; ``env`` is added to its (and its kernels') environment.

    The kernelspec ``python3`` runs this interpreter. ``state`` is a folder
    for the server's private Jupyter directories and its log (``lab.log``).
    """

    def __init__(self, root: Path, state: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self.state = Path(state)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.extra_env = dict(env or {})
        self.log_path = self.state / "lab.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The URL of ``path`` (e.g. ``lab/tree/NB.ipynb``), carrying the token."""
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def _prepare(self) -> dict[str, str]:
        dirs = {name: self.state / name for name in ("config", "data", "runtime", "settings", "workspaces")}
        for folder in dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        spec = dirs["data"] / "kernels" / "python3"
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
        }))
        for name, values in LAB_SETTINGS.items():
            path = dirs["settings"] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = dict(os.environ)
        env.update({
            "JUPYTER_CONFIG_DIR": str(dirs["config"]),
            "JUPYTER_PATH": str(dirs["data"]),
            "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
            "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
            "JUPYTER_PLATFORM_DIRS": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60) -> JupyterLab:
        """Start the server and wait until its API answers."""
        env = self._prepare()
        argv = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.news_url=",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.append("--allow-root")  # CI containers run as root
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self._proc = subprocess.Popen(  # noqa: S603
            argv, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self._proc.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as reply:  # noqa: S310 - loopback
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n" + self.log_tail())
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _api(self, method: str, path: str) -> object:
        request = urllib.request.Request(f"{self.base_url}/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback
            body = reply.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Shut every kernel down through the API (kernels run in process groups of their own)."""
        try:
            kernels = self._api("GET", "api/kernels")
            for kernel in kernels or []:  # type: ignore[union-attr]
                self._api("DELETE", f"api/kernels/{kernel['id']}")
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass  # the server's own shutdown stops them too

    def stop(self, grace: float = 10) -> None:
        """Shut the kernels down, terminate the server's process group; kill it if it lingers."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self.shutdown_kernels()
        self._proc = None
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
        finally:
            self._log.close()

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
