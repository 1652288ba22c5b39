"""The Modal backend on the real Modal cloud: runs only where Modal credentials exist.

Uses a small public image (``debian:bookworm-slim``; override with
``ATP_MODAL_TEST_IMAGE``) and a short sandbox lifetime, and terminates
everything it creates. Without credentials every test here is skipped, with
the reason.
"""

from __future__ import annotations

import os
import time

import pytest

from atp_notebook.doctor import check_modal
from atp_notebook.images import Image

_check = check_modal()
pytestmark = [
    pytest.mark.skipif(
        not _check.ok,
        reason=f"Modal cloud tests need Modal credentials ({_check.detail}): {_check.fix}",
    ),
    pytest.mark.timeout(900),  # the first run pulls and converts the image
]

TEST_IMAGE = os.environ.get("ATP_MODAL_TEST_IMAGE", "debian:bookworm-slim")


@pytest.fixture(scope="module")
def backend():
    from atp_notebook.backends.modal import ModalBackend, ModalConfig

    config = ModalConfig(
        image=Image(tag=TEST_IMAGE, workdir="/workspace"),
        app_name="atp-notebook-tests",
        cpu=0.25,
        memory=512,
        sandbox_timeout_s=900,
        idle_timeout_s=300,
        timeout_s=120,
    )
    return ModalBackend(config)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("modal-cloud")
    (path / "hello.txt").write_text("from the host\n")
    return path


@pytest.fixture(scope="module")
def session(backend, workdir):
    with backend.session(workdir) as session:
        yield session


def test_exec_reports_output_and_exit_code(session):
    result = session.exec("echo out; echo err >&2; exit 3").wait()
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_lines_stream_as_they_arrive(session):
    handle = session.exec("echo first; sleep 3; echo second")
    lines = handle.stream()
    assert next(lines) == "first"
    first_at = handle.elapsed_s
    assert list(lines) == ["second"]
    result = handle.wait()
    assert first_at < result.duration_s - 2


def test_files_sync_both_ways(session, workdir):
    assert session.exec("cat hello.txt").wait().stdout == "from the host\n"  # synced in at open
    (workdir / "later.txt").write_text("pushed\n")
    assert session.sync_in().copied == ["later.txt"]
    session.exec("cat later.txt > back.txt; echo made >> back.txt").wait()
    report = session.sync_out()
    assert report.copied == ["back.txt"]
    assert (workdir / "back.txt").read_text() == "pushed\nmade\n"
    assert not session.sync_in().changed and not session.sync_out().changed


def test_timeout_kills_the_command(session):
    start = time.monotonic()
    result = session.exec("sleep 60", timeout_s=3).wait()
    assert result.exit_code == 124
    assert time.monotonic() - start < 30
    assert session.exec("echo still here").wait().stdout == "still here\n"


def test_close_syncs_out_and_terminates(backend, tmp_path):
    import modal

    session = backend.session(tmp_path)
    session.exec("echo bye > bye.txt").wait()
    sandbox_id = session.sandbox_id
    session.close()
    session.close()
    assert (tmp_path / "bye.txt").read_text() == "bye\n"
    sandbox = modal.Sandbox.from_id(sandbox_id)
    deadline = time.monotonic() + 60
    while sandbox.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    assert sandbox.returncode is not None  # terminated, not left running
    sandbox.detach()
