"""Compute backends and the registry that builds them by name.

``get_backend("local" | "docker" | "modal" | "auto", **config)`` returns a
ready :class:`~atp_notebook.backends.base.ComputeBackend`. Adding a backend is
one module plus one :data:`REGISTRY` line.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from atp_notebook.backends.base import BackendUnavailableError, ComputeBackend
from atp_notebook.images import DEFAULT_IMAGE, Image

__all__ = ["BACKEND_NAMES", "REGISTRY", "BackendSpec", "get_backend", "resolve_auto"]


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and what it needs."""

    module: str
    backend: str
    config: str
    extra: str = ""  # the pip extra that installs its SDK
    sdk: str = ""  # the SDK's import name


REGISTRY: dict[str, BackendSpec] = {
    "local": BackendSpec("atp_notebook.backends.local", "LocalBackend", "LocalConfig"),
    "docker": BackendSpec("atp_notebook.backends.docker", "DockerBackend", "DockerConfig", "docker", "docker"),
    "modal": BackendSpec("atp_notebook.backends.modal", "ModalBackend", "ModalConfig", "modal", "modal"),
}
BACKEND_NAMES = (*REGISTRY, "auto")


def load(name: str) -> tuple[type[ComputeBackend], type]:
    """Import a backend's classes, or say which ``pip install`` brings its SDK."""
    spec = REGISTRY[name]
    if spec.sdk:
        try:
            importlib.import_module(spec.sdk)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"The {name} backend needs the `{spec.sdk}` package: "
                f"pip install 'atp-notebook[{spec.extra}]'"
            ) from exc
    module = importlib.import_module(spec.module)
    return getattr(module, spec.backend), getattr(module, spec.config)


def get_backend(name: str = "auto", **config: Any) -> ComputeBackend:
    """Build the backend called ``name`` with ``config`` as its config's fields.

    ``image`` may be an :class:`~atp_notebook.images.Image` or just a tag (the
    default image's toolchain and layout are kept). ``auto`` picks the first
    backend that can run here (see :func:`resolve_auto`).
    """
    if name == "auto":
        name = resolve_auto(config.get("image"))
    if name not in REGISTRY:
        raise ValueError(f"Unknown backend {name!r}; choose one of: {', '.join(BACKEND_NAMES)}.")
    backend_cls, config_cls = load(name)
    if isinstance(config.get("image"), str):
        config["image"] = dataclasses.replace(DEFAULT_IMAGE, tag=config["image"])
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(
            f"Unknown option(s) for the {name} backend: {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(known))}."
        )
    return backend_cls(config_cls(**config))


def resolve_auto(image: Image | str | None = None) -> str:
    """The backend ``auto`` means here: Docker if it can run the image, else local, else Modal.

    Docker comes first because it isolates the (untrusted) code a Lean file
    can run; the local backend is used when ``lake`` is on PATH.
    """
    from atp_notebook import doctor

    tag = image.tag if isinstance(image, Image) else image or DEFAULT_IMAGE.tag
    for name, check in (("docker", lambda: doctor.check_docker(tag)), ("local", doctor.check_local),
                        ("modal", doctor.check_modal)):
        if check().ok:
            return name
    raise BackendUnavailableError(
        "No backend can run here. Run `atp-notebook doctor` to see what each one needs."
    )

