"""The compute-backend contract: run a command over a workdir in a Lean sandbox.

A :class:`ComputeBackend` runs shell commands over a host working directory
inside a sandbox that carries Lean + Mathlib, and hands back their output. It
is used both to run long agent scripts and to verify files with
``lake env lean``. Concrete backends (local process, Docker, Modal) supply the
transport only; the machinery they share (line streaming, concurrent draining,
timeouts, process-tree kills, result assembly) lives in
:mod:`atp_notebook.backends.machinery`.

Semantics every backend keeps (tests in ``tests/contract.py`` hold them to it):

* :meth:`CommandHandle.stream` yields stdout lines as they arrive, without the
  line terminator; :meth:`CommandHandle.wait` returns the whole stdout and
  stderr whether or not the stream was consumed.
* A command that outlives its timeout is killed with its whole process tree and
  ends with exit code ``124``; a cancelled one ends with ``130``. Cancelling a
  finished command does nothing; cancelling never closes the session.
* Environment precedence: ``BackendConfig.env`` < ``session(env=)`` <
  ``exec(env=)``.
* :meth:`ComputeSession.close` is idempotent and kills what still runs; a
  closed session refuses :meth:`ComputeSession.exec` with
  :class:`SessionClosedError`, a session whose sandbox died raises
  :class:`SandboxDiedError` naming the cause.
"""

from __future__ import annotations

import abc
import shlex
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atp_notebook.images import DEFAULT_IMAGE, Image

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

__all__ = [
    "AtpError",
    "BackendConfig",
    "BackendUnavailableError",
    "CommandHandle",
    "CommandResult",
    "ComputeBackend",
    "ComputeSession",
    "SandboxDiedError",
    "SessionClosedError",
    "TIMEOUT_EXIT_CODE",
    "CANCEL_EXIT_CODE",
    "wrap_command",
]

#: Exit code of a command killed because it outlived its timeout (as coreutils' ``timeout``).
TIMEOUT_EXIT_CODE = 124
#: Exit code of a cancelled command (as a shell reports SIGINT: 128 + 2).
CANCEL_EXIT_CODE = 130


class AtpError(RuntimeError):
    """Base of the errors this package raises on purpose; the text says what to do."""


class SessionClosedError(AtpError):
    """The session was closed; open a new one."""


class SandboxDiedError(AtpError):
    """The sandbox behind a session is gone (killed, out of memory, expired)."""


class BackendUnavailableError(AtpError):
    """A backend cannot run here (missing package, daemon, image or credentials)."""


@dataclass
class CommandResult:
    """Outcome of a finished command run inside a backend."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0


# eq=False: handles are live objects; two of them are never "equal" by value,
# and they must stay hashable so sessions can track the ones still running.
@dataclass(eq=False)
class CommandHandle(AbstractContextManager["CommandHandle"]):
    """A live, streaming command. Concrete backends subclass and fill the hooks.

    Leaving a ``with`` block cancels the command if it still runs, so an error
    in the caller never leaves a process behind.
    """

    def stream(self) -> Iterator[str]:
        """Yield stdout lines as they arrive (without line terminators)."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Kill the command's whole process tree; a no-op once it has finished."""
        raise NotImplementedError

    def wait(self) -> CommandResult:
        """Drain to completion and return the final result."""
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class ComputeSession(AbstractContextManager["ComputeSession"]):
    """A persistent sandbox over a workdir, exec'd many times, torn down once.

    :meth:`ComputeBackend.start` creates a sandbox for a single command; a
    session keeps it alive so many commands run against the same hot
    filesystem without paying a second spin-up. Teardown lives in
    :meth:`close`, which is idempotent, so using the session as a context
    manager can never leak the sandbox::

        backend = get_backend("docker")
        with backend.session(workdir) as session:
            with session.exec("lake env lean Demo.lean") as handle:
                result = handle.wait()
            session.sync_out()  # pull edits made in the sandbox back to the host
    """

    def exec(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
    ) -> CommandHandle:
        """Run ``command`` in the live sandbox; the handle does NOT tear it down."""
        raise NotImplementedError

    def sync_out(self) -> None:
        """Pull the sandbox workdir back to the host (no-op when shared)."""
        raise NotImplementedError

    def sync_in(self) -> None:
        """Push the host workdir into the sandbox (no-op when shared)."""
        raise NotImplementedError

    def close(self) -> None:
        """Tear the sandbox down (pulling files first where needed). Idempotent."""
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class BackendConfig:
    """Knobs every backend shares; subclasses add their own.

    Attributes
    ----------
    image:
        The sandbox image carrying Lean + Mathlib (tag, toolchain, Mathlib
        revision, layout). Default :data:`~atp_notebook.images.DEFAULT_IMAGE`.
    timeout_s:
        Wall-clock cap for a command whose call site passes no ``timeout_s``.
        Default ``1800``.
    env:
        Environment variables set for every command run in the sandbox.
    """

    image: Image = DEFAULT_IMAGE
    timeout_s: int = 1800
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Self:
        """Build a config from a mapping (e.g. parsed JSON), ignoring unknown keys.

        The inverse of :func:`dataclasses.asdict`: tuple-typed fields (Docker's
        ``volumes``, say) come back from the lists JSON turned them into, and an
        ``image`` given as a mapping becomes an :class:`Image` again. Unknown
        keys are dropped, so a sibling backend's config loads cleanly.
        """
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            f = known.get(key)
            if f is None:
                continue
            type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            if isinstance(value, list) and type_name.startswith("tuple"):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            elif key == "image" and isinstance(value, Mapping):
                value = Image(**value)
            kwargs[key] = value
        return cls(**kwargs)


def wrap_command(workdir_mount: str, baked_lake: str, command: str) -> str:
    """``cd`` into the workdir and link the image's warm Mathlib cache before ``command``.

    The one image-layout convention the backends own: the workdir's ``.lake``
    becomes a symlink to the image-baked olean cache (when the image has one),
    so an uploaded project reuses it. Empty ``baked_lake`` skips the link, and
    so does a workdir whose ``.lake`` is a real directory (its own build is
    never touched). Paths are shell-quoted, so a workdir with spaces works.
    """
    prep = f"cd {shlex.quote(workdir_mount)}"
    if baked_lake:
        lake = shlex.quote(baked_lake)
        prep += (
            f" && {{ [ -e {lake} ] && {{ [ -L .lake ] || [ ! -e .lake ]; }}"
            f" && ln -sfn {lake} .lake || true; }}"
        )
    return f"{prep}; {command}"


class ComputeBackend(abc.ABC):
    """Runs commands over a workdir in a sandbox carrying Lean + Mathlib."""

    #: Absolute ``$HOME`` inside the sandbox; per-run credential directories
    #: are mounted under it. Overridden per backend.
    container_home: str = "/root"

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Short identifier, e.g. ``"docker"`` or ``"modal"``."""

    @abc.abstractmethod
    def start(
        self,
        workdir: Path,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str, str]] | None = None,
        timeout_s: int | None = None,
    ) -> CommandHandle:
        """Launch ``command`` in a fresh sandbox over ``workdir`` (one-shot).

        The workdir is synced in before launch and back out on completion, and
        the sandbox is torn down when the command ends or is cancelled.
        ``mounts`` are extra ``(host_path, sandbox_path)`` binds beyond the
        workdir, e.g. an agent's credential directory.
        """

    @abc.abstractmethod
    def session(
        self,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str, str]] | None = None,
        timeout_s: int | None = None,
    ) -> ComputeSession:
        """Open a persistent sandbox over ``workdir`` for many :meth:`ComputeSession.exec` calls.

        ``env`` and ``mounts`` are fixed when the sandbox is created (Docker
        binds can only be set then); per-command variables go to ``exec(env=)``.
        ``timeout_s`` is the default per-command timeout inside this session.
        """

    def run(
        self,
        workdir: Path,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str, str]] | None = None,
        timeout_s: int | None = None,
    ) -> CommandResult:
        """Convenience: :meth:`start` then block in :meth:`CommandHandle.wait`."""
        with self.start(workdir, command, env=env, mounts=mounts, timeout_s=timeout_s) as handle:
            return handle.wait()
