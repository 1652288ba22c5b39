"""Notebook-cell benchmarks: what a ``%%lean_sandbox`` cell costs on top of the command.

Run by hand (``python benchmarks/bench_cells.py`` or ``make bench``) with the
stand-in toolchain (put first on PATH here). Prints ratios measured side by
side in one run; exits non-zero when a target is missed.

* cell overhead: a ``%%lean_sandbox`` check of a small fixture (one error) vs
  IPython's own ``%%bash`` running ``lake env lean --json`` on the same file,
  in the same shell, interleaved, medians over 60 runs: target ratio <= 1.5.
* output flood: a check printing 100,000 messages (``STANDIN_FLOOD``) shown
  as in a Jupyter kernel (display + throttled updates) vs the same command
  with its output sent to /dev/null: target wall-time ratio <= 2, and at
  most 200 display messages. For context it also prints the backend's own
  cost of carrying that output (``session.exec(...).wait()``), which the cell
  cannot go below.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "standin"
RUNS = 60
FLOOD_RUNS = 11
FLOOD = 100_000


def shell_with_extension(workdir: Path):
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.display_pub = CapturingDisplayPublisher()
    shell.run_line_magic("load_ext", "atp_notebook")
    shell.run_line_magic("lean_sandbox", f"use local --workdir {workdir}")
    # cold checks, as %%bash runs them (warm checks: benchmarks/bench_repl.py)
    shell.run_line_magic("config", "LeanSandbox.engine = 'lean'")
    return shell


def run_quietly(shell, source: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = shell.run_cell(source)
    if result.error_in_exec is not None:
        raise RuntimeError(f"cell failed: {result.error_in_exec!r}")


def cell_overhead(shell, workdir: Path) -> tuple[float, float]:
    source = (STANDIN / "fixtures" / "unknown_ident.lean").read_text()
    ours_cell = f"%%lean_sandbox --no-raise\n{source}"
    bash_cell = f"%%bash --no-raise-error\ncd {workdir} && lake env lean --json Scratch.lean\n"
    run_quietly(shell, ours_cell)  # warm up: session, project scaffold, file
    run_quietly(shell, bash_cell)
    ours, base = [], []
    for _ in range(RUNS):
        t = time.perf_counter()
        run_quietly(shell, bash_cell)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_quietly(shell, ours_cell)
        ours.append(time.perf_counter() - t)
    return statistics.median(ours), statistics.median(base)


def flood(shell, workdir: Path) -> tuple[float, float, float, int]:
    from atp_notebook.backends.local import LocalBackend

    source = (STANDIN / "fixtures" / "ok_add.lean").read_text()
    shell.run_line_magic("config", "LeanSandbox.view = 'rich'")
    os.environ["STANDIN_FLOOD"] = str(FLOOD)
    command = "lake env lean --json Scratch.lean"
    ours, devnull, carried, messages = [], [], [], 0
    try:
        run_quietly(shell, f"%%lean_sandbox\n{source}")  # writes the file the other two read
        with LocalBackend().session(workdir) as session:
            for _ in range(FLOOD_RUNS):
                t = time.perf_counter()
                subprocess.run(command, shell=True, cwd=workdir, stdout=subprocess.DEVNULL, check=True)
                devnull.append(time.perf_counter() - t)
                t = time.perf_counter()
                session.exec(command).wait()
                carried.append(time.perf_counter() - t)
                before = len(shell.display_pub.outputs)
                t = time.perf_counter()
                run_quietly(shell, f"%%lean_sandbox\n{source}")
                ours.append(time.perf_counter() - t)
                messages = max(messages, len(shell.display_pub.outputs) - before)
    finally:
        del os.environ["STANDIN_FLOOD"]
        shell.run_line_magic("config", "LeanSandbox.view = 'auto'")
    return statistics.median(ours), statistics.median(devnull), statistics.median(carried), messages


def main() -> int:
    os.environ["PATH"] = f"{STANDIN / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "lean_workdir"
        shell = shell_with_extension(workdir)
        ours, base = cell_overhead(shell, workdir)
        ratio = ours / base
        f_ours, f_null, f_carried, messages = flood(shell, workdir)
        f_ratio = f_ours / f_null
        shell.run_line_magic("lean_sandbox", "close")
    rows = [
        ("cell overhead (median of %d)" % RUNS,
         f"%%lean_sandbox {ours * 1e3:.1f} ms vs %%bash {base * 1e3:.1f} ms", f"ratio {ratio:.2f}", ratio <= 1.5,
         "<= 1.5"),
        (f"output flood, {FLOOD:,} lines (median of {FLOOD_RUNS})",
         f"cell {f_ours:.2f} s vs >/dev/null {f_null:.2f} s", f"ratio {f_ratio:.2f}", f_ratio <= 2.0, "<= 2"),
        ("  of which the backend carrying it", f"exec().wait() {f_carried:.2f} s",
         f"ratio {f_carried / f_null:.2f}", True, "(context)"),
        ("display messages during the flood", f"{messages}", "", messages <= 200, "<= 200"),
    ]
    for name, measured, ratio_text, ok, target in rows:
        mark = "ok  " if ok else "MISS"
        print(f"[{mark}] {name:<42} {measured:<44} {ratio_text:<12} target {target}")
    return 0 if all(ok for *_, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
