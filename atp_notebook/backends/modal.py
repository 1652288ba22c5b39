"""The Modal backend: one Modal Sandbox per session, files copied both ways.

A session is ONE ``modal.Sandbox.create(...)`` kept alive for hours (the
sandbox runs no command of its own: it sleeps until its lifetime ends), in the
app ``modal.App.lookup(app_name, create_if_missing=True)``, from the image
``modal.Image.from_registry(config.image.tag)``. Network access is blocked by
default: a Lean file's ``#eval`` is untrusted code.

Commands
    Each :meth:`ModalSession.exec` is one ``sandbox.exec("/bin/sh", "-c", ...)``
    with ``text=False``: stdout and stderr arrive as raw byte chunks on two
    separate readers, which :class:`~atp_notebook.backends.machinery.StreamingHandle`
    drains on their own threads, splits into lines as they arrive and decodes
    with replacement. (The SDK's text mode, and the ``bufsize=1`` line mode it
    allows, decode UTF-8 strictly: one stray byte from a command would end the
    stream with an error. Chunks reach the handle as soon as the SDK gets them,
    so lines stream just as early.) Modal cannot kill an exec'd process, so the
    exec's environment carries a unique tag
    (:func:`~atp_notebook.backends.machinery.tagged_env`) that all its
    descendants inherit, and a cancel or timeout kills every tagged process
    from a second exec
    (:func:`~atp_notebook.backends.machinery.remote_kill_script`). Modal's
    own exec ``timeout`` is set a minute past ours as a backstop; an exec
    Modal timed out reports ``-1``, mapped to ``124``. A command's stdin is
    ``/dev/null`` unless it is exec'd with ``stdin=True``: then each
    :meth:`~atp_notebook.backends.machinery.StreamingHandle.write` is one
    ``process.stdin.write`` + ``drain``: a round trip per MiB, sent at once.

Files
    Always copied, through :mod:`atp_notebook.sync`: each direction scans both
    sides and moves only what changed, as ONE tar archive piped through an
    exec's stdin (in) or stdout (out); a sync with nothing to move is one
    exec. The session syncs in when it opens and out when it closes.

Lifetime
    Before each command the session checks its sandbox against its own clock
    (no network call): a sandbox close to the end of ``sandbox_timeout_s`` is
    synced out and replaced; one found ended by its lifetime or idle timeout
    (``poll()`` reports ``124``) is replaced and the workdir synced in again.
    Either way the session says so in :attr:`ModalSession.notes` (and to
    :attr:`ModalSession.on_note`, and the log). A sandbox that ended any other
    way (terminated, out of memory) raises :class:`SandboxDiedError` naming
    the cause, on the command that finds it; open a new session then.

Event loops
    The SDK's blocking API runs every coroutine on synchronicity's own event
    loop, in a daemon thread, and blocks the calling thread on a
    ``concurrent.futures`` future; it never touches the caller's loop, so a
    call from a Jupyter cell (whose thread runs the kernel's loop) cannot
    deadlock it, and no ``nest_asyncio`` is needed. The SDK only refuses a
    blocking call made from its *own* loop thread, and warns
    (``AsyncUsageWarning``, silenced under IPython) when the calling thread
    runs a loop. This module makes its SDK calls from a helper thread whenever
    the calling thread runs a loop (:func:`_off_loop`), so neither applies.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import shlex
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from atp_notebook.backends.base import (
    TIMEOUT_EXIT_CODE,
    BackendConfig,
    BackendUnavailableError,
    SandboxDiedError,
)
from atp_notebook.backends.machinery import (
    Chunk,
    ManagedSession,
    SessionBackend,
    StreamingHandle,
    Transport,
    remote_kill_script,
    tagged_env,
)

__all__ = ["MAX_SANDBOX_TIMEOUT_S", "ModalBackend", "ModalConfig", "ModalSession"]

log = logging.getLogger(__name__)

#: Modal caps a sandbox's lifetime at 24 hours.
MAX_SANDBOX_TIMEOUT_S = 24 * 3600
#: What ``Sandbox.poll()`` returns for a sandbox its lifetime or idle timeout ended.
_SANDBOX_TIMED_OUT = 124
#: ... and for one terminated from outside (dashboard, CLI, out of memory).
_SANDBOX_TERMINATED = 137
#: Modal's own exec timeout is ours plus this, so ours (a clean kill of the whole tree) fires first.
_EXEC_BACKSTOP_S = 60
#: Stdin is sent in pieces of this size (the SDK buffers at most 16 MiB per drain).
_STDIN_CHUNK = 1 << 20
#: A sandbox is replaced before a command that could outlive it by this margin.
_REFRESH_MARGIN_S = 60

T = TypeVar("T")


def _sdk() -> Any:
    """The ``modal`` SDK, imported on first use (tests put a fake in ``sys.modules``)."""
    import modal

    return modal


def _off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` here, or on a helper thread when this thread runs an asyncio loop.

    The SDK's blocking calls are safe either way (see the module docstring);
    this keeps them out of a running loop's thread, where the SDK warns.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="atp-modal-call", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _require_credentials() -> None:
    """Fail fast, before any network call, when Modal cannot authenticate (same test as the doctor)."""
    from atp_notebook.doctor import check_modal

    check = check_modal()
    if not check.ok:
        raise BackendUnavailableError(f"The modal backend cannot run here: {check.detail}. Fix: {check.fix}.")


@dataclass(repr=False)
class ModalConfig(BackendConfig):
    """Configuration of :class:`ModalBackend`.

    Attributes
    ----------
    app_name:
        The Modal app the sandboxes belong to (created if missing).
    cpu:
        CPU cores reserved for the sandbox (fractional allowed); ``None``: Modal's default.
    memory:
        Memory reserved for the sandbox, in MiB; ``None``: Modal's default.
        Importing Mathlib needs several GiB.
    sandbox_timeout_s:
        The sandbox's lifetime, at most 24 h (Modal's own default of 300 s
        is far too short for a notebook). The session replaces the sandbox
        transparently when it runs out.
    idle_timeout_s:
        Let Modal end the sandbox after this many seconds without a command
        (``None``: only its lifetime ends it). The next command replaces it.
    block_network:
        Block all network access from the sandbox (default: the code is untrusted).
    secrets:
        Names of Modal secrets injected into the sandbox as environment
        variables. Only the names are kept here; the values never leave Modal.
    region:
        Region(s) to run the sandbox in; ``None``: anywhere.
    kill_grace_s:
        Seconds between SIGTERM and SIGKILL when a command is cancelled or times out.
    """

    app_name: str = "atp-notebook"
    cpu: float | None = 2.0
    memory: int | None = 8192
    sandbox_timeout_s: int = 4 * 3600
    idle_timeout_s: int | None = None
    block_network: bool = True
    secrets: tuple[str, ...] = ()
    region: str | None = None
    kill_grace_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.sandbox_timeout_s <= MAX_SANDBOX_TIMEOUT_S:
            raise ValueError(
                f"sandbox_timeout_s must be between 1 and {MAX_SANDBOX_TIMEOUT_S} (Modal's 24 h cap), "
                f"not {self.sandbox_timeout_s}"
            )
        if self.idle_timeout_s is not None and not 0 < self.idle_timeout_s <= self.sandbox_timeout_s:
            raise ValueError(
                f"idle_timeout_s must be between 1 and sandbox_timeout_s ({self.sandbox_timeout_s}), "
                f"not {self.idle_timeout_s}"
            )
        self.secrets = (self.secrets,) if isinstance(self.secrets, str) else tuple(self.secrets)

    def __repr__(self) -> str:
        # env values may be tokens: show the names only.
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "env":
                value = {key: "***" for key in value}
            parts.append(f"{f.name}={value!r}")
        return f"ModalConfig({', '.join(parts)})"


class ModalProcess(Transport):
    """One command exec'd in the sandbox, killable through its environment tag."""

    def __init__(self, session: ModalSession, sandbox: Any, process: Any, token: str) -> None:
        self._session = session
        self._sandbox = sandbox
        self._process = process
        self._token = token
        self._code: int | None = None
        self._killed = False
        self._kill_lock = threading.Lock()

    def sources(self) -> list[Iterable[Chunk]]:
        return [self._drain(1, self._process.stdout), self._drain(2, self._process.stderr)]

    def _drain(self, fd: int, reader: Any) -> Iterator[Chunk]:
        try:
            for chunk in reader:
                if chunk:
                    yield fd, chunk if isinstance(chunk, bytes) else str(chunk).encode()
        except _sdk().exception.Error as exc:
            if self._killed:
                return
            self._session._raise_lost(exc, self._sandbox)

    def wait(self) -> int:
        try:
            code = _off_loop(self._process.wait)
        except _sdk().exception.Error as exc:
            if self._killed:
                return 128 + 9
            self._session._raise_lost(exc, self._sandbox)
        if code == -1:  # Modal's exec timeout (our backstop) ended it; finish the job
            code = TIMEOUT_EXIT_CODE
            self.kill()
        elif code >= 128 and not self._killed:
            # killed by a signal we did not send: was it the sandbox going down?
            self._session._raise_if_gone(self._sandbox)
        self._code = code
        return code

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        try:
            code = _off_loop(self._process.poll)
        except _sdk().exception.Error:
            return None
        return TIMEOUT_EXIT_CODE if code == -1 else code

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _STDIN_CHUNK):
            self._send(view[start : start + _STDIN_CHUNK])

    def close_stdin(self) -> None:
        if self._code is None:  # an ended command's stdin is gone already
            self._send(None)

    def _send(self, data: memoryview | None) -> None:
        """Send ``data`` (``None``: EOF) to the process now; an SDK refusal is a :class:`BrokenPipeError`."""
        stdin = self._process.stdin
        try:
            if data is None:
                stdin.write_eof()
            else:
                stdin.write(data)
            _off_loop(stdin.drain)
        except (ValueError, _sdk().exception.Error) as exc:  # ValueError: the SDK's "stdin is closed"
            raise BrokenPipeError(errno.EPIPE, f"The command reads no more input: {exc}") from exc

    def kill(self) -> None:
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
        self._session._kill_remote(self._sandbox, self._token)


class ModalSession(ManagedSession):
    """A live Modal sandbox over a host workdir; files travel by archive both ways.

    Attributes
    ----------
    notes:
        Things the user should hear about that are not errors (the sandbox
        was replaced, a sync found a conflict, close could not sync out).
    on_note:
        Called with each new note (the notebook layer shows them).
    last_sync:
        The :class:`~atp_notebook.sync.SyncReport` of the latest sync.
    """

    backend: ModalBackend

    def __init__(
        self,
        backend: ModalBackend,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
        mounts: Sequence[tuple[Path, str]] = (),
    ) -> None:
        super().__init__(
            backend, workdir, sandbox_workdir=backend.config.image.workdir, env=env, timeout_s=timeout_s
        )
        self._config: ModalConfig = backend.config
        self._mounts = list(mounts)
        self._app: Any = None
        self._sandbox: Any = None
        self._sync: Any = None  # atp_notebook.sync.TwoWaySync over the current sandbox
        self._born = 0.0  # time.monotonic() when the current sandbox was created
        self._last_active = 0.0
        self._expired = False  # the current sandbox is known to have reached its lifetime
        self._died: str | None = None  # why the sandbox is gone, once it died otherwise
        self._final_sync = True  # close() syncs out (not after a failed open)
        self._state = threading.RLock()  # sandbox replacement and syncs, one at a time
        self._kills: list[threading.Thread] = []
        self._local = threading.local()
        self.notes: list[str] = []
        self.on_note: Callable[[str], None] | None = None
        self.last_sync: Any = None
        self.sandboxes_created = 0

    # -- opening -------------------------------------------------------------------
    def _open(self) -> None:
        """Look up the app, create the sandbox, copy mounts, sync the workdir in."""
        modal = _sdk()
        with self._startup_errors(modal):
            self._app = modal.App.lookup(self._config.app_name, create_if_missing=True)
        self._start_sandbox()

    def _start_sandbox(self) -> None:
        """Create a sandbox and fill it: mounts, then the workdir (a fresh sync base)."""
        modal = _sdk()
        cfg = self._config
        kwargs: dict[str, Any] = {
            "app": self._app,
            "image": modal.Image.from_registry(cfg.image.tag),
            "timeout": int(cfg.sandbox_timeout_s),
            "block_network": cfg.block_network,
        }
        if cfg.secrets:
            kwargs["secrets"] = [modal.Secret.from_name(name) for name in cfg.secrets]
        if cfg.idle_timeout_s:
            kwargs["idle_timeout"] = int(cfg.idle_timeout_s)
        if cfg.cpu is not None:
            kwargs["cpu"] = cfg.cpu
        if cfg.memory is not None:
            kwargs["memory"] = cfg.memory
        if cfg.region:
            kwargs["region"] = cfg.region
        with self._startup_errors(modal):
            sandbox = modal.Sandbox.create(**kwargs)
        self._sandbox = sandbox
        self._born = self._last_active = time.monotonic()
        self._expired = False
        self.sandboxes_created += 1
        log.info("modal: sandbox %s created (image %s)", sandbox.object_id, cfg.image.tag)

        from atp_notebook.sync import RemoteTree, TwoWaySync

        self._sync = TwoWaySync(self.workdir, RemoteTree(self._run_script, self.sandbox_workdir))
        if self._mounts:
            self._copy_mounts()
        self._do_sync("in")

    def _startup_errors(self, modal: Any) -> Any:
        """Turn the SDK's errors while starting into one clear :class:`BackendUnavailableError`."""
        tag, secrets = self._config.image.tag, self._config.secrets
        return _Translate(modal, tag, secrets)

    # -- the running sandbox -------------------------------------------------------
    def exec(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
        stdin: bool = False,
    ) -> StreamingHandle:
        timeout = self._timeout_s if timeout_s is None else timeout_s

        def run() -> StreamingHandle:
            self._local.timeout = timeout
            try:
                return ManagedSession.exec(self, command, env=env, timeout_s=timeout_s, stdin=stdin)
            finally:
                self._local.timeout = None

        return _off_loop(run)

    def _check_alive(self) -> None:
        with self._state:
            self._ensure_sandbox(needed_s=getattr(self._local, "timeout", None) or 0)

    def _ensure_sandbox(self, needed_s: float | None = None) -> None:
        """Make sure a live sandbox stands behind the session (lock held).

        ``needed_s``: how long the next command may run; a sandbox that would
        reach its lifetime before then is synced out and replaced first.
        """
        if self._died is not None:
            raise SandboxDiedError(self._died)
        if self._sandbox is None:  # a replacement failed earlier: try again
            self._start_sandbox()
            return
        if self._expired:
            self._replace(expired=True)
            return
        cfg = self._config
        now = time.monotonic()
        remaining = cfg.sandbox_timeout_s - (now - self._born)
        busy = bool(self.running)
        idle_out = (
            cfg.idle_timeout_s is not None
            and not busy
            and now - self._last_active >= cfg.idle_timeout_s - 1
        )
        if remaining <= 0 or idle_out:
            code = self._poll(self._sandbox)
            if code is not None:
                self._ended(code)
                return
        if needed_s is not None and not busy:
            wanted = min((needed_s or cfg.sandbox_timeout_s) + _REFRESH_MARGIN_S, cfg.sandbox_timeout_s / 2)
            if remaining < wanted:
                self._replace(expired=False)

    def _poll(self, sandbox: Any) -> int | None:
        try:
            return sandbox.poll()
        except _sdk().exception.Error:
            return sandbox.returncode

    def _ended(self, code: int) -> None:
        """The sandbox is over: replace it if its time ran out, else say why it died (lock held)."""
        if code == _SANDBOX_TIMED_OUT:
            self._replace(expired=True)
            return
        self._die(self._cause(code))

    def _cause(self, code: int) -> str:
        sandbox_id = self._sandbox.object_id if self._sandbox is not None else "?"
        if code == _SANDBOX_TERMINATED:
            why = (
                "it was terminated from outside (the Modal dashboard, `modal container stop`, "
                f"another client) or killed for running out of memory (memory={self._config.memory} MiB)"
            )
        else:
            why = f"its main process exited with code {code}"
        return (
            f"The Modal sandbox {sandbox_id} died: {why}. Files changed inside it since the last "
            "sync out are lost. Open a new session (`%lean_sandbox restart` in a notebook)."
        )

    def _die(self, cause: str) -> None:
        self._died = cause
        log.warning("modal: %s", cause)
        sandbox, self._sandbox = self._sandbox, None
        _quietly(getattr(sandbox, "detach", None))
        raise SandboxDiedError(cause)

    def _replace(self, *, expired: bool) -> None:
        """Swap in a new sandbox (lock held); sync out of the old one first if it still runs."""
        old = self._sandbox
        old_id = old.object_id
        age = time.monotonic() - self._born
        if not expired:
            try:
                self._do_sync("out")
            except Exception as exc:  # noqa: BLE001 - the old sandbox may already be gone
                log.warning("modal: could not sync out of %s before replacing it: %s", old_id, exc)
                expired = True
            _quietly(old.terminate)
        _quietly(getattr(old, "detach", None))
        self._sandbox = None
        self._start_sandbox()
        new_id = self._sandbox.object_id
        summary = self.last_sync.summary() if self.last_sync is not None else "synced in"
        if expired:
            note = (
                f"The Modal sandbox {old_id} reached its lifetime ({self._config.sandbox_timeout_s} s) or "
                f"idle timeout; started {new_id} and synced the workdir in ({summary}). Files changed "
                "inside the old sandbox after the last sync out were lost."
            )
        else:
            note = (
                f"The Modal sandbox {old_id} was {age:.0f} s old, close to its lifetime "
                f"({self._config.sandbox_timeout_s} s): synced it out and replaced it with {new_id} "
                f"({summary})."
            )
        self._note(note)

    def _raise_lost(self, exc: BaseException, sandbox: Any) -> None:
        """An SDK call failed mid-command: raise :class:`SandboxDiedError` if the sandbox is gone, else ``exc``."""
        self._raise_if_gone(sandbox)
        raise exc

    def _raise_if_gone(self, sandbox: Any) -> None:
        """Raise :class:`SandboxDiedError` if ``sandbox`` has ended (for whatever reason)."""
        code = self._poll(sandbox)
        if code is None:
            return
        with self._state:
            current = sandbox is self._sandbox
            if code == _SANDBOX_TIMED_OUT:
                if current:
                    self._expired = True
                raise SandboxDiedError(
                    f"The Modal sandbox {sandbox.object_id} reached its lifetime "
                    f"({self._config.sandbox_timeout_s} s) or idle timeout while the command ran. "
                    "The next command starts a new sandbox and syncs the workdir in."
                )
            cause = self._cause(code) if current else f"The Modal sandbox {sandbox.object_id} died."
            if current:
                self._die(cause)
            raise SandboxDiedError(cause)

    # -- commands --------------------------------------------------------------------
    def _spawn(self, command: str, env: Mapping[str, str], *, stdin: bool = False) -> Transport:
        modal = _sdk()
        token = uuid.uuid4().hex
        # stdin is /dev/null for a command, as it is on the local backend, unless it is fed
        script = command if stdin else "exec 0</dev/null; " + command
        kwargs: dict[str, Any] = {"env": tagged_env(env, token), "text": False}
        timeout = getattr(self._local, "timeout", None)
        if timeout:
            kwargs["timeout"] = int(timeout) + _EXEC_BACKSTOP_S
        with self._state:
            sandbox = self._sandbox
            try:
                process = sandbox.exec("/bin/sh", "-c", script, **kwargs)
            except modal.exception.Error as exc:
                # It ended since we last looked: replace it if its time ran out, else say why.
                code = self._poll(sandbox)
                if code is None:
                    raise
                self._ended(code)
                sandbox = self._sandbox
                process = sandbox.exec("/bin/sh", "-c", script, **kwargs)
                log.debug("modal: exec retried on a new sandbox after %s", exc)
            self._last_active = time.monotonic()
        return ModalProcess(self, sandbox, process, token)

    def _kill_remote(self, sandbox: Any, token: str) -> None:
        """Kill a command's tagged processes from a second exec, on a thread (the caller may be the watchdog)."""
        script = remote_kill_script(token, self._config.kill_grace_s)

        def run() -> None:
            try:
                sandbox.exec("/bin/sh", "-c", script, text=False).wait()
            except Exception as exc:  # noqa: BLE001 - a gone sandbox has killed everything already
                log.debug("modal: kill exec failed: %s", exc)

        thread = threading.Thread(target=run, name="atp-modal-kill", daemon=True)
        thread.start()
        self._kills = [t for t in self._kills if t.is_alive()] + [thread]

    def _forget(self, handle: StreamingHandle) -> None:
        super()._forget(handle)
        self._last_active = time.monotonic()

    # -- files -------------------------------------------------------------------------
    def _run_script(self, script: str, stdin: bytes | None) -> tuple[int, bytes, bytes]:
        """The sync engine's ``run``: ``script`` in the sandbox, ``stdin`` piped in, raw bytes back."""
        modal = _sdk()
        sandbox = self._sandbox
        prepare = f"mkdir -p {shlex.quote(self.sandbox_workdir)} 2>/dev/null\n"
        try:
            process = sandbox.exec("/bin/sh", "-c", prepare + script, text=False)
            data = memoryview(stdin or b"")
            for start in range(0, len(data), _STDIN_CHUNK):
                process.stdin.write(data[start : start + _STDIN_CHUNK])
                if start + _STDIN_CHUNK < len(data):
                    process.stdin.drain()
            process.stdin.write_eof()
            process.stdin.drain()
            out = process.stdout.read()
            err = process.stderr.read()
            code = process.wait()
        except modal.exception.Error as exc:
            self._raise_lost(exc, sandbox)
            raise  # pragma: no cover - _raise_lost always raises
        return code, out, err

    def _do_sync(self, direction: str) -> Any:
        """One sync through the engine (lock held); notes conflicts."""
        report = self._sync.sync_in() if direction == "in" else self._sync.sync_out()
        self.last_sync = report
        self._last_active = time.monotonic()
        for message in report.conflict_messages():
            self._note(message)
        return report

    def _sync_now(self, direction: str) -> Any:
        with self._state:
            self._ensure_sandbox()
            return self._do_sync(direction)

    def sync_in(self) -> Any:
        """Push host changes into the sandbox; returns the :class:`~atp_notebook.sync.SyncReport`."""
        self._check_open()
        return _off_loop(self._sync_now, "in")

    def sync_out(self) -> Any:
        """Pull sandbox changes to the host; returns the :class:`~atp_notebook.sync.SyncReport`."""
        self._check_open()
        return _off_loop(self._sync_now, "out")

    def _copy_mounts(self) -> None:
        """Copy each ``(host path, sandbox path)`` mount in, all in one archive (one exec)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for host, dest in self._mounts:
                tar.add(host, arcname=dest.lstrip("/"))
        code, _, err = self._run_script("exec tar -x -o -f - -C /", buffer.getvalue())
        if code != 0:
            raise BackendUnavailableError(
                f"Could not copy the mounts into the Modal sandbox (exit {code}): "
                f"{err.decode('utf-8', 'replace').strip()}"
            )

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        _off_loop(ManagedSession.close, self)

    def _teardown(self) -> None:
        for thread in list(self._kills):  # let cancelled commands die before the last sync
            thread.join(timeout=self._config.kill_grace_s + 5)
        with self._state:
            sandbox = self._sandbox
            if sandbox is None:
                return
            if self._final_sync and self._died is None and not self._expired:
                try:
                    self._do_sync("out")
                except Exception as exc:  # noqa: BLE001 - closing must finish
                    self._note(f"Closing the Modal session could not sync the sandbox out: {exc}")
            self._sandbox = None
            _quietly(sandbox.terminate)
            _quietly(getattr(sandbox, "detach", None))  # 1.x SDKs before detach() lack it
            log.info("modal: sandbox %s terminated", sandbox.object_id)

    # -- notes ---------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.warning("modal: %s", text)
        if self.on_note is not None:
            try:
                self.on_note(text)
            except Exception:  # noqa: BLE001 - a display hook must not break the session
                log.exception("modal: on_note callback failed")

    @property
    def sandbox_id(self) -> str | None:
        """The Modal object id of the current sandbox (``sb-...``), if one runs."""
        return self._sandbox.object_id if self._sandbox is not None else None


class _Translate:
    """Context manager: SDK errors while starting a sandbox -> :class:`BackendUnavailableError`."""

    def __init__(self, modal: Any, tag: str, secrets: tuple[str, ...]) -> None:
        self._modal = modal
        self._tag = tag
        self._secrets = secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        errors = self._modal.exception
        if isinstance(exc, errors.AuthError):
            message = (
                f"Modal rejected the credentials ({exc}). Run `modal setup`, or set "
                "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET to a valid token."
            )
        elif isinstance(exc, errors.NotFoundError):
            named = f" the secrets {', '.join(self._secrets)} (`modal secret list`) and" if self._secrets else ""
            message = f"Modal could not find what the sandbox needs ({exc}): check{named} the image {self._tag!r}."
        elif isinstance(exc, errors.Error):
            message = (
                f"Modal could not start a sandbox from the image {self._tag!r} ({exc}). The image must be "
                "pullable from a registry Modal can reach (push it, or pass --image TAG)."
            )
        else:
            return False
        raise BackendUnavailableError(message) from exc


def _quietly(fn: Callable[[], Any] | None) -> None:
    """Call ``fn`` ignoring errors (teardown of something that may already be gone)."""
    if fn is None:
        return
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        log.debug("modal: %s failed during teardown: %s", getattr(fn, "__name__", fn), exc)


class ModalBackend(SessionBackend):
    """Run commands in a Modal Sandbox (a remote, isolated container); files are copied both ways."""

    config: ModalConfig

    def __init__(self, config: ModalConfig | None = None) -> None:
        super().__init__(config or ModalConfig())

    @property
    def name(self) -> str:
        return "modal"

    def __repr__(self) -> str:
        cfg = self.config
        return f"<ModalBackend app={cfg.app_name!r} image={cfg.image.tag!r}>"

    def session(
        self,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str, str]] | None = None,
        timeout_s: int | None = None,
    ) -> ModalSession:
        """Open a sandbox over ``workdir`` and sync the workdir in.

        ``mounts`` are copied in when the sandbox is created (Modal cannot
        bind a host path); changes made to them inside the sandbox stay there.
        """
        _require_credentials()  # before any network call
        workdir = Path(workdir).expanduser().resolve()
        checked = _check_mounts(mounts)
        workdir.mkdir(parents=True, exist_ok=True)
        session = ModalSession(self, workdir, env=env, timeout_s=timeout_s, mounts=checked)
        try:
            _off_loop(session._open)
        except BaseException:
            session._final_sync = False
            session.close()
            raise
        return session



def _check_mounts(mounts: Sequence[tuple[str, str]] | None) -> list[tuple[Path, str]]:
    checked = []
    for host, dest in mounts or ():
        path = Path(host).expanduser()
        if not path.exists():
            raise ValueError(f"Cannot mount {host!r} into the Modal sandbox: it does not exist.")
        if not dest.startswith("/") or not dest.strip("/"):
            raise ValueError(f"The sandbox path of a mount must be an absolute path below /, not {dest!r}.")
        checked.append((path, dest))
    return checked

