"""``atp-notebook image build``: build the Lean + Mathlib sandbox image, showing its log.

The Dockerfile and the two scripts it runs ship inside the package
(``atp_notebook/data/image/``), so a pip-installed ``atp-notebook`` can build
the image that :data:`~atp_notebook.images.DEFAULT_IMAGE` names. The build
goes through the docker SDK's low-level API, which streams the daemon's log
as JSON chunks; each line is written out as soon as it is complete.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from atp_notebook.backends.base import AtpError
from atp_notebook.images import DEFAULT_IMAGE, Image

__all__ = ["ImageBuildError", "build_args_for", "build_image", "default_context"]

#: How many of the last log lines an :class:`ImageBuildError` quotes.
TAIL_LINES = 25

# The classic builder colours a step's stderr with ANSI escapes; notebooks and logs want plain text.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The builder's own bookkeeping lines: echoed, but not quoted as the failing step's output.
_CHATTER = re.compile(r"^ ---> |^Removing intermediate container |^Successfully (built|tagged) ")


class ImageBuildError(AtpError):
    """``docker build`` failed; the text names the step and quotes its last lines."""

    def __init__(self, message: str, *, step: str = "", tail: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.step = step
        self.tail = list(tail)


def default_context() -> Path:
    """The build context shipped with the package: the Dockerfile and its scripts."""
    path = Path(str(resources.files("atp_notebook").joinpath("data", "image")))
    if not (path / "Dockerfile").is_file():
        raise ImageBuildError(
            f"the image's Dockerfile is missing from the installed package (looked in {path}); reinstall atp-notebook"
        )
    return path


def build_args_for(image: Image = DEFAULT_IMAGE) -> dict[str, str]:
    """The Dockerfile's build args that make it produce ``image``'s toolchain, Mathlib and REPL."""
    args = {"LEAN_TOOLCHAIN": image.toolchain, "MATHLIB_REV": image.mathlib_rev}
    if image.repl_rev:
        args["REPL_REV"] = image.repl_rev
    return args


def build_image(
    tag: str = DEFAULT_IMAGE.tag,
    *,
    context: str | Path | None = None,
    dockerfile: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    nocache: bool = False,
    progress: bool = True,
    out: TextIO | None = None,
) -> str:
    """Build ``tag`` from ``context`` and return the new image's id (``sha256:...``).

    ``context`` defaults to :func:`default_context` and ``build_args`` to
    :func:`build_args_for` of :data:`DEFAULT_IMAGE` (ignored for another
    context, where they would name args its Dockerfile may not declare). With
    ``progress`` each log line is written to ``out`` (default stdout) as it
    arrives. Raises :class:`~atp_notebook.backends.base.BackendUnavailableError`
    when no Docker daemon answers, and :class:`ImageBuildError` naming the
    failing step, with its last lines, when the build fails.
    """
    from atp_notebook.backends.docker_client import connect_docker

    if context is None:
        context = default_context()
        if build_args is None:
            build_args = build_args_for(DEFAULT_IMAGE)
    context = Path(context)
    if not (context / dockerfile).is_file():
        raise ImageBuildError(f"no {dockerfile} in the build context {context}")
    stream = out if out is not None else sys.stdout
    client = connect_docker()
    try:
        chunks = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=dict(build_args or {}),
            nocache=nocache,
            rm=True,
            forcerm=True,  # no intermediate container is left behind, even on failure
            decode=True,
            timeout=None,  # a step may print nothing for minutes (importing Mathlib)
        )
        image_id = _follow(chunks, tag=tag, out=stream if progress else None)
        if not image_id.startswith("sha256:"):  # an old daemon's "Successfully built <short id>"
            image_id = str(client.images.get(image_id).id)
        return image_id
    finally:
        client.close()


def _follow(chunks: Iterable[Mapping[str, Any]], *, tag: str, out: TextIO | None) -> str:
    """Print the build log line by line; return the image id or raise :class:`ImageBuildError`."""
    import docker.errors

    log = _LineLog(out)
    image_id = ""
    try:
        for chunk in chunks:
            if "stream" in chunk:
                log.feed(str(chunk["stream"]))
            elif "status" in chunk:
                # Base-image pulls: keep the status lines, skip per-layer progress bars.
                if not chunk.get("progressDetail") and not chunk.get("progress"):
                    layer = f"{chunk['id']}: " if chunk.get("id") else ""
                    log.feed(f"{layer}{chunk['status']}\n")
            if isinstance(chunk.get("aux"), Mapping) and chunk["aux"].get("ID"):
                image_id = str(chunk["aux"]["ID"])
            if "error" in chunk or "errorDetail" in chunk:
                log.flush()
                detail = chunk.get("errorDetail") or {}
                message = str(chunk.get("error") or detail.get("message") or "unknown error").strip()
                raise _failure(message, log)
    except docker.errors.APIError as exc:
        log.flush()
        raise _failure(str(exc.explanation or exc), log) from exc
    log.flush()
    if not image_id:
        image_id = log.built_id
    if not image_id:
        raise _failure(f"the daemon reported no image id for {tag}", log)
    return image_id


def _failure(message: str, log: _LineLog) -> ImageBuildError:
    step = log.step
    tail = list(log.tail)
    where = f" at {step}" if step else ""
    text = [f"docker build failed{where}: {message}"]
    if tail:
        text.append("last lines of the build log:")
        text.extend(f"  {line}" for line in tail)
    text.append(_advice(step, message))
    return ImageBuildError("\n".join(text), step=step, tail=tail)


def _advice(step: str, message: str) -> str:
    instruction = step.split(":", 1)[-1].strip().split(" ", 1)[0].upper() if step else ""
    lowered = message.lower()
    if instruction == "FROM" or "pull access denied" in lowered or "registry" in lowered:
        return (
            "What to do: the base image could not be pulled; check that this machine "
            "reaches its registry (docker pull works), then build again."
        )
    if instruction == "RUN":
        return (
            "What to do: a command inside the image failed (its output is above). The Lean "
            "build needs network access to GitHub and Mathlib's cache: check it and build "
            "again; add --no-cache to redo every step."
        )
    if instruction in {"COPY", "ADD"}:
        return "What to do: a file the Dockerfile copies is missing from the build context."
    return "What to do: fix the cause above and build again (--no-cache redoes every step)."


class _LineLog:
    """Assembles streamed text into lines: echoes them, keeps the tail and the current step."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.partial = ""
        self.step = ""
        self.built_id = ""
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def feed(self, text: str) -> None:
        self.partial += text.replace("\r\n", "\n")
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self._line(line)

    def flush(self) -> None:
        if self.partial:
            line, self.partial = self.partial, ""
            self._line(line)

    def _line(self, line: str) -> None:
        line = _ANSI.sub("", line)
        if line.startswith("Step ") and " : " in line:
            self.step = line.strip()
            self.tail.clear()  # the tail quotes the failing step's own output
        elif line.startswith("Successfully built "):
            self.built_id = line.split()[-1]
        if not _CHATTER.match(line):
            self.tail.append(line)
        if self.out is not None:
            self.out.write(line + "\n")
            self.out.flush()
