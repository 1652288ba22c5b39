"""A Lean project scaffold that matches a sandbox :class:`~atp_notebook.images.Image`.

``lake env lean FILE`` needs a Lake workspace around ``FILE``. When a
notebook's workdir has none yet, :func:`ensure_project` writes the smallest one
that fits the session's image: ``lean-toolchain`` naming the image's
toolchain, ``lakefile.toml`` requiring Mathlib at the image's revision (so the
image's warm ``.lake`` cache is the one Lake expects), ``.gitignore`` and
``.atpignore`` keeping build products and run logs out of git and sync.
Existing files are never overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from atp_notebook.images import Image

__all__ = ["LAKEFILES", "MATHLIB_GIT", "Scaffold", "ensure_project", "has_project", "lakefile_toml", "scaffold"]

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

    def describe(self) -> str:
        """One sentence for people: what was created and what it pins."""
        pins = []
        if self.image.toolchain:
            pins.append(f"toolchain {self.image.toolchain}")
        if self.image.mathlib_rev:
            pins.append(f"Mathlib {self.image.mathlib_rev}")
        pinned = f" ({', '.join(pins)})" if pins else ""
        return (
            f"Created a Lean project in {self.workdir} for image {self.image.tag}{pinned}: "
            f"{', '.join(self.written)}."
        )


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
