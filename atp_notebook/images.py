"""The sandbox image: which Lean + Mathlib it carries and how it is laid out."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_IMAGE", "Image"]


@dataclass(frozen=True)
class Image:
    """A sandbox image carrying Lean + Mathlib, and its layout.

    Attributes
    ----------
    tag:
        Image reference (``repo:tag``) that Docker and Modal start sandboxes from.
    toolchain:
        The ``lean-toolchain`` line the image carries, e.g.
        ``leanprover/lean4:v4.26.0``. Projects scaffolded for this image use it.
    mathlib_rev:
        The Mathlib git revision (tag) the image's warm cache was built from.
    workdir:
        Absolute path of the working directory inside the sandbox.
    baked_lake:
        Absolute path of the image's pre-built ``.lake`` (Mathlib oleans);
        :func:`~atp_notebook.backends.base.wrap_command` links the workdir's
        ``.lake`` to it. Empty: no warm cache.
    repl_rev:
        The tag of the Lean REPL (github.com/leanprover-community/repl) the
        image carries as ``repl`` on PATH, built with :attr:`toolchain`. Its
        tags are named after Lean versions: ``v4.26.0`` goes with
        ``leanprover/lean4:v4.26.0``. Empty: no REPL pinned.
    """

    tag: str
    toolchain: str = ""
    mathlib_rev: str = ""
    workdir: str = "/workspace"
    baked_lake: str = ""
    repl_rev: str = ""

    @property
    def lean_version(self) -> str:
        """The bare Lean version (``v4.26.0``) of :attr:`toolchain`, or ``""``."""
        return self.toolchain.rpartition(":")[2]


#: Lean, Mathlib and the REPL are tagged in lockstep: Mathlib's and the REPL's
#: ``v4.26.0`` tags build with ``leanprover/lean4:v4.26.0``. The tag is what
#: ``atp-notebook image build`` (the project's Dockerfile) produces.
DEFAULT_IMAGE = Image(
    tag="atp-notebook/lean-mathlib:v4.26.0",
    toolchain="leanprover/lean4:v4.26.0",
    mathlib_rev="v4.26.0",
    workdir="/workspace",
    baked_lake="/opt/mathlib-cache/.lake",
    repl_rev="v4.26.0",
)
