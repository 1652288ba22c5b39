"""What every backend shares, so each one only supplies its transport.

A backend turns "run this shell command" into a :class:`Transport`: sources of
raw output chunks, a way to learn the exit code, and a way to kill the
command's whole process tree. Everything else lives here once:

* :class:`StreamingHandle` drains every source on its own thread (stdout and
  stderr never deadlock), splits stdout into lines as they arrive, decodes
  UTF-8 with replacement, enforces the timeout (exit ``124``) and cancellation
  (exit ``130``), and assembles the :class:`CommandResult`. A command started
  with ``exec(..., stdin=True)`` can be fed while it runs
  (:meth:`StreamingHandle.write`, :meth:`StreamingHandle.close_stdin`);
  any other command's stdin is empty (``/dev/null``).
* :class:`ManagedSession` keeps the session bookkeeping: env precedence,
  default timeouts, the set of running commands, idempotent close, and the
  "closed" / "sandbox died" errors.
* :func:`tagged_env` / :func:`remote_kill_script` give sandboxes that have no
  "kill this exec" API (Docker, Modal) a way to kill a command's whole process
  tree from a second exec: the command's environment carries a unique tag,
  and the kill finds every process holding it.
"""

from __future__ import annotations

import abc
import codecs
import errno
import heapq
import itertools
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from atp_notebook.backends.base import (
    CANCEL_EXIT_CODE,
    TIMEOUT_EXIT_CODE,
    AtpError,
    CommandHandle,
    CommandResult,
    ComputeBackend,
    ComputeSession,
    SessionClosedError,
    wrap_command,
)

__all__ = [
    "Chunk",
    "EXEC_TOKEN_VAR",
    "LineCursor",
    "ManagedSession",
    "OneShotHandle",
    "SessionBackend",
    "StreamingHandle",
    "Transport",
    "WATCHDOG",
    "remote_kill_script",
    "tagged_env",
]

#: ``(fd, data)``: ``fd`` is 1 for stdout, 2 for stderr.
Chunk = tuple[int, bytes]


class Transport(abc.ABC):
    """One running command, as a backend sees it."""

    @abc.abstractmethod
    def sources(self) -> list[Iterable[Chunk]]:
        """Iterables of output chunks; each is drained on its own thread until exhausted."""

    @abc.abstractmethod
    def wait(self) -> int:
        """Block until the command has exited; return its exit code.

        Called once every source is exhausted. A command killed by signal N
        should report ``128 + N``, as a shell does.
        """

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the command's whole process tree. Any thread, any time, idempotent."""

    def poll(self) -> int | None:
        """The exit code if the command has already exited, else ``None``."""
        return None

    def write(self, data: bytes) -> None:
        """Send ``data`` to the command's stdin now (spawned with ``stdin=True`` only).

        Raise :class:`BrokenPipeError` (or another :class:`OSError`) when the
        command can no longer read it. Calls never overlap (the handle locks).
        """
        raise NotImplementedError(f"{type(self).__name__} takes no stdin")

    def close_stdin(self) -> None:
        """Close the command's stdin: it reads EOF once it has read what was sent."""
        raise NotImplementedError(f"{type(self).__name__} takes no stdin")


class _Watchdog:
    """One daemon thread running delayed callbacks (timeouts, SIGKILL after grace).

    A cancelled entry drops its callback at once (so a finished command's
    output is not kept alive until its timeout would have fired) and the heap
    is compacted when most of it is cancelled. The thread is woken only when
    a new entry becomes the earliest.
    """

    def __init__(self) -> None:
        self._heap: list[list] = []  # [deadline, token, callback or None]
        self._entries: dict[int, list] = {}
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> int:
        """Run ``callback`` after ``delay_s`` seconds; returns a token for :meth:`cancel`."""
        token = next(self._ids)
        entry = [time.monotonic() + delay_s, token, callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._entries[token] = entry
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="atp-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0] is entry:
                self._cond.notify()
        return token

    def cancel(self, token: int) -> None:
        with self._cond:
            entry = self._entries.pop(token, None)
            if entry is not None:
                entry[2] = None
            if len(self._heap) > 64 and len(self._entries) < len(self._heap) // 2:
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2] is None:
                        heapq.heappop(self._heap)
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        entry = heapq.heappop(self._heap)
                        self._entries.pop(entry[1], None)
                        callback = entry[2]
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            try:
                callback()
            except Exception:  # noqa: BLE001 - a failing kill must not stop the watchdog
                pass


WATCHDOG = _Watchdog()


class StreamingHandle(CommandHandle):
    """A :class:`CommandHandle` over any :class:`Transport`.

    stdout is kept once, as a list of lines without their ``\n``, which
    serves both :meth:`stream` (a cursor over it) and :meth:`wait` (joined
    back). Lines are split from each chunk in bulk, never one by one: a flood
    of 100,000 lines costs a few list operations per chunk.

    ``stdin=True`` says the transport was spawned with an open stdin, which
    :meth:`write` feeds and :meth:`close_stdin` ends.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        timeout_s: float | None = None,
        on_done: Callable[[StreamingHandle], None] | None = None,
        stdin: bool = False,
    ) -> None:
        self._transport = transport
        self._timeout_s = timeout_s
        self._stdin = stdin
        self._stdin_closed = False
        self._stdin_lock = threading.Lock()
        self._on_done = on_done
        self._started = time.monotonic()
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._partial = ""
        self._unterminated = False  # the last line had no "\n"
        self._saw_cr = False  # some line may end in "\r" (of "\r\n"): strip it when handing out
        self._stderr: list[str] = []
        self._decoders = {
            1: codecs.getincrementaldecoder("utf-8")(errors="replace"),
            2: codecs.getincrementaldecoder("utf-8")(errors="replace"),
        }
        self._stdout_done = False
        self._pump_errors: list[BaseException] = []
        self._reason: int | None = None  # TIMEOUT_EXIT_CODE or CANCEL_EXIT_CODE once killed
        self._result: CommandResult | None = None
        self._finish_lock = threading.Lock()
        self._pumps = [
            threading.Thread(target=self._pump, args=(src,), name="atp-pump", daemon=True)
            for src in transport.sources()
        ]
        self._pumps_left = len(self._pumps)
        for pump in self._pumps:
            pump.start()
        if not self._pumps:
            with self._cond:
                self._flush()
        self._timer = (
            WATCHDOG.schedule(timeout_s, self._on_timeout) if timeout_s and timeout_s > 0 else None
        )

    # -- draining ---------------------------------------------------------------
    def _pump(self, source: Iterable[Chunk]) -> None:
        try:
            for fd, data in source:
                self._feed(fd, data)
        except BaseException as exc:  # noqa: BLE001 - surfaced by wait()
            if self._reason is None:
                self._pump_errors.append(exc)
        finally:
            with self._cond:
                self._pumps_left -= 1
                if self._pumps_left == 0:
                    self._flush()
                self._cond.notify_all()

    def _feed(self, fd: int, data: bytes) -> None:
        text = self._decoders[fd].decode(data)
        if not text:
            return
        with self._cond:
            if fd == 2:
                self._stderr.append(text)
                return
            if "\r" in text:
                self._saw_cr = True
            parts = (self._partial + text).split("\n")
            self._partial = parts.pop()
            if parts:
                self._lines.extend(parts)
                self._cond.notify_all()

    def _flush(self) -> None:
        """All sources are exhausted: emit the last line and mark stdout done (lock held)."""
        if self._stdout_done:
            return
        tail = self._decoders[1].decode(b"", final=True)
        err_tail = self._decoders[2].decode(b"", final=True)
        if err_tail:
            self._stderr.append(err_tail)
        if "\r" in tail:
            self._saw_cr = True
        parts = (self._partial + tail).split("\n")
        self._partial = ""
        if parts[-1]:
            self._unterminated = True
        else:
            parts.pop()
        self._lines.extend(parts)
        self._stdout_done = True

    # -- the contract -----------------------------------------------------------
    def stream(self) -> Iterator[str]:
        cursor = self.cursor()
        while True:
            lines, done = cursor.take(None)
            yield from lines
            if done:
                return

    def cursor(self) -> LineCursor:
        """A reader of stdout lines in batches, from the first line on.

        For consumers that want whole batches (a view redrawing ten times a
        second, a flood of 100,000 lines) rather than one line at a time.
        """
        return LineCursor(self)

    def wait(self) -> CommandResult:
        for pump in self._pumps:
            pump.join()
        with self._finish_lock:
            if self._result is None:
                self._result = self._finish()
        return self._result

    def _finish(self) -> CommandResult:
        code = self._transport.wait()
        if self._timer is not None:
            WATCHDOG.cancel(self._timer)
        if self._stdin and self._stdin_lock.acquire(blocking=False):  # a blocked writer fails on its own
            try:
                self._close_stdin()
            finally:
                self._stdin_lock.release()
        with self._cond:
            self._flush()
            stderr = "".join(self._stderr)
            stdout = "\n".join(self._lines)
            if self._lines and not self._unterminated:
                stdout += "\n"
        if self._reason == TIMEOUT_EXIT_CODE:
            code = TIMEOUT_EXIT_CODE
            note = f"atp_notebook: command timed out after {self._timeout_s:g} s and was killed\n"
            stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + note
        elif self._reason == CANCEL_EXIT_CODE:
            code = CANCEL_EXIT_CODE
        elif self._pump_errors:
            raise self._pump_errors[0]
        result = CommandResult(code, stdout, stderr, time.monotonic() - self._started)
        if self._on_done is not None:
            self._on_done(self)
        return result

    def cancel(self) -> None:
        self._kill(CANCEL_EXIT_CODE)

    # -- stdin ------------------------------------------------------------------
    def write(self, data: bytes | str) -> None:
        """Send ``data`` to the command's stdin at once (``str`` is UTF-8 encoded).

        Only for a command started with ``exec(..., stdin=True)`` (else
        :class:`AtpError`). Once the command has ended, or after
        :meth:`close_stdin`, it raises :class:`BrokenPipeError` (a transport
        may also raise another :class:`OSError`). Thread-safe: writes never
        interleave. A write blocks while the command reads nothing and the
        pipe or socket between them is full; :meth:`cancel` from another
        thread ends it (with an :class:`OSError`).
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not self._stdin:
            raise AtpError("This command was started without stdin=True: it takes no input.")
        with self._stdin_lock:
            if self.finished:
                raise BrokenPipeError(errno.EPIPE, "The command has ended: it reads no more input.")
            if self._stdin_closed:
                raise BrokenPipeError(errno.EPIPE, "The command's stdin was closed (close_stdin).")
            if data:
                self._transport.write(bytes(data))

    def close_stdin(self) -> None:
        """Close the command's stdin: it reads EOF after what was written.

        Idempotent; a no-op for a command started without ``stdin=True``
        (its stdin is empty already) or one that has ended.
        """
        if self._stdin:
            with self._stdin_lock:
                self._close_stdin()

    def _close_stdin(self) -> None:
        """Close stdin once (stdin lock held)."""
        if self._stdin_closed:
            return
        self._stdin_closed = True
        try:
            self._transport.close_stdin()
        except OSError:
            pass  # it stopped reading (ended): its stdin is gone anyway

    def _on_timeout(self) -> None:
        self._kill(TIMEOUT_EXIT_CODE)

    def _kill(self, reason: int) -> None:
        if self.finished:
            return
        with self._cond:
            if self._reason is None:
                self._reason = reason
        self._transport.kill()

    # -- introspection -----------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once the command exited and all of its output was drained."""
        if self._result is not None:
            return True
        return self._stdout_done and self._transport.poll() is not None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started


class LineCursor:
    """Hands out a handle's stdout lines in batches, as they arrive."""

    def __init__(self, handle: StreamingHandle) -> None:
        self._handle = handle
        self._index = 0

    def take(self, timeout: float | None) -> tuple[list[str], bool]:
        """Lines not taken yet (waiting up to ``timeout`` s for one), and whether that is all.

        ``timeout=None`` waits for a line or the end. The wait can be
        interrupted (KeyboardInterrupt) like any lock wait in the main thread.
        """
        h = self._handle
        with h._cond:
            if self._index >= len(h._lines) and not h._stdout_done:
                h._cond.wait(timeout)
            batch = h._lines[self._index :]
            done = h._stdout_done
            saw_cr = h._saw_cr
        self._index += len(batch)
        if saw_cr:  # "\r\n" line ends: the "\n" is gone already
            batch = [line[:-1] if line.endswith("\r") else line for line in batch]
        return batch, done


class OneShotHandle(CommandHandle):
    """The handle :meth:`ComputeBackend.start` returns: closes its session when done.

    Closing syncs the workdir back out (where the backend copies files) and
    tears the sandbox down, whether the command finished, failed or was
    cancelled.
    """

    def __init__(self, session: ComputeSession, inner: CommandHandle) -> None:
        self._session = session
        self._inner = inner

    def stream(self) -> Iterator[str]:
        return self._inner.stream()

    def wait(self) -> CommandResult:
        try:
            return self._inner.wait()
        finally:
            self._session.close()

    def cancel(self) -> None:
        try:
            self._inner.cancel()
        finally:
            self._session.close()


class SessionBackend(ComputeBackend):
    """A backend whose one-shot :meth:`start` is a session that closes itself.

    The session syncs in when it opens; the returned :class:`OneShotHandle`
    closes it (syncing out where files are copied) when the command ends or
    is cancelled. Backends implement :meth:`session` only.
    """

    def start(
        self,
        workdir: Path,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str, str]] | None = None,
        timeout_s: int | None = None,
    ) -> CommandHandle:
        session = self.session(workdir, env=env, mounts=mounts, timeout_s=timeout_s)
        try:
            return OneShotHandle(session, session.exec(command))
        except BaseException:
            session.close()
            raise


class ManagedSession(ComputeSession):
    """Session bookkeeping shared by every backend.

    Subclasses implement :meth:`_spawn` (start a shell command, return its
    :class:`Transport`), :meth:`_teardown`, and optionally
    :meth:`_check_alive` (raise :class:`SandboxDiedError` naming the cause)
    and the sync methods (default: no-op, for backends sharing the host dir).
    """

    def __init__(
        self,
        backend: ComputeBackend,
        workdir: Path,
        *,
        sandbox_workdir: str,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
    ) -> None:
        self.backend = backend
        self.workdir = Path(workdir)
        self.sandbox_workdir = sandbox_workdir
        #: The warm ``.lake`` the workdir is linked to (see :func:`wrap_command`).
        self.baked_lake = backend.config.image.baked_lake
        self._env = {**backend.config.env, **(env or {})}
        self._timeout_s = timeout_s if timeout_s is not None else backend.config.timeout_s
        self._running: set[StreamingHandle] = set()
        self._lock = threading.Lock()
        self._closed = False

    # -- hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _spawn(self, command: str, env: Mapping[str, str], *, stdin: bool = False) -> Transport:
        """Start ``command`` (already wrapped: cd + cache link) with ``env``.

        Its stdin is empty (``/dev/null``) unless ``stdin``: then the
        transport's :meth:`~Transport.write` and :meth:`~Transport.close_stdin` feed it.
        """

    @abc.abstractmethod
    def _teardown(self) -> None:
        """Release the sandbox. Called once, after running commands were killed."""

    def _check_alive(self) -> None:
        """Raise :class:`SandboxDiedError` if the sandbox is gone."""

    # -- the contract -------------------------------------------------------------
    def exec(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
        stdin: bool = False,
    ) -> StreamingHandle:
        """Start ``command`` in the sandbox; ``timeout_s=0`` means no timeout.

        ``stdin=True`` keeps the command's stdin open for
        :meth:`StreamingHandle.write` (a long-lived process fed requests
        while its output streams back); otherwise it reads an empty stdin.
        """
        if self._closed:
            raise SessionClosedError(
                f"This {self.backend.name} session is closed; open a new one "
                "(backend.session(workdir), or `%lean_sandbox restart` in a notebook)."
            )
        self._check_alive()
        wrapped = wrap_command(self.sandbox_workdir, self.baked_lake, command)
        transport = self._spawn(wrapped, {**self._env, **(env or {})}, stdin=stdin)
        timeout = self._timeout_s if timeout_s is None else timeout_s
        handle = StreamingHandle(transport, timeout_s=timeout, on_done=self._forget, stdin=stdin)
        with self._lock:
            self._running.add(handle)
        return handle

    def sync_in(self) -> None:
        self._check_open()

    def sync_out(self) -> None:
        self._check_open()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = list(self._running)
        for handle in running:
            handle.cancel()
        self._teardown()

    # -- helpers ------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> list[StreamingHandle]:
        """Commands started in this session that have not finished yet."""
        with self._lock:
            return [h for h in self._running if not h.finished]

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"This {self.backend.name} session is closed; open a new one.")

    def _forget(self, handle: StreamingHandle) -> None:
        with self._lock:
            self._running.discard(handle)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.backend.name} {self.workdir} ({state})>"


# -- killing a process tree from a second exec ------------------------------------
#
# Docker and Modal cannot kill an exec'd process. So each command is TAGGED: its
# exec gets a unique ``ATP_EXEC_TOKEN=<token>`` in its environment, which every
# descendant inherits (also those that call setsid or double-fork, which a
# process group would miss). A second exec, whose own environment lacks the
# tag, finds the tagged processes through /proc/<pid>/environ and kills them.
# The command itself runs unwrapped: no extra shell, no pid file, no setsid.
#
# Limits: /proc/<pid>/environ is the environment a program was started with,
# so a descendant that execs with a cleared or rewritten environment (`env -i`),
# or overwrites its environment block in place (setproctitle), escapes the
# sweep; so do processes of another uid (unreadable; ours all run as the exec's
# user). Zombies show an empty environment: they never keep the sweep waiting.

#: The environment variable that tags every process of one command.
EXEC_TOKEN_VAR = "ATP_EXEC_TOKEN"


def tagged_env(env: Mapping[str, str], token: str) -> dict[str, str]:
    """``env`` plus the tag :func:`remote_kill_script` with the same ``token`` looks for."""
    return {**env, EXEC_TOKEN_VAR: token}


def remote_kill_script(token: str, grace_s: float = 2.0) -> str:
    """A POSIX sh script killing every process tagged with ``token``: TERM, then KILL after grace.

    It lists the processes whose environment holds the exact entry
    ``ATP_EXEC_TOKEN=<token>`` (one ``grep -lsxzF`` over ``/proc/[0-9]*/environ``,
    NUL-separated entries: busybox and GNU grep alike), sends TERM to each
    (once; newcomers forked meanwhile get theirs on the next scan), re-scans
    every 0.1 s while any lives, for at most ``grace_s`` seconds, then sends
    KILL until none is left. It never matches itself (its environment is not
    tagged) nor the sandbox's init (pid 1).
    """
    steps = max(1, int(grace_s * 10))
    entry = shlex.quote(f"{EXEC_TOKEN_VAR}={token}")
    return (
        f"t={entry}; "
        # the glob is expanded before grep starts: grep never lists itself
        "scan() { pids=; for f in $(grep -lsxzF \"$t\" /proc/[0-9]*/environ 2>/dev/null); do "
        'p=${f#/proc/}; p=${p%/environ}; [ "$p" = $$ ] || [ "$p" = 1 ] || pids="$pids $p"; done; }; '
        "termed=' '; "
        "term() { new=; for p in $pids; do case $termed in *\" $p \"*) ;; *) new=\"$new $p\"; "
        'termed="$termed$p ";; esac; done; [ -z "$new" ] || kill -TERM $new 2>/dev/null; }; '
        'scan; [ -n "$pids" ] || exit 0; term; '
        f'i=0; while [ $i -lt {steps} ]; do sleep 0.1; scan; [ -n "$pids" ] || exit 0; term; i=$((i+1)); done; '
        'i=0; while [ -n "$pids" ] && [ $i -lt 50 ]; do kill -KILL $pids 2>/dev/null; sleep 0.05; scan; i=$((i+1)); done; '
        "exit 0"
    )
