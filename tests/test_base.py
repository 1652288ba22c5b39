"""The seed's contract pieces that need no backend: configs, wrap_command, handles."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from atp_notebook.backends.base import BackendConfig, CommandHandle, CommandResult, wrap_command
from atp_notebook.backends.machinery import remote_command, remote_kill_script
from atp_notebook.images import DEFAULT_IMAGE, Image


@dataclass
class _VolumesConfig(BackendConfig):
    volumes: tuple[tuple[str, str], ...] = ()
    labels: dict = field(default_factory=dict)


def test_from_dict_ignores_unknown_keys_and_restores_tuples():
    data = {
        "timeout_s": 60,
        "env": {"A": "1"},
        "volumes": [["/a", "/b"], ["/c", "/d"]],
        "not_a_field": 1,
        "image": dataclasses.asdict(DEFAULT_IMAGE),
    }
    config = _VolumesConfig.from_dict(data)
    assert config.volumes == (("/a", "/b"), ("/c", "/d"))
    assert config.timeout_s == 60 and config.env == {"A": "1"}
    assert config.image == DEFAULT_IMAGE
    assert _VolumesConfig.from_dict(dataclasses.asdict(config)) == config


def test_config_defaults_follow_the_seed():
    config = BackendConfig()
    assert (config.image, config.timeout_s, dict(config.env)) == (DEFAULT_IMAGE, 1800, {})


def test_wrap_command_cds_and_links_the_baked_cache():
    assert wrap_command("/workspace", "", "lake build") == "cd /workspace; lake build"
    wrapped = wrap_command("/workspace", "/opt/m/.lake", "lake build")
    assert wrapped.startswith("cd /workspace && ")
    assert "ln -sfn /opt/m/.lake .lake" in wrapped and wrapped.endswith("; lake build")
    assert wrap_command("/my dir", "", "true") == "cd '/my dir'; true"


def test_image_is_frozen_and_names_a_matching_pair():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_IMAGE.tag = "x"  # type: ignore[misc]
    assert DEFAULT_IMAGE.lean_version == DEFAULT_IMAGE.mathlib_rev
    assert DEFAULT_IMAGE.tag.endswith(":" + DEFAULT_IMAGE.lean_version)
    assert Image("t").workdir == "/workspace"


def test_abstract_handle_and_result():
    handle = CommandHandle()
    with pytest.raises(NotImplementedError):
        handle.wait()
    assert CommandResult(0, "", "", 0.0).ok and not CommandResult(1, "", "", 0.0).ok


def test_remote_kill_script_kills_the_recorded_group(tmp_path):
    """The Docker/Modal kill path, exercised with real processes on the host."""
    command = "sleep 30 & echo $! > child.pid; echo up; wait"
    proc = subprocess.Popen(
        ["/bin/sh", "-c", remote_command(command, "t1")], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "up\n"
    child = int((tmp_path / "child.pid").read_text())
    start = time.monotonic()
    subprocess.run(["/bin/sh", "-c", remote_kill_script("t1", grace_s=1)], check=True, timeout=20)
    assert proc.wait(timeout=10) != 0
    assert time.monotonic() - start < 10
    state = subprocess.run(["sh", "-c", f"cut -d' ' -f3 /proc/{child}/stat 2>/dev/null"], capture_output=True, text=True)
    assert state.stdout.strip() in {"", "Z"}


def test_remote_command_keeps_exit_code_and_stdin(tmp_path):
    out = subprocess.run(
        ["/bin/sh", "-c", remote_command("read x; echo got $x; exit 7", "t2")],
        cwd=tmp_path, input="hello\n", capture_output=True, text=True, timeout=20,
    )
    assert (out.returncode, out.stdout) == (7, "got hello\n")


def test_watchdog_runs_due_callbacks_and_forgets_cancelled_ones():
    import gc
    import threading
    import weakref

    from atp_notebook.backends.machinery import WATCHDOG

    fired = threading.Event()
    WATCHDOG.schedule(0.05, fired.set)

    class Payload:
        def __call__(self) -> None:
            raise AssertionError("cancelled callback ran")

    payload = Payload()
    ref = weakref.ref(payload)
    WATCHDOG.cancel(WATCHDOG.schedule(0.1, payload))
    del payload
    gc.collect()
    assert ref() is None  # a cancelled entry keeps nothing alive
    assert fired.wait(5)
    time.sleep(0.2)  # the cancelled one would have fired by now
