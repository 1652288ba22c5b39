"""The seed's contract pieces that need no backend: configs, wrap_command, handles."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from atp_notebook.backends.base import BackendConfig, CommandHandle, CommandResult, wrap_command
from atp_notebook.backends.machinery import EXEC_TOKEN_VAR, remote_kill_script, tagged_env
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


def _state(pid: int) -> str:
    """The process's state letter (``Z`` for a zombie), or ``""`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _wait_for(path, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)
    return int(path.read_text())


# The kill script runs in the sandbox's shell: busybox sh there (the Docker
# test image), dash/bash here; busybox's too where the host has it.
_SHELLS = [["/bin/sh", "-c"]] + ([[shutil.which("busybox"), "sh", "-c"]] if shutil.which("busybox") else [])


@pytest.fixture(params=_SHELLS, ids=lambda argv: " ".join(Path(a).name for a in argv[:-1]))
def kill_shell(request) -> list[str]:
    return request.param


def test_tagged_env_adds_a_tag_that_wins_over_the_callers():
    env = {"A": "1", EXEC_TOKEN_VAR: "forged"}
    assert tagged_env(env, "tok") == {"A": "1", EXEC_TOKEN_VAR: "tok"}
    assert env[EXEC_TOKEN_VAR] == "forged"  # not modified in place


def test_remote_kill_script_kills_every_tagged_process_and_nothing_else(tmp_path, kill_shell):
    """The Docker/Modal kill path, exercised with real processes on the host."""
    token = uuid.uuid4().hex  # the sweep sees every process of this user on the host: be unique
    # a background child, and a double-forked grandchild in a session of its own
    # (which a process-group kill would miss)
    command = (
        "sleep 30 & echo $! > child.pid; "
        "if command -v setsid >/dev/null; then s=setsid; else s=; fi; ($s sleep 30 & echo $! > orphan.pid); "
        "echo up; wait"
    )
    env = tagged_env(os.environ, token)
    proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=env)
    # untagged, and tagged with a token that merely starts like ours: both must survive
    bystanders = [
        subprocess.Popen(["sleep", "30"]),
        subprocess.Popen(["sleep", "30"], env=tagged_env(os.environ, token + "0")),
    ]
    try:
        assert proc.stdout.readline() == "up\n"
        child, orphan = _wait_for(tmp_path / "child.pid"), _wait_for(tmp_path / "orphan.pid")
        start = time.monotonic()
        done = subprocess.run([*kill_shell, remote_kill_script(token, grace_s=1)], timeout=20)
        assert done.returncode == 0  # it never killed itself
        assert proc.wait(timeout=10) != 0
        assert time.monotonic() - start < 10
        time.sleep(0.2)
        assert _state(child) in {"", "Z"} and _state(orphan) in {"", "Z"}
        assert all(b.poll() is None for b in bystanders)
    finally:
        for b in bystanders:
            b.kill()
            b.wait()


def test_remote_kill_script_kills_what_ignores_term_after_the_grace(tmp_path, kill_shell):
    token = uuid.uuid4().hex
    # ignores TERM and keeps forking short-lived tagged children
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"],
        stdout=subprocess.PIPE, text=True, env=tagged_env(os.environ, token),
    )
    assert proc.stdout.readline() == "up\n"
    start = time.monotonic()
    subprocess.run([*kill_shell, remote_kill_script(token, grace_s=0.5)], check=True, timeout=20)
    assert proc.wait(timeout=10) == -9
    assert 0.4 < time.monotonic() - start < 10


def test_remote_kill_script_is_quick_when_only_zombies_are_left(kill_shell):
    token = uuid.uuid4().hex
    zombie = subprocess.Popen(["true"], env=tagged_env(os.environ, token))
    deadline = time.monotonic() + 10
    while _state(zombie.pid) != "Z":  # exited, not reaped yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    start = time.monotonic()
    subprocess.run([*kill_shell, remote_kill_script(token, grace_s=5)], check=True, timeout=20)
    assert time.monotonic() - start < 2  # the grace period was not waited out
    assert zombie.wait(timeout=5) == 0


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
