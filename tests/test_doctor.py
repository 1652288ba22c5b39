"""``atp-notebook doctor``'s local check, against the stand-in toolchain on PATH."""

from __future__ import annotations

import os

from atp_notebook.doctor import check_local
from tests.conftest import STANDIN_BIN


def test_local_reports_lean_and_the_repl(standin_env):
    check = check_local()
    assert check.ok and "Lean (version 4.26.0" in check.detail
    assert "warm checks: Lean REPL found" in check.detail


def test_local_without_a_repl_says_checks_run_cold(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("lean", "lake"):
        (bin_dir / tool).symlink_to(STANDIN_BIN / tool)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    check = check_local()
    assert check.ok and "no `repl` on PATH: checks run cold" in check.detail


def test_local_without_lean_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    check = check_local()
    assert not check.ok and "lean and lake not found" in check.detail and "elan" in check.fix
