"""A Lean project scaffold that matches a sandbox :class:`~atp_notebook.images.Image`.

``lake env lean FILE`` needs a Lake workspace around ``FILE``. When a
notebook's workdir has none yet, :func:`ensure_project` writes the smallest one
that fits the session's image: ``lean-toolchain`` naming the image's
toolchain, ``lakefile.toml`` requiring Mathlib at the image's revision (so the
image's warm ``.lake`` cache is the one Lake expects), ``.gitignore`` and
``.atpignore`` keeping build products and run logs out of git and sync.
Existing files are never overwritten.

When the sandbox has a warm Mathlib project (the image's ``baked_lake``, or
``ATP_BAKED_LAKE`` on a host), :func:`prepare` also copies that project's
``lake-manifest.json`` into a freshly scaffolded workdir, inside the sandbox:
with it, Lake finds every package already checked out under the linked
``.lake`` and fetches nothing.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from atp_notebook.images import Image

__all__ = [
    "LAKEFILES",
    "MATHLIB_GIT",
    "Scaffold",
    "adopt_manifest_command",
    "ensure_project",
    "has_project",
    "lakefile_toml",
    "prepare",
    "scaffold",
]

#: Files whose presence makes a folder a Lake workspace.
LAKEFILES = ("lakefile.toml", "lakefile.lean")
MATHLIB_GIT = "https://github.com/leanprover-community/mathlib4.git"

_IGNORED = (".lake/", ".atp/", "*.olean", "*.ilean", ".ipynb_checkpoints/")


@dataclass(frozen=True)
class Scaffold:
    """What :func:`scaffold` wrote (paths relative to the workdir) and for which image."""

    workdir: Path
    written: tuple[str, ...]
    image: Image
    #: True when the warm cache's ``lake-manifest.json`` was copied in (see :func:`prepare`).
    warm: bool = False

    def describe(self) -> str:
        """One sentence for people: what was created and what it pins."""
        pins = []
        if self.image.toolchain:
            pins.append(f"toolchain {self.image.toolchain}")
        if self.image.mathlib_rev:
            pins.append(f"Mathlib {self.image.mathlib_rev}")
        pinned = f" ({', '.join(pins)})" if pins else ""
        text = (
            f"Created a Lean project in {self.workdir} for image {self.image.tag}{pinned}: "
            f"{', '.join(self.written)}."
        )
        if self.warm:
            text += " It uses the sandbox's warm Mathlib cache (its lake-manifest.json was copied in)."
        return text


def has_project(workdir: Path) -> bool:
    """Whether ``workdir`` already holds a Lake workspace (a lakefile)."""
    return any((Path(workdir) / name).is_file() for name in LAKEFILES)


def package_name(workdir: Path) -> str:
    """A Lake package name derived from the folder name (letters, digits, ``_``)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", Path(workdir).name).strip("_") or "workdir"
    return name if not name[0].isdigit() else f"p_{name}"


def lakefile_toml(name: str, image: Image) -> str:
    """The text of a ``lakefile.toml`` requiring Mathlib at ``image.mathlib_rev``."""
    lines = [
        f'name = "{name}"',
        'version = "0.1.0"',
        "",
        "[[require]]",
        'name = "mathlib"',
        f'git = "{MATHLIB_GIT}"',
    ]
    if image.mathlib_rev:
        lines.append(f'rev = "{image.mathlib_rev}"')
    return "\n".join(lines) + "\n"


def scaffold(workdir: Path, image: Image) -> Scaffold:
    """Write the project files that are missing in ``workdir``; never overwrite one."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files = {
        "lakefile.toml": lakefile_toml(package_name(workdir), image),
        ".gitignore": "\n".join(_IGNORED) + "\n",
        ".atpignore": ".atp/\n",
    }
    if image.toolchain:
        files["lean-toolchain"] = image.toolchain + "\n"
    written = []
    for name, text in files.items():
        path = workdir / name
        if name != "lakefile.toml" and path.exists():
            continue
        if name == "lakefile.toml" and has_project(workdir):
            continue
        path.write_text(text, encoding="utf-8")
        written.append(name)
    return Scaffold(workdir, tuple(sorted(written)), image)


def ensure_project(workdir: Path, image: Image) -> Scaffold | None:
    """Scaffold ``workdir`` when it has no lakefile yet; ``None`` when it already had one."""
    if has_project(workdir):
        return None
    return scaffold(workdir, image)


_ADOPTED = "atp: adopted the warm lake-manifest.json"


def adopt_manifest_command(baked_lake: str) -> str | None:
    """A shell command copying the warm project's manifest into a workdir that has none."""
    if not baked_lake:
        return None
    manifest = shlex.quote(posixpath.join(posixpath.dirname(baked_lake.rstrip("/")), "lake-manifest.json"))
    return (
        f"if [ ! -e lake-manifest.json ] && [ -f {manifest} ]; then "
        f"cp {manifest} lake-manifest.json && echo {shlex.quote(_ADOPTED)}; fi"
    )


def prepare(workdir: Path, image: Image, kernel: Any) -> Scaffold | None:
    """:func:`ensure_project`, then adopt the sandbox's warm manifest into a new scaffold.

    ``kernel`` is the :class:`~atp_notebook.kernel.KernelSession` (anything
    with ``ensure()`` returning the session and ``run(command)`` syncing in,
    running and syncing out): the copy runs inside the sandbox, where the
    warm project lives.
    """
    created = ensure_project(workdir, image)
    if created is None:
        return None
    command = adopt_manifest_command(getattr(kernel.ensure(), "baked_lake", "") or image.baked_lake)
    if command is None or _ADOPTED not in kernel.run(command, timeout_s=60).stdout:
        return created
    return replace(created, written=tuple(sorted((*created.written, "lake-manifest.json"))), warm=True)
