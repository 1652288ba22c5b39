"""One sandbox session per kernel: opened lazily, reused by every cell, closed at exit.

:class:`KernelSession` is the single owner of that state: which backend and
image, which host workdir, the open :class:`~atp_notebook.backends.base.ComputeSession`,
the commands running in it (so a cancel can reach them), the last sync, and
a short state string for the session panel. The magics, the panel's buttons
and ``atp-notebook check`` all act through it; it knows nothing of IPython.

* The session opens on first use (:meth:`KernelSession.ensure`), not when the
  extension loads.
* A sandbox that died (container killed, out of memory, Modal timeout) is
  noticed when a command starts: the dead session is closed, a new one opened
  and the command started once more, and :attr:`KernelSession.say` tells
  the user so.
* Every live ``KernelSession`` is closed when the interpreter exits (the
  kernel shutting down), by one :mod:`atexit` hook registered the first time
  a ``KernelSession`` is made.
"""

from __future__ import annotations

import atexit
import dataclasses
import shlex
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atp_notebook.backends import get_backend
from atp_notebook.backends.base import (
    CommandHandle,
    CommandResult,
    ComputeBackend,
    ComputeSession,
    SandboxDiedError,
)
from atp_notebook.images import DEFAULT_IMAGE, Image

if TYPE_CHECKING:  # pragma: no cover
    from atp_notebook.repl import WarmChecker

__all__ = ["DEFAULT_WORKDIR", "KernelSession", "close_all"]

#: Where cells' files live when no workdir is configured: this folder of the
#: kernel's current directory (resolved when the session first opens).
DEFAULT_WORKDIR = "lean_workdir"

_LIVE: weakref.WeakSet[KernelSession] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def close_all() -> None:
    """Close every live :class:`KernelSession` (the :mod:`atexit` hook)."""
    for kernel in list(_LIVE):
        try:
            kernel.close()
        except Exception:  # noqa: BLE001 - at exit, closing the others matters more
            pass


def _register_atexit() -> None:
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(close_all)
        _ATEXIT_REGISTERED = True


def _home_as_tilde(path: Path) -> str:
    """``path`` with the user's home directory written ``~`` (shorter, and shareable on screen)."""
    try:
        home = Path.home().resolve()
        return "~/" + path.relative_to(home).as_posix() if path != home else "~"
    except (RuntimeError, ValueError):  # no home, or the path is outside it
        return str(path)


class KernelSession:
    """The kernel's one sandbox session and everything known about it.

    Parameters
    ----------
    backend:
        ``auto``, ``local``, ``docker`` or ``modal`` (see
        :func:`~atp_notebook.backends.get_backend`).
    workdir:
        Host folder holding the cells' files; a relative path is resolved
        against the current directory when the session opens.
    image:
        Image tag, or ``""`` for :data:`~atp_notebook.images.DEFAULT_IMAGE`.
    env:
        Extra environment variables for every command of the session.
    say:
        Where notes for the user go (session reopened, closed on a config
        change, ...). Default: :func:`print`.
    backend_factory:
        Builds the backend from ``(name, **config)``; default
        :func:`~atp_notebook.backends.get_backend`. Tests and embedders may
        pass their own.
    """

    def __init__(
        self,
        backend: str = "auto",
        *,
        workdir: str | Path = DEFAULT_WORKDIR,
        image: str = "",
        options: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        say: Callable[[str], None] = print,
        backend_factory: Callable[..., ComputeBackend] = get_backend,
    ) -> None:
        self.backend_name = backend
        self._workdir = str(workdir)
        self.image_tag = image
        self.options = dict(options or {})
        self.env = dict(env or {})
        self.say = say
        self.backend_factory = backend_factory
        self.backend: ComputeBackend | None = None
        self.session: ComputeSession | None = None
        self.opened = 0  # sessions opened so far (reopen after death included)
        self.last_sync: float | None = None  # time.time() of the last sync
        self.last_sync_report = ""
        self._handles: list[tuple[CommandHandle, str]] = []
        #: Commands started so far: a header importing the project's own modules
        #: is reloaded by the REPL after any command (a ``lake build`` may have run).
        self.generation = 0
        #: The session's Lean REPL and its loaded environments (:meth:`warm_checker`).
        self.repl: WarmChecker | None = None
        self._phase = ""  # "opening", "syncing" while they last
        self._ever_closed = False
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], Any]] = []
        _LIVE.add(self)
        _register_atexit()

    # -- configuration -------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        """The host workdir (absolute): the open session's, else the configured one."""
        if self.session is not None and getattr(self.session, "workdir", None) is not None:
            return Path(self.session.workdir)  # type: ignore[attr-defined]
        return Path(self._workdir).expanduser().resolve()

    @property
    def image(self) -> Image:
        """The image of the open backend, else the one the configuration names."""
        if self.backend is not None:
            return self.backend.config.image
        if self.image_tag:
            return dataclasses.replace(DEFAULT_IMAGE, tag=self.image_tag)
        return DEFAULT_IMAGE

    def configure(
        self,
        *,
        backend: str | None = None,
        workdir: str | Path | None = None,
        image: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> bool:
        """Change backend, workdir, image or backend options; an open session on the old ones is closed.

        Returns True when a session was closed (the next use opens the new one).
        """
        changed = (
            (backend is not None and backend != self.backend_name)
            or (workdir is not None and str(workdir) != self._workdir)
            or (image is not None and image != self.image_tag)
            or (options is not None and dict(options) != self.options)
        )
        if backend is not None:
            self.backend_name = backend
        if workdir is not None:
            self._workdir = str(workdir)
        if image is not None:
            self.image_tag = image
        if options is not None:
            self.options = dict(options)
        if not changed:
            return False
        was_open = self.session is not None
        old = self.backend.name if self.backend is not None else "sandbox"
        self.close()
        self.backend = None  # rebuilt on next use, with the new backend name and image
        self._changed()
        if not was_open:
            return False
        self.say(f"Closed the {old} session; the next cell opens a new one "
                 f"({self.backend_name} backend, workdir {self.workdir}).")
        return True

    # -- the session -------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.session is not None and not getattr(self.session, "closed", False)

    def ensure(self) -> ComputeSession:
        """The open session, opening one first if there is none."""
        with self._lock:
            if self.is_open:
                return self.session  # type: ignore[return-value]
            self.session = None
            self._phase = "opening"
            self._changed()
            try:
                if self.backend is None:
                    config: dict[str, Any] = dict(self.options)
                    if self.image_tag:
                        config["image"] = self.image_tag
                    self.backend = self.backend_factory(self.backend_name, **config)
                workdir = Path(self._workdir).expanduser().resolve()
                workdir.mkdir(parents=True, exist_ok=True)
                self.session = self.backend.session(workdir, env=self.env or None)
                self.opened += 1
            except BaseException:
                self.backend = None
                raise
            finally:
                self._phase = ""
                self._changed()
            return self.session

    def start(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        sync_in: bool = True,
        stdin: bool = False,
        track: bool = True,
        cell_file: str | None = None,
    ) -> CommandHandle:
        """Sync in (optionally) and start ``command`` in the session, streaming.

        ``cell_file``: the workdir-relative file a cell just wrote; if the sandbox
        changed it too, the cell's text wins there (see :meth:`sync_in`).

        If the sandbox died, the dead session is closed, a new one is opened
        and the command is started once more; the user is told. A second
        death in a row is raised. ``stdin=True`` keeps the command's stdin
        open (``handle.write``). ``track=False`` is for the session's own
        long-lived helpers (the Lean REPL): they are not listed as running
        nor cancelled with the cells' commands, and don't count as a command
        that may have changed the project (:attr:`generation`).
        """
        for attempt in (1, 2):
            session = self.ensure()
            try:
                if sync_in:
                    self._sync(session, "in", announce=True, cell_file=cell_file)
                handle = session.exec(command, env=env, timeout_s=timeout_s, stdin=stdin)  # type: ignore[arg-type,call-arg]
            except SandboxDiedError as exc:
                if attempt == 2:
                    raise
                name = self.backend.name if self.backend is not None else "sandbox"
                self.say(f"The {name} sandbox had died ({exc}). "
                         "Opened a new session and ran the command again; "
                         "files only in the old sandbox are lost.")
                self._discard()
                continue
            if not track:
                return handle
            with self._lock:
                self.generation += 1
                self._handles = [(h, c) for h, c in self._handles if not _finished(h)]
                self._handles.append((handle, command))
            self._changed()
            return handle
        raise AssertionError("unreachable")  # pragma: no cover

    def run(self, command: str, *, timeout_s: float | None = None) -> CommandResult:
        """Sync in, run ``command`` to the end (reopening a dead sandbox once), sync out."""
        handle = self.start(command, timeout_s=timeout_s)
        try:
            result = handle.wait()
        finally:
            self.done(handle)
        self.sync_out()
        return result

    def done(self, handle: CommandHandle) -> None:
        """Forget ``handle`` (its command finished); refreshes listeners."""
        with self._lock:
            self._handles = [(h, c) for h, c in self._handles if h is not handle and not _finished(h)]
        self._changed()

    @property
    def running(self) -> list[tuple[CommandHandle, str]]:
        """``(handle, command)`` of the commands started here that still run."""
        with self._lock:
            return [(h, c) for h, c in self._handles if not _finished(h)]

    def cancel(self) -> int:
        """Cancel every command started here that still runs; the session stays open.

        Thread-safe: may be called while another thread waits on the command.
        Returns how many commands were cancelled.
        """
        running = self.running
        for handle, _ in running:
            handle.cancel()
        repl = self.repl.cancel() if self.repl is not None else False
        self._changed()
        return len(running) + repl

    def sync(self, direction: str = "both") -> str:
        """Sync the workdir ``in`` (host → sandbox), ``out`` (back) or ``both``; returns a report."""
        if direction not in ("in", "out", "both"):
            raise ValueError(f"sync direction must be in, out or both, not {direction!r}")
        session = self.ensure()
        reports = []
        for way in ("in", "out") if direction == "both" else (direction,):
            reports.append(self._sync(session, way))
        return "; ".join(reports)

    def warm_checker(self, *, command: str | None = None, memory_mb: float | None = None,
                     max_headers: int | None = None) -> WarmChecker:
        """The session's :class:`~atp_notebook.repl.WarmChecker` (made on first use), with these settings.

        A changed ``command`` stops the running REPL (the next check starts the new one).
        """
        from atp_notebook.repl import WarmChecker

        with self._lock:
            if self.repl is None:
                self.repl = WarmChecker(self)
            checker = self.repl
        if command is not None and command != checker.command:
            checker.close()
            checker.command = command
        if memory_mb is not None:
            checker.memory_mb = memory_mb
        if max_headers is not None:
            checker.max_headers = max(1, max_headers)
        return checker

    def sync_in(self, *, cell_file: str | None = None) -> str:
        """Push the host's files into the sandbox (before a command that reads them).

        ``cell_file``: the workdir-relative file a cell just wrote. A sync keeps
        the destination's version of a file changed on both sides, but the text
        of the cell being run is what the user asked to check: if the sandbox
        changed that file too, its version is moved aside to
        ``NAME.conflict-sandbox`` (it comes back to the host with the next sync
        out) and the cell's text takes its place.
        """
        session = self.ensure()
        return self._sync(session, "in", announce=True, cell_file=cell_file)

    def sync_out(self) -> str:
        """Pull the sandbox's files back to the host (after a command)."""
        session = self.ensure()
        return self._sync(session, "out", announce=True)

    def _sync(self, session: ComputeSession, way: str, *, announce: bool = False,
              cell_file: str | None = None) -> str:
        """Sync one way; returns the report's text.

        ``announce``: tell the user (:attr:`say`) about conflicts, for the
        syncs a cell makes on its own, whose report nobody else shows.
        ``cell_file``: see :meth:`sync_in`.
        """
        self._phase = "syncing"
        self._changed()
        try:
            report = session.sync_in() if way == "in" else session.sync_out()
        finally:
            self._phase = ""
        said = str(report) if report not in (None, "") else "ok"
        text = f"{way}: {said.removeprefix(f'sync {way}: ')}"  # a SyncReport names its direction already
        self.last_sync, self.last_sync_report = time.time(), text
        self._changed()
        pairs = list(getattr(report, "conflicts", None) or [])
        messages = getattr(report, "conflict_messages", None)
        if not pairs or not callable(messages):
            return text
        said = dict(zip((path for path, _ in pairs), messages(), strict=True))
        if way == "in" and cell_file in said:
            aside = self._cell_wins(session, cell_file, dict(pairs)[cell_file])
            if aside is not None:
                said[cell_file] = (f"{cell_file} was changed in the sandbox too: the cell's text is checked, "
                                   f"the sandbox's version is now {aside}")
        if announce:
            self.say(f"Sync {way}: " + "; ".join(said.values())
                     + ". Nothing was lost: merge the two versions, then delete the conflict copy.")
        return text

    def _cell_wins(self, session: ComputeSession, path: str, incoming: str) -> str | None:
        """In the sandbox, move ``path`` aside and put the cell's version (``incoming``) in its place.

        Returns the name the sandbox's version now has, or ``None`` if the move
        failed (then both versions stay where the sync put them).
        """
        host = self.workdir
        candidates = [f"{path}.conflict-sandbox"] + [f"{path}.conflict-sandbox.{n}" for n in range(1, 100)]
        free = " ".join(shlex.quote(c) for c in candidates if not (host / c).exists())
        script = (f"d=; for c in {free}; do if [ ! -e \"$c\" ] && [ ! -L \"$c\" ]; then d=$c; break; fi; done; "
                  f"[ -n \"$d\" ] && mv -f -- {shlex.quote(path)} \"$d\" "
                  f"&& mv -f -- {shlex.quote(incoming)} {shlex.quote(path)} && printf '%s' \"$d\"")
        try:
            result = session.exec(script, timeout_s=60).wait()
        except Exception as exc:  # noqa: BLE001 - the check goes on; the conflict copy still holds the text
            self.say(f"Could not put the cell's text in place of the sandbox's {path}: {exc}")
            return None
        if result.exit_code != 0 or not result.stdout:
            self.say(f"Could not put the cell's text in place of the sandbox's {path}: "
                     f"{result.stderr.strip() or f'exit code {result.exit_code}'}")
            return None
        return result.stdout

    def restart(self) -> ComputeSession:
        """Close the session (killing what runs) and open a fresh one."""
        self.close()
        return self.ensure()

    def close(self) -> None:
        """Close the session if open, killing what still runs. Idempotent."""
        with self._lock:
            session, self.session = self.session, None
            self._handles = []
        if self.repl is not None:
            self.repl.close()
        if session is not None:
            self._ever_closed = True
            try:
                session.close()
            finally:
                self._changed()

    def _discard(self) -> None:
        """Drop a dead session without letting its teardown error hide the reopen."""
        with self._lock:
            session, self.session = self.session, None
            self._handles = []
        if self.repl is not None:
            self.repl.reset()  # it died with the sandbox; its chain is replayed in the new one
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001 - it is dead already; its teardown may fail too
                pass

    # -- state for people and panels ---------------------------------------------------
    @property
    def state(self) -> str:
        """``not started``, ``opening``, ``idle``, ``running``, ``syncing`` or ``closed``."""
        if self._phase:
            return self._phase
        if self.is_open:
            return "running" if self.running else "idle"
        return "closed" if self._ever_closed else "not started"

    def describe(self) -> dict[str, str]:
        """What the status line and the panel show, as strings."""
        image = self.image
        pins = ", ".join(p for p in (image.toolchain, f"Mathlib {image.mathlib_rev}" if image.mathlib_rev else "") if p)
        backend = self.backend.name if self.backend is not None else self.backend_name
        if self.backend is not None and self.backend_name != backend:
            backend += f" (from {self.backend_name})"
        last = "never"
        if self.last_sync is not None:
            last = f"{time.strftime('%H:%M:%S', time.localtime(self.last_sync))} ({self.last_sync_report})"
        running = self.running
        return {
            "backend": backend,
            "image": f"{image.tag} ({pins})" if pins else image.tag,
            "workdir": _home_as_tilde(self.workdir),
            "state": self.state,
            "last sync": last,
            "running": "; ".join(cmd for _, cmd in running) if running else "-",
            "lean repl": self.repl.describe() if self.repl is not None else "not started",
        }

    def status_text(self) -> str:
        """:meth:`describe` as aligned ``key  value`` lines."""
        info = self.describe()
        width = max(map(len, info))
        return "\n".join(f"{key:<{width}}  {value}" for key, value in info.items())

    def subscribe(self, callback: Callable[[], Any]) -> Callable[[], None]:
        """Call ``callback()`` whenever the state changes; returns an unsubscribe function.

        Bound methods are held weakly, so a forgotten panel does not live on.
        """
        ref: Callable[[], Any]
        if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
            weak = weakref.WeakMethod(callback)  # type: ignore[arg-type]

            def ref() -> Any:
                method = weak()
                return method() if method is not None else None
        else:
            ref = callback
        with self._lock:
            self._listeners.append(ref)

        def unsubscribe() -> None:
            with self._lock:
                if ref in self._listeners:
                    self._listeners.remove(ref)

        return unsubscribe

    def _changed(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a broken panel must not break a cell
                pass

    def __repr__(self) -> str:
        return f"<KernelSession {self.backend_name} {self._workdir} ({self.state})>"


def _finished(handle: CommandHandle) -> bool:
    finished = getattr(handle, "finished", None)
    return bool(finished) if finished is not None else False
