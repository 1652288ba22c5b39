"""Local backend benchmarks: exec overhead, streaming latency.

Run by hand (``python benchmarks/bench_local.py`` or ``make bench``). Prints
ratios measured side by side in one run; exits non-zero when a target is missed.

* exec overhead: ``session.exec("true").wait()`` vs ``subprocess.run(["sh", "-c", "true"])``,
  medians over 300 runs, interleaved: target ratio <= 1.3.
* streaming latency: a child prints its clock, ``stream()`` notes when the line
  arrives: median <= 5 ms.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from atp_notebook.backends.local import LocalBackend

RUNS = 300


def exec_overhead(session) -> tuple[float, float]:
    ours, base = [], []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(["sh", "-c", "true"], check=True)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        session.exec("true").wait()
        ours.append(time.perf_counter() - t)
    return statistics.median(ours), statistics.median(base)


def streaming_latency(session) -> float:
    # The child prints CLOCK_REALTIME in ns; we compare with time.time_ns() on arrival.
    script = (
        "import time,sys\n"
        "for _ in range(200):\n"
        "    print(time.time_ns(), flush=True); time.sleep(0.005)\n"
    )
    cmd = f"{sys.executable} -c '{script}'"
    lags = []
    for line in session.exec(cmd).stream():
        lags.append((time.time_ns() - int(line)) / 1e6)
    return statistics.median(lags)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, LocalBackend().session(Path(tmp)) as session:
        ours, base = exec_overhead(session)
        ratio = ours / base
        lag = streaming_latency(session)
    rows = [
        ("exec overhead (median)", f"{ours * 1e3:.2f} ms vs sh {base * 1e3:.2f} ms", f"ratio {ratio:.2f}", ratio <= 1.3, "<= 1.3"),
        ("streaming latency (median)", f"{lag:.2f} ms", "", lag <= 5.0, "<= 5 ms"),
    ]
    for name, value, extra, ok, target in rows:
        print(f"{'PASS' if ok else 'MISS'}  {name:<28} {value:<32} {extra:<12} target {target}")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
