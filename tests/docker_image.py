"""The Docker test image, built from nothing: a static busybox plus the stand-in toolchain.

No registry is reachable where the tests run, so nothing can be pulled. The
image is ``FROM scratch`` with Debian's ``busybox-static`` binary (package
``busybox-static``) installed as ``/bin/busybox``, its applets linked into
``/bin`` at build time, a non-root-friendly layout (``/tmp`` and
``/workspace`` writable by any uid) and ``tests/standin`` at ``/opt/standin``
(its ``bin/`` first on PATH, so ``lake env lean`` is the stand-in).

The tag carries a hash of everything that goes in, so an unchanged image is
never rebuilt. Not a conftest: the Docker tests and the Docker benchmark
import it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "standin"
IMAGE_REPO = "atp-notebook-test"
WORKDIR = "/workspace"
#: A directory the image carries, standing in for a baked Mathlib ``.lake``.
BAKED_LAKE = "/opt/fake-mathlib/.lake"

DOCKERFILE = f"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/sh", "-c", "mkdir -p /tmp {WORKDIR} /root /etc {BAKED_LAKE} && chmod 1777 /tmp && chmod 0777 {WORKDIR} \
&& echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group \
&& echo baked > {BAKED_LAKE}/MARKER"]
COPY standin /opt/standin
ENV PATH=/opt/standin/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
LABEL atp-notebook.test-image=1
WORKDIR {WORKDIR}
"""

APT_HINT = "install Debian's static busybox: apt-get install -y busybox-static"


class ImageUnavailable(Exception):
    """The test image cannot be built here (the message says why and what to install)."""


def find_static_busybox() -> Path:
    """The host's statically linked busybox (``busybox-static``), or :class:`ImageUnavailable`."""
    for candidate in (os.environ.get("ATP_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox", shutil.which("busybox")):
        if candidate and Path(candidate).is_file():
            path = Path(candidate).resolve()
            if _is_static_elf(path):
                return path
            raise ImageUnavailable(f"{path} is dynamically linked and cannot run FROM scratch: {APT_HINT}")
    raise ImageUnavailable(f"no busybox binary found: {APT_HINT}")


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP header (no dynamic loader needed)."""
    with path.open("rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF":
            return False
        is64, little = head[4] == 2, head[5] == 1
        end = "<" if little else ">"
        if is64:
            phoff, = struct.unpack_from(end + "Q", head, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
        else:
            phoff, = struct.unpack_from(end + "I", head, 0x1C)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    pt_interp = 3
    return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def _context_files(busybox: Path) -> list[tuple[str, Path | bytes]]:
    """``(name in the build context, source path or content)``, in a stable order."""
    files: list[tuple[str, Path | bytes]] = [("Dockerfile", DOCKERFILE.encode()), ("busybox", busybox)]
    for path in sorted(STANDIN.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files.append((f"standin/{path.relative_to(STANDIN).as_posix()}", path))
    return files


def image_tag(busybox: Path | None = None) -> str:
    """``atp-notebook-test:<hash of the build context>``."""
    digest = hashlib.sha256()
    for name, source in _context_files(busybox or find_static_busybox()):
        data = source if isinstance(source, bytes) else source.read_bytes()
        mode = 0o644 if isinstance(source, bytes) else source.stat().st_mode & 0o777
        digest.update(f"{name}\0{mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    return f"{IMAGE_REPO}:{digest.hexdigest()[:16]}"


def ensure_test_image(client: Any) -> str:
    """Build the test image unless a build of the same content exists; returns its tag."""
    import docker.errors

    busybox = find_static_busybox()
    tag = image_tag(busybox)
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="atp-test-image-") as tmp:
        context = Path(tmp)
        for name, source in _context_files(busybox):
            target = context / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copy2(source, target)
        try:
            client.images.build(path=str(context), tag=tag, rm=True, forcerm=True, pull=False)
        except docker.errors.BuildError as exc:
            log = "".join(str(step.get("stream", step.get("error", ""))) for step in exc.build_log)
            raise ImageUnavailable(f"building {tag} failed: {exc}\n{log}") from exc
    _drop_stale_tags(client, tag)
    return tag


def _drop_stale_tags(client: Any, keep: str) -> None:
    """Remove older builds of the test image (ones still in use stay)."""
    import docker.errors

    for image in client.images.list(name=IMAGE_REPO):
        for tag in image.tags:
            if tag != keep and tag.startswith(IMAGE_REPO + ":"):
                try:
                    client.images.remove(tag, noprune=False)
                except docker.errors.APIError:
                    pass
