"""A fake of exactly the ``modal`` SDK entry points the Modal backend uses.

Its "sandboxes" are local processes: ``Sandbox.exec`` starts a real
``subprocess.Popen`` (stdin, streaming stdout/stderr, exit codes and files all
really happen), so the backend's real code paths run unchanged. The sandbox's
filesystem is this machine's; tests point the backend's ``Image.workdir`` at
a temp directory, which the fake empties whenever a sandbox is created (a new
container starts from a clean image).

Install it in place of the SDK with ``monkeypatch.setitem(sys.modules,
"modal", FakeModal(...))``: the backend does ``import modal`` when it needs
the SDK, so it gets the fake.

What the fake implements is what it declares: :data:`SURFACE` maps each fake
class to the real SDK object it stands for. The backend can only use what
the fake has (anything else is an ``AttributeError``/``TypeError`` here), and
``tests/test_modal.py`` checks every name and keyword in :data:`SURFACE`
against the INSTALLED ``modal`` package with :func:`inspect.signature`, so
the fake and the SDK cannot drift apart unnoticed.

Every call is counted in :attr:`FakeModal.calls` (``"Sandbox.exec"`` and so
on); :meth:`FakeModal.round_trips` sums those that cross the network in the
real SDK. Test controls (expire a sandbox, terminate it from outside) live on
:class:`FakeModal`, never on the fake SDK classes.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["FakeModal", "NETWORK_CALLS", "SURFACE"]

#: Mirrors the SDK: a sandbox with no command sleeps until its lifetime ends.
_DEFAULT_SANDBOX_TIMEOUT = 300
#: Mirrors ``TASK_COMMAND_ROUTER_MAX_BUFFER_SIZE``: unflushed stdin above this is an error.
_STDIN_BUFFER_LIMIT = 16 * 1024 * 1024
#: The environment variable that marks a fake sandbox's processes (so it can kill them all).
_MARK = "ATP_FAKE_MODAL_SANDBOX"

#: Calls that are a network request in the real SDK (``Image.from_registry``,
#: ``Secret.from_name`` and ``StreamWriter.write``/``write_eof`` are local).
NETWORK_CALLS = frozenset({
    "App.lookup",
    "Sandbox.create",
    "Sandbox.exec",
    "Sandbox.poll",
    "Sandbox.terminate",
    "Sandbox.detach",
    "ContainerProcess.wait",
    "ContainerProcess.poll",
    "StreamReader.read",
    "StreamReader.__iter__",
    "StreamWriter.drain",
})


# ----------------------------------------------------------------------------- exceptions


class _Exceptions(types.SimpleNamespace):
    """Stands for ``modal.exception``."""


class Error(Exception):
    """modal.exception.Error"""


class AuthError(Error):
    """modal.exception.AuthError"""


class NotFoundError(Error):
    """modal.exception.NotFoundError"""


class InvalidError(Error):
    """modal.exception.InvalidError"""


class ConflictError(InvalidError):
    """modal.exception.ConflictError: raised by ``exec`` on a finished sandbox."""


class ClientClosed(Error):
    """modal.exception.ClientClosed: the sandbox handle was detached."""


exception = _Exceptions(
    Error=Error,
    AuthError=AuthError,
    NotFoundError=NotFoundError,
    InvalidError=InvalidError,
    ConflictError=ConflictError,
    ClientClosed=ClientClosed,
)


# ----------------------------------------------------------------------------- the fake SDK classes


class _Counted:
    """Base of the fake SDK classes: every call is counted on the owning :class:`FakeModal`."""

    _fake: ClassVar[FakeModal]

    @classmethod
    def _count(cls, name: str) -> None:
        cls._fake._record(name)


class App(_Counted):
    """modal.App (only ``lookup``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def lookup(cls, name: str, *, create_if_missing: bool = False) -> App:
        cls._count("App.lookup")
        fake = cls._fake
        if fake.auth_error:
            raise AuthError("Token missing or invalid (fake)")
        if name not in fake.apps:
            if not create_if_missing:
                raise NotFoundError(f"App '{name}' not found")
            fake.apps[name] = cls(name)
        return fake.apps[name]


class Image(_Counted):
    """modal.Image (only ``from_registry``; lazy, as in the SDK)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    @classmethod
    def from_registry(cls, tag: str) -> Image:
        cls._count("Image.from_registry")
        return cls(tag)


class Secret(_Counted):
    """modal.Secret (only ``from_name``; resolved when a sandbox is created, as in the SDK)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_name(cls, name: str) -> Secret:
        cls._count("Secret.from_name")
        return cls(name)


class StreamReader(_Counted):
    """modal.io_streams.StreamReader: iterating yields chunks as they arrive; ``read`` gets all."""

    def __init__(self, pipe: Any, *, text: bool) -> None:
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._eof = False
        # The worker drains the process's pipe whether or not the client reads,
        # as Modal's worker does: an unread stream never blocks the process.
        threading.Thread(target=self._pump, args=(pipe,), daemon=True, name="fake-modal-pump").start()

    def _pump(self, pipe: Any) -> None:
        try:
            while True:
                data = os.read(pipe.fileno(), 1 << 16)
                if not data:
                    break
                self._chunks.put(data)
        except (OSError, ValueError):
            pass
        finally:
            self._chunks.put(None)
            pipe.close()

    def _cut(self) -> None:
        """The exec's deadline passed: the stream ends here, as the SDK's reader does."""
        self._chunks.put(None)

    def _next_chunk(self) -> bytes | None:
        if self._eof:
            return None
        data = self._chunks.get()
        if data is None:
            self._eof = True
        return data

    def _convert(self, data: bytes, final: bool = False) -> Any:
        return self._decoder.decode(data, final=final) if self._text else data

    def __iter__(self) -> Iterator[Any]:
        self._count("StreamReader.__iter__")
        while (data := self._next_chunk()) is not None:
            out = self._convert(data)
            if out:
                yield out
        if self._text:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                yield tail

    def read(self) -> Any:
        self._count("StreamReader.read")
        parts = []
        while (data := self._next_chunk()) is not None:
            parts.append(data)
        joined = b"".join(parts)
        return self._convert(joined, final=True)


class StreamWriter(_Counted):
    """modal.io_streams.StreamWriter: ``write`` buffers, ``drain`` sends, ``write_eof`` closes after the drain."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._buffer = bytearray()
        self._closed = False
        self._lock = threading.Lock()
        self.sent = bytearray()  # everything drained into the process (tests inspect it)

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        self._count("StreamWriter.write")
        if self._closed:
            raise ValueError("Stdin is closed. Cannot write to it.")
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if len(self._buffer) + len(data) > _STDIN_BUFFER_LIMIT:
            raise BufferError("Buffer size exceed limit. Call drain to flush the buffer.")
        self._buffer.extend(data)

    def write_eof(self) -> None:
        self._count("StreamWriter.write_eof")
        self._closed = True

    def drain(self) -> None:
        self._count("StreamWriter.drain")
        with self._lock:
            data, self._buffer = bytes(self._buffer), bytearray()
            try:
                if data:
                    self._pipe.write(data)
                    self._pipe.flush()
                    self.sent += data
                if self._closed and not self._pipe.closed:
                    self._pipe.close()
            except (BrokenPipeError, ValueError):
                pass  # the process stopped reading: the router drops the rest


class ContainerProcess(_Counted):
    """modal.container_process.ContainerProcess."""

    def __init__(self, popen: subprocess.Popen[bytes], *, text: bool, timeout: int | None) -> None:
        self._popen = popen
        self._timed_out = False
        self._returncode: int | None = None
        self._stdout = self._fake.StreamReader(popen.stdout, text=text)
        self._stderr = self._fake.StreamReader(popen.stderr, text=text)
        self._stdin = self._fake.StreamWriter(popen.stdin)
        if timeout:
            timer = threading.Timer(timeout, self._on_deadline)
            timer.daemon = True
            timer.start()

    def _on_deadline(self) -> None:
        if self._popen.poll() is None:
            self._timed_out = True
            _kill_group(self._popen.pid)  # the exec'd process; what it setsid'd lives on
            self._stdout._cut()
            self._stderr._cut()

    @property
    def stdout(self) -> StreamReader:
        return self._stdout

    @property
    def stderr(self) -> StreamReader:
        return self._stderr

    @property
    def stdin(self) -> StreamWriter:
        return self._stdin

    def _code(self, raw: int) -> int:
        if self._timed_out:
            return -1  # the SDK reports an exec that outlived its timeout as -1
        return 128 - raw if raw < 0 else raw

    def poll(self) -> int | None:
        self._count("ContainerProcess.poll")
        raw = self._popen.poll()
        return None if raw is None else self._code(raw)

    def wait(self) -> int:
        self._count("ContainerProcess.wait")
        if self._returncode is None:
            self._returncode = self._code(self._popen.wait())
        return self._returncode


class Sandbox(_Counted):
    """modal.Sandbox: a "container" whose processes are local, marked by an environment variable."""

    def __init__(self, fake: FakeModal, record: CreateRecord) -> None:
        # Unique machine-wide: the kill sweep looks at every process on the host,
        # and other test runs (other fakes) may be running at the same time.
        self._id = f"sb-fake{next(fake._ids)}-{fake._run_id}"
        self._record = record
        self._env = dict(record.env)
        self._status: tuple[str, int] | None = None  # ("timeout"|"terminated"|"exit", code)
        self._attached = True
        self._lock = threading.Lock()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._last_active = time.monotonic()
        self._timer = threading.Timer(record.timeout, self._end, args=("timeout", 124))
        self._timer.daemon = True
        self._timer.start()

    # -- the SDK surface ------------------------------------------------------------
    @classmethod
    def create(
        cls,
        *args: str,
        app: App | None = None,
        image: Image | None = None,
        secrets: Collection[Secret] | None = None,
        timeout: int | None = _DEFAULT_SANDBOX_TIMEOUT,
        idle_timeout: int | None = None,
        region: str | Sequence[str] | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        block_network: bool = False,
    ) -> Sandbox:
        cls._count("Sandbox.create")
        fake = cls._fake
        if args:
            raise NotImplementedError("the fake only runs sandboxes without a main command")
        if not isinstance(app, App):
            raise InvalidError("App is required when creating a Sandbox from outside a Modal container")
        if not isinstance(image, Image):
            raise InvalidError("the fake needs an image from Image.from_registry")
        if timeout is None or not 0 < timeout <= 24 * 3600:
            raise InvalidError("timeout must be between 1 second and 24 hours")
        env: dict[str, str] = {}
        for secret in secrets or ():
            if secret.name not in fake.secrets:
                raise NotFoundError(f"Secret '{secret.name}' not found")
            env.update(fake.secrets[secret.name])
        for directory in fake.fresh_dirs:  # a new container starts from a clean image
            shutil.rmtree(directory, ignore_errors=True)
            Path(directory).mkdir(parents=True)
        record = CreateRecord(
            app=app.name, image=image.tag, secrets=[s.name for s in secrets or ()], timeout=timeout,
            idle_timeout=idle_timeout, region=region, cpu=cpu, memory=memory,
            block_network=block_network, env=env,
        )
        sandbox = cls(fake, record)
        fake.created.append(sandbox)
        return sandbox

    @property
    def object_id(self) -> str:
        return self._id

    @property
    def returncode(self) -> int | None:
        return None if self._status is None else self._status[1]

    def exec(
        self,
        *args: str,
        timeout: int | None = None,
        env: dict[str, str | None] | None = None,
        text: bool = True,
    ) -> ContainerProcess:
        self._count("Sandbox.exec")
        self._check_attached()
        self._check_idle()
        if self._status is not None:
            raise ConflictError("Sandbox already finished")
        if not args or not all(isinstance(a, str) for a in args):
            raise InvalidError("All entrypoint arguments must be strings")
        proc_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            **self._env,
            **{k: v for k, v in (env or {}).items() if v is not None},
            _MARK: self._id,
        }
        popen = subprocess.Popen(  # noqa: S603 - the fake's "container" runs what it is told
            list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=proc_env, cwd="/", start_new_session=True,
        )
        with self._lock:
            self._processes.append(popen)
            self._last_active = time.monotonic()
        process = self._fake.ContainerProcess(popen, text=text, timeout=timeout)
        self._fake.execs.append(ExecRecord(self._id, tuple(args), process.stdin))
        return process

    def poll(self) -> int | None:
        self._count("Sandbox.poll")
        self._check_attached()
        self._check_idle()
        return self.returncode

    def terminate(self) -> None:
        self._count("Sandbox.terminate")
        self._check_attached()
        self._end("terminated", 137)

    def detach(self) -> None:
        self._count("Sandbox.detach")
        self._attached = False

    # -- fake internals -------------------------------------------------------------
    def _check_attached(self) -> None:
        if not self._attached:
            raise ClientClosed("Unable to perform operation on a detached sandbox")

    def _check_idle(self) -> None:
        """Idle timeout, checked lazily: idle means no exec has run for ``idle_timeout`` seconds."""
        idle = self._record.idle_timeout
        if idle is None or self._status is not None:
            return
        with self._lock:
            busy = any(p.poll() is None for p in self._processes)
            if busy:
                self._last_active = time.monotonic()
            expired = not busy and time.monotonic() - self._last_active >= idle
        if expired:
            self._end("timeout", 124)

    def _end(self, status: str, code: int) -> None:
        with self._lock:
            if self._status is not None:
                return
            self._status = (status, code)
        self._timer.cancel()
        _kill_marked(self._id)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_marked(sandbox_id: str) -> None:
    """SIGKILL every process carrying the sandbox's mark (setsid'd groups included)."""
    needle = f"{_MARK}={sandbox_id}".encode()
    for _ in range(3):  # a dying shell may fork once more: sweep until nothing is left
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle not in fh.read().split(b"\0"):
                        continue
                os.kill(int(entry), signal.SIGKILL)
                found = True
            except (OSError, ValueError):
                continue
        if not found:
            return
        time.sleep(0.05)


# ----------------------------------------------------------------------------- records and the fake module


@dataclass
class CreateRecord:
    """What ``Sandbox.create`` was asked for."""

    app: str
    image: str
    secrets: list[str]
    timeout: int
    idle_timeout: int | None
    region: str | Sequence[str] | None
    cpu: Any
    memory: Any
    block_network: bool
    env: dict[str, str] = field(repr=False, default_factory=dict)


@dataclass
class ExecRecord:
    """One ``Sandbox.exec``: its argv, and its stdin writer (``stdin.sent``: the bytes it got)."""

    sandbox_id: str
    args: tuple[str, ...]
    stdin: StreamWriter

    @property
    def stdin_bytes(self) -> bytes:
        return bytes(self.stdin.sent)


#: Each fake class -> the dotted name of what it stands for in the real ``modal`` package.
SURFACE: dict[type, str] = {
    App: "App",
    Image: "Image",
    Secret: "Secret",
    Sandbox: "Sandbox",
    ContainerProcess: "container_process.ContainerProcess",
    StreamReader: "io_streams.StreamReader",
    StreamWriter: "io_streams.StreamWriter",
    **{cls: f"exception.{name}" for name, cls in vars(exception).items()},
}
#: The top-level module attributes the fake provides (``modal.App`` and so on).
MODULE_ATTRIBUTES = ("App", "Image", "Secret", "Sandbox", "exception")


class FakeModal(types.ModuleType):
    """A fresh fake ``modal`` module with its own sandboxes and counters.

    Parameters
    ----------
    fresh_dirs:
        Directories emptied whenever a sandbox is created (the sandbox's
        workdir: a new container starts from a clean image).
    secrets:
        ``name -> {VAR: value}`` the fake's ``Secret.from_name`` can resolve.
    auth_error:
        ``App.lookup`` raises :class:`AuthError` (rejected credentials).
    """

    def __init__(
        self,
        *,
        fresh_dirs: Sequence[str | os.PathLike[str]] = (),
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        auth_error: bool = False,
    ) -> None:
        super().__init__("modal", "A fake of the modal SDK (tests/fake_modal.py)")
        self.fresh_dirs = [Path(d) for d in fresh_dirs]
        self.secrets = {k: dict(v) for k, v in (secrets or {}).items()}
        self.auth_error = auth_error
        self.calls: Counter[str] = Counter()
        #: calls made from a thread that was running an asyncio event loop
        self.calls_in_running_loop: Counter[str] = Counter()
        self.apps: dict[str, App] = {}
        self.created: list[Sandbox] = []
        self.execs: list[ExecRecord] = []
        self._ids = itertools.count(1)
        self._run_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        # Per-instance subclasses, so each fake has its own state.
        for cls in (App, Image, Secret, Sandbox, ContainerProcess, StreamReader, StreamWriter):
            setattr(self, cls.__name__, type(cls.__name__, (cls,), {"_fake": self, "__module__": __name__}))
        self.exception = exception

    # -- accounting -------------------------------------------------------------------
    def _record(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return
            self.calls_in_running_loop[name] += 1

    def round_trips(self) -> int:
        """Calls that would be a network request with the real SDK."""
        return sum(n for name, n in self.calls.items() if name in NETWORK_CALLS)

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()
            self.calls_in_running_loop.clear()
            self.execs.clear()

    # -- test controls ----------------------------------------------------------------
    def expire(self, sandbox: Sandbox) -> None:
        """End ``sandbox`` as its lifetime running out does (``returncode`` 124)."""
        sandbox._end("timeout", 124)

    def terminate_externally(self, sandbox: Sandbox) -> None:
        """End ``sandbox`` as ``modal container stop`` or an OOM kill does (``returncode`` 137)."""
        sandbox._end("terminated", 137)

    def end(self, sandbox: Sandbox, code: int) -> None:
        """End ``sandbox`` as if its main process exited with ``code``."""
        sandbox._end("exit", code)

    def shutdown(self) -> None:
        """Kill every process of every sandbox this fake created."""
        for sandbox in self.created:
            sandbox._end("terminated", 137)

    @property
    def last(self) -> Sandbox:
        """The sandbox created last."""
        return self.created[-1]
