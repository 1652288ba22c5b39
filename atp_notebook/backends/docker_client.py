"""Connecting to the Docker daemon, with one clear error when it isn't there."""

from __future__ import annotations

from typing import Any

from atp_notebook.backends.base import BackendUnavailableError

__all__ = ["connect_docker"]


def connect_docker(timeout: float = 60, base_url: str | None = None) -> Any:
    """A ``docker.DockerClient`` that answered a ping, or :class:`BackendUnavailableError`.

    ``base_url`` (``unix:///var/run/docker.sock``, ``tcp://host:2376``,
    ``ssh://user@host``) picks the engine; without it the environment decides
    (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``), as for the
    ``docker`` CLI.
    """
    try:
        import docker
    except ImportError as exc:
        raise BackendUnavailableError("The docker backend needs the SDK: pip install 'atp-notebook[docker]'") from exc
    where = f" at {base_url}" if base_url else ""
    try:
        if base_url:
            client = docker.DockerClient(base_url=base_url, timeout=timeout)
        else:
            client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure here means "no daemon"
        raise BackendUnavailableError(
            f"Cannot reach the Docker daemon{where}: start Docker (e.g. `sudo systemctl start docker` "
            "or Docker Desktop), or point DOCKER_HOST at a running engine. "
            f"({exc.__class__.__name__}: {_short(exc)})"
        ) from exc
    return client


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
