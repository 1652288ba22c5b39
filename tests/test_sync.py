"""Tests for atp_notebook.sync: manifests, ignores, the three-way plan, safe tar, remote scripts.

Real files in tmp_path; the "sandbox" is a local directory driven by real
``sh`` processes, and again by busybox alone (the Docker test image is
busybox-only), so the shell scripts are proven on both.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from atp_notebook import sync
from atp_notebook.sync import (
    Entry,
    Ignore,
    RemoteError,
    RemoteTree,
    SyncPlan,
    SyncReport,
    TwoWaySync,
    UnsafeArchiveError,
    pack,
    plan,
    scan,
    unpack,
)

from .conftest import in_ci

_PAST = int(time.time()) - 3600
_CLOCK = iter(range(10**9))


def old_mtime() -> int:
    """A distinct whole-second mtime an hour or more ago (outside the racy window)."""
    return _PAST - next(_CLOCK)


# --------------------------------------------------------------------------- helpers


def put(root: Path, rel: str, text: str, *, old: bool = True) -> Path:
    """Write a file (parents created); by default with an mtime an hour ago."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if old:
        mtime = old_mtime()
        os.utime(path, (mtime, mtime))
    return path


def tree(root: Path) -> dict[str, str]:
    """Every regular file under root (links not followed) -> its text."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                out[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8", errors="replace")
    return out


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under root (incl. links and dirs) with its type and size, for "unchanged" checks."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (stat.filemode(st.st_mode), st.st_size)
    return out


def entry(digest: str) -> Entry:
    return Entry(1, 1, digest)


def man(**files: str) -> dict[str, Entry]:
    return {name.replace("__", "."): entry(d) for name, d in files.items()}


class Runner:
    """A ``run`` callable over a local directory; records every call."""

    def __init__(self, cwd: Path, argv: list[str], env: dict[str, str] | None) -> None:
        self.cwd, self.argv, self.env = cwd, argv, env
        self.calls: list[tuple[str, bytes | None, bytes]] = []

    def __call__(self, script: str, stdin: bytes | None) -> tuple[int, bytes, bytes]:
        code, out, err = run_piped([*self.argv, script], self.cwd, stdin, self.env)
        self.calls.append((script, stdin, out))
        return code, out, err


def run_piped(argv: list[str], cwd: Path, stdin: bytes | None, env: dict[str, str] | None) -> tuple[int, bytes, bytes]:
    """Run with stdin fed through a pipe in big writes (``subprocess.run(input=)`` writes 512-byte chunks)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin and proc.stdout and proc.stderr

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin or b"")  # type: ignore[union-attr]
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()  # type: ignore[union-attr]

    errors: list[bytes] = []
    threads = [threading.Thread(target=feed), threading.Thread(target=lambda: errors.append(proc.stderr.read()))]  # type: ignore[union-attr]
    for thread in threads:
        thread.start()
    out = proc.stdout.read()
    for thread in threads:
        thread.join()
    return proc.wait(timeout=120), out, errors[0]


@pytest.fixture(scope="session")
def busybox_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH holding only busybox applets; skips without busybox (fails under CI=true)."""
    exe = shutil.which("busybox")
    if exe is None:
        msg = "busybox not installed (apt-get install busybox-static)"
        if in_ci():
            pytest.fail(msg + " -- under CI=true the busybox sync tests must run")
        pytest.skip(msg)
    applets = tmp_path_factory.mktemp("busybox-bin")
    subprocess.run([exe, "--install", "-s", str(applets)], check=True)
    return str(applets)


@pytest.fixture(params=["sh", "busybox"])
def make_runner(request: pytest.FixtureRequest) -> Callable[[Path], Runner]:
    """Build a Runner for a sandbox dir with the system ``sh`` or with busybox only."""
    if request.param == "sh":
        return lambda cwd: Runner(cwd, ["sh", "-c"], None)
    path = request.getfixturevalue("busybox_path")
    exe = shutil.which("busybox")
    return lambda cwd: Runner(cwd, [exe, "sh", "-c"], {"PATH": path})


class Pair:
    """A host dir, a sandbox dir and the session sync between them."""

    def __init__(self, tmp_path: Path, make_runner: Callable[[Path], Runner]) -> None:
        self.host = tmp_path / "host"
        self.box = tmp_path / "sandbox"
        self.host.mkdir()
        self.box.mkdir()
        self.runner = make_runner(self.box)
        self.remote = RemoteTree(self.runner, str(self.box))
        self.sync = TwoWaySync(self.host, self.remote)

    def runs(self, action: Callable[[], SyncReport]) -> tuple[SyncReport, int]:
        before = len(self.runner.calls)
        report = action()
        return report, len(self.runner.calls) - before


@pytest.fixture
def pair(tmp_path: Path, make_runner: Callable[[Path], Runner]) -> Pair:
    return Pair(tmp_path, make_runner)


def members_of(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), ignore_zeros=True) as tar:
        return [m.name for m in tar.getmembers()]


def write_archive_of(stdin: bytes) -> bytes:
    """The tar part of a ``RemoteTree.write`` stdin (after the deletion header)."""
    header, _, rest = stdin.partition(b"\n")
    for _ in range(int(header.split()[0])):
        _, _, rest = rest.partition(b"\n")
    return rest


# --------------------------------------------------------------------------- scan


def test_scan_lists_regular_files_with_hashes(tmp_path: Path) -> None:
    put(tmp_path, "A.lean", "theorem a : True := trivial\n")
    put(tmp_path, "sub dir/é ü.lean", "x")
    (tmp_path / "link.lean").symlink_to(tmp_path / "A.lean")
    (tmp_path / "linkdir").symlink_to(tmp_path / "sub dir")
    manifest = scan(tmp_path)
    assert set(manifest) == {"A.lean", "sub dir/é ü.lean"}
    assert manifest["sub dir/é ü.lean"].size == 1
    assert manifest["sub dir/é ü.lean"].sha256 == sync.hashlib.sha256(b"x").hexdigest()
    assert manifest["A.lean"].mtime_ns == (tmp_path / "A.lean").stat().st_mtime_ns


def test_scan_rehashes_only_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(50):
        put(tmp_path, f"d{i % 5}/f{i}.lean", f"content {i}")
    calls: list[str] = []
    real = sync.hash_file
    monkeypatch.setattr(sync, "hash_file", lambda p: calls.append(str(p)) or real(p))
    first = scan(tmp_path)
    assert len(calls) == 50
    calls.clear()
    assert scan(tmp_path, first) == first
    assert calls == []
    put(tmp_path, "d1/f1.lean", "content 1 but longer")
    third = scan(tmp_path, first)
    assert [Path(c).name for c in calls] == ["f1.lean"]
    assert third["d1/f1.lean"].sha256 != first["d1/f1.lean"].sha256


def test_scan_rehashes_racy_files_even_when_size_and_mtime_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = put(tmp_path, "Scratch.lean", "aaaa", old=False)
    first = scan(tmp_path)
    st = path.stat()
    path.write_text("bbbb")  # same size, and force the very same mtime: the racy-clean hole
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = scan(tmp_path, first)
    assert second["Scratch.lean"].sha256 == sync.hashlib.sha256(b"bbbb").hexdigest()


def test_scan_rechecks_a_file_that_was_racy_when_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit in the same tick right after a scan is caught even once the file is no longer recent."""
    path = put(tmp_path, "Scratch.lean", "aaaa", old=False)
    first = scan(tmp_path)
    assert first["Scratch.lean"].racy
    st = path.stat()
    path.write_text("bbbb")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    later = time.time_ns() + 60 * 1_000_000_000
    monkeypatch.setattr(sync.time, "time_ns", lambda: later)
    second = scan(tmp_path, first)
    assert second["Scratch.lean"].sha256 == sync.hashlib.sha256(b"bbbb").hexdigest()
    assert not second["Scratch.lean"].racy
    calls: list[str] = []
    monkeypatch.setattr(sync, "hash_file", lambda p: calls.append(str(p)) or "x")
    assert scan(tmp_path, second) == second and calls == []  # now it is trusted


def test_default_ignores_prune_directories_without_walking_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rel in [".lake/build/x.olean", ".git/HEAD", "__pycache__/m.pyc", ".ipynb_checkpoints/n.ipynb",
                ".atp/log.txt", "Mathlib/A.olean", "Mathlib/A.ilean", "Mathlib/A.lean",
                "Scratch.lean.conflict-host", ".git-keep/file"]:
        put(tmp_path, rel, "x")
    walked: list[str] = []
    real_scandir = os.scandir
    monkeypatch.setattr(sync.os, "scandir", lambda p: walked.append(os.fspath(p)) or real_scandir(p))
    manifest = scan(tmp_path)
    assert set(manifest) == {"Mathlib/A.lean", "Scratch.lean.conflict-host", ".git-keep/file"}
    assert not any(Path(w).name in {".lake", ".git", "__pycache__", ".ipynb_checkpoints", ".atp"} for w in walked)


def test_atpignore_patterns(tmp_path: Path) -> None:
    put(tmp_path, ".atpignore", "# comment\n\nbuild/\n*.log\ndocs/private.txt\n/top.txt\n")
    for rel in ["build/a.lean", "src/build/b.lean", "x.log", "src/y.log", "docs/private.txt",
                "docs/public.txt", "top.txt", "src/top.txt", "build.lean", "# comment"]:
        put(tmp_path, rel, "x")
    put(tmp_path, "logs.log/inside.txt", "x")  # *.log is not dir-only: the directory goes too
    manifest = scan(tmp_path)
    assert set(manifest) == {".atpignore", "docs/public.txt", "src/top.txt", "build.lean", "# comment"}


def test_ignore_ignores_checks_parent_directories() -> None:
    ignore = Ignore([*sync.DEFAULT_IGNORES, "out/", "gen/*.lean"])
    assert ignore.ignores(".lake/packages/x.lean")
    assert ignore.ignores("a/out/b.txt")
    assert ignore.ignores("gen/x.lean")
    assert not ignore.ignores("out")  # a file named like a dir-only pattern is kept
    assert not ignore.ignores("src/gen/x.lean")
    assert not ignore.ignores("Scratch.lean.conflict-sandbox")
    anchored = Ignore(["src/gen/"])
    for _ in range(2):  # directory verdicts are remembered: asking again gives the same answers
        assert anchored.ignores("src/gen/deep/x.lean") and anchored.ignores("src/gen/x.lean")
        assert not anchored.ignores("src/generated/x.lean") and not anchored.ignores("lib/src/gen/x.lean")
        assert not anchored.ignores("src/gen")  # a file of that name: the pattern is for directories


# --------------------------------------------------------------------------- plan


def test_plan_one_sided_changes_travel_only_from_the_source() -> None:
    base = {"a": "1", "b": "1", "c": "1"}
    host = man(a="2", b="1", c="1", new="9")
    box = man(a="1", b="3", c="1")
    into = plan(base, host, box, "in")
    assert (into.copy, into.delete, into.conflicts) == (["a", "new"], [], [])
    out = plan(base, host, box, "out")
    assert (out.copy, out.delete, out.conflicts) == (["b"], [], [])
    assert into.new_base() == {"a": "2", "b": "1", "c": "1", "new": "9"}


def test_plan_deletions_and_delete_versus_edit() -> None:
    base = {"gone": "1", "edited_there": "1", "edited_here": "1"}
    host = man(edited_here="2")  # host deleted gone and edited_there; edited edited_here
    box = man(gone="1", edited_there="5")  # sandbox deleted edited_here
    into = plan(base, host, box, "in")
    assert into.delete == ["gone"]
    assert into.copy == ["edited_here"]  # the edit beats the sandbox's delete
    assert "edited_there" not in into.delete  # deleted on host, changed in sandbox: kept
    assert into.new_base() == {"edited_there": "1", "edited_here": "2"}
    box_after = man(edited_there="5", edited_here="2")  # as the sync left it
    back = plan(into.new_base(), host, box_after, "out")
    assert (back.copy, back.delete) == (["edited_there"], [])  # ... and the edit comes back to the host


def test_plan_conflict_names_and_new_base() -> None:
    base = {"S.lean": "0"}
    host = man(S__lean="h", **{"S__lean__conflict-host": "old"})
    box = man(S__lean="s", **{"S__lean__conflict-host": "old", "S__lean__conflict-host__1": "x"})
    p = plan(base, host, box, "in")
    assert p.conflicts == [("S.lean", "S.lean.conflict-host.2")]
    assert p.copy == [] and p.delete == []
    assert p.new_base()["S.lean"] == "h"  # the source's hash
    assert "S.lean.conflict-host.2" not in p.new_base()  # so the copy travels back


def test_plan_identical_edits_on_both_sides_are_not_a_conflict() -> None:
    p = plan({"a": "0"}, man(a="same", b="new"), man(a="same", b="new"), "out")
    assert p.empty and p.new_base() == {"a": "same", "b": "new"}


def test_plan_skips_unreadable_files_and_rejects_bad_direction() -> None:
    p = plan({"a": "0"}, man(a=""), man(a="1"), "out")
    assert p.skipped == ["a"] and p.empty and p.new_base() == {"a": "0"}
    with pytest.raises(ValueError, match="direction"):
        plan({}, {}, {}, "sideways")  # type: ignore[arg-type]


def test_plan_new_base_reverts_paths_not_applied() -> None:
    p = plan({"a": "0"}, man(a="1", b="2"), {}, "in")
    assert p.new_base(not_applied=["a", "b"]) == {"a": "0"}


def test_report_summary_wording() -> None:
    report = SyncReport("in", copied=["A.lean"], conflicts=[("Scratch.lean", "Scratch.lean.conflict-host")],
                        bytes_moved=2048, duration_s=0.5)
    assert report.summary() == (
        "sync in: 1 copied, 1 conflict (2.0 KB, 0.50 s); Scratch.lean changed on both sides: "
        "kept the sandbox's version, the host's is in Scratch.lean.conflict-host"
    )
    assert "kept the host's version, the sandbox's is in X.conflict-sandbox" in str(
        SyncReport("out", conflicts=[("X", "X.conflict-sandbox")])
    )
    assert SyncReport("out").summary() == "sync out: up to date (0 B, 0.00 s)"
    assert isinstance(plan({}, {}, {}, "in"), SyncPlan)


# --------------------------------------------------------------------------- pack / unpack


def test_pack_keeps_mtimes_modes_and_unpack_round_trips(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    path = put(src, "dir/é x.lean", "hello")
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))  # kept to the second
    path.chmod(0o755)
    data = pack(src, ["dir/é x.lean"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        (member,) = tar.getmembers()
        assert member.name == "dir/é x.lean" and member.isreg()
        assert tar.format == tarfile.PAX_FORMAT
    assert unpack(data, dst) == ["dir/é x.lean"]
    out = dst / "dir/é x.lean"
    assert out.read_text() == "hello"
    assert out.stat().st_mtime_ns == 1_700_000_000_000_000_000
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    with pytest.raises(FileNotFoundError):
        pack(src, ["missing.lean"])


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, body in members:
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return buffer.getvalue()


def _file(name: str, body: bytes = b"data") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), body


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


@pytest.fixture
def dest(tmp_path: Path) -> tuple[Path, Path]:
    """A destination root with one existing file, and an outside dir with one file."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    put(root, "keep.lean", "keep")
    put(outside, "secret.txt", "secret")
    return root, outside


def hostile_cases(outside: Path) -> dict[str, bytes]:
    good = _file("good.lean", b"would be written if we extracted as we went")
    return {
        "absolute": _archive(good, _file(str(outside / "abs.txt"))),
        "dotdot": _archive(good, _file("../outside/x.txt")),
        "nested dotdot": _archive(good, _file("a/../../outside/y.txt")),
        "symlink then file through it": _archive(
            good, _special("escape", tarfile.SYMTYPE, str(outside)), _file("escape/pwned")
        ),
        "hard link": _archive(good, _special("passwd", tarfile.LNKTYPE, "/etc/passwd")),
        "char device": _archive(good, _special("null", tarfile.CHRTYPE)),
        "block device": _archive(good, _special("sda", tarfile.BLKTYPE)),
        "fifo": _archive(good, _special("pipe", tarfile.FIFOTYPE)),
    }


@pytest.mark.parametrize(
    "case",
    ["absolute", "dotdot", "nested dotdot", "symlink then file through it", "hard link", "char device",
     "block device", "fifo"],
)
@pytest.mark.parametrize("data_filter", ["with tarfile's data filter", "own checks only (old Python)"])
def test_unpack_rejects_hostile_members_before_writing_anything(
    dest: tuple[Path, Path], case: str, data_filter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if data_filter.startswith("own"):
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    root, outside = dest
    data = hostile_cases(outside)[case]
    before_root, before_out = snapshot(root), snapshot(outside)
    with pytest.raises(UnsafeArchiveError) as info:
        unpack(data, root)
    assert info.value.member and info.value.reason
    assert snapshot(root) == before_root  # nothing partial (not even good.lean or a temp file)
    assert snapshot(outside) == before_out


@pytest.mark.parametrize("data_filter", [True, False])
def test_unpack_rejects_member_under_preexisting_host_symlink(
    dest: tuple[Path, Path], data_filter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    root, outside = dest
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "deeper").mkdir()
    (root / "deeper" / "up").symlink_to("../../outside", target_is_directory=True)
    for name in ["linked/pwned", "deeper/up/pwned", "linked/new/dir/pwned"]:
        before_root, before_out = snapshot(root), snapshot(outside)
        with pytest.raises(UnsafeArchiveError, match="outside"):
            unpack(_archive(_file("good.lean"), _file(name)), root)
        assert snapshot(root) == before_root and snapshot(outside) == before_out


def test_unpack_does_not_write_through_a_destination_symlink(dest: tuple[Path, Path]) -> None:
    root, outside = dest
    (root / "out.lean").symlink_to(outside / "secret.txt")
    with pytest.raises(UnsafeArchiveError):
        unpack(_archive(_file("out.lean", b"pwned")), root)
    assert (outside / "secret.txt").read_text() == "secret"
    (root / "in.lean").symlink_to("keep.lean")  # a link inside the root is replaced, not followed
    assert unpack(_archive(_file("in.lean", b"new")), root) == ["in.lean"]
    assert not (root / "in.lean").is_symlink() and (root / "in.lean").read_text() == "new"
    assert (root / "keep.lean").read_text() == "keep"


def test_unpack_allowed_and_rename(dest: tuple[Path, Path]) -> None:
    root, _ = dest
    data = _archive(_file("./a.lean", b"A"), _file("b.lean", b"B"))
    before = snapshot(root)
    with pytest.raises(UnsafeArchiveError, match="b.lean.*not one of the requested"):
        unpack(data, root, allowed={"a.lean"})
    assert snapshot(root) == before
    written = unpack(data, root, allowed={"a.lean", "b.lean"}, rename={"b.lean": "keep.lean.conflict-sandbox"})
    assert written == ["a.lean", "keep.lean.conflict-sandbox"]
    assert (root / "keep.lean").read_text() == "keep"
    assert (root / "keep.lean.conflict-sandbox").read_text() == "B"


def test_unpack_applies_the_data_filter_to_modes_and_accepts_streams(dest: tuple[Path, Path]) -> None:
    root, _ = dest
    info, body = _file("tool.sh", b"#!/bin/sh\n")
    info.mode = 0o4777  # setuid, world-writable
    written = unpack(io.BufferedReader(io.BytesIO(_archive((info, body)))), root)
    assert written == ["tool.sh"]
    assert stat.S_IMODE((root / "tool.sh").stat().st_mode) == 0o755


def test_unpack_interrupted_write_leaves_old_file_and_no_temp(dest: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = dest

    def broken_copy(src: io.BufferedIOBase, dst: io.BufferedIOBase) -> str:
        dst.write(src.read(3))
        raise OSError("disk full")

    monkeypatch.setattr(sync, "_copy_hashing", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        unpack(_archive(_file("keep.lean", b"replacement that never lands")), root)
    assert tree(root) == {"keep.lean": "keep"}


def test_unpack_rejects_file_that_is_also_a_parent(dest: tuple[Path, Path]) -> None:
    root, _ = dest
    with pytest.raises(UnsafeArchiveError, match="parent"):
        unpack(_archive(_file("a"), _file("a/b")), root)
    with pytest.raises(UnsafeArchiveError, match="parent"):
        unpack(_archive(_file("keep.lean/x")), root)  # existing host file in the way
    directory = tarfile.TarInfo("d")
    directory.type = tarfile.DIRTYPE
    with pytest.raises(UnsafeArchiveError, match="both a file and a directory"):
        unpack(_archive((directory, None), _file("d")), root)
    assert tree(root) == {"keep.lean": "keep"}


# --------------------------------------------------------------------------- remote + session


def test_one_sided_edits_both_directions(pair: Pair) -> None:
    put(pair.host, "A.lean", "a1")
    put(pair.host, "dir/B.lean", "b1")
    report = pair.sync.sync_in()
    assert report.copied == ["A.lean", "dir/B.lean"] and not report.conflicts
    assert tree(pair.box) == {"A.lean": "a1", "dir/B.lean": "b1"}
    put(pair.box, "dir/B.lean", "b2 from sandbox")
    put(pair.box, "C.lean", "new in sandbox")
    assert pair.sync.sync_in().copied == []  # sandbox edits do not travel inward
    report = pair.sync.sync_out()
    assert report.copied == ["C.lean", "dir/B.lean"]
    assert tree(pair.host) == tree(pair.box) == {"A.lean": "a1", "dir/B.lean": "b2 from sandbox", "C.lean": "new in sandbox"}
    assert "2 copied" in report.summary()


def test_both_sided_edit_keeps_both_and_converges(pair: Pair) -> None:
    put(pair.host, "Scratch.lean", "base")
    pair.sync.sync_in()
    put(pair.host, "Scratch.lean", "host edit")
    put(pair.box, "Scratch.lean", "sandbox edit!")
    report = pair.sync.sync_in()
    assert report.conflicts == [("Scratch.lean", "Scratch.lean.conflict-host")]
    assert "Scratch.lean changed on both sides: kept the sandbox's version, the host's is in " \
           "Scratch.lean.conflict-host" in report.summary()
    assert tree(pair.box) == {"Scratch.lean": "sandbox edit!", "Scratch.lean.conflict-host": "host edit"}
    back = pair.sync.sync_out()
    assert not back.conflicts
    expected = {"Scratch.lean": "sandbox edit!", "Scratch.lean.conflict-host": "host edit"}
    assert tree(pair.host) == tree(pair.box) == expected
    assert pair.sync.sync_in().summary().startswith("sync in: up to date")


def test_both_sided_edit_outwards(pair: Pair) -> None:
    put(pair.host, "S.lean", "base")
    pair.sync.sync_in()
    put(pair.host, "S.lean", "host")
    put(pair.box, "S.lean", "sandbox")
    report = pair.sync.sync_out()
    assert report.conflicts == [("S.lean", "S.lean.conflict-sandbox")]
    assert tree(pair.host) == {"S.lean": "host", "S.lean.conflict-sandbox": "sandbox"}
    pair.sync.sync_in()
    assert tree(pair.box) == tree(pair.host)


def test_identical_both_sided_edit_is_not_a_conflict(pair: Pair) -> None:
    put(pair.host, "S.lean", "base")
    pair.sync.sync_in()
    put(pair.host, "S.lean", "same")
    put(pair.box, "S.lean", "same")
    assert not pair.sync.sync_in().changed
    assert not pair.sync.sync_out().changed
    assert pair.sync.base["S.lean"] == sync.hashlib.sha256(b"same").hexdigest()


def test_deletions_both_ways_and_delete_versus_edit(pair: Pair) -> None:
    for name in ["a.lean", "b.lean", "sub/c.lean", "sub2/d.lean", "e.lean"]:
        put(pair.host, name, name)
    pair.sync.sync_in()
    (pair.host / "a.lean").unlink()
    (pair.host / "sub" / "c.lean").unlink()
    (pair.host / "e.lean").unlink()
    put(pair.box, "e.lean", "edited in sandbox")  # deleted on host, edited in sandbox
    report = pair.sync.sync_in()
    assert report.deleted == ["a.lean", "sub/c.lean"]
    assert tree(pair.box) == {"b.lean": "b.lean", "sub2/d.lean": "sub2/d.lean", "e.lean": "edited in sandbox"}
    assert not (pair.box / "sub").exists()  # the emptied directory went too
    (pair.box / "sub2" / "d.lean").unlink()
    report = pair.sync.sync_out()
    assert report.deleted == ["sub2/d.lean"] and report.copied == ["e.lean"]
    assert tree(pair.host) == tree(pair.box) == {"b.lean": "b.lean", "e.lean": "edited in sandbox"}
    assert not (pair.host / "sub2").exists()


def test_remote_scan_applies_ignores_and_reuses_hashes(pair: Pair) -> None:
    put(pair.box, ".lake/build/lib/X.olean", "bin")
    put(pair.box, "Mathlib/A.olean", "bin")
    put(pair.box, "Mathlib/A.lean", "src")
    put(pair.box, "build/gen.lean", "gen")
    put(pair.box, "notes/a b.txt", "x")
    put(pair.box, "gen/x1.lean", "x")
    ignore = Ignore([*sync.DEFAULT_IGNORES, "build/", "notes/*.txt", "gen/x[0-9].lean"])
    first = pair.remote.scan(None, ignore)
    assert set(first) == {"Mathlib/A.lean"}
    assert first["Mathlib/A.lean"].sha256 == sync.hashlib.sha256(b"src").hexdigest()
    assert first["Mathlib/A.lean"].mtime_ns == (pair.box / "Mathlib/A.lean").stat().st_mtime_ns
    _script, _stdin, listed = pair.runner.calls[-1]
    assert b".lake" not in listed and b"build" not in listed and b"notes" not in listed  # pruned in find
    assert b" ./gen/x1.lean\n" in listed  # "[" is not pushed down: listed, then filtered on the host
    assert pair.remote.scan(first, ignore) == first
    _script, stdin, stdout = pair.runner.calls[-1]
    assert b" ./gen/x1.lean\n" in stdin  # ... and hashed once only: the re-scan knows it
    assert stdout.splitlines()[1:] == [b"-- atp-find 0", b"-- atp-end"]  # nothing re-hashed, nothing sent back


def test_remote_scan_hashes_racy_files(pair: Pair) -> None:
    path = put(pair.box, "S.lean", "aaaa", old=False)
    first = pair.remote.scan(None)
    st = path.stat()
    path.write_text("bbbb")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert pair.remote.scan(first)["S.lean"].sha256 == sync.hashlib.sha256(b"bbbb").hexdigest()


def test_remote_scan_rechecks_a_file_that_was_racy_when_hashed(tmp_path: Path) -> None:
    """Same as on the host, with the sandbox's clock (a stand-in ``date``) moving on."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "date").write_text('#!/bin/sh\necho "$ATP_TEST_NOW"\n')
    (fake_bin / "date").chmod(0o755)
    box = tmp_path / "box"
    path = put(box, "S.lean", "aaaa", old=False)
    now = int(time.time())
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "ATP_TEST_NOW": str(now)}
    remote = RemoteTree(Runner(box, ["sh", "-c"], env), str(box))
    first = remote.scan(None)
    assert first["S.lean"].racy
    st = path.stat()
    path.write_text("bbbb")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    env["ATP_TEST_NOW"] = str(now + 60)
    second = remote.scan(first)
    assert second["S.lean"].sha256 == sync.hashlib.sha256(b"bbbb").hexdigest() and not second["S.lean"].racy


def sha(data: bytes) -> str:
    return sync.hashlib.sha256(data).hexdigest()


def hashing_lines(stdout: bytes) -> list[bytes]:
    """The sha256sum lines of a remote scan's output (one per file hashed in the sandbox)."""
    return [ln for ln in stdout.splitlines() if not ln.startswith((b"F ", b"G ", b"-- "))]


def test_remote_rescan_sends_back_only_the_differences(pair: Pair) -> None:
    """Deleted, grown, touched into the past, replaced by a directory, added: all seen, nothing else hashed."""
    for i in range(30):
        put(pair.box, f"d{i % 3}/f {i}.lean", f"v1 {i:02}")
    first = pair.remote.scan(None)
    (pair.box / "d0/f 0.lean").unlink()
    put(pair.box, "d1/f 1.lean", "v2, longer")
    past = pair.box / "d2/f 2.lean"
    mtime = past.stat().st_mtime_ns
    past.write_text("v9 02")  # same size, and an mtime older than the one the manifest has
    os.utime(past, ns=(mtime - 10**10, mtime - 10**10))
    (pair.box / "d0/f 3.lean").unlink()
    put(pair.box, "d0/f 3.lean/inner.lean", "now a directory")
    put(pair.box, "new dir/é ü.lean", "new")
    second = pair.remote.scan(first)
    _script, _stdin, stdout = pair.runner.calls[-1]
    assert len(hashing_lines(stdout)) == 4
    assert len(stdout) < 1000  # 26 unchanged files cost no output
    assert set(first) - set(second) == {"d0/f 0.lean", "d0/f 3.lean"}
    assert set(second) - set(first) == {"d0/f 3.lean/inner.lean", "new dir/é ü.lean"}
    assert second["d1/f 1.lean"].sha256 == sha(b"v2, longer")
    assert second["d2/f 2.lean"].sha256 == sha(b"v9 02")
    assert second["d2/f 2.lean"].mtime_ns == mtime - 10**10
    assert second == RemoteTree(pair.runner, str(pair.box)).scan(None)  # what a scan from scratch says
    assert pair.remote.scan(second) == second
    assert hashing_lines(pair.runner.calls[-1][2]) == []


def test_remote_scan_catches_a_same_size_replacement_in_the_same_second(pair: Pair) -> None:
    """A file renamed over another one, same size, same mtime second: the racy rule hashes it again."""
    path = put(pair.box, "S.lean", "aaaa", old=False)
    first = pair.remote.scan(None)
    assert first["S.lean"].racy
    st = path.stat()
    other = put(pair.box, "S.lean.new", "bbbb", old=False)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    other.replace(path)
    assert pair.remote.scan(first) == {"S.lean": Entry(4, st.st_mtime_ns // 10**9 * 10**9, sha(b"bbbb"))}


def test_remote_scan_trusts_the_sandbox_clock_over_the_manifest(pair: Pair) -> None:
    """A hash the host calls settled (its clock runs ahead, say) is checked again if the file is recent there."""
    path = put(pair.box, "S.lean", "bbbb", old=False)
    mtime_s = path.stat().st_mtime_ns // 10**9
    settled = {"S.lean": Entry(4, mtime_s * 10**9, sha(b"aaaa"), racy=False)}  # same size and second
    assert pair.remote.scan(settled)["S.lean"].sha256 == sha(b"bbbb")


def test_remote_rescan_follows_changed_ignore_patterns(pair: Pair) -> None:
    put(pair.box, "keep.lean", "k")
    put(pair.box, "gen/x1.lean", "x")
    plain = Ignore()
    narrow = Ignore([*sync.DEFAULT_IGNORES, "gen/x[0-9].lean"])  # not pushed down to find
    first = pair.remote.scan(None, plain)
    assert set(first) == {"keep.lean", "gen/x1.lean"}
    assert set(pair.remote.scan(first, narrow)) == {"keep.lean"}
    assert pair.remote.scan(first, plain) == first
    assert hashing_lines(pair.runner.calls[-1][2]) == []  # the ignored file was remembered, not re-hashed


def test_round_trip_budget_on_a_2000_file_tree(pair: Pair) -> None:
    for i in range(2000):
        put(pair.host, f"pkg{i % 40}/File {i} é.lean", f"-- file {i}\n")
    report, runs = pair.runs(pair.sync.sync_in)
    assert len(report.copied) == 2000 and runs == 2
    assert len(tree(pair.box)) == 2000
    assert pair.runs(pair.sync.sync_out)[1] == 1
    _script, _stdin, stdout = pair.runner.calls[-1]
    assert not [ln for ln in stdout.splitlines() if not ln.startswith(b"-- ")]  # what we sent is known: no hashing
    assert pair.runs(pair.sync.sync_in)[1] == 1

    put(pair.host, "pkg7/File 7 é.lean", "-- changed on the host\n")
    report, runs = pair.runs(pair.sync.sync_in)
    assert runs == 2 and report.copied == ["pkg7/File 7 é.lean"]
    _script, stdin, _out = pair.runner.calls[-1]
    assert members_of(write_archive_of(stdin or b"")) == ["pkg7/File 7 é.lean"]

    put(pair.box, "pkg3/File 43 é.lean", "-- changed in the sandbox\n")
    report, runs = pair.runs(pair.sync.sync_out)
    assert runs == 2 and report.copied == ["pkg3/File 43 é.lean"]
    _script, _stdin, stdout = pair.runner.calls[-1]
    assert [m.removeprefix("./") for m in members_of(stdout)] == ["pkg3/File 43 é.lean"]
    assert (pair.host / "pkg3/File 43 é.lean").read_text() == "-- changed in the sandbox\n"
    assert pair.runs(pair.sync.sync_out)[1] == 1


def test_names_with_spaces_quotes_and_utf8(pair: Pair) -> None:
    names = ["a b/c d.lean", "ünïcödé/Ω≈ç.lean", "it's \"quoted\".lean", "-dash.lean", "back\\slash.lean",
             "x" * 120 + "/long name.lean"]
    for name in names:
        put(pair.host, name, name)
    assert sorted(pair.sync.sync_in().copied) == sorted(names)
    assert tree(pair.box) == {n: n for n in names}
    assert pair.remote.scan(None).keys() == set(names)
    for name in names:
        put(pair.box, name, "changed " + name)
    assert sorted(pair.sync.sync_out().copied) == sorted(names)
    assert tree(pair.host) == {n: "changed " + n for n in names}
    (pair.box / names[0]).unlink()
    assert pair.sync.sync_out().deleted == [names[0]]


def test_remote_errors_are_reported(pair: Pair) -> None:
    bad = RemoteTree(pair.runner, str(pair.box / "does-not-exist"))
    with pytest.raises(RemoteError, match="scan failed"):
        bad.scan(None)
    with pytest.raises(RemoteError, match="write failed"):
        bad.write(b"", ["x"])


def test_find_failure_fails_the_scan(tmp_path: Path) -> None:
    """If find could not read part of the tree, those files must not look deleted: the scan fails."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    real_find = shutil.which("find")
    (fake_bin / "find").write_text(f'#!/bin/sh\n"{real_find}" "$@"\necho "find: ./locked: Permission denied" >&2\nexit 1\n')
    (fake_bin / "find").chmod(0o755)
    box = tmp_path / "box"
    put(box, "a.lean", "x")
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    with pytest.raises(RemoteError, match=r"scan \(find\) failed \(exit 1\): find: ./locked: Permission denied"):
        RemoteTree(Runner(box, ["sh", "-c"], env), str(box)).scan(None)


def test_missing_sandbox_tool_is_named(tmp_path: Path, busybox_path: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for applet in os.listdir(busybox_path):
        if applet != "sha256sum":
            os.symlink(os.readlink(os.path.join(busybox_path, applet)), bin_dir / applet)
    # The system sh resolves tools through PATH (busybox's own sh would use its built-in applets).
    runner = Runner(tmp_path, [shutil.which("sh") or "/bin/sh", "-c"], {"PATH": str(bin_dir)})
    with pytest.raises(RemoteError, match="sha256sum"):
        RemoteTree(runner, str(tmp_path)).scan(None)


def test_sync_out_rejects_hostile_sandbox_archive(pair: Pair, tmp_path: Path) -> None:
    """A compromised sandbox answering a read with a symlink escape writes nothing on the host."""
    outside = tmp_path / "outside"
    put(outside, "secret.txt", "secret")
    put(pair.host, "keep.lean", "keep")
    pair.sync.sync_in()
    put(pair.box, "A.lean", "new")
    hostile = _archive(_special("A.lean", tarfile.SYMTYPE, str(outside / "secret.txt")))
    real_run = pair.remote._run
    pair.remote._run = lambda script, stdin: (0, hostile, b"") if "tar -c" in script else real_run(script, stdin)
    before_host, before_out = snapshot(pair.host), snapshot(outside)
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        pair.sync.sync_out()
    assert snapshot(pair.host) == before_host and snapshot(outside) == before_out


def test_names_with_newlines_are_left_alone_on_both_sides(pair: Pair) -> None:
    put(pair.host, "host\nline.lean", "h")
    put(pair.box, "box\nline.lean", "s")
    put(pair.host, "ok.lean", "ok")
    assert pair.sync.sync_in().copied == ["ok.lean"]
    assert not pair.sync.sync_out().changed
    assert (pair.host / "host\nline.lean").read_text() == "h"
    assert (pair.box / "box\nline.lean").read_text() == "s"
    assert not (pair.box / "host\nline.lean").exists()


def test_non_utf8_names_round_trip(pair: Pair) -> None:
    raw = os.fsdecode(b"lat\xe9.lean")  # surrogate-escaped str, like os.listdir gives
    (pair.host / raw).write_bytes(b"v1")
    assert pair.sync.sync_in().copied == [raw]
    assert (pair.box / raw).read_bytes() == b"v1"
    (pair.box / raw).write_bytes(b"v2 from the sandbox")
    assert pair.sync.sync_out().copied == [raw]
    assert (pair.host / raw).read_bytes() == b"v2 from the sandbox"
