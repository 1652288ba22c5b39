"""The Binder set-up: lint-clean scripts, DEFAULT_IMAGE's versions, the ATP_BAKED_LAKE contract.

repo2docker itself cannot run here (no registry, no GitHub), so postBuild is
run for real against the stand-in elan/Lake of ``tests/test_image.py``, in a
throwaway HOME, exactly as repo2docker would call it, with the REPL cloned
from a local repository standing in for GitHub's.
"""

from __future__ import annotations

import os
import re

import pytest

from atp_notebook.images import DEFAULT_IMAGE
from tests.conftest import REPO
from tests.test_image import REPL_BIN, assert_shellcheck_clean, git, make_repl_upstream, make_stand_in

BINDER = REPO / "binder"
SCRIPTS = [BINDER / "postBuild", BINDER / "start"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_posix_sh(script):
    assert os.access(script, os.X_OK), f"{script.name} must be executable (repo2docker runs it directly)"
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -eu\n" in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    assert_shellcheck_clean(script)


def test_start_hands_over_to_the_server_command():
    lines = [ln for ln in (BINDER / "start").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[-1] == 'exec "$@"'


def test_requirements_install_this_package_with_jupyterlab():
    reqs = [ln.strip() for ln in (BINDER / "requirements.txt").read_text().splitlines()]
    assert ".[lab]" in reqs
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r"^lab = \[", pyproject, re.M), "the lab extra Binder installs must exist"
    runtime = (BINDER / "runtime.txt").read_text().strip()
    wanted = tuple(map(int, re.fullmatch(r"python-(\d+)\.(\d+)", runtime).groups()))
    floor = re.search(r'^requires-python = ">=(\d+)\.(\d+)"', pyproject, re.M)
    assert wanted >= tuple(map(int, floor.groups()))


def test_postbuild_takes_its_versions_from_default_image_only():
    text = (BINDER / "postBuild").read_text()
    assert "DEFAULT_IMAGE.toolchain" in text and "DEFAULT_IMAGE.mathlib_rev" in text
    assert "DEFAULT_IMAGE.repl_rev" in text
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert not re.search(r"v\d+\.\d+\.\d+", code), "no version may be hard-coded in postBuild"
    # it runs the very scripts the Dockerfile runs
    assert "atp_notebook/data/image" in text
    assert "install-elan.sh" in text and "warm-mathlib.sh" in text and "install-repl.sh" in text
    # the REPL against the same toolchain, at DEFAULT_IMAGE's tag, into the directory binder/start puts on PATH
    assert 'sh "$scripts/install-repl.sh" "$HOME/repl" "$toolchain" "$repl_rev"' in code


@pytest.fixture
def built_binder(tmp_path):
    """A HOME as postBuild leaves it, built against the stand-in elan/Lake."""
    stand_in = make_stand_in(tmp_path)
    # the REPL comes from a local stand-in of its repository: nothing is downloaded
    stand_in.env["REPL_URL"] = make_repl_upstream(tmp_path)
    stand_in.run("sh", BINDER / "postBuild")  # repo2docker runs it from the repository root
    return stand_in


def test_postbuild_installs_the_pinned_toolchain_and_warm_mathlib(built_binder):
    home = built_binder.home
    settings = (home / ".elan" / "settings.toml").read_text()
    assert f'default_toolchain = "{DEFAULT_IMAGE.toolchain}"' in settings
    cache = home / "mathlib-cache"
    assert (cache / "lean-toolchain").read_text() == DEFAULT_IMAGE.toolchain + "\n"
    assert f'rev = "{DEFAULT_IMAGE.mathlib_rev}"' in (cache / "lakefile.toml").read_text()
    assert (cache / "lake-manifest.json").is_file()
    assert (cache / ".lake/packages/mathlib/.lake/build/lib/lean/Mathlib.olean").is_file()


def test_postbuild_builds_the_repl_at_default_image_versions(built_binder):
    repl = built_binder.home / "repl"
    assert (repl / "lean-toolchain").read_text() == DEFAULT_IMAGE.toolchain + "\n"
    assert git(repl, "describe", "--tags", "--exact-match", "HEAD") == DEFAULT_IMAGE.repl_rev
    result = built_binder.run(repl / REPL_BIN)
    assert result.stdout == f"stand-in repl built with {DEFAULT_IMAGE.toolchain}\n"


def test_start_exports_the_env_var_contract(built_binder):
    home = built_binder.home
    result = built_binder.run(
        "sh", BINDER / "start", "sh", "-c", 'printf "%s\\n" "$ATP_BAKED_LAKE" "$ELAN_HOME"; command -v lake'
    )
    baked, elan_home, lake = result.stdout.splitlines()
    assert baked == f"{home}/mathlib-cache/.lake"
    assert elan_home == f"{home}/.elan"
    assert lake == f"{home}/.elan/bin/lake"
    # the REPL is on PATH, for `lake env repl`
    result = built_binder.run("sh", BINDER / "start", "sh", "-c", "command -v repl")
    assert result.stdout == f"{home}/repl/{REPL_BIN}\n"
    # the contract: the scaffold a workdir copies sits beside the baked .lake
    scaffold = home / "mathlib-cache"
    for name in ("lean-toolchain", "lakefile.toml", "lake-manifest.json"):
        assert (scaffold / name).is_file()
    # a value set by whoever runs Binder wins
    result = built_binder.run(
        "sh", BINDER / "start", "sh", "-c", 'printf "%s\\n" "$ATP_BAKED_LAKE"', ATP_BAKED_LAKE="/elsewhere/.lake"
    )
    assert result.stdout == "/elsewhere/.lake\n"
