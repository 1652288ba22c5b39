"""The local backend: the contract on real subprocesses, plus its own rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atp_notebook.backends.local import LocalBackend, LocalConfig
from tests.contract import ContractTests


@pytest.fixture
def make_backend():
    return lambda **config: LocalBackend(LocalConfig(kill_grace_s=1.0, **config))


class TestLocalContract(ContractTests):
    pass


def test_mounts_must_map_a_path_onto_itself(tmp_path):
    backend = LocalBackend()
    with pytest.raises(ValueError, match="cannot mount"):
        backend.session(tmp_path, mounts=[(str(tmp_path), "/root/.codex")])
    backend.session(tmp_path, mounts=[(str(tmp_path), str(tmp_path))]).close()


def test_inherits_the_host_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATP_TEST_HOST_VAR", "from-host")
    with LocalBackend().session(tmp_path) as session:
        assert session.exec("echo $ATP_TEST_HOST_VAR").wait().stdout == "from-host\n"


def test_workdir_with_spaces_and_baked_cache_link(tmp_path):
    from dataclasses import replace

    from atp_notebook.images import DEFAULT_IMAGE

    cache = tmp_path / "cache" / ".lake"
    cache.mkdir(parents=True)
    workdir = tmp_path / "my project"
    image = replace(DEFAULT_IMAGE, baked_lake=str(cache))
    with LocalBackend(LocalConfig(image=image)).session(workdir) as session:
        assert session.exec("pwd").wait().stdout.strip() == str(workdir)
    assert os.readlink(workdir / ".lake") == str(cache)


def test_signal_death_reports_128_plus_signal(tmp_path):
    with LocalBackend().session(tmp_path) as session:
        assert session.exec("kill -KILL $$").wait().exit_code == 137


def test_stderr_only_command_ends(tmp_path):
    with LocalBackend().session(tmp_path) as session:
        handle = session.exec("echo only-err >&2")
        assert list(handle.stream()) == []
        assert handle.wait().stderr == "only-err\n"


def test_closed_session_repr_says_so(tmp_path):
    session = LocalBackend().session(tmp_path)
    session.close()
    assert "closed" in repr(session) and "local" in repr(session)
    assert Path(tmp_path).exists()


def test_baked_lake_from_the_environment_and_real_lake_dirs_kept(tmp_path, monkeypatch):
    cache = tmp_path / "warm" / ".lake"
    cache.mkdir(parents=True)
    monkeypatch.setenv("ATP_BAKED_LAKE", str(cache))
    linked, own = tmp_path / "linked", tmp_path / "own"
    (own / ".lake" / "build").mkdir(parents=True)
    for workdir in (linked, own):
        with LocalBackend().session(workdir) as session:
            assert session.exec("true").wait().exit_code == 0
    assert os.readlink(linked / ".lake") == str(cache)
    assert not (own / ".lake").is_symlink() and not (own / ".lake" / ".lake").exists()
