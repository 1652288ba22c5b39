"""The Docker backend: one long-lived container per session, exec'd many times.

A session starts ONE container from the image that idles, and every
:meth:`~atp_notebook.backends.base.ComputeSession.exec` is a ``docker exec``
in it; :meth:`close` removes it. This module is a thin layer over docker-py's
low-level API (``client.api``): ``create_container``/``start``,
``exec_create``/``exec_start``/``exec_inspect``, ``remove_container``.

* **Files.** ``sync="bind"`` (default) bind-mounts the host workdir at the
  image's workdir and runs commands as the host user (see :func:`bind_user`),
  so the files stay theirs and sync is a no-op. ``sync="copy"`` mounts
  nothing: files travel as tar archives through :mod:`atp_notebook.sync`
  (only what changed), as they must with a remote engine or Docker Desktop;
  its ``run(script, stdin)`` is :meth:`DockerSession.run_script` (stdin down
  the exec's socket, raw multiplexed frames back).
* **Stdin.** A command's stdin is empty, or with ``exec(..., stdin=True)``
  the exec's socket: written as the caller goes, output read off the same
  socket as it arrives (:class:`DockerExec`).
* **Killing.** Docker cannot kill an exec. Each command's exec carries a
  unique tag in its environment (:func:`~atp_notebook.backends.machinery.tagged_env`),
  which all its descendants inherit; a cancel or timeout runs
  :func:`~atp_notebook.backends.machinery.remote_kill_script` in a second
  exec, on a thread (the caller never waits for the grace period), and it
  kills every tagged process.
  Host PIDs from ``exec_inspect`` are never used. A command still running
  a few seconds after its grace period takes the container down with it.
* **Safety.** No network unless configured, every capability dropped,
  ``no-new-privileges``, a pids limit, memory/CPU limits when configured, and
  an init process (``init=True``) that reaps what a kill orphans.
* **Death.** A container that was killed, OOM-killed or removed is reported on
  the next exec as :class:`~atp_notebook.backends.base.SandboxDiedError`
  naming the cause; a command the OOM killer hit says so on its stderr.
* **Cleanup.** Containers carry ``atp-notebook.*`` labels (owner pid and host,
  session, workdir); :func:`collect_garbage` (``atp-notebook gc``) removes
  those whose owner process is gone.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import tarfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker.errors
import requests.exceptions
from docker.types import Mount
from docker.utils.socket import frames_iter

from atp_notebook.backends.base import (
    AtpError,
    BackendConfig,
    BackendUnavailableError,
    SandboxDiedError,
)
from atp_notebook.backends.docker_client import connect_docker
from atp_notebook.backends.machinery import (
    Chunk,
    ManagedSession,
    SessionBackend,
    WATCHDOG,
    Transport,
    remote_kill_script,
    tagged_env,
)

if TYPE_CHECKING:  # pragma: no cover
    from atp_notebook.sync import SyncReport, TwoWaySync

__all__ = [
    "DockerBackend",
    "DockerConfig",
    "DockerSession",
    "Orphan",
    "collect_garbage",
    "find_orphans",
    "LABEL_OWNER_PID",
    "LABEL_OWNER_HOST",
    "LABEL_SESSION",
    "LABEL_WORKDIR",
]

LABEL_OWNER_PID = "atp-notebook.owner-pid"
LABEL_OWNER_HOST = "atp-notebook.owner-host"
LABEL_SESSION = "atp-notebook.session"
LABEL_WORKDIR = "atp-notebook.workdir"
LABEL_SYNC = "atp-notebook.sync"

#: What the container runs between execs. Portable: busybox ``sleep`` may not
#: know ``infinity``; TERM (``docker stop``) ends it at once.
IDLE_COMMAND = ["/bin/sh", "-c", 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done']

#: Errors meaning "the daemon refused or is gone", checked against the container's state.
_DOCKER_ERRORS = (docker.errors.APIError, requests.exceptions.ConnectionError)
_SIGKILL_EXIT = 137
#: Seconds after the kill grace period before a command still running takes its container down.
_KILL_CHECK_S = 5.0


@dataclass
class DockerConfig(BackendConfig):
    """Configuration of :class:`DockerBackend`.

    Attributes
    ----------
    volumes:
        Extra ``(host_path, container_path)`` bind mounts for every session.
    network:
        Docker network mode: ``"none"`` (default: no network at all),
        ``"bridge"``, ``"host"`` or a network's name.
    sync:
        ``"bind"`` (default): the workdir is bind-mounted, sync is a no-op.
        ``"copy"``: files travel by archive, only what changed (use it with a
        remote engine or Docker Desktop).
    memory:
        Memory limit, e.g. ``"4g"`` (no swap beyond it). ``None``: unlimited.
    cpus:
        CPU limit, e.g. ``2.0``. ``None``: unlimited.
    pids_limit:
        Most processes and threads the container may hold (a fork bomb stops there).
    user:
        ``uid:gid`` (or name) commands run as. Default: in bind mode the host
        user (the workdir's owner when the host user is root), so files made
        in the sandbox belong to them; in copy mode the image's user.
    kill_grace_s:
        Seconds between SIGTERM and SIGKILL when a command is cancelled or
        times out.
    docker_host:
        Engine URL (``unix://...``, ``tcp://host:2376``, ``ssh://user@host``);
        ``None``: the environment's (``DOCKER_HOST``), as for the CLI.
    labels:
        Extra container labels (the ``atp-notebook.*`` ones are always set).
    """

    volumes: tuple[tuple[str, str], ...] = ()
    network: str = "none"
    sync: str = "bind"
    memory: str | None = None
    cpus: float | None = None
    pids_limit: int = 4096
    user: str | None = None
    kill_grace_s: float = 2.0
    docker_host: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sync not in ("bind", "copy"):
            raise ValueError(f"DockerConfig.sync must be 'bind' or 'copy', not {self.sync!r}.")
        self.volumes = tuple((str(host), str(target)) for host, target in self.volumes)
        for _, target in self.volumes:
            if not target.startswith("/"):
                raise ValueError(f"Container paths in DockerConfig.volumes must be absolute, not {target!r}.")


# -- one command ------------------------------------------------------------------------------


class DockerExec(Transport):
    """One ``docker exec``: output frames as they arrive, exit code from ``exec_inspect``.

    The exec is attached to a raw socket (``exec_start(socket=True)``)
    whose multiplexed output frames are read as they arrive. With
    ``stdin=True`` the exec's stdin is that socket too: :meth:`write` sends
    on it, and :meth:`close_stdin` shuts its write side (EOF), except over TLS/SSH (see
    :attr:`DockerSession.stdin_by_socket`), where that would end the whole
    connection: there it does nothing, and stdin stays open until the
    command exits.
    """

    def __init__(self, session: DockerSession, command: str, env: Mapping[str, str], *, stdin: bool = False) -> None:
        self._session = session
        self._token = uuid.uuid4().hex
        self._started = time.time()
        self._code: int | None = None
        self._kill_sent = False
        self._lock = threading.Lock()
        self._exec_id = session.exec_create(command, env=tagged_env(env, self._token), stdin=stdin)
        self._stdin = stdin
        self._sock = session.call(session.api.exec_start, self._exec_id, socket=True)
        self._raw = _raw(self._sock)
        _no_timeout(self._sock)  # a command may read (and print) nothing for hours
        self._stream = frames_iter(self._sock, tty=False)

    def sources(self) -> list[Iterable[Chunk]]:
        return [self._frames()]

    def _frames(self) -> Iterator[Chunk]:
        """stdout/stderr as they come; then the exit code, and why if SIGKILL came from elsewhere."""
        try:
            for fd, data in self._stream:
                if data:
                    yield (2 if fd == 2 else 1), data
        finally:
            for resource in (self._stream, self._sock, self._raw):
                _close_quietly(resource)
        code = self.wait()
        if code == _SIGKILL_EXIT and not self._kill_sent:
            note = self._session.explain_sigkill(self._started)
            if note:
                yield 2, note.encode()

    def wait(self) -> int:
        if self._code is None:
            try:
                self._code = self._session.exec_exit_code(self._exec_id)
            except SandboxDiedError:
                if not self._kill_sent:
                    raise
                self._code = _SIGKILL_EXIT  # we killed it; the handle reports 124/130
        return self._code

    def poll(self) -> int | None:
        return self._code

    def write(self, data: bytes) -> None:
        if not self._stdin:
            return super().write(data)  # raises: no stdin
        try:
            self._raw.sendall(data)
        except OSError as exc:
            raise BrokenPipeError(errno.EPIPE, "The command has ended: it reads no more input.") from exc

    def close_stdin(self) -> None:
        if self._stdin and self._session.stdin_by_socket:
            self._raw.shutdown(socket.SHUT_WR)

    def kill(self) -> None:
        """Kill the command's tagged processes from a second exec, on a thread."""
        with self._lock:
            if self._kill_sent or self._code is not None:
                return
            self._kill_sent = True
        script = remote_kill_script(self._token, self._session.grace_s)
        threading.Thread(
            target=self._session.exec_detached, args=(script,), name="atp-docker-kill", daemon=True
        ).start()
        WATCHDOG.schedule(self._session.grace_s + _KILL_CHECK_S, self._make_sure_dead)

    def _make_sure_dead(self) -> None:
        """Last resort when the kill exec could not run (pids limit reached, say): kill the container."""
        if self._code is None and self._session.exec_running(self._exec_id):
            self._session.kill_container(
                "a cancelled command outlived its kill (could the kill not start? a full pids limit, "
                "say), so the container was killed"
            )


# -- the session --------------------------------------------------------------------------------


class DockerSession(ManagedSession):
    """A running container over the workdir; every :meth:`exec` is a ``docker exec`` in it."""

    backend: DockerBackend

    def __init__(
        self,
        backend: DockerBackend,
        workdir: Path,
        container_id: str,
        container_name: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
    ) -> None:
        super().__init__(backend, workdir, sandbox_workdir=backend.config.image.workdir, env=env, timeout_s=timeout_s)
        self.container_id = container_id
        self.container_name = container_name
        self.api = backend.client.api
        self.grace_s = backend.config.kill_grace_s
        self._dead: str | None = None  # why the container is gone, once we know
        self._created_at = time.time()
        self._sync: TwoWaySync | None = None
        self._sync_lock = threading.Lock()
        self._uid_gid: tuple[int, int] | None = None
        #: Half-closing the exec socket ends stdin; TLS and SSH connections can't,
        #: so stdin is staged as a file with put_archive there.
        self.stdin_by_socket = self.api.base_url.startswith(("http+docker://localhost", "http://"))
        if backend.config.sync == "copy":
            from atp_notebook import sync

            self._sync = sync.TwoWaySync(self.workdir, sync.RemoteTree(self.run_script, self.sandbox_workdir))

    # -- ManagedSession hooks -----------------------------------------------------------------
    def _spawn(self, command: str, env: Mapping[str, str], *, stdin: bool = False) -> Transport:
        return DockerExec(self, command, env, stdin=stdin)

    def _check_alive(self) -> None:
        """Free: a dead container is found when the next exec fails (then inspected once)."""
        if self._dead is not None:
            raise SandboxDiedError(self._dead)

    def _teardown(self) -> None:
        """Copy mode pulls the files back first; then the container goes (already gone is fine)."""
        try:
            if self._sync is not None and self._dead is None:
                try:
                    self._sync_now("out")
                except SandboxDiedError:
                    pass  # its files died with it; the error was (or will be) reported on exec
        finally:
            _remove_container(self.api, self.container_id)

    # -- sync -----------------------------------------------------------------------------------
    def sync_in(self) -> SyncReport | None:
        """Push host changes into the container (copy mode); returns what moved, or ``None`` (bind)."""
        self._check_open()
        return self._sync_now("in")

    def sync_out(self) -> SyncReport | None:
        """Pull container changes to the host (copy mode); returns what moved, or ``None`` (bind)."""
        self._check_open()
        return self._sync_now("out")

    def _sync_now(self, direction: str) -> SyncReport | None:
        if self._sync is None:
            return None
        self._check_alive()
        with self._sync_lock:
            return self._sync.sync_in() if direction == "in" else self._sync.sync_out()

    @property
    def sync_mode(self) -> str:
        return "copy" if self._sync is not None else "bind"

    # -- low-level calls, with death translated -----------------------------------------------
    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; a failure because the container is gone raises SandboxDiedError."""
        try:
            return fn(*args, **kwargs)
        except _DOCKER_ERRORS as exc:
            self._raise_if_dead(exc)
            raise

    def exec_create(self, script: str, *, env: Mapping[str, str] | None = None, stdin: bool = False) -> str:
        """Create (not start) ``/bin/sh -c script`` in the container; returns the exec id."""
        environment = [f"{k}={v}" for k, v in (env or {}).items()]
        argv = ["/bin/sh", "-c", script]
        created = self.call(self.api.exec_create, self.container_id, argv, environment=environment, stdin=stdin)
        return created["Id"]

    def exec_exit_code(self, exec_id: str) -> int:
        """The exit code of a finished exec (the daemon may need a moment to record it)."""
        deadline = time.monotonic() + 10
        while True:
            info = self.call(self.api.exec_inspect, exec_id)
            if info.get("ExitCode") is not None and not info.get("Running"):
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                return int(info.get("ExitCode") or 0)
            time.sleep(0.005)

    def exec_running(self, exec_id: str) -> bool:
        """Whether the exec still runs (``False`` when Docker no longer knows it)."""
        try:
            return bool(self.api.exec_inspect(exec_id).get("Running"))
        except _DOCKER_ERRORS:
            return False

    def kill_container(self, cause: str) -> None:
        """Kill the container (the session is dead from now on, for ``cause``)."""
        self._dead = self._gone(cause)
        try:
            self.api.kill(self.container_id)
        except _DOCKER_ERRORS:
            pass  # already gone

    def exec_detached(self, script: str) -> None:
        """Run ``script`` without waiting for it; a container already gone is fine."""
        try:
            exec_id = self.api.exec_create(self.container_id, ["/bin/sh", "-c", script])["Id"]
            self.api.exec_start(exec_id, detach=True)
        except _DOCKER_ERRORS:
            pass  # nothing left to kill

    def run_script(self, script: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        """The sync engine's ``run``: ``sh -c script`` with ``stdin``; ``(exit code, stdout, stderr)``.

        Output is raw bytes (never decoded). stdin goes down the exec's
        socket, whose write side is then shut (EOF); over TLS/SSH, where that
        can't be done, it is first staged as a file with ``put_archive``.
        """
        if stdin is not None and not self.stdin_by_socket:
            script = self._stage_stdin(stdin) + script
            stdin = None
        exec_id = self.exec_create(script, stdin=stdin is not None)
        sock = self.call(self.api.exec_start, exec_id, socket=True)
        try:
            writer = None
            if stdin is not None:
                writer = threading.Thread(target=_send_and_shut, args=(sock, stdin), daemon=True)
                writer.start()
            out, err = _collect_frames(sock)
            if writer is not None:
                writer.join()
        finally:
            _close_quietly(sock)
        return self.exec_exit_code(exec_id), out, err

    def _stage_stdin(self, data: bytes) -> str:
        """Put ``data`` in a file in the container; the shell prefix that reads it as stdin."""
        path = f"/tmp/.atp-stdin-{uuid.uuid4().hex}"
        info = tarfile.TarInfo(path.rsplit("/", 1)[1])
        info.size, info.mode = len(data), 0o600
        info.uid, info.gid = self._ids()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.addfile(info, io.BytesIO(data))
        self.call(self.api.put_archive, self.container_id, "/tmp", buffer.getvalue())
        return f"exec < {path}; rm -f {path}\n"

    def _ids(self) -> tuple[int, int]:
        """The uid and gid commands run as (asked once): staged files must be theirs to read and delete."""
        if self._uid_gid is None:
            code, out, _ = self.run_script("id -u; id -g")
            numbers = out.split()
            ok = code == 0 and len(numbers) == 2 and all(n.isdigit() for n in numbers)
            self._uid_gid = (int(numbers[0]), int(numbers[1])) if ok else (0, 0)
        return self._uid_gid

    # -- death -----------------------------------------------------------------------------------
    def _raise_if_dead(self, exc: BaseException | None = None) -> None:
        error = self.death_error()
        if error is not None:
            raise error from exc

    def death_error(self) -> SandboxDiedError | None:
        """If the container no longer runs, the error saying why (one inspect); else ``None``."""
        try:
            state = self.api.inspect_container(self.container_id)["State"]
        except docker.errors.NotFound:
            cause = "the container was removed (`docker rm -f`, `atp-notebook gc`, or the daemon lost it)"
        except _DOCKER_ERRORS as exc:
            cause = f"the Docker daemon stopped answering ({exc.__class__.__name__})"
        else:
            if state.get("Running") and not state.get("Paused"):
                return None
            cause = describe_state(state, self.backend.config.memory, self._kill_signal())
        if self._dead is None:  # a cause we set ourselves (kill_container) stands
            self._dead = self._gone(cause)
        return SandboxDiedError(self._dead)

    def _gone(self, cause: str) -> str:
        return (
            f"The Docker sandbox {self.container_name} ({self.container_id[:12]}) is gone: {cause}. "
            "Open a new session (`%lean_sandbox restart` in a notebook)."
        )

    def _kill_signal(self) -> str | None:
        """The signal of the last ``docker kill``/``stop``/``rm -f`` of this container, if any.

        Needed because ``State.OOMKilled`` stays set once anything in the
        container met the OOM killer, even if a ``docker kill`` ended it later.
        """
        kills = self._events_since(self._created_at - 60, ("kill",), attribute="signal")
        return max(kills, key=lambda pair: pair[0])[1] if kills else None

    def explain_sigkill(self, since: float) -> str:
        """Why a command we did not kill got SIGKILL: its sandbox died, or the OOM killer hit it.

        The daemon records ``kill``/``die`` (the container) and ``oom`` (the
        kernel) events, but may log them a moment after the exec's end
        reaches us: look again for up to half a second before concluding
        the command was killed from inside the sandbox (no note then).
        """
        deadline = time.monotonic() + 0.5
        while True:
            actions = {action for _, action in self._events_since(since, ("oom", "kill", "die", "stop", "destroy"))}
            if actions - {"oom"} or self.death_error() is not None:
                error = self._wait_for_death(timeout_s=2.0)
                cause = str(error) if error else "the sandbox container is being killed or stopped from outside"
                return f"atp_notebook: {cause}\n"
            if "oom" in actions:
                limit = self.backend.config.memory
                return (
                    "atp_notebook: the command was killed by the kernel's out-of-memory killer"
                    + (f" (container memory limit {limit})" if limit else "")
                    + ": give the sandbox more memory (DockerConfig(memory=...)) or make the command use less\n"
                )
            if time.monotonic() > deadline:
                return ""
            time.sleep(0.05)

    def _wait_for_death(self, timeout_s: float) -> SandboxDiedError | None:
        """The daemon said the container is going: wait (briefly) until inspect agrees."""
        deadline = time.monotonic() + timeout_s
        while True:
            error = self.death_error()
            if error is not None or time.monotonic() > deadline:
                return error
            time.sleep(0.02)

    def _events_since(self, since: float, actions: Sequence[str], attribute: str = "") -> list[tuple[int, str]]:
        """``(time in ns, action)`` of this container's events among ``actions`` since ``since`` (epoch s).

        With ``attribute``, the event's attribute of that name instead of its action.
        """
        try:
            events = self.api.events(
                since=f"{since - 0.5:.9f}",  # a little slack for clock skew with the daemon
                until=f"{time.time():.9f}",
                filters={"container": self.container_id, "event": list(actions)},
                decode=True,
            )
            found = []
            for event in events:
                value = event.get("Actor", {}).get("Attributes", {}).get(attribute) if attribute else None
                found.append((int(event.get("timeNano") or 0), value or event.get("Action") or event.get("status", "")))
            return found
        except _DOCKER_ERRORS:
            return []

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("dead" if self._dead else "open")
        return f"<DockerSession {self.container_name} {self.sync_mode} {self.workdir} ({state})>"


# -- the backend --------------------------------------------------------------------------------


class DockerBackend(SessionBackend):
    """Run commands in a long-lived Docker container per session (docker-py, low-level API)."""

    config: DockerConfig

    def __init__(self, config: DockerConfig | None = None) -> None:
        super().__init__(config or DockerConfig())
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def name(self) -> str:
        return "docker"

    @property
    def client(self) -> Any:
        """The ``docker.DockerClient`` (connected on first use; :class:`BackendUnavailableError` if no daemon)."""
        with self._client_lock:
            if self._client is None:
                self._client = connect_docker(base_url=self.config.docker_host)
            return self._client

    def session(
        self,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[tuple[str, str]] | None = None,
        timeout_s: int | None = None,
    ) -> DockerSession:
        workdir = Path(workdir).expanduser().resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        container_id, name = self._create_container(workdir, {**self.config.env, **(env or {})}, mounts)
        try:
            session = DockerSession(self, workdir, container_id, name, env=env, timeout_s=timeout_s)
            session.sync_in()  # copy mode: the container starts with the workdir's files
        except BaseException:
            _remove_container(self.client.api, container_id)
            raise
        return session


    # -- container creation ------------------------------------------------------------------
    def _create_container(
        self, workdir: Path, env: Mapping[str, str], mounts: Sequence[tuple[str, str]] | None
    ) -> tuple[str, str]:
        """Create and start the idle container; returns ``(id, name)``."""
        cfg = self.config
        api = self.client.api
        session_id = uuid.uuid4().hex[:12]
        name = f"atp-notebook-{session_id}"
        host_config = api.create_host_config(
            init=True,
            network_mode=cfg.network,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=cfg.pids_limit,
            mem_limit=cfg.memory,
            memswap_limit=cfg.memory,
            nano_cpus=int(cfg.cpus * 1e9) if cfg.cpus else None,
            mounts=self._mounts(workdir, mounts),
        )
        try:
            created = api.create_container(
                cfg.image.tag,
                command=IDLE_COMMAND,
                name=name,
                user=self._user(workdir) or "",
                environment=[f"{k}={v}" for k, v in env.items()],
                working_dir=cfg.image.workdir,
                labels=self._labels(session_id, workdir),
                host_config=host_config,
            )
        except docker.errors.ImageNotFound as exc:
            raise BackendUnavailableError(
                f"The Docker image {cfg.image.tag} is not on this engine: build it with "
                "`atp-notebook image build`, or pass --image TAG (DockerConfig(image=...)) naming "
                "an image you have (see `docker images`)."
            ) from exc
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            hint = ""
            if "bind source path does not exist" in text and cfg.sync == "bind":
                hint = (
                    " (a mount's host path is missing; with a remote engine or Docker Desktop the host "
                    "workdir is not on the engine's machine: use DockerConfig(sync='copy'))"
                )
            raise AtpError(f"Docker refused to create the sandbox container: {text}{hint}") from exc
        try:
            api.start(created["Id"])
        except BaseException:
            _remove_container(api, created["Id"])
            raise
        return created["Id"], name

    def _mounts(self, workdir: Path, extra: Sequence[tuple[str, str]] | None) -> list[Mount]:
        """The workdir (bind mode), the configured volumes, then the session's mounts."""
        mounts = []
        if self.config.sync == "bind":
            mounts.append(Mount(target=self.config.image.workdir, source=str(workdir), type="bind"))
        for host, target in (*self.config.volumes, *(extra or ())):
            if not str(target).startswith("/"):
                raise ValueError(f"Cannot mount {host!r} at {target!r}: the container path must be absolute.")
            source = str(Path(host).expanduser().resolve())
            mounts.append(Mount(target=str(target), source=source, type="bind"))
        return mounts

    def _user(self, workdir: Path) -> str | None:
        if self.config.user:
            return self.config.user
        return bind_user(workdir) if self.config.sync == "bind" else None

    def _labels(self, session_id: str, workdir: Path) -> dict[str, str]:
        return {
            **self.config.labels,
            LABEL_OWNER_PID: str(os.getpid()),
            LABEL_OWNER_HOST: socket.gethostname(),
            LABEL_SESSION: session_id,
            LABEL_WORKDIR: str(workdir),
            LABEL_SYNC: self.config.sync,
        }


def bind_user(workdir: Path) -> str | None:
    """``uid:gid`` bind-mode commands run as, so the files they make belong to the right person.

    The host user; when that is root, the workdir's owner (root running a
    notebook over someone's project should not hand them root-owned files,
    and with every capability dropped the container's root could not write
    into their directory anyway). ``None`` where there are no uids (Windows).
    """
    if not hasattr(os, "getuid"):
        return None
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    st = workdir.stat()
    return f"{st.st_uid}:{st.st_gid}"


def describe_state(state: Mapping[str, Any], memory: str | None = None, kill_signal: str | None = None) -> str:
    """Why a container with this ``State`` (from ``inspect``) is not running, in words.

    ``kill_signal``: the signal of a ``docker kill``/``stop``/``rm -f`` the
    daemon recorded for it (that, not an earlier OOM kill, ended it).
    """
    code = state.get("ExitCode")
    if state.get("Paused"):
        cause = "it is paused (`docker unpause` it, or open a new session)"
    elif kill_signal is not None:
        how = {"9": "SIGKILL", "15": "SIGTERM"}.get(kill_signal, f"signal {kill_signal}")
        cause = (
            f"it was killed from outside ({how}, exit code {code}: "
            "`docker kill`, `docker stop`, `docker rm -f`, or a daemon restart)"
        )
    elif state.get("OOMKilled"):
        limit = f", memory limit {memory}" if memory else ""
        cause = f"it ran out of memory (OOM-killed{limit}; exit code {code}): give it more with DockerConfig(memory=...)"
    elif code == _SIGKILL_EXIT:
        cause = "it was killed (SIGKILL, exit code 137: `docker kill`, `docker rm -f`, or a daemon restart)"
    elif code == 143:
        cause = "it was stopped (SIGTERM, exit code 143: `docker stop`)"
    elif state.get("Restarting"):
        cause = "it is restarting"
    else:
        cause = f"it exited with code {code}"
    if state.get("Error"):
        cause += f"; Docker says: {state['Error']}"
    return cause


def _raw(sock: Any) -> Any:
    """The socket under what ``exec_start(socket=True)`` returns (a ``SocketIO`` over a local engine)."""
    return getattr(sock, "_sock", sock)


def _no_timeout(sock: Any) -> None:
    """Let reads and writes on an exec's socket wait as long as the command (the client's timeout doesn't apply)."""
    for s in (sock, _raw(sock)):
        if hasattr(s, "settimeout"):
            s.settimeout(None)


def _send_and_shut(sock: Any, data: bytes) -> None:
    """Write ``data`` to an exec's socket, then shut its write side (the process sees EOF)."""
    raw = _raw(sock)
    try:
        raw.sendall(data)
    except OSError:
        pass  # the script exited without reading it all: its exit code tells
    finally:
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _collect_frames(sock: Any) -> tuple[bytes, bytes]:
    """Read an exec's multiplexed frames to EOF: ``(stdout, stderr)`` as raw bytes."""
    out: list[bytes] = []
    err: list[bytes] = []
    for stream, data in frames_iter(sock, tty=False):
        (err if stream == 2 else out).append(data)
    return b"".join(out), b"".join(err)


def _close_quietly(resource: Any) -> None:
    try:
        resource.close()
    except Exception:  # noqa: BLE001 - closing a stream of a dead container may fail any way
        pass


def _remove_container(api: Any, container_id: str) -> None:
    """Force-remove a container; one already gone (or going) is fine."""
    try:
        api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: removal already in progress
            raise
    except requests.exceptions.ConnectionError:
        warnings.warn(
            f"Could not remove container {container_id[:12]}: the Docker daemon is unreachable. "
            "Run `atp-notebook gc` once it is back.",
            stacklevel=3,
        )


# -- garbage collection ------------------------------------------------------------------------


@dataclass(frozen=True)
class Orphan:
    """A container this package started that nobody owns any more."""

    container_id: str
    name: str
    reason: str

    def line(self, removed: bool = True) -> str:
        verb = "removed" if removed else "would remove"
        return f"{verb} {self.name} ({self.container_id[:12]}): {self.reason}"


def find_orphans(
    client: Any, *, max_age_hours: float = 24.0, match_labels: Mapping[str, str] | None = None
) -> list[Orphan]:
    """Our containers (``atp-notebook.owner-pid`` label) whose owner is gone.

    Owner on this host: its process no longer exists. Owner on another host
    (its pid means nothing here): the container is older than ``max_age_hours``.
    ``match_labels`` narrows the search further. Containers without our label,
    or with a malformed one, are never touched.
    """
    filters = {"label": [LABEL_OWNER_PID, *(f"{k}={v}" for k, v in (match_labels or {}).items())]}
    here, now = socket.gethostname(), time.time()
    orphans = []
    for info in client.api.containers(all=True, filters=filters):
        reason = _orphan_reason(info.get("Labels") or {}, float(info.get("Created") or now), here, now, max_age_hours)
        if reason:
            name = (info.get("Names") or ["/?"])[0].lstrip("/")
            orphans.append(Orphan(info["Id"], name, reason))
    return orphans


def _orphan_reason(labels: Mapping[str, str], created: float, here: str, now: float, max_age_hours: float) -> str:
    """Why the container with these labels is an orphan, or ``""`` when it is not (or not ours)."""
    pid_text = labels.get(LABEL_OWNER_PID, "")
    if not pid_text.isdigit():
        return ""
    host = labels.get(LABEL_OWNER_HOST, "")
    if host == here:
        return "" if _pid_alive(int(pid_text)) else f"its owner process {pid_text} on {host} is gone"
    age_h = (now - created) / 3600
    if age_h > max_age_hours:
        return f"started from host {host or '?'} {age_h:.1f} h ago (older than {max_age_hours:g} h)"
    return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def collect_garbage(
    client: Any = None,
    *,
    dry_run: bool = False,
    max_age_hours: float = 24.0,
    match_labels: Mapping[str, str] | None = None,
) -> list[Orphan]:
    """Remove the orphans :func:`find_orphans` finds (only list them with ``dry_run``)."""
    client = client or connect_docker()
    orphans = find_orphans(client, max_age_hours=max_age_hours, match_labels=match_labels)
    if not dry_run:
        for orphan in orphans:
            _remove_container(client.api, orphan.container_id)
    return orphans
