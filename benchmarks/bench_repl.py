"""Warm checks through the Lean REPL vs cold ``lake env lean --json`` checks.

Run by hand (``python benchmarks/bench_repl.py`` or ``make bench``) with the
stand-in toolchain and REPL (put first on PATH here). The stand-ins answer
instantly, so what this measures is the protocol's cost, not Lean's: how
many sandbox round trips and how many bytes one check of a Mathlib file
(``import Mathlib`` + a theorem) needs, warm vs cold.

* Modal (counted on ``tests/fake_modal.py``, where every SDK call that is a
  network request in the real SDK is counted; files are copied): a warm
  check must start no command (0 ``Sandbox.exec`` on its path: the request
  goes down the REPL's open stdin) and make fewer API calls than a cold one.
* local backend: requests per warm check = 1 and no import sent again (the
  header is elaborated once), bytes sent to Lean per warm check < the file's
  size (only the body travels; a cold check hands Lean the whole file and it
  loads every import again); wall time of the protocol, warm vs cold, median
  of 40 interleaved runs (reported; the stand-in's costs are not Lean's).

The number that matters with a real toolchain (a warm re-check of a small
Mathlib file at most 5% of its cold ``lake env lean`` time) needs Lean and
Mathlib: ``python benchmarks/bench_repl.py --real PROJECT`` measures it in a
Mathlib project (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PATH"] = f"{REPO / 'tests' / 'standin' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"

from atp_notebook.backends import get_backend  # noqa: E402
from atp_notebook.check import run_check, write_cell  # noqa: E402
from atp_notebook.images import DEFAULT_IMAGE  # noqa: E402
from atp_notebook.kernel import KernelSession  # noqa: E402
from atp_notebook.repl import split_header  # noqa: E402

FIXTURE = REPO / "tests" / "standin" / "fixtures" / "mathlib_error.lean"
RUNS = 40


def local_rows(tmp: Path) -> list[tuple[str, bool, str]]:
    text = FIXTURE.read_text(encoding="utf-8")
    log = tmp / "requests.log"
    os.environ["STANDIN_REPL_LOG"] = str(log)
    kernel = KernelSession("local", workdir=tmp / "local", say=lambda _: None,
                           backend_factory=lambda name, **c: get_backend("local", **c))
    try:
        write_cell(kernel.workdir, "Check.lean", text)
        checker = kernel.warm_checker()
        checker.check("Check.lean", text)  # loads the header
        log.write_text("")
        requests_before, sent_before = checker.requests, checker.bytes_sent
        warm_s, cold_s = [], []
        for _ in range(RUNS):
            t = time.perf_counter()
            warm = checker.check("Check.lean", text)
            warm_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            cold = run_check(kernel, "Check.lean")
            cold_s.append(time.perf_counter() - t)
        assert warm.warm and cold.engine == "lean"
        per_check = (checker.requests - requests_before) / RUNS
        bytes_per = (checker.bytes_sent - sent_before) / RUNS
        imports = sum(json.loads(line)["cmd"].startswith("import") for line in log.read_text().splitlines())
    finally:
        kernel.close()
        os.environ.pop("STANDIN_REPL_LOG", None)
    file_bytes = len(text.encode())
    body_bytes = len(split_header(text).body.encode())
    ratio = statistics.median(warm_s) / statistics.median(cold_s)
    return [
        (f"local: REPL requests per warm check = {per_check:g}", per_check == 1, "1"),
        (f"local: imports sent again over {RUNS} warm checks = {imports}", imports == 0, "0"),
        (f"local: bytes sent per warm check = {bytes_per:.0f} (body {body_bytes}, whole file {file_bytes}; "
         "cold, Lean reads the whole file and loads its imports again)",
         bytes_per <= body_bytes + 64, "<= the body + 64 bytes of JSON"),
        (f"local: protocol wall time warm / cold = {ratio:.2f} "
         f"({statistics.median(warm_s) * 1e3:.1f} ms vs {statistics.median(cold_s) * 1e3:.1f} ms)",
         True, "reported (stand-ins, not Lean)"),
    ]


def modal_rows(tmp: Path) -> list[tuple[str, bool, str]]:
    from tests.fake_modal import FakeModal

    os.environ.setdefault("MODAL_TOKEN_ID", "ak-bench-fake")
    os.environ.setdefault("MODAL_TOKEN_SECRET", "as-bench-fake")
    sandbox_dir = tmp / "sandbox"
    fake = FakeModal(fresh_dirs=[sandbox_dir])
    sys.modules["modal"] = fake
    image = replace(DEFAULT_IMAGE, tag="bench/lean:fake", workdir=str(sandbox_dir), baked_lake="")
    kernel = KernelSession("modal", workdir=tmp / "host", say=lambda _: None,
                           backend_factory=lambda name, **c: get_backend("modal", image=image))
    text = FIXTURE.read_text(encoding="utf-8")
    try:
        write_cell(kernel.workdir, "Check.lean", text)
        checker = kernel.warm_checker()
        checker.check("Check.lean", text)  # starts the REPL, loads the header
        run_check(kernel, "Check.lean")
        checker._ensure()  # let the first memory probe finish outside the measurement
        fake.reset_counts()
        cold = run_check(kernel, "Check.lean")
        cold_execs, cold_calls = fake.calls["Sandbox.exec"], fake.round_trips()
        fake.reset_counts()
        warm = checker.check("Check.lean", text)
        warm_execs, warm_calls = fake.calls["Sandbox.exec"], fake.round_trips()
        assert warm.warm and cold.engine == "lean" and warm.counts == cold.counts, (warm, cold)
    finally:
        kernel.close()
        fake.shutdown()
        sys.modules.pop("modal", None)
    sync_execs = 2  # one sync scan per direction (nothing changed), on both paths
    return [
        (f"modal: commands started by a warm check = {warm_execs - sync_execs} "
         f"(cold: {cold_execs - sync_execs}), besides the {sync_execs} sync scans",
         warm_execs - sync_execs == 0 and cold_execs - sync_execs == 1, "0 vs 1"),
        (f"modal: API calls per check, warm / cold = {warm_calls} / {cold_calls}", warm_calls < cold_calls,
         "warm < cold"),
    ]


REAL_FILE = """import Mathlib

theorem two_mul_pos' (n : ℕ) (h : 0 < n) : 0 < 2 * n := by
  positivity
"""


def real_rows(project: Path) -> list[tuple[str, bool, str]]:
    """With a real toolchain: a warm re-check vs a cold ``lake env lean`` of a small Mathlib file.

    ``project`` is a Lean project with Mathlib built (``lake exe cache get``)
    and ``repl`` on PATH, built at the same toolchain. Medians of 3 cold and
    10 warm checks.
    """
    kernel = KernelSession("local", workdir=project, say=print,
                           backend_factory=lambda name, **c: get_backend("local", **c))
    try:
        write_cell(kernel.workdir, "AtpBench.lean", REAL_FILE)
        cold_s = []
        for _ in range(3):
            cold = run_check(kernel, "AtpBench.lean")
            assert cold.ok, cold.headline()
            cold_s.append(cold.duration_s)
        checker = kernel.warm_checker()
        first = checker.check("AtpBench.lean", REAL_FILE)
        assert first.ok, first.headline()
        warm_s = []
        for _ in range(10):
            warm = checker.check("AtpBench.lean", REAL_FILE)
            assert warm.ok and warm.warm, warm.headline()
            warm_s.append(warm.duration_s)
    finally:
        kernel.close()
    ratio = statistics.median(warm_s) / statistics.median(cold_s)
    return [(f"real Lean: warm re-check / cold lake env lean = {ratio:.3f} ({statistics.median(warm_s):.2f} s vs "
             f"{statistics.median(cold_s):.2f} s; first REPL check {first.duration_s:.2f} s)", ratio <= 0.05, "<= 0.05")]


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--real":
        # the real toolchain must win over the stand-ins put first on PATH above
        os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]
        rows = real_rows(Path(sys.argv[2]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = local_rows(Path(tmp)) + modal_rows(Path(tmp))
    for text, ok, target in rows:
        print(f"{'PASS' if ok else 'MISS'}  {text}  (target: {target})")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
