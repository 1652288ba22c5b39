"""get_backend: names, options, and the errors a user meets."""

from __future__ import annotations

import pytest

from atp_notebook.backends import BACKEND_NAMES, get_backend
from atp_notebook.backends.local import LocalBackend
from atp_notebook.images import DEFAULT_IMAGE


def test_names():
    assert set(BACKEND_NAMES) == {"local", "docker", "modal", "auto"}


def test_local_with_options():
    backend = get_backend("local", timeout_s=5, image="my/lean:tag")
    assert isinstance(backend, LocalBackend)
    assert backend.config.timeout_s == 5
    assert backend.config.image.tag == "my/lean:tag"
    assert backend.config.image.toolchain == DEFAULT_IMAGE.toolchain


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="local, docker, modal, auto"):
        get_backend("podman")


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(TypeError, match="timeout_s"):
        get_backend("local", timeot_s=3)
