"""Check Lean 4 + Mathlib proofs from Jupyter cells inside a persistent sandbox.

``%load_ext atp_notebook`` registers the ``%%lean_sandbox`` cell magic and the
``%lean_sandbox`` line magic.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:  # noqa: ANN001 - IPython's hook signature
    """Register the magics (called by ``%load_ext atp_notebook``)."""
    from atp_notebook.magics import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:  # noqa: ANN001
    """Close the kernel's sandbox session (called by ``%unload_ext``)."""
    from atp_notebook.magics import unload

    unload(ipython)
