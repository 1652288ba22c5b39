"""The local backend: commands run as subprocesses of the kernel, in the workdir itself.

It needs no service (the embedded default) and uses the host's ``lean``/``lake``
(elan's), so it is the fastest backend; but it is not isolated: Lean's
``#eval`` can do anything the kernel's user can. Use Docker or Modal for code
you don't trust.
"""

from __future__ import annotations

import errno
import fcntl
import os
import selectors
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from atp_notebook.backends.base import BackendConfig
from atp_notebook.backends.machinery import (
    WATCHDOG,
    Chunk,
    ManagedSession,
    SessionBackend,
    Transport,
)

__all__ = ["BAKED_LAKE_ENV", "LocalBackend", "LocalConfig", "LocalSession"]

#: Environment variable naming a warm ``.lake`` on the host (it overrides
#: ``image.baked_lake`` for the local backend; Binder's ``start`` sets it).
BAKED_LAKE_ENV = "ATP_BAKED_LAKE"

_READ_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass
class LocalConfig(BackendConfig):
    """Configuration of :class:`LocalBackend`.

    Attributes
    ----------
    kill_grace_s:
        Seconds between SIGTERM and SIGKILL when a command is cancelled or
        times out.
    """

    kill_grace_s: float = 2.0


class LocalProcess(Transport):
    """A ``/bin/sh -c`` subprocess leading its own process group.

    Its stdin is ``/dev/null``, or with ``stdin=True`` a pipe written
    unbuffered (:meth:`write` returns once the pipe holds the data; it blocks
    while the pipe is full and the command does not read).
    """

    def __init__(
        self, command: str, *, cwd: Path, env: Mapping[str, str], grace_s: float, stdin: bool = False
    ) -> None:
        self._grace_s = grace_s
        self._proc = subprocess.Popen(  # noqa: S603 - running the user's command is the point
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: we kill the whole tree
        )
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                _widen(pipe)

    def sources(self) -> list[Iterable[Chunk]]:
        return [self._drain()]

    def _drain(self) -> Iterator[Chunk]:
        """Read stdout and stderr together on one thread, as data arrives."""
        assert self._proc.stdout is not None and self._proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ, 1)
            sel.register(self._proc.stderr, selectors.EVENT_READ, 2)
            while sel.get_map():
                for key, _ in sel.select():
                    data = os.read(key.fd, _READ_SIZE)
                    if data:
                        yield key.data, data
                    else:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()

    def wait(self) -> int:
        code = self._proc.wait()
        return 128 - code if code < 0 else code

    def write(self, data: bytes) -> None:
        pipe = self._proc.stdin
        if pipe is None or pipe.closed:
            raise BrokenPipeError(errno.EPIPE, "The command's stdin is closed.")
        view = memoryview(data)
        while view:  # os.write, not the buffered file: nothing lingers in a buffer
            view = view[os.write(pipe.fileno(), view) :]

    def close_stdin(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()

    def poll(self) -> int | None:
        return self._proc.poll()

    def kill(self) -> None:
        pgid = self._proc.pid
        if not _signal_group(pgid, signal.SIGTERM):
            return
        WATCHDOG.schedule(self._grace_s, lambda: _signal_group(pgid, signal.SIGKILL))


def _widen(pipe: object) -> None:
    """Grow a pipe to 1 MiB (Linux) so a flood of output costs fewer wake-ups."""
    try:
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _READ_SIZE)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: the default size works too


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class LocalSession(ManagedSession):
    """Commands run in the host workdir; files are shared, so sync is a no-op."""

    def __init__(self, backend: LocalBackend, workdir: Path, **kwargs: object) -> None:
        super().__init__(backend, workdir, sandbox_workdir=str(workdir), **kwargs)  # type: ignore[arg-type]
        self._grace_s = backend.config.kill_grace_s
        # A host with a warm Mathlib project of its own (Binder, a dev box) says where.
        self.baked_lake = os.environ.get(BAKED_LAKE_ENV) or self.baked_lake

    def _spawn(self, command: str, env: Mapping[str, str], *, stdin: bool = False) -> Transport:
        return LocalProcess(
            command, cwd=self.workdir, env={**os.environ, **env}, grace_s=self._grace_s, stdin=stdin
        )

    def _teardown(self) -> None:
        """Nothing to release: the workdir stays where it is."""


class LocalBackend(SessionBackend):
    """Run commands as local subprocesses, in the workdir itself (no isolation)."""

    config: LocalConfig

    def __init__(self, config: LocalConfig | None = None) -> None:
        super().__init__(config or LocalConfig())

    @property
    def name(self) -> str:
        return "local"

    @property
    def container_home(self) -> str:  # type: ignore[override]
        return os.path.expanduser("~")

    def session(
        self,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str, str]] | None = None,
        timeout_s: int | None = None,
    ) -> LocalSession:
        workdir = Path(workdir).expanduser().resolve()
        _check_mounts(mounts)
        workdir.mkdir(parents=True, exist_ok=True)
        return LocalSession(self, workdir, env=env, timeout_s=timeout_s)



def _check_mounts(mounts: Sequence[tuple[str, str]] | None) -> None:
    """Local commands see the host's own paths: a mount can only map a path onto itself."""
    for host, sandbox in mounts or ():
        if Path(host).expanduser().resolve() != Path(sandbox).expanduser().resolve():
            raise ValueError(
                f"The local backend runs on the host and cannot mount {host!r} at {sandbox!r}: "
                "pass the same path on both sides, or use the docker backend for real mounts."
            )
