"""The Modal backend against a fake of the modal SDK, plus the fake against the real SDK.

The fake (``tests/fake_modal.py``) runs "sandboxes" as local processes, so
exec, stdin, streaming, exit codes and files really happen; the backend's
code paths are the real ones. The same contract tests as every backend run
against it, and round trips are counted on the fake's calls.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import sys
import tarfile
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

import atp_notebook.backends.modal as modal_backend
from atp_notebook.backends import get_backend
from atp_notebook.backends.base import BackendUnavailableError, SandboxDiedError, SessionClosedError
from atp_notebook.backends.modal import ModalBackend, ModalConfig
from atp_notebook.images import DEFAULT_IMAGE
from tests import fake_modal
from tests.contract import ContractTests, proc_state
from tests.fake_modal import FakeModal

SECRET_VALUE = "s3cr3t-token-value"


@pytest.fixture
def sandbox_dir(tmp_path_factory) -> Path:
    """The sandbox's workdir: a local directory the fake empties on every sandbox creation."""
    return tmp_path_factory.mktemp("sandbox")


@pytest.fixture
def fake(monkeypatch, sandbox_dir):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-fake")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-fake")
    fake = FakeModal(fresh_dirs=[sandbox_dir], secrets={"lean-secret": {"LEAN_TOKEN": SECRET_VALUE}})
    monkeypatch.setitem(sys.modules, "modal", fake)
    yield fake
    fake.shutdown()


@pytest.fixture
def image(sandbox_dir):
    return replace(DEFAULT_IMAGE, tag="registry.example/lean:test", workdir=str(sandbox_dir), baked_lake="")


@pytest.fixture
def make_backend(fake, image):
    def make(**config):
        return ModalBackend(ModalConfig(**{"image": image, "kill_grace_s": 1.0, **config}))

    return make


class TestModalContract(ContractTests):
    pass


# -- the fake against the installed SDK -------------------------------------------------


def _real(dotted: str):
    obj = importlib.import_module("modal")
    prefix = "modal"
    for part in dotted.split("."):
        prefix += "." + part
        if not hasattr(obj, part):
            importlib.import_module(prefix)
        obj = getattr(obj, part)
    return obj


def _members(cls: type) -> dict[str, object]:
    """What a fake class implements: its own public attributes (plus ``__iter__``)."""
    return {
        name: value
        for name, value in vars(cls).items()
        if not name.startswith("_") or name == "__iter__"
    }


_SIMPLE = (type(None), bool, int, float, str)


def _signature_problems(fake_fn, real_fn) -> list[str]:
    """Every parameter of the fake must exist in the real callable, of a compatible kind and default."""
    fake_sig, real_sig = inspect.signature(fake_fn), inspect.signature(real_fn)
    real = real_sig.parameters
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    fake_pos = [p.name for p in fake_sig.parameters.values() if p.kind in positional]
    real_pos = [p.name for p in real.values() if p.kind in positional]
    problems = []
    if fake_pos != real_pos[: len(fake_pos)]:
        problems.append(f"positional parameters {fake_pos} vs the SDK's {real_pos}")
    for name, p in fake_sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            problems.append("the fake must not take **kwargs (it would hide a misspelt keyword)")
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            if not any(q.kind is inspect.Parameter.VAR_POSITIONAL for q in real.values()):
                problems.append(f"*{name}: the SDK takes no variable positional arguments")
        elif p.kind is inspect.Parameter.KEYWORD_ONLY:
            if name not in real:
                problems.append(f"keyword {name!r} does not exist in the SDK")
            elif real[name].kind not in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                problems.append(f"{name!r} cannot be passed by keyword to the SDK")
        if name in real and p.default is not p.empty:
            d = real[name].default
            if d is real[name].empty:
                problems.append(f"{name!r} is optional in the fake but required by the SDK")
            elif isinstance(d, _SIMPLE) and isinstance(p.default, _SIMPLE) and d != p.default:
                problems.append(f"default of {name!r}: fake {p.default!r}, SDK {d!r}")
    for name, q in real.items():
        required = q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)
        if required and name not in fake_sig.parameters:
            problems.append(f"the SDK requires {name!r}, which the fake does not take")
    return problems


@pytest.mark.parametrize(
    ("fake_cls", "real_name"), list(fake_modal.SURFACE.items()), ids=list(fake_modal.SURFACE.values())
)
def test_the_fake_matches_the_installed_modal_sdk(fake_cls, real_name):
    """Every attribute and keyword the fake implements (so: all the backend can use) exists in ``modal``."""
    real_cls = _real(real_name)
    assert inspect.isclass(real_cls), f"modal.{real_name} is not a class"
    if issubclass(fake_cls, BaseException):
        for base in fake_cls.__mro__[1:]:
            if base in fake_modal.SURFACE:
                real_base = _real(fake_modal.SURFACE[base])
                assert issubclass(real_cls, real_base), f"modal.{real_name} is no longer a {real_base.__name__}"
        return
    problems = []
    for name, member in _members(fake_cls).items():
        where = f"modal.{real_name}.{name}"
        static = inspect.getattr_static(real_cls, name, None)
        if static is None:
            problems.append(f"{where} does not exist")
            continue
        if isinstance(member, property):
            if not isinstance(static, property):
                problems.append(f"{where} is no longer a property")
            continue
        fake_fn = getattr(fake_cls, name)  # a classmethod comes bound, like the SDK's static constructors
        problems += [f"{where}: {p}" for p in _signature_problems(fake_fn, getattr(real_cls, name))]
    assert not problems, "\n".join(problems)


def test_the_fake_module_has_what_the_backend_imports():
    real = importlib.import_module("modal")
    for name in fake_modal.MODULE_ATTRIBUTES:
        assert hasattr(real, name), f"modal.{name} is gone"
    assert set(fake_modal.SURFACE.values()) >= {
        "App", "Image", "Secret", "Sandbox", "container_process.ContainerProcess",
        "io_streams.StreamReader", "io_streams.StreamWriter",
    }


def test_modal_sdk_version_is_1x():
    version = importlib.import_module("modal").__version__
    assert int(version.split(".")[0]) >= 1, version


# -- round trips ------------------------------------------------------------------------


def test_opening_a_session_is_one_sandbox_creation(make_backend, fake, tmp_path):
    with make_backend().session(tmp_path):
        assert fake.calls["Sandbox.create"] == 1
        assert fake.calls["App.lookup"] == 1
        assert fake.calls["Sandbox.exec"] == 1  # the initial sync in: one scan, nothing to push


def test_one_exec_is_one_sandbox_exec(make_backend, fake, tmp_path):
    with make_backend().session(tmp_path) as session:
        fake.reset_counts()
        result = session.exec("echo hi").wait()
        assert result.stdout == "hi\n"
        assert fake.calls["Sandbox.exec"] == 1
        assert fake.calls["Sandbox.poll"] == 0  # the lifetime check is on our clock, not a round trip


def test_sync_of_one_changed_file_in_2000_files_is_one_archive(make_backend, fake, tmp_path):
    for i in range(2000):
        sub = tmp_path / f"d{i // 100}"
        sub.mkdir(exist_ok=True)
        (sub / f"F{i}.lean").write_text(f"-- file {i}\n")
    with make_backend().session(tmp_path) as session:
        assert len(session.last_sync.copied) == 2000
        (tmp_path / "d7" / "F777.lean").write_text("-- changed on the host\n")
        fake.reset_counts()
        report = session.sync_in()
        assert report.copied == ["d7/F777.lean"]
        assert fake.calls["Sandbox.exec"] == 2  # the scan, then ONE archive for the change
        archive = fake.execs[1].stdin_bytes
        archive = archive[archive.index(b"\n") + 1 :]  # after the write script's header line
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            assert tar.getnames() == ["d7/F777.lean"]
        session.exec("echo '-- changed in the sandbox' > d3/F333.lean").wait()
        fake.reset_counts()
        report = session.sync_out()
        assert report.copied == ["d3/F333.lean"]
        assert fake.calls["Sandbox.exec"] == 2  # the scan, then ONE archive back
    assert (tmp_path / "d3" / "F333.lean").read_text() == "-- changed in the sandbox\n"


def test_sync_with_nothing_changed_is_one_exec_per_direction(make_backend, fake, tmp_path):
    (tmp_path / "A.lean").write_text("theorem a : True := trivial\n")
    with make_backend().session(tmp_path) as session:
        for sync in (session.sync_in, session.sync_out):
            fake.reset_counts()
            assert not sync().changed
            assert fake.calls["Sandbox.exec"] == 1


def test_large_files_travel_in_pieces_the_sdk_accepts(make_backend, fake, tmp_path):
    blob = bytes(range(256)) * (20 * 4096)  # 20 MiB, above the SDK's 16 MiB stdin buffer
    (tmp_path / "big.bin").write_bytes(blob)
    with make_backend().session(tmp_path) as session:
        assert session.exec("wc -c < big.bin").wait().stdout.strip() == str(len(blob))
        assert fake.calls["StreamWriter.drain"] >= 20


# -- credentials and startup errors --------------------------------------------------------


def test_missing_credentials_fail_fast_with_the_fix(make_backend, fake, tmp_path, monkeypatch):
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-such.toml"))
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="modal setup") as info:
        make_backend().session(tmp_path / "work")
    assert "MODAL_TOKEN_ID" in str(info.value) and "MODAL_TOKEN_SECRET" in str(info.value)
    assert time.monotonic() - start < 1
    assert sum(fake.calls.values()) == 0  # not one SDK call was made


def test_rejected_credentials_are_one_clear_error(make_backend, fake, tmp_path):
    fake.auth_error = True
    with pytest.raises(BackendUnavailableError, match="rejected the credentials.*modal setup"):
        make_backend().session(tmp_path)
    assert fake.calls["Sandbox.create"] == 0


def test_a_missing_secret_is_named(make_backend, fake, tmp_path):
    with pytest.raises(BackendUnavailableError, match="no-such-secret"):
        make_backend(secrets=("no-such-secret",)).session(tmp_path)


# -- configuration -----------------------------------------------------------------------


def test_sandbox_is_created_as_configured(make_backend, fake, tmp_path):
    with make_backend().session(tmp_path):
        pass
    rec = fake.last._record
    assert (rec.app, rec.image) == ("atp-notebook", "registry.example/lean:test")
    assert rec.timeout == 4 * 3600  # hours, not Modal's default 300 s
    assert rec.block_network is True
    assert (rec.cpu, rec.memory, rec.idle_timeout, rec.region, rec.secrets) == (2.0, 8192, None, None, [])
    with make_backend(cpu=0.5, memory=1024, idle_timeout_s=600, region="us-east", secrets=("lean-secret",),
                      block_network=False, app_name="mine").session(tmp_path):
        pass
    rec = fake.last._record
    assert (rec.app, rec.cpu, rec.memory, rec.idle_timeout, rec.region) == ("mine", 0.5, 1024, 600, "us-east")
    assert rec.secrets == ["lean-secret"] and rec.block_network is False


def test_lifetime_is_capped_at_24_hours():
    with pytest.raises(ValueError, match="24 h"):
        ModalConfig(sandbox_timeout_s=24 * 3600 + 1)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        ModalConfig(sandbox_timeout_s=60, idle_timeout_s=120)


def test_secrets_reach_the_sandbox_but_no_repr_shows_them(make_backend, fake, tmp_path, monkeypatch):
    backend = make_backend(secrets=["lean-secret"], env={"API_KEY": SECRET_VALUE})
    assert backend.config.secrets == ("lean-secret",)
    with backend.session(tmp_path) as session:
        result = session.exec('echo "$LEAN_TOKEN $API_KEY"').wait()
        assert result.stdout == f"{SECRET_VALUE} {SECRET_VALUE}\n"
        for text in (repr(backend), repr(backend.config), repr(session), str(backend.config)):
            assert SECRET_VALUE not in text and "as-fake" not in text
        assert "API_KEY" in repr(backend.config)


def test_get_backend_and_from_dict(fake, image):
    backend = get_backend("modal", image=image, sandbox_timeout_s=3600, secrets=["a", "b"])
    assert isinstance(backend, ModalBackend)
    assert backend.config.secrets == ("a", "b") and backend.config.sandbox_timeout_s == 3600
    config = ModalConfig.from_dict({"secrets": ["x"], "memory": 2048, "unknown": 1})
    assert (config.secrets, config.memory) == (("x",), 2048)


# -- commands --------------------------------------------------------------------------------


def test_a_command_reads_an_empty_stdin(make_backend, tmp_path):
    with make_backend().session(tmp_path) as session:
        result = session.exec("cat; echo done", timeout_s=10).wait()
    assert (result.exit_code, result.stdout) == (0, "done\n")


def test_modal_exec_timeout_reports_124(make_backend, tmp_path, monkeypatch):
    # Modal's own exec timeout is a backstop a minute past ours; make it fire first.
    monkeypatch.setattr(modal_backend, "_EXEC_BACKSTOP_S", -2)
    with make_backend().session(tmp_path) as session:
        result = session.exec("sleep 30 & echo $! > child.pid; wait", timeout_s=3).wait()
        assert result.exit_code == 124
        assert result.duration_s < 2.9  # Modal's timeout (1 s), not ours (3 s)
        time.sleep(1.5)
        assert proc_state(session, "child.pid") == "dead"  # and the tree was killed too


def test_cancel_kills_descendants_that_left_the_process_group(make_backend, tmp_path):
    with make_backend().session(tmp_path) as session:
        handle = session.exec("(setsid sleep 30 & echo $! > orphan.pid); sleep 30 & echo $! > child.pid; echo up; wait")
        assert next(handle.stream()) == "up"
        handle.cancel()
        assert handle.wait().exit_code == 130
        time.sleep(0.3)
        assert proc_state(session, "orphan.pid") == "dead"
        assert proc_state(session, "child.pid") == "dead"


def test_signal_death_reports_128_plus_signal(make_backend, tmp_path):
    with make_backend().session(tmp_path) as session:
        assert session.exec("kill -KILL $$").wait().exit_code == 137
        assert session.exec("echo alive").wait().stdout == "alive\n"


def test_mounts_are_copied_in(make_backend, tmp_path, tmp_path_factory):
    creds = tmp_path_factory.mktemp("creds")
    (creds / "auth.json").write_text('{"k": 1}\n')
    dest = tmp_path_factory.mktemp("home") / ".codex"
    with make_backend().session(tmp_path / "work", mounts=[(str(creds), str(dest))]) as session:
        assert session.exec(f"cat {dest}/auth.json").wait().stdout == '{"k": 1}\n'
    with pytest.raises(ValueError, match="absolute"):
        make_backend().session(tmp_path, mounts=[(str(creds), "relative/path")])


# -- lifetime --------------------------------------------------------------------------------


def test_lifetime_expiry_recreates_the_sandbox_transparently(make_backend, fake, tmp_path):
    (tmp_path / "A.lean").write_text("-- from the host\n")
    heard = []
    with make_backend(sandbox_timeout_s=2).session(tmp_path) as session:
        session.on_note = heard.append
        first = session.sandbox_id
        time.sleep(2.3)  # the fake ends the sandbox when its lifetime runs out
        result = session.exec("cat A.lean").wait()
        assert result.stdout == "-- from the host\n"  # the new sandbox got the workdir
        assert session.sandbox_id != first
        assert fake.calls["Sandbox.create"] == 2
    assert len(heard) == 1 and "lifetime" in heard[0] and first in heard[0]
    assert session.notes == heard


def test_expiry_found_by_a_failing_exec_recreates_too(make_backend, fake, tmp_path):
    (tmp_path / "A.lean").write_text("x\n")
    with make_backend().session(tmp_path) as session:
        fake.expire(fake.last)  # our clock doesn't know: the exec fails, poll() says 124
        assert session.exec("cat A.lean").wait().stdout == "x\n"
        assert fake.calls["Sandbox.create"] == 2
        assert "lifetime" in session.notes[0]


def test_a_sandbox_near_its_lifetime_is_synced_out_and_replaced(make_backend, fake, tmp_path):
    with make_backend(sandbox_timeout_s=8).session(tmp_path) as session:
        session.exec("echo made-inside > inside.txt").wait()
        time.sleep(4.2)  # now a 30 s command could outlive the sandbox
        result = session.exec("cat inside.txt", timeout_s=30).wait()
        assert result.stdout == "made-inside\n"  # synced out of the old one, into the new one
        assert fake.calls["Sandbox.create"] == 2
        assert fake.created[0].returncode == 137  # the old one was terminated
    assert (tmp_path / "inside.txt").read_text() == "made-inside\n"
    assert "synced it out" in session.notes[0]


def test_an_idle_timeout_recreates_the_sandbox_too(make_backend, fake, tmp_path):
    (tmp_path / "A.lean").write_text("x\n")
    with make_backend(sandbox_timeout_s=600, idle_timeout_s=1).session(tmp_path) as session:
        assert session.exec("cat A.lean").wait().stdout == "x\n"
        time.sleep(1.3)
        assert session.exec("cat A.lean").wait().stdout == "x\n"
        assert fake.calls["Sandbox.create"] == 2
        assert fake.created[0].returncode == 124
        assert "idle timeout" in session.notes[0]


def test_a_terminated_sandbox_raises_with_its_cause(make_backend, fake, tmp_path):
    with make_backend().session(tmp_path) as session:
        fake.terminate_externally(fake.last)
        with pytest.raises(SandboxDiedError, match="terminated.*memory"):
            session.exec("true")
        with pytest.raises(SandboxDiedError, match="terminated"):  # and on every later exec
            session.exec("true")
        assert fake.calls["Sandbox.create"] == 1
    with pytest.raises(SessionClosedError):
        session.exec("true")


def test_a_sandbox_dying_mid_command_says_so(make_backend, fake, tmp_path):
    with make_backend().session(tmp_path) as session:
        handle = session.exec("echo started; sleep 30")
        assert next(handle.stream()) == "started"
        fake.terminate_externally(fake.last)
        with pytest.raises(SandboxDiedError, match="terminated"):
            handle.wait()


def test_a_sandbox_whose_main_process_exited_names_the_code(make_backend, fake, tmp_path):
    with make_backend().session(tmp_path) as session:
        fake.end(fake.last, 3)
        with pytest.raises(SandboxDiedError, match="exited with code 3"):
            session.exec("true")


# -- close ---------------------------------------------------------------------------------------


def test_close_syncs_out_terminates_and_detaches_once(make_backend, fake, tmp_path):
    session = make_backend().session(tmp_path)
    session.exec("echo late > late.txt").wait()
    session.close()
    session.close()
    assert (tmp_path / "late.txt").read_text() == "late\n"
    assert (fake.calls["Sandbox.terminate"], fake.calls["Sandbox.detach"]) == (1, 1)
    assert fake.last.returncode == 137


# -- event loops -------------------------------------------------------------------------------


def test_the_backend_works_from_inside_a_running_event_loop(make_backend, fake, tmp_path):
    """A Jupyter cell runs inside the kernel's loop: plain sync calls from a coroutine must work."""

    async def cell():
        with make_backend().session(tmp_path) as session:
            handle = session.exec("echo one; echo two")
            lines = list(handle.stream())
            result = handle.wait()
            session.sync_out()
        return lines, result

    lines, result = asyncio.run(cell())
    assert lines == ["one", "two"] and result.exit_code == 0
    assert fake.calls["Sandbox.exec"] >= 3
    # every SDK call was made from a thread that runs no event loop
    assert sum(fake.calls_in_running_loop.values()) == 0


@pytest.mark.timeout(60)
def test_the_real_sdk_blocking_api_is_safe_inside_a_running_loop():
    """What the real SDK does (synchronicity): its own loop on its own thread, no deadlock."""
    try:
        from modal._utils.async_utils import synchronizer  # private: re-verify if this moves
        from modal.exception import AsyncUsageWarning
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"modal's synchronicity wiring moved ({exc}); re-verify the event-loop notes")

    async def which_thread() -> str:
        await asyncio.sleep(0.01)
        return threading.current_thread().name

    blocking = synchronizer.create_blocking(which_thread, "atp_test_which_thread")

    async def cell():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # outside IPython the SDK warns here (AsyncUsageWarning)
            direct = blocking()  # a plain blocking call, inside a running loop
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            via_helper = modal_backend._off_loop(blocking)
        return direct, via_helper, caught

    direct, via_helper, caught = asyncio.run(cell())
    assert direct != threading.current_thread().name  # the SDK ran it on its own loop thread
    assert via_helper == direct
    assert not [w for w in caught if issubclass(w.category, AsyncUsageWarning)]


# -- warm checks through the Lean REPL (the stand-in) in a sandbox --------------------------------


def test_warm_checks_in_a_sandbox(make_backend, tmp_path, standin_env):
    from atp_notebook.kernel import KernelSession
    from tests.test_repl import exercise_warm_checks

    kernel = KernelSession("modal", workdir=tmp_path / "work", say=lambda _: None,
                           backend_factory=lambda name, **c: make_backend())
    try:
        exercise_warm_checks(kernel)
    finally:
        kernel.close()


def test_a_checked_file_wins_over_a_sandbox_edit_of_it(make_backend, tmp_path, standin_env):
    from atp_notebook.check import run_check, write_cell
    from atp_notebook.kernel import KernelSession
    from tests.conftest import lean

    said: list[str] = []
    kernel = KernelSession("modal", workdir=tmp_path / "work", say=said.append,
                           backend_factory=lambda name, **c: make_backend())
    try:
        write_cell(kernel.workdir, "A.lean", lean("tutorial_broken"))
        assert not run_check(kernel, "A.lean").ok
        assert kernel.session.exec("echo edited > A.lean").wait().exit_code == 0  # the sandbox's edit
        write_cell(kernel.workdir, "A.lean", lean("tutorial_fixed"))  # and the cell's
        assert run_check(kernel, "A.lean").ok  # the cell's text was checked
        assert (kernel.workdir / "A.lean").read_text() == lean("tutorial_fixed")
        assert (kernel.workdir / "A.lean.conflict-sandbox").read_text() == "edited\n"
        assert not (kernel.workdir / "A.lean.conflict-host").exists()
        assert any("the sandbox's version is now A.lean.conflict-sandbox" in s for s in said), said
    finally:
        kernel.close()
