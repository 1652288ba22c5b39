"""The ``atp-notebook`` command: ``doctor`` (and more subcommands as they land)."""

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atp-notebook", description="Lean 4 + Mathlib sandboxes for Jupyter notebooks."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="say which backends can run here, and what to do for the others")
    doctor.add_argument("--image", default=DEFAULT_IMAGE.tag, help="image tag to look for (default: %(default)s)")
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
