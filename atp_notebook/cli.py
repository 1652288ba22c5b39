"""The ``atp-notebook`` command: ``doctor``, ``check``, ``image build`` (and more subcommands as they land)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from atp_notebook import __version__
from atp_notebook.images import DEFAULT_IMAGE


def _doctor(args: argparse.Namespace) -> int:
    from atp_notebook.doctor import report

    text, usable = report(args.image)
    print(text)
    return 0 if usable else 1


def _image_build(args: argparse.Namespace) -> int:
    from atp_notebook.backends.base import AtpError
    from atp_notebook.image_build import build_image

    try:
        image_id = build_image(args.tag, nocache=args.no_cache, progress=args.progress)
    except AtpError as exc:
        print(f"atp-notebook image build: {exc}", file=sys.stderr)
        return 1
    print(f"built {args.tag} ({image_id})")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from atp_notebook.backends.base import AtpError

    try:
        from atp_notebook.backends.docker import collect_garbage
        orphans = collect_garbage(dry_run=args.dry_run, max_age_hours=args.max_age_hours)
    except ImportError:
        print("atp-notebook gc: the docker SDK is not installed: pip install 'atp-notebook[docker]'", file=sys.stderr)
        return 1
    except AtpError as exc:
        print(f"atp-notebook gc: {exc}", file=sys.stderr)
        return 1
    for orphan in orphans:
        print(orphan.line(removed=not args.dry_run))
    if not orphans:
        print("no orphaned atp-notebook containers")
    return 0


def _check(args: argparse.Namespace) -> int:
    from atp_notebook.check import cli_check

    return cli_check(
        args.file, backend=args.backend, workdir=args.workdir, image=args.image,
        timeout_s=args.timeout, command=args.command_template,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atp-notebook", description="Lean 4 + Mathlib sandboxes for Jupyter notebooks."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="say which backends can run here, and what to do for the others")
    doctor.add_argument("--image", default=DEFAULT_IMAGE.tag, help="image tag to look for (default: %(default)s)")
    doctor.set_defaults(func=_doctor)

    check = sub.add_parser(
        "check",
        help="check a Lean file in a sandbox, as a %%%%lean_sandbox cell does (exit 0: no errors)",
        description=(
            "Check FILE with `lake env lean --json` in a sandbox session, streaming Lean's messages as "
            "they arrive. The workdir is the nearest folder above FILE holding a lakefile (else FILE's "
            "folder, where a project matching the image is scaffolded). Exit 0 when the check passes "
            "(warnings and sorry allowed), 1 when it fails, 130 when interrupted."
        ),
    )
    check.add_argument("file", metavar="FILE", help="the .lean file to check")
    check.add_argument("--backend", default="auto", choices=("auto", "local", "docker", "modal"),
                       help="where to run (default: %(default)s)")
    check.add_argument("--workdir", help="project folder holding FILE (default: found from FILE)")
    check.add_argument("--image", default="", help="sandbox image tag (default: the package's image)")
    check.add_argument("--timeout", type=float, default=1800.0, help="seconds before the check is killed (default: %(default)s)")
    check.add_argument("--command", dest="command_template", default=None,
                       help="check command; {file} is replaced by FILE's path in the workdir "
                            "(default: lake env lean --json {file})")
    check.set_defaults(func=_check)

    image = sub.add_parser("image", help="the Lean + Mathlib sandbox image")
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    build = image_sub.add_parser(
        "build",
        help="build the image from the Dockerfile shipped with atp-notebook (needs network)",
        description=(
            f"Build the Lean + Mathlib image ({DEFAULT_IMAGE.toolchain}, Mathlib {DEFAULT_IMAGE.mathlib_rev}) "
            "with the local Docker engine. Downloads the toolchain and Mathlib's cache: several GB."
        ),
    )
    build.add_argument("--tag", default=DEFAULT_IMAGE.tag, help="tag for the image (default: %(default)s)")
    build.add_argument("--no-cache", action="store_true", help="rebuild every step instead of reusing cached layers")
    build.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream the build log as it runs (default); --no-progress prints only the result",
    )
    build.set_defaults(func=_image_build)
    gc = sub.add_parser(
        "gc",
        help="remove Docker containers of sessions whose owner process is gone",
        description=(
            "Remove containers this package started (label atp-notebook.owner-pid) whose owner process "
            "no longer runs on this host, or, when started from another host, that are older than "
            "--max-age-hours. Other containers are never touched."
        ),
    )
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument(
        "--max-age-hours", type=float, default=24.0,
        help="age after which a container started from another host is removed (default: %(default)s)",
    )
    gc.set_defaults(func=_gc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
