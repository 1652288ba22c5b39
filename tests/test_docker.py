"""The Docker backend on the real engine: the contract in both sync modes, plus its own rules.

The image is built here from nothing (``tests/docker_image.py``: static
busybox FROM scratch plus the stand-in toolchain). Outside CI these tests skip
when there is no engine; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, replace

import pytest

from atp_notebook.backends.base import AtpError, BackendUnavailableError, SandboxDiedError
from tests.conftest import in_ci, unavailable
from tests.contract import ECHO_LOOP, ContractTests, proc_state, take_lines
from tests.docker_image import BAKED_LAKE, STANDIN, WORKDIR, ImageUnavailable, ensure_test_image


try:
    import docker  # noqa: F401
except ImportError:
    if in_ci():
        raise
    pytest.skip("the docker SDK is not installed: pip install 'atp-notebook[docker]'", allow_module_level=True)

from atp_notebook.backends.docker import (  # noqa: E402
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    DockerBackend,
    DockerConfig,
    bind_user,
    collect_garbage,
    describe_state,
    find_orphans,
)
from atp_notebook.backends.docker_client import connect_docker  # noqa: E402
from atp_notebook.images import Image  # noqa: E402

#: Every container these tests start carries this label with this run's id.
RUN_LABEL = "atp-notebook.test-run"
RUN_ID = uuid.uuid4().hex
RUN_LABELS = {RUN_LABEL: RUN_ID}


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _no_container_left_behind():
    """After the whole run, no container of this run may remain (stragglers are removed)."""
    yield
    try:
        client = connect_docker(timeout=30)
    except BackendUnavailableError:
        return
    try:
        left = client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"})
        for info in left:
            client.api.remove_container(info["Id"], force=True, v=True)
        names = [(info.get("Names") or ["?"])[0] for info in left]
        assert not left, f"the Docker tests left containers behind (now removed): {names}"
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = connect_docker(timeout=60)
    except BackendUnavailableError as exc:
        unavailable(str(exc))
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_client) -> Image:
    try:
        tag = ensure_test_image(docker_client)
    except ImageUnavailable as exc:
        unavailable(f"cannot build the Docker test image: {exc}")
    return Image(tag=tag, workdir=WORKDIR)


@pytest.fixture
def docker_backend(docker_client, test_image):
    """``docker_backend(**config) -> DockerBackend`` on the test image, labelled with this run."""

    def make(**config) -> DockerBackend:
        config.setdefault("image", test_image)
        config.setdefault("kill_grace_s", 1.0)
        config["labels"] = {**config.get("labels", {}), **RUN_LABELS}
        return DockerBackend(DockerConfig(**config))

    return make


@pytest.fixture(params=["bind", "copy"])
def sync_mode(request) -> str:
    return request.param


def wait_stopped(client, container_id: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not client.api.inspect_container(container_id)["State"]["Running"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"container {container_id[:12]} still runs")


def container_exists(client, container_id: str) -> bool:
    return bool(client.api.containers(all=True, filters={"id": container_id}))


# -- the contract, in both sync modes -----------------------------------------------------------


class TestBindContract(ContractTests):
    @pytest.fixture
    def make_backend(self, docker_backend):
        return lambda **config: docker_backend(sync="bind", **config)


class TestCopyContract(ContractTests):
    @pytest.fixture
    def make_backend(self, docker_backend):
        return lambda **config: docker_backend(sync="copy", **config)


# -- configuration ----------------------------------------------------------------------------------


def test_config_round_trips_through_a_dict():
    config = DockerConfig(
        image=Image(tag="x/y:1", workdir="/w"),
        volumes=(("/host/a", "/root/.a"),),
        network="bridge",
        sync="copy",
        memory="4g",
        cpus=1.5,
        pids_limit=100,
        user="1000:1000",
        kill_grace_s=0.5,
        docker_host="tcp://engine:2375",
        labels={"team": "lean"},
        env={"A": "1"},
    )
    data = asdict(config)
    assert data["volumes"] == (("/host/a", "/root/.a"),)
    as_json = {**data, "volumes": [list(v) for v in config.volumes]}
    assert DockerConfig.from_dict(as_json) == config
    assert DockerConfig().network == "none" and DockerConfig().sync == "bind"


def test_config_rejects_unknown_sync_mode_and_relative_targets():
    with pytest.raises(ValueError, match="'bind' or 'copy'"):
        DockerConfig(sync="rsync")
    with pytest.raises(ValueError, match="absolute"):
        DockerConfig(volumes=(("/a", "relative"),))


def test_bind_user_is_the_host_user_or_the_workdir_owner_for_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "getgid", lambda: 1001)
    assert bind_user(tmp_path) == "1000:1001"
    monkeypatch.setattr(os, "getuid", lambda: 0)
    st = tmp_path.stat()
    assert bind_user(tmp_path) == f"{st.st_uid}:{st.st_gid}"


def test_describe_state_names_the_cause():
    assert "out of memory" in describe_state({"OOMKilled": True, "ExitCode": 137}, "16m")
    assert "16m" in describe_state({"OOMKilled": True, "ExitCode": 137}, "16m")
    assert "docker kill" in describe_state({"ExitCode": 137})
    # OOMKilled stays set after an earlier OOM; a recorded `docker kill` is what ended it
    killed = describe_state({"OOMKilled": True, "ExitCode": 137}, "16m", kill_signal="9")
    assert "killed from outside (SIGKILL" in killed and "memory" not in killed
    assert "docker stop" in describe_state({"ExitCode": 143})
    assert "code 3" in describe_state({"ExitCode": 3, "Error": ""})
    assert "paused" in describe_state({"Paused": True, "Running": True})


# -- the container -----------------------------------------------------------------------------------


def test_container_is_locked_down_and_labelled(docker_backend, docker_client, tmp_path):
    backend = docker_backend(memory="64m", cpus=0.5, pids_limit=128)
    with backend.session(tmp_path) as session:
        info = docker_client.api.inspect_container(session.container_id)
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Init"] is True
        assert host["PidsLimit"] == 128
        assert host["Memory"] == 64 * 1024 * 1024
        assert host["NanoCpus"] == 500_000_000
        labels = info["Config"]["Labels"]
        assert labels[LABEL_OWNER_PID] == str(os.getpid())
        assert labels["atp-notebook.workdir"] == str(tmp_path)
        assert labels["atp-notebook.session"] in session.container_name
        # nothing but loopback: no network
        devices = session.exec("cat /proc/net/dev").wait().stdout
        assert "lo:" in devices and "eth0" not in devices
        container_id = session.container_id
    assert not container_exists(docker_client, container_id)


def test_session_env_and_mounts_are_fixed_at_creation(docker_backend, tmp_path):
    extra = tmp_path / "creds"
    extra.mkdir()
    (extra / "token").write_text("secret\n")
    work = tmp_path / "work"
    backend = docker_backend(volumes=((str(extra), "/mnt/vol"),))
    with backend.session(work, env={"SESSION_VAR": "s"}, mounts=[(str(extra), "/root/.creds")]) as session:
        result = session.exec("echo $SESSION_VAR; cat /mnt/vol/token /root/.creds/token").wait()
    assert result.stdout == "s\nsecret\nsecret\n"


def test_files_made_in_bind_mode_belong_to_the_workdir_owner(docker_backend, tmp_path):
    # The tests may run as root: then the session runs as the workdir's owner.
    work = tmp_path / "owned"
    work.mkdir()
    if os.getuid() == 0:
        os.chown(work, 1234, 1234)
    expected = (work.stat().st_uid, work.stat().st_gid)
    with docker_backend(sync="bind").session(work) as session:
        result = session.exec("id -u; id -g; mkdir sub; echo x > sub/made.txt").wait()
    assert result.stdout.split() == [str(expected[0]), str(expected[1])]
    for path in (work / "sub", work / "sub" / "made.txt"):
        assert (path.stat().st_uid, path.stat().st_gid) == expected


def test_user_can_be_configured(docker_backend, tmp_path):
    with docker_backend(sync="copy", user="4321:4321").session(tmp_path) as session:
        assert session.exec("id -u").wait().stdout == "4321\n"


def test_baked_cache_is_linked_into_the_workdir(docker_backend, test_image, tmp_path, sync_mode):
    image = replace(test_image, baked_lake=BAKED_LAKE)
    with docker_backend(image=image, sync=sync_mode).session(tmp_path / "my project") as session:
        result = session.exec("pwd; cat .lake/MARKER").wait()
    assert result.stdout == f"{WORKDIR}\nbaked\n"


def test_standin_lean_checks_a_file_in_the_container(docker_backend, tmp_path, sync_mode):
    fixtures = STANDIN / "fixtures"
    shutil.copy(fixtures / "sorry_warn.lean", tmp_path / "Sorry.lean")
    expected = (fixtures / "sorry_warn.out.jsonl").read_text().replace("{file}", "Sorry.lean")
    with docker_backend(sync=sync_mode).session(tmp_path) as session:
        with session.exec("lake env lean --json Sorry.lean") as handle:
            lines = list(handle.stream())
            result = handle.wait()
    assert (result.exit_code, result.stderr) == (0, "")
    assert lines == expected.splitlines()


def test_close_twice_removes_the_container_once(docker_backend, docker_client, tmp_path, sync_mode):
    session = docker_backend(sync=sync_mode).session(tmp_path)
    session.close()
    session.close()
    assert not container_exists(docker_client, session.container_id)
    assert "closed" in repr(session)


# -- killing --------------------------------------------------------------------------------------------

#: A command whose tree a process-group kill would not reach: a grandchild in a
#: session of its own (setsid), orphaned by its subshell.
ESCAPING_TREE = "(setsid sleep 30 & echo $! > orphan.pid); sleep 30 & echo $! > child.pid; echo up; wait"


def test_cancel_kills_descendants_that_left_the_process_group(docker_backend, tmp_path, sync_mode):
    # copy mode runs as a non-root user: the kill exec must still see (and kill) its processes
    config = {"user": "4321:4321"} if sync_mode == "copy" else {}
    with docker_backend(sync=sync_mode, **config).session(tmp_path) as session:
        handle = session.exec(ESCAPING_TREE)
        assert next(handle.stream()) == "up"
        handle.cancel()
        assert handle.wait().exit_code == 130
        time.sleep(0.3)
        assert proc_state(session, "orphan.pid") == "dead"
        assert proc_state(session, "child.pid") == "dead"
        # the kill spared the container's init and idle process, and the other commands
        other = session.exec("echo $ATP_EXEC_TOKEN; sleep 30")
        token = next(other.stream())
        assert len(token) == 32  # every command carries its own tag
        assert session.exec("echo $ATP_EXEC_TOKEN").wait().stdout.strip() not in {"", token}
        other.cancel()
        assert other.wait().exit_code == 130


# -- death ----------------------------------------------------------------------------------------------


def test_container_killed_from_outside_is_reported_on_next_exec(docker_backend, docker_client, tmp_path, sync_mode):
    with docker_backend(sync=sync_mode).session(tmp_path) as session:
        assert session.exec("echo alive").wait().stdout == "alive\n"
        docker_client.api.kill(session.container_id)
        wait_stopped(docker_client, session.container_id)
        with pytest.raises(SandboxDiedError, match=r"killed from outside \(SIGKILL, exit code 137"):
            session.exec("true")
        with pytest.raises(SandboxDiedError, match="gone"):  # and it stays dead
            session.exec("true")
        if sync_mode == "copy":
            with pytest.raises(SandboxDiedError):
                session.sync_in()
    assert not container_exists(docker_client, session.container_id)


def test_container_killed_while_a_command_runs(docker_backend, docker_client, tmp_path):
    with docker_backend().session(tmp_path) as session:
        handle = session.exec("echo started; sleep 30")
        assert next(handle.stream()) == "started"
        docker_client.api.kill(session.container_id)
        result = handle.wait()
        assert result.exit_code == 137
        assert "is gone: it was killed from outside" in result.stderr
        with pytest.raises(SandboxDiedError):
            session.exec("true")


def test_a_command_killing_itself_gets_137_and_no_note(docker_backend, tmp_path):
    with docker_backend().session(tmp_path) as session:
        result = session.exec("echo before; kill -KILL $$").wait()
        assert (result.exit_code, result.stdout) == (137, "before\n")
        assert "atp_notebook" not in result.stderr  # (busybox sh itself may say "Killed")
        assert session.exec("echo still fine").wait().stdout == "still fine\n"


def test_container_removed_from_outside(docker_backend, docker_client, tmp_path):
    session = docker_backend().session(tmp_path)
    docker_client.api.remove_container(session.container_id, force=True)
    with pytest.raises(SandboxDiedError, match="removed"):
        session.exec("true")
    session.close()  # already gone is fine


def test_out_of_memory_is_reported(docker_backend, docker_client, tmp_path):
    with docker_backend(memory="16m").session(tmp_path) as session:
        # one 200 MB read buffer: dd meets the OOM killer at once (a growing
        # `head | tail` pipeline can thrash near the limit for a minute first)
        result = session.exec("dd if=/dev/zero of=/dev/null bs=200M count=1", timeout_s=60).wait()
        assert result.exit_code == 137
        assert "out-of-memory killer (container memory limit 16m)" in result.stderr
        # the OOM killer took the command, not the sandbox: it still works
        # (and if it had taken the sandbox, the next exec would say so)
        try:
            assert session.exec("echo fine").wait().stdout == "fine\n"
        except SandboxDiedError as exc:
            assert "out of memory" in str(exc)
            return
        # Docker keeps State.OOMKilled set from now on; a later `docker kill` is still named as such
        docker_client.api.kill(session.container_id)
        wait_stopped(docker_client, session.container_id)
        with pytest.raises(SandboxDiedError, match="killed from outside"):
            session.exec("true")


def test_a_command_that_outlives_its_kill_takes_the_container_down(docker_backend, tmp_path):
    # Simulate a kill exec that cannot run (say Docker refuses every new exec):
    # after the grace period and a few seconds more, the container itself goes.
    with docker_backend().session(tmp_path) as session:
        session.exec_detached = lambda script: None
        start = time.monotonic()
        result = session.exec("sleep 60", timeout_s=1).wait()
        assert result.exit_code == 124
        assert time.monotonic() - start < 20
        with pytest.raises(SandboxDiedError, match="outlived its kill"):
            session.exec("true")


# -- errors before a session exists -------------------------------------------------------------------------


def test_missing_image_says_how_to_build_it(docker_backend, docker_client, tmp_path):
    backend = docker_backend(image=Image(tag="atp-notebook-test/no-such-image:0"))
    with pytest.raises(BackendUnavailableError, match=r"no-such-image:0 is not on this engine.*atp-notebook image build"):
        backend.session(tmp_path)
    assert not docker_client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}", "status": "created"})


def test_a_missing_mount_source_is_explained(docker_backend, tmp_path):
    backend = docker_backend(volumes=((str(tmp_path / "not-there"), "/mnt/x"),))
    with pytest.raises(AtpError, match="does not exist.*sync='copy'"):
        backend.session(tmp_path / "work")


def test_without_an_engine_ci_fails_and_elsewhere_skips(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run, not skip"):
        unavailable("no engine")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        unavailable("no engine")


def test_no_daemon_is_one_clear_error(tmp_path):
    backend = DockerBackend(DockerConfig(docker_host="unix:///nonexistent/docker.sock"))
    with pytest.raises(BackendUnavailableError, match="start Docker.*DOCKER_HOST"):
        backend.session(tmp_path)


# -- copy mode ----------------------------------------------------------------------------------------------


def test_copy_mode_moves_only_what_changed(docker_backend, tmp_path):
    for i in range(20):
        (tmp_path / f"F{i}.lean").write_text(f"-- file {i}\n")
    with docker_backend(sync="copy").session(tmp_path) as session:
        assert session.exec("ls | wc -l").wait().stdout.strip() == "20"
        assert session.sync_in().copied == []
        (tmp_path / "F3.lean").write_text("-- changed\n")
        report = session.sync_in()
        assert report.copied == ["F3.lean"]
        assert session.exec("cat F3.lean").wait().stdout == "-- changed\n"
        session.exec("echo new > New.lean; rm F4.lean").wait()
        report = session.sync_out()
        assert (report.copied, report.deleted) == (["New.lean"], ["F4.lean"])
    assert not (tmp_path / "F4.lean").exists()


def test_copy_mode_conflict_keeps_both_versions(docker_backend, tmp_path):
    (tmp_path / "A.lean").write_text("base\n")
    with docker_backend(sync="copy").session(tmp_path) as session:
        session.exec("echo from-sandbox > A.lean").wait()
        (tmp_path / "A.lean").write_text("from-host\n")
        report = session.sync_out()
        assert report.conflicts == [("A.lean", "A.lean.conflict-sandbox")]
        assert (tmp_path / "A.lean").read_text() == "from-host\n"
        assert (tmp_path / "A.lean.conflict-sandbox").read_text() == "from-sandbox\n"


def test_copy_mode_sandbox_links_never_reach_outside_the_workdir(docker_backend, tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    script = (
        f"ln -s {outside} escape && mkdir -p {outside} && echo pwned > escape/evil.txt && "
        "ln -s /etc/passwd passwd-link && ln -s ../../.. up && echo ok"
    )
    with docker_backend(sync="copy").session(work) as session:
        assert session.exec(script).wait().stdout == "ok\n"
        session.sync_out()
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in work.iterdir()) == []  # links are not synced


def test_copy_mode_refuses_to_write_through_a_host_link(docker_backend, tmp_path):
    from atp_notebook.sync import SyncError

    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "hostlink").symlink_to(outside)  # the user's own link on the host (never synced)
    session = docker_backend(sync="copy").session(work)
    try:
        session.exec("mkdir hostlink && echo pwned > hostlink/evil.txt").wait()
        with pytest.raises(SyncError, match="hostlink"):
            session.sync_out()
    finally:
        with pytest.raises(SyncError):  # close pulls too, and says so
            session.close()
    session.close()
    assert list(outside.iterdir()) == []
    assert os.readlink(work / "hostlink") == str(outside)


def test_copy_mode_stdin_staged_by_put_archive(docker_backend, tmp_path):
    """Where the exec socket can't be half-closed (TLS, SSH), stdin travels as a file."""
    (tmp_path / "a.txt").write_text("one\n")
    # a non-root user: the staged file must be readable and removable by it
    with docker_backend(sync="copy", user="4321:4321").session(tmp_path) as session:
        session.stdin_by_socket = False
        assert session.run_script("cat; echo; cat", b"abc") == (0, b"abc\n", b"")
        (tmp_path / "b.txt").write_text("two\n")
        assert session.sync_in().copied == ["b.txt"]
        assert session.exec("cat b.txt; ls -a /tmp | grep -c atp-stdin || true").wait().stdout == "two\n0\n"


def test_interactive_stdin_outlasts_the_client_timeout(docker_backend, tmp_path, monkeypatch):
    """The exec socket waits as long as the command: a write blocked longer than the client's timeout goes on."""
    def impatient(base_url=None):
        return connect_docker(timeout=1, base_url=base_url)

    monkeypatch.setattr("atp_notebook.backends.docker.connect_docker", impatient)
    with docker_backend().session(tmp_path) as session:
        handle = session.exec("sleep 2.5; wc -c", stdin=True, timeout_s=0)
        handle.write(b"x" * (8 << 20))  # far more than the socket and pipe buffers: blocks until `wc` reads
        handle.close_stdin()
        assert handle.wait().stdout.strip() == str(8 << 20)


def test_interactive_stdin_without_half_close(docker_backend, tmp_path):
    """Over TLS/SSH the socket can't be half-closed: close_stdin does nothing, writing still works."""
    with docker_backend().session(tmp_path) as session:
        session.stdin_by_socket = False
        handle = session.exec(ECHO_LOOP, stdin=True, timeout_s=0)
        handle.write("a\n")
        assert take_lines(handle.cursor(), 1) == ["got a"]
        handle.close_stdin()
        time.sleep(0.5)
        assert not handle.finished  # no EOF reached it
        handle.cancel()
        assert handle.wait().exit_code == 130


def test_run_script_returns_raw_bytes_and_exit_code(docker_backend, tmp_path):
    with docker_backend(sync="copy").session(tmp_path) as session:
        code, out, err = session.run_script("cat; printf '\\377' >&2; exit 5", bytes(range(256)) * 1000)
    assert (code, out, err) == (5, bytes(range(256)) * 1000, b"\xff")


# -- gc --------------------------------------------------------------------------------------------------


ORPHAN_MAKER = """
import os, sys
from pathlib import Path
from atp_notebook.backends.docker import DockerBackend, DockerConfig
from atp_notebook.images import Image
backend = DockerBackend(DockerConfig(image=Image(tag=sys.argv[1]), labels={sys.argv[2]: sys.argv[3]}))
session = backend.session(Path(sys.argv[4]))
print(session.container_id, flush=True)
os._exit(0)  # dies without closing: the container is orphaned
"""


def test_gc_removes_containers_whose_owner_died(docker_backend, docker_client, test_image, tmp_path, capsys):
    from atp_notebook import cli

    made = subprocess.run(
        [sys.executable, "-c", ORPHAN_MAKER, test_image.tag, RUN_LABEL, RUN_ID, str(tmp_path / "orphan")],
        capture_output=True, text=True, check=True, timeout=120,
    )
    orphan_id = made.stdout.strip()
    with docker_backend().session(tmp_path / "alive") as alive:
        found = find_orphans(docker_client, match_labels=RUN_LABELS)
        assert [o.container_id for o in found] == [orphan_id]
        assert "owner process" in found[0].reason and "is gone" in found[0].reason

        assert cli.main(["gc", "--dry-run"]) == 0
        assert "would remove atp-notebook-" in capsys.readouterr().out
        assert container_exists(docker_client, orphan_id)

        removed = collect_garbage(docker_client, match_labels=RUN_LABELS)
        assert [o.container_id for o in removed] == [orphan_id]
        assert not container_exists(docker_client, orphan_id)
        assert container_exists(docker_client, alive.container_id)
        assert alive.exec("echo kept").wait().stdout == "kept\n"


def test_gc_judges_other_hosts_by_age_only(docker_client, test_image):
    labels = {**RUN_LABELS, LABEL_OWNER_PID: "1", LABEL_OWNER_HOST: "some-other-host.invalid"}
    created = docker_client.api.create_container(test_image.tag, command=["true"], labels=labels)
    try:
        assert find_orphans(docker_client, match_labels=RUN_LABELS) == []  # young: kept
        removed = collect_garbage(docker_client, max_age_hours=0, match_labels=RUN_LABELS)
        assert [o.container_id for o in removed] == [created["Id"]]
        assert "some-other-host.invalid" in removed[0].reason
    finally:
        if container_exists(docker_client, created["Id"]):
            docker_client.api.remove_container(created["Id"], force=True)


def test_gc_never_touches_containers_without_our_label(docker_client, test_image):
    created = docker_client.api.create_container(
        test_image.tag, command=["true"], labels={**RUN_LABELS, "atp-notebook.owner-host": "x"}
    )
    try:
        assert collect_garbage(docker_client, max_age_hours=0, match_labels=RUN_LABELS) == []
        assert container_exists(docker_client, created["Id"])
    finally:
        docker_client.api.remove_container(created["Id"], force=True)


# -- warm checks through the Lean REPL (the stand-in) in a container ------------------------------


def test_warm_checks_in_a_container(docker_backend, sync_mode, tmp_path):
    from atp_notebook.kernel import KernelSession
    from tests.test_repl import exercise_warm_checks

    kernel = KernelSession("docker", workdir=tmp_path / "work", say=lambda _: None,
                           backend_factory=lambda name, **c: docker_backend(sync=sync_mode))
    try:
        exercise_warm_checks(kernel)
    finally:
        kernel.close()
