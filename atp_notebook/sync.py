"""Two-way sync between a host working directory and a sandbox working directory.

Independent of any backend. The pieces, bottom up:

- **Manifests** (:func:`scan`): relative POSIX path -> :class:`Entry` (size,
  mtime, sha256). A file is re-hashed only when its size or mtime changed, or
  when its mtime is too close to the scan to trust (git's "racy clean" guard).
- **Ignores** (:class:`Ignore`): built-in defaults plus ``.atpignore``.
- **Three-way plan** (:func:`plan`): base (hashes at the last sync), host and
  sandbox manifests -> what to copy, delete, or keep as a conflict copy
  (``NAME.conflict-host`` / ``NAME.conflict-sandbox``). Nothing is ever lost.
- **Safe tar** (:func:`pack`, :func:`unpack`): archives from a sandbox are
  untrusted; every member is validated before anything is written, files are
  written atomically and never through a symlink.
- **The remote side** (:class:`RemoteTree`): the sandbox only runs POSIX ``sh``
  with busybox or coreutils, so each operation is ONE shell script (one round
  trip): scan, read (tar out), write (tar in plus deletions).
- **A session's sync** (:class:`TwoWaySync`): ``sync_in()`` / ``sync_out()``
  returning a :class:`SyncReport`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

__all__ = [
    "DEFAULT_IGNORES",
    "Direction",
    "Entry",
    "Ignore",
    "Manifest",
    "RemoteError",
    "RemoteTree",
    "RunScript",
    "SyncError",
    "SyncPlan",
    "SyncReport",
    "TwoWaySync",
    "UnsafeArchiveError",
    "hash_file",
    "hashes",
    "pack",
    "plan",
    "scan",
    "unpack",
]

Direction = Literal["in", "out"]
RunScript = Callable[[str, bytes | None], tuple[int, bytes, bytes]]
"""``run(script, stdin) -> (exit_code, stdout, stderr)``: a POSIX sh script run in the sandbox."""

#: Patterns ignored on both sides, always (``.atp/`` holds our own logs;
#: ``.atp-sync-*.tmp`` are our in-flight atomic writes).
DEFAULT_IGNORES: tuple[str, ...] = (
    ".lake/",
    ".git/",
    "__pycache__/",
    ".ipynb_checkpoints/",
    ".atp/",
    "*.olean",
    "*.ilean",
    ".atp-sync-*.tmp",
)
IGNORE_FILE = ".atpignore"
#: A file whose mtime is this close to (or after) the scan is hashed anyway.
RACY_WINDOW_NS = 2_000_000_000
_SIDE_OF = {"in": ("host", "sandbox"), "out": ("sandbox", "host")}
_TMP_PREFIX = ".atp-sync-"


class SyncError(Exception):
    """A sync could not be carried out."""


class UnsafeArchiveError(SyncError):
    """An archive member was rejected; nothing from the archive was written."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"unsafe archive member {member!r}: {reason}; nothing was extracted")
        self.member = member
        self.reason = reason


class RemoteError(SyncError):
    """A sync script failed inside the sandbox."""

    def __init__(self, what: str, exit_code: int, stderr: bytes) -> None:
        text = stderr.decode("utf-8", "replace").strip()
        super().__init__(
            f"sandbox {what} failed (exit {exit_code})" + (f": {text}" if text else "")
        )
        self.exit_code = exit_code
        self.stderr = text


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Entry:
    """One regular file: size in bytes, mtime in ns, content sha256 (hex).

    ``sha256 == ""`` means the file could not be read; such paths are left
    alone by :func:`plan` until they can. ``racy``: the hash was taken while
    the mtime was too recent to trust (an edit in the same clock tick would
    not change size or mtime), so the next scan hashes the file again, like
    git's "smudged" index entries. Not part of equality.
    """

    size: int
    mtime_ns: int
    sha256: str
    racy: bool = field(default=False, compare=False)

    def reusable_for(self, size: int, mtime_ns: int) -> bool:
        """Whether this hash may stand for a file now of this size and mtime."""
        return bool(self.sha256) and not self.racy and self.size == size and self.mtime_ns == mtime_ns


Manifest = dict[str, Entry]


def hash_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's content."""
    with open(path, "rb") as fh:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+
            return hashlib.file_digest(fh, "sha256").hexdigest()
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


def _hash_or_blank(path: str) -> str | None:
    """Hash a file; ``""`` if unreadable, ``None`` if it vanished."""
    try:
        return hash_file(path)
    except FileNotFoundError:
        return None
    except OSError:
        return ""


def scan(root: Path | str, previous: Manifest | None = None, ignore: Ignore | None = None) -> Manifest:
    """Build the manifest of the regular files under ``root``.

    Symlinks are neither followed nor listed; ignored directories are pruned;
    names containing a newline are skipped (the sandbox side cannot list them).
    A file is hashed only if its size/mtime differ from ``previous``, or its
    mtime is within :data:`RACY_WINDOW_NS` of the scan's start, or it was in
    that window when ``previous`` hashed it.
    """
    ignore = ignore if ignore is not None else Ignore.load(root)
    previous = previous or {}
    now_ns = time.time_ns()
    result: Manifest = {}
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    match = ignore.match
    while stack:
        dir_path, prefix = stack.pop()
        with os.scandir(dir_path) as entries:
            for entry in entries:  # the hot loop of a re-scan: kept flat on purpose
                name = entry.name
                if "\n" in name:
                    continue  # not representable in the sandbox's line-based listing
                rel = prefix + name
                if entry.is_file(follow_symlinks=False):
                    if not match(rel, name, is_dir=False):
                        _scan_file(entry, rel, previous.get(rel), now_ns, result)
                elif entry.is_dir(follow_symlinks=False) and not match(rel, name, is_dir=True):
                    stack.append((entry.path, rel + "/"))
    return result


def _scan_file(entry: os.DirEntry[str], rel: str, old: Entry | None, now_ns: int, out: Manifest) -> None:
    """Add one file to ``out``, reusing ``old``'s hash when allowed."""
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return
    size, mtime_ns = st.st_size, st.st_mtime_ns
    racy = mtime_ns >= now_ns - RACY_WINDOW_NS
    if not racy and old is not None and old.reusable_for(size, mtime_ns):
        out[rel] = old
        return
    digest = _hash_or_blank(entry.path)
    if digest is not None:
        out[rel] = Entry(size, mtime_ns, digest, racy)


def _recent(mtime_ns: int) -> bool:
    """Whether an mtime is in the racy window of now (by this machine's clock)."""
    return mtime_ns >= time.time_ns() - RACY_WINDOW_NS


def hashes(manifest: Mapping[str, Entry]) -> dict[str, str]:
    """The ``path -> sha256`` view of a manifest (the shape of a sync base)."""
    return {path: entry.sha256 for path, entry in manifest.items()}


# --------------------------------------------------------------------------- ignores


def _compile(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


class Ignore:
    """Gitignore-ish patterns: fnmatch on the basename, or on the relative path.

    A pattern containing ``/`` (other than a trailing one) matches the whole
    relative path (a leading ``/`` anchors it, and is dropped); otherwise it
    matches the basename at any depth. A trailing ``/`` matches directories
    only. ``#`` starts a comment line; blank lines are skipped. Negation
    (``!``) is not supported. An ignored directory is pruned with all it holds.
    """

    def __init__(self, patterns: Iterable[str] = DEFAULT_IGNORES) -> None:
        self.patterns: tuple[str, ...] = tuple(_clean_patterns(patterns))
        groups: dict[tuple[bool, bool], list[str]] = {k: [] for k in _GROUP_KEYS}
        for pattern in self.patterns:
            dir_only = pattern.endswith("/")
            body = pattern.rstrip("/")
            by_path = "/" in body
            groups[(dir_only, by_path)].append(body.lstrip("/"))
        compiled = {key: _compile(pats) for key, pats in groups.items()}
        # (regex, matches the relative path?) lists, for files and for directories
        self._file_checks = [(compiled[k], k[1]) for k in _FILE_KEYS if compiled[k] is not None]
        self._dir_checks = [(compiled[k], k[1]) for k in _GROUP_KEYS if compiled[k] is not None]
        self._dir_verdicts: dict[str, bool] = {}

    @classmethod
    def load(cls, root: Path | str, extra: Iterable[str] = ()) -> Ignore:
        """Defaults + ``extra`` + the patterns of ``root/.atpignore`` (if any)."""
        path = Path(root) / IGNORE_FILE
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            lines = []
        return cls([*DEFAULT_IGNORES, *extra, *lines])

    def match(self, rel: str, name: str, *, is_dir: bool) -> bool:
        """Whether the entry ``rel`` (basename ``name``) is ignored itself."""
        for regex, by_path in self._dir_checks if is_dir else self._file_checks:
            if regex.match(rel if by_path else name):  # type: ignore[union-attr]
                return True
        return False

    def ignores(self, rel: str) -> bool:
        """Whether the file ``rel`` is ignored, itself or through a parent directory."""
        parent, _, name = rel.rpartition("/")
        if parent and self._ignores_dir(parent):
            return True
        return self.match(rel, name, is_dir=False)

    def _ignores_dir(self, rel: str) -> bool:
        """Whether the directory ``rel`` is ignored, itself or through a parent (remembered)."""
        verdict = self._dir_verdicts.get(rel)
        if verdict is None:
            parent, _, name = rel.rpartition("/")
            verdict = bool(parent and self._ignores_dir(parent)) or self.match(rel, name, is_dir=True)
            self._dir_verdicts[rel] = verdict
        return verdict

    def find_tests(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``find`` tests that apply these patterns: (directories to prune, files to skip).

        Each test is ``("-name", glob)`` or ``("-path", "./glob")``. Only
        patterns without ``[`` or ``\\`` are pushed down, where ``find`` and
        :mod:`fnmatch` surely agree (``*`` and ``?`` match any character,
        ``/`` and a leading dot included); the host applies every pattern
        again afterwards.
        """
        prune: list[tuple[str, str]] = []
        skip: list[tuple[str, str]] = []
        for pattern in self.patterns:
            body = pattern.rstrip("/")
            if "[" in body or "\\" in body:
                continue
            test = ("-path", "./" + body.lstrip("/")) if "/" in body else ("-name", body)
            prune.append(test)
            if not pattern.endswith("/"):
                skip.append(test)
        return prune, skip

    def __repr__(self) -> str:
        return f"Ignore({list(self.patterns)!r})"


_GROUP_KEYS = ((False, False), (False, True), (True, False), (True, True))
_FILE_KEYS = ((False, False), (False, True))


def _clean_patterns(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and line.strip("/"):
            yield line


# --------------------------------------------------------------------------- plan


@dataclass
class SyncPlan:
    """What one sync does at the destination.

    ``copy``: paths written from the source. ``delete``: paths removed.
    ``conflicts``: ``(path, conflict_copy_name)``; the destination keeps
    ``path`` and receives the source's version under the conflict name.
    ``skipped``: paths left alone because one side could not read them.
    """

    direction: Direction
    copy: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    _old_base: dict[str, str] = field(default_factory=dict, repr=False)
    _new_base: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        """True when nothing moves."""
        return not (self.copy or self.delete or self.conflicts)

    def transfers(self) -> list[tuple[str, str]]:
        """``(source path, destination path)`` of every file that travels."""
        return [(p, p) for p in self.copy] + list(self.conflicts)

    def new_base(self, not_applied: Iterable[str] = ()) -> dict[str, str]:
        """The base after this plan was applied, except for ``not_applied`` paths.

        A path that could not be moved (it vanished in between, say) keeps
        its old base, so the next sync sees the change again.
        """
        base = dict(self._new_base)
        for path in not_applied:
            if path in self._old_base:
                base[path] = self._old_base[path]
            else:
                base.pop(path, None)
        return base


def plan(
    base: Mapping[str, str],
    host: Mapping[str, Entry],
    sandbox: Mapping[str, Entry],
    direction: Direction,
) -> SyncPlan:
    """Three-way compare; only changes made on the source side travel.

    ``direction="in"``: host -> sandbox; ``"out"``: sandbox -> host.
    """
    if direction not in _SIDE_OF:
        raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
    src, dst = (host, sandbox) if direction == "in" else (sandbox, host)
    result = SyncPlan(direction, _old_base=dict(base))
    new_base = dict(base)
    taken = set(src) | set(dst) | set(base)
    for path in sorted(taken):
        _plan_path(path, base.get(path), src.get(path), dst.get(path), result, new_base, taken)
    result._new_base = new_base
    return result


def _plan_path(
    path: str,
    b: str | None,
    src_entry: Entry | None,
    dst_entry: Entry | None,
    result: SyncPlan,
    new_base: dict[str, str],
    taken: set[str],
) -> None:
    """Decide one path; updates ``result`` and ``new_base`` in place."""
    s = src_entry.sha256 if src_entry else None
    d = dst_entry.sha256 if dst_entry else None
    if s == "" or d == "":
        result.skipped.append(path)
    elif s == d:
        _set_base(new_base, path, s)
    elif s == b:
        pass  # only the destination changed: that travels the other way
    elif s is None:
        if d == b:
            result.delete.append(path)
            new_base.pop(path, None)
        # else: deleted at the source, changed at the destination -> keep it
    elif d == b or (d is None and b is not None):
        result.copy.append(path)  # plain copy; an edit also beats a delete
        new_base[path] = s
    else:
        name = _conflict_name(path, _SIDE_OF[result.direction][0], taken)
        result.conflicts.append((path, name))
        new_base[path] = s


def _set_base(base: dict[str, str], path: str, digest: str | None) -> None:
    if digest is None:
        base.pop(path, None)
    else:
        base[path] = digest


def _conflict_name(path: str, side: str, taken: set[str]) -> str:
    """``NAME.conflict-<side>``, or ``.1``, ``.2``... if that is taken."""
    name = f"{path}.conflict-{side}"
    n = 0
    candidate = name
    while candidate in taken:
        n += 1
        candidate = f"{name}.{n}"
    taken.add(candidate)
    return candidate


# --------------------------------------------------------------------------- report


@dataclass
class SyncReport:
    """What a sync did."""

    direction: Direction
    copied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_moved: int = 0
    duration_s: float = 0.0

    @property
    def changed(self) -> bool:
        """True if anything was written or deleted."""
        return bool(self.copied or self.deleted or self.conflicts)

    def conflict_messages(self) -> list[str]:
        """One sentence per conflict, saying which version is where."""
        source, dest = _SIDE_OF[self.direction]
        return [
            f"{path} changed on both sides: kept the {dest}'s version, "
            f"the {source}'s is in {copy}"
            for path, copy in self.conflicts
        ]

    def summary(self) -> str:
        """One human line, e.g. ``sync in: 2 copied, 1 deleted (3.1 KB, 0.04 s)``."""
        head = f"sync {self.direction}: "
        parts = []
        if self.copied:
            parts.append(f"{len(self.copied)} copied")
        if self.deleted:
            parts.append(f"{len(self.deleted)} deleted")
        if self.conflicts:
            n = len(self.conflicts)
            parts.append(f"{n} conflict" + ("s" if n > 1 else ""))
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (unreadable or vanished)")
        head += ", ".join(parts) if parts else "up to date"
        head += f" ({_human_bytes(self.bytes_moved)}, {self.duration_s:.2f} s)"
        return "; ".join([head, *self.conflict_messages()])

    def __str__(self) -> str:
        return self.summary()


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------- pack


def pack(root: Path | str, paths: Iterable[str], *, arcnames: Mapping[str, str] | None = None) -> bytes:
    """An uncompressed POSIX (pax) tar of the regular files ``paths`` under ``root``.

    Mtimes are kept (whole seconds: what ``tar`` and the sandbox's ``stat``
    carry; a pax record per file for the nanoseconds would double the
    headers). ``arcnames`` renames members (``path -> name in the archive``).
    Raises :class:`FileNotFoundError` if a path is not a regular file
    (missing, a symlink, a directory).
    """
    members = [(p, (arcnames or {}).get(p, p)) for p in paths]
    packed = _build_archive(root, members)
    if packed.missing:
        raise FileNotFoundError(f"not a regular file under {root}: {packed.missing[0]}")
    return packed.data


@dataclass
class _Packed:
    """An archive built from host files.

    ``entries``: archive name -> what the file will be once extracted (size,
    whole-second mtime, hash of the bytes sent). ``missing``: sources that
    could not be read as regular files (vanished, replaced by a link...).
    """

    data: bytes = b""
    entries: dict[str, Entry] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _build_archive(root: Path | str, members: list[tuple[str, str]]) -> _Packed:
    """Tar ``(source path, archive name)`` pairs (``data == b""`` if none could be read)."""
    if not members:
        return _Packed()
    buffer = io.BytesIO()
    packed = _Packed()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, arcname in members:
            loaded = _read_regular(os.path.join(os.fspath(root), rel))
            if loaded is None:
                packed.missing.append(rel)
                continue
            content, st = loaded
            info = _tarinfo(arcname, len(content), st)
            tar.addfile(info, io.BytesIO(content))
            digest = hashlib.sha256(content).hexdigest()
            mtime_ns = st.st_mtime_ns // 1_000_000_000 * 1_000_000_000  # what tar carries
            packed.entries[arcname] = Entry(len(content), mtime_ns, digest, _recent(mtime_ns))
    if packed.entries:
        packed.data = buffer.getvalue()
    return packed


def _read_regular(path: str) -> tuple[bytes, os.stat_result] | None:
    """Read a regular file without following a symlink; ``None`` if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(), st
    finally:
        os.close(fd)


def _tarinfo(name: str, size: int, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = st.st_mtime_ns // 1_000_000_000
    return info


# --------------------------------------------------------------------------- unpack


@dataclass
class _Planned:
    """A validated archive member and where it goes."""

    member: tarfile.TarInfo
    dest: str  # relative POSIX path
    mode: int | None


def unpack(
    data: bytes | IO[bytes],
    root: Path | str,
    *,
    allowed: set[str] | None = None,
    rename: Mapping[str, str] | None = None,
) -> list[str]:
    """Safely extract an untrusted tar into ``root``; returns the files written.

    Only regular files and directories are accepted. Every member is checked
    first (absolute names, ``..``, links, devices, fifos, names outside
    ``allowed``, destinations that resolve outside ``root`` through existing
    host symlinks, plus tarfile's ``data`` filter where Python has it); any
    failure raises :class:`UnsafeArchiveError` before anything is written.
    Files are then written atomically (temp file + ``os.replace``), never
    through a symlink. ``rename`` maps a member name to another destination.
    """
    with _open_tar(data) as tar:
        planned = _validate(tar, root, allowed, rename or {})
        return list(_extract(tar, root, planned))


def _open_tar(data: bytes | IO[bytes]) -> tarfile.TarFile:
    """Open an archive for random access (spooling a stream if needed)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        fileobj: IO[bytes] = io.BytesIO(bytes(data))
    elif data.seekable():
        fileobj = data
    else:
        fileobj = tempfile.SpooledTemporaryFile(max_size=64 << 20)
        shutil.copyfileobj(data, fileobj)
        fileobj.seek(0)
    try:
        return tarfile.open(fileobj=fileobj, mode="r:", ignore_zeros=True)
    except tarfile.TarError as exc:
        raise SyncError(f"not a readable tar archive: {exc}") from exc


def _normalize(name: str) -> str:
    """Member name -> relative POSIX path (``""`` for the root); rejects escapes."""
    if name.startswith("/"):
        raise UnsafeArchiveError(name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(name, "'..' component")
    if "\x00" in name:
        raise UnsafeArchiveError(name, "NUL in name")
    return "/".join(parts)


def _member_kind(member: tarfile.TarInfo) -> str | None:
    """Why a member type is refused, or ``None`` for a file/directory."""
    if member.issym():
        return f"symbolic link (-> {member.linkname!r})"
    if member.islnk():
        return f"hard link (-> {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    if not (member.isreg() or member.isdir()):
        return "unsupported member type"
    return None


def _ancestors(rel: str) -> Iterable[str]:
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        yield "/".join(parts[:depth])


def _validate(
    tar: tarfile.TarFile, root: Path | str, allowed: set[str] | None, rename: Mapping[str, str]
) -> list[_Planned]:
    """Check every member; return the extraction plan or raise."""
    root_real = os.path.realpath(root)
    allowed_dirs = {a for name in allowed for a in _ancestors(name)} if allowed is not None else None
    planned: list[_Planned] = []
    files: set[str] = set()
    try:
        members = tar.getmembers()
    except tarfile.TarError as exc:
        raise SyncError(f"damaged tar archive: {exc}") from exc
    for member in members:
        name = _normalize(member.name)
        reason = _member_kind(member)
        if reason:
            raise UnsafeArchiveError(member.name, reason)
        if member.isdir():
            if name == "":
                continue
            if allowed_dirs is not None and name not in allowed_dirs:
                raise UnsafeArchiveError(member.name, "directory not expected in this transfer")
            dest = name
        else:
            if not name:
                raise UnsafeArchiveError(member.name, "file without a name")
            if allowed is not None and name not in allowed:
                raise UnsafeArchiveError(member.name, "not one of the requested files")
            dest = _normalize(rename.get(name, name))
            files.add(dest)
        _check_destination(member, dest, root_real)
        planned.append(_Planned(member, dest, _filtered_mode(member, dest, root_real)))
    for item in planned:
        if any(a in files for a in _ancestors(item.dest)):
            raise UnsafeArchiveError(item.member.name, "a parent is also a file in the archive")
        if item.member.isdir() and item.dest in files:
            raise UnsafeArchiveError(item.member.name, "is both a file and a directory in the archive")
    return planned


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def _check_destination(member: tarfile.TarInfo, dest: str, root_real: str) -> None:
    """Resolve existing host components; the target must stay inside the root."""
    target = os.path.join(root_real, *dest.split("/"))
    parent_real = os.path.realpath(os.path.dirname(target))
    if not _inside(parent_real, root_real):
        raise UnsafeArchiveError(member.name, f"resolves outside the destination (via {parent_real})")
    existing = parent_real
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UnsafeArchiveError(member.name, "a parent on the host is not a directory")
    if member.isdir():
        if os.path.lexists(target) and not (os.path.isdir(target) and not os.path.islink(target)):
            raise UnsafeArchiveError(member.name, "would replace a non-directory on the host")
    elif os.path.isdir(target) and not os.path.islink(target):
        raise UnsafeArchiveError(member.name, "would replace a directory on the host")


def _filtered_mode(member: tarfile.TarInfo, dest: str, root_real: str) -> int | None:
    """Run tarfile's ``data`` filter (when available) and return the mode to apply."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # Python < 3.11.4: our own checks only
        return _safe_mode(member.mode) if member.isreg() else None
    try:
        filtered = data_filter(member.replace(name=dest, deep=False), root_real)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(member.name, f"refused by tarfile's data filter ({exc})") from exc
    if filtered is None:
        raise UnsafeArchiveError(member.name, "refused by tarfile's data filter")
    return filtered.mode if member.isreg() else None


def _safe_mode(mode: int) -> int:
    """What the ``data`` filter does to a file mode (for old Pythons)."""
    mode &= 0o755
    if not mode & stat.S_IXUSR:
        mode &= ~0o111
    return mode | 0o600


def _extract(tar: tarfile.TarFile, root: Path | str, planned: list[_Planned]) -> dict[str, Entry]:
    """Write validated members, each file atomically; returns the files written."""
    root_real = os.path.realpath(root)
    written: dict[str, Entry] = {}
    for item in planned:
        target = os.path.join(root_real, *item.dest.split("/"))
        if item.member.isdir():
            _makedirs_inside(target, root_real, item.member.name)
            continue
        parent = _makedirs_inside(os.path.dirname(target), root_real, item.member.name)
        source = tar.extractfile(item.member)
        assert source is not None  # a regular file always has a body
        final = os.path.join(parent, os.path.basename(target))
        digest = _atomic_write(final, source, item.mode, _mtime_ns(item.member))
        st = os.lstat(final)
        written[item.dest] = Entry(st.st_size, st.st_mtime_ns, digest, _recent(st.st_mtime_ns))
    return written


def _makedirs_inside(path: str, root_real: str, member: str) -> str:
    """Create ``path``; re-check (after creation) that it resolves inside the root."""
    os.makedirs(path, exist_ok=True)
    real = os.path.realpath(path)
    if not _inside(real, root_real):  # something changed under us since validation
        raise UnsafeArchiveError(member, f"resolves outside the destination (via {real})")
    return real


def _atomic_write(dest: str, source: IO[bytes], mode: int | None, mtime_ns: int) -> str:
    """Temp file in the same directory, then ``os.replace`` (which never follows a link).

    Returns the sha256 of what was written.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=_TMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _copy_hashing(source, out)
            if mode is not None:
                os.fchmod(out.fileno(), mode)
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return digest


def _copy_hashing(source: IO[bytes], out: IO[bytes]) -> str:
    """Copy a stream, returning the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: source.read(1 << 20), b""):
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in ns, exact when a pax ``mtime`` record carries it."""
    text = member.pax_headers.get("mtime")
    if text and re.fullmatch(r"-?\d+(\.\d+)?", text):
        whole, _, frac = text.partition(".")
        nanos = int((frac + "000000000")[:9])
        return int(whole) * 1_000_000_000 + (-nanos if whole.startswith("-") else nanos)
    return int(member.mtime * 1_000_000_000)


# --------------------------------------------------------------------------- host deletes


def _delete_local(root: Path | str, paths: Iterable[str]) -> list[str]:
    """Unlink regular files (never following links out of ``root``); prune emptied dirs."""
    root_real = os.path.realpath(root)
    deleted: list[str] = []
    for rel in paths:
        target = os.path.join(root_real, *rel.split("/"))
        parent = os.path.realpath(os.path.dirname(target))
        if not _inside(parent, root_real):
            continue
        target = os.path.join(parent, os.path.basename(target))
        try:
            if not stat.S_ISREG(os.lstat(target).st_mode):
                continue
            os.unlink(target)
        except FileNotFoundError:
            pass
        deleted.append(rel)
        _prune_empty_dirs(parent, root_real)
    return deleted


def _prune_empty_dirs(directory: str, root_real: str) -> None:
    while directory != root_real and _inside(directory, root_real):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)


# --------------------------------------------------------------------------- remote side


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


_TOOLS_CHECK = (
    'for t in {tools}; do command -v "$t" >/dev/null 2>&1 || '
    '{{ echo "atp sync: \'$t\' not found in the sandbox" >&2; exit 127; }}; done\n'
)

# Stdin: the previous manifest as "size mtime_s ./path" lines (the files whose
# hash may be reused), then "-- atp-scan" and the sandbox's own listing in the
# very same format. A previous line seen again verbatim, with an mtime outside
# the racy window by the sandbox's clock, is an unchanged file: nothing is
# printed for it, so a re-scan with nothing changed answers in a few bytes.
# Printed: the clock; "F size mtime ./path" per file to hash (new, changed or
# racy); the find status; "G size mtime ./path" per previous line NOT seen
# unchanged (the file was deleted, or changed and is among the "F" lines);
# the sha256sum lines of the "F" files; an end marker.
_SCAN_AWK = r"""
BEGIN { print "-- atp-now " now; cut = now - 2 }
phase == 0 {
  if ($0 == "-- atp-scan") phase = 1
  else prev[$0] = 1
  next
}
/^-- atp-find / { print; next }
{
  if ($0 in prev) { delete prev[$0]; if ($2 + 0 < cut) next }
  print "F " $0
  i = index($0, " "); r = substr($0, i + 1); h[++nh] = substr(r, index(r, " ") + 1)
}
END {
  for (line in prev) print "G " line
  fflush()
  if (nh > 0) { cmd = ENVIRON["ATP_HASH"]; for (k = 1; k <= nh; k++) print h[k] | cmd; close(cmd) }
  print "-- atp-end"
}
"""

_READ_SCRIPT = "tr '\\n' '\\000' | xargs -0 tar -c --no-recursion -f - --\n"

_WRITE_SCRIPT = r"""IFS=' ' read -r n t || exit 4
i=0
while [ "$i" -lt "$n" ]; do
  IFS= read -r f || exit 4
  if [ -f "./$f" ] || [ -L "./$f" ]; then rm -f "./$f" || exit 5; fi
  case "$f" in */*) rmdir -p "./${f%/*}" >/dev/null 2>&1 ;; esac
  i=$((i + 1))
done
if [ "$t" = 1 ]; then exec tar -x -o -f -; fi
"""


class RemoteTree:
    """The sandbox's working tree, driven through shell scripts (one ``run`` per call).

    ``run(script, stdin) -> (exit_code, stdout, stderr)`` executes a POSIX
    ``sh`` script in the sandbox (busybox or coreutils: find, stat, sha256sum,
    tar, awk, xargs, tr, date). ``root`` is the sandbox workdir. Paths with a
    newline are not synced.
    """

    def __init__(self, run: RunScript, root: str, ignore: Ignore | None = None) -> None:
        self._run = run
        self.root = root
        self.ignore = ignore if ignore is not None else Ignore()
        self.round_trips = 0
        # Ignored files the find tests could not prune, remembered so that
        # they are hashed once, not on every scan.
        self._ignored: Manifest = {}

    def _in_root(self, body: str) -> str:
        return f"cd {_sh_quote(self.root)} || exit 3\n{body}"

    def _call(self, what: str, body: str, stdin: bytes | None, *, partial_ok: bool = False) -> bytes:
        """One round trip; raises :class:`RemoteError` on failure.

        ``partial_ok``: a non-zero exit with a non-trivial stdout is accepted
        (tar still archives what it could read).
        """
        self.round_trips += 1
        code, out, err = self._run(self._in_root(body), stdin)
        if code != 0 and not (partial_ok and len(out) >= 1024):
            raise RemoteError(what, code, err)
        return out

    def scan(self, previous: Manifest | None = None, ignore: Ignore | None = None) -> Manifest:
        """Manifest of the sandbox tree; hashes only what changed (one ``run``).

        The sandbox compares its listing with ``previous`` itself and answers
        with the differences only: the cost of a re-scan is one ``find`` and
        ``stat`` over the tree plus the changes, not a manifest sent back.
        """
        ignore = ignore if ignore is not None else self.ignore
        reusable, listing = _previous_listing({**self._ignored, **(previous or {})})
        self.round_trips += 1
        code, out, err = self._run(self._in_root(self._scan_script(ignore)), listing)
        if code != 0:
            raise RemoteError("scan", code, err)
        found = re.search(rb"(?:^|\n)-- atp-find (\d+)\n", out)
        if found is None or found.group(1) != b"0":
            # A directory find could not read would look like deleted files: refuse.
            raise RemoteError("scan (find)", int(found.group(1)) if found else -1, err)
        manifest: Manifest = {}
        self._ignored = {}
        for name, item in _parse_scan(out, reusable).items():
            (self._ignored if ignore.ignores(name) else manifest)[name] = item
        return manifest

    def _scan_script(self, ignore: Ignore) -> str:
        prune, skip = ignore.find_tests()
        prune_expr = " -o ".join(f"{test} {_sh_quote(glob)}" for test, glob in prune)
        find = "find ."
        if prune_expr:
            find += f" \\( -type d \\( {prune_expr} \\) \\) -prune -o"
        find += " -type f" + "".join(f" ! {test} {_sh_quote(glob)}" for test, glob in skip)
        find += ' ! -path "*$nl*" -exec stat -c \'%s %Y %n\' {} +'
        return (
            _TOOLS_CHECK.format(tools="cat find stat awk sha256sum xargs tr date")
            + "nl='\n'\nnow=$(date +%s)\n"
            + "ATP_HASH=\"tr '\\n' '\\000' | xargs -0 sha256sum\"\nexport ATP_HASH\n"
            + f'{{ cat; echo "-- atp-scan"; {find}; echo "-- atp-find $?"; }} | '
            + f'awk -v now="$now" {_sh_quote(_SCAN_AWK)}\n'
        )

    def read(self, paths: Iterable[str]) -> bytes:
        """A tar of the given regular files (one ``run``); unreadable ones are left out."""
        names = [p for p in paths if "\n" not in p]
        if not names:
            return b""
        stdin = "".join(f"./{p}\n" for p in names).encode("utf-8", "surrogateescape")
        return self._call(
            "read", _TOOLS_CHECK.format(tools="tar xargs tr") + _READ_SCRIPT, stdin,
            partial_ok=True,
        )

    def write(self, data: bytes, delete: Iterable[str] = ()) -> None:
        """Remove ``delete`` paths, then extract the tar ``data`` into the root (one ``run``)."""
        gone = [p for p in delete if "\n" not in p]
        header = f"{len(gone)} {1 if data else 0}\n" + "".join(f"{p}\n" for p in gone)
        stdin = header.encode("utf-8", "surrogateescape") + data
        self._call("write", _TOOLS_CHECK.format(tools="tar rm rmdir") + _WRITE_SCRIPT, stdin)


def _previous_listing(previous: Manifest) -> tuple[Manifest, bytes]:
    """The entries whose hash may be reused, and their ``size mtime_s ./path`` lines.

    The lines must be byte for byte what the sandbox's ``stat -c '%s %Y %n'``
    prints for an unchanged file.
    """
    reusable = {
        path: e for path, e in previous.items() if e.sha256 and not e.racy and "\n" not in path
    }
    text = "".join([f"{e.size} {e.mtime_ns // 1_000_000_000} ./{path}\n" for path, e in reusable.items()])
    return reusable, text.encode("utf-8", "surrogateescape")


def _parse_scan(out: bytes, reusable: Manifest) -> Manifest:
    """Turn the scan script's output into a manifest (before host-side ignores).

    ``reusable``: the entries the script was given. Those it did not report
    as gone are unchanged; the files it reported are new or changed (or racy)
    and come with fresh hashes.
    """
    stats: dict[str, tuple[int, int]] = {}
    digests: dict[str, str] = {}
    gone: set[str] = set()
    ended = False
    now_s = 0
    for raw in out.split(b"\n"):
        line = raw.decode("utf-8", "surrogateescape")
        if line.startswith("-- atp-now "):
            now_s = int(line[len("-- atp-now "):])
        elif line.startswith("F "):
            size, mtime, name = line[2:].split(" ", 2)
            name = _strip_dot(name)
            if _is_clean_relative(name):  # a hostile sandbox could print anything
                stats[name] = (int(size), int(mtime) * 1_000_000_000)
        elif line.startswith("G "):
            gone.add(_strip_dot(line[2:].split(" ", 2)[-1]))
        elif line.startswith("-- atp-find "):
            continue
        elif line == "-- atp-end":
            ended = True
        elif line:
            name, digest = _parse_hash_line(line)
            digests[name] = digest
    if not ended:
        raise SyncError("sandbox scan output was cut short")
    result = {name: e for name, e in reusable.items() if name not in gone}
    result.update(_hashed_entries(stats, digests, (now_s - 2) * 1_000_000_000))
    return result


def _hashed_entries(
    stats: Mapping[str, tuple[int, int]], digests: Mapping[str, str], racy_from_ns: int
) -> Manifest:
    """Join the stat and hash lines of the files the script hashed.

    A file it meant to hash but could not read gets ``sha256=""``; hashes of
    files with an mtime from ``racy_from_ns`` on (by the sandbox's clock) are
    marked racy.
    """
    return {
        name: Entry(size, mtime_ns, digests.get(name, ""), mtime_ns >= racy_from_ns)
        for name, (size, mtime_ns) in stats.items()
    }


def _is_clean_relative(name: str) -> bool:
    """A plain relative POSIX path: no leading ``/``, no empty, ``.`` or ``..`` parts."""
    return bool(name) and all(part not in ("", ".", "..") for part in name.split("/"))


def _strip_dot(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _parse_hash_line(line: str) -> tuple[str, str]:
    """``HEX  ./name`` (GNU escapes odd names as ``\\HEX  name``)."""
    escaped = line.startswith("\\")
    if escaped:
        line = line[1:]
    digest, name = line[:64], line[66:]
    if escaped:
        name = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), name)
    return _strip_dot(name), digest


# --------------------------------------------------------------------------- session sync


class TwoWaySync:
    """A session's two-way sync between ``host_root`` and a :class:`RemoteTree`.

    Keeps the base (hashes at the last sync) and the last manifest of each
    side. ``ignore=None`` re-reads ``host_root/.atpignore`` on every sync (the
    host's patterns apply to both sides). Not thread-safe: one sync at a time.
    """

    def __init__(
        self,
        host_root: Path | str,
        remote: RemoteTree,
        ignore: Ignore | None = None,
        *,
        base: Mapping[str, str] | None = None,
    ) -> None:
        self.host_root = Path(host_root)
        self.remote = remote
        self._ignore = ignore
        self.base: dict[str, str] = dict(base or {})
        self.host_manifest: Manifest = {}
        self.sandbox_manifest: Manifest = {}

    def _scan_both(self) -> Ignore:
        ignore = self._ignore if self._ignore is not None else Ignore.load(self.host_root)
        self.host_manifest = scan(self.host_root, self.host_manifest, ignore)
        self.sandbox_manifest = self.remote.scan(self.sandbox_manifest, ignore)
        return ignore

    def plan(self, direction: Direction) -> SyncPlan:
        """Scan both sides and return what a sync in ``direction`` would do."""
        self._scan_both()
        return plan(self.base, self.host_manifest, self.sandbox_manifest, direction)

    def sync_in(self) -> SyncReport:
        """Host -> sandbox: one round trip if nothing changed, two otherwise."""
        started = time.monotonic()
        todo = self.plan("in")
        packed = _build_archive(self.host_root, todo.transfers())
        if packed.data or todo.delete:
            self.remote.write(packed.data, todo.delete)
        # What the sandbox now holds is known: the next scan need not re-hash it.
        _apply_to_manifest(self.sandbox_manifest, packed.entries, todo.delete)
        return self._finish(todo, packed.missing, todo.delete, len(packed.data), started)

    def sync_out(self) -> SyncReport:
        """Sandbox -> host: one round trip if nothing changed, two otherwise."""
        started = time.monotonic()
        todo = self.plan("out")
        sources = [src for src, _ in todo.transfers()]
        data = self.remote.read(sources) if sources else b""
        written, deleted = self._apply_locally(todo, data)
        _apply_to_manifest(self.host_manifest, written, deleted)
        missing = [src for src, dest in todo.transfers() if dest not in written]
        return self._finish(todo, missing, deleted, len(data), started)

    def _apply_locally(self, todo: SyncPlan, data: bytes) -> tuple[dict[str, Entry], list[str]]:
        """Validate the pulled archive, delete, then extract: (files written, files deleted).

        Deletions wait for validation so a rejected archive changes nothing,
        and go before extraction so a path can turn from a file into a directory.
        """
        if not data:
            return {}, _delete_local(self.host_root, todo.delete)
        sources = {src for src, _ in todo.transfers()}
        with _open_tar(data) as tar:
            planned = _validate(tar, self.host_root, sources, dict(todo.conflicts))
            deleted = _delete_local(self.host_root, todo.delete)
            return _extract(tar, self.host_root, planned), deleted

    def _finish(self, todo: SyncPlan, missing: list[str], deleted: list[str], size: int, started: float) -> SyncReport:
        """Update the base and build the report."""
        not_done = set(missing) | (set(todo.delete) - set(deleted))
        self.base = todo.new_base(not_done)
        return SyncReport(
            direction=todo.direction,
            copied=[p for p in todo.copy if p not in not_done],
            deleted=deleted,
            conflicts=[(p, c) for p, c in todo.conflicts if p not in not_done],
            skipped=todo.skipped + sorted(set(missing)),
            bytes_moved=size,
            duration_s=time.monotonic() - started,
        )


def _apply_to_manifest(manifest: Manifest, written: Mapping[str, Entry], deleted: Iterable[str]) -> None:
    """Record files a sync just wrote or deleted, so the next scan re-hashes only real changes.

    A recorded entry is only reused if the file's size and mtime still match.
    """
    for path in deleted:
        manifest.pop(path, None)
    manifest.update(written)
