"""Modal backend benchmark: API round trips per operation, counted on the fake SDK.

Run by hand (``python benchmarks/bench_modal.py`` or ``make bench``). No cloud
is needed: the backend runs unchanged against ``tests/fake_modal.py``, whose
sandboxes are local processes and which counts every SDK call. A "round
trip" is one ``Sandbox.exec`` (a command started, its output read, its exit
code collected); the "API calls" column counts every call that is a network
request in the real SDK (exec, stream reads, stdin drains, wait, create...).
The workdir holds 2,000 files. Prints a table; exits non-zero when a target
is missed.

Targets: open = 1 sandbox creation; exec = 1 round trip; a sync with nothing
changed = at most 1 round trip per direction; a sync of one changed file =
2 round trips (the scan, then ONE archive) per direction; close = 1 round
trip (the final sync out) plus terminate and detach.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atp_notebook.images import DEFAULT_IMAGE  # noqa: E402
from tests.fake_modal import FakeModal  # noqa: E402

FILES = 2000


def measure(fake: FakeModal, op: Callable[[], object]) -> tuple[int, int, int, float]:
    """(round trips, API calls, sandboxes created, seconds) of one operation."""
    fake.reset_counts()
    start = time.perf_counter()
    op()
    seconds = time.perf_counter() - start
    return fake.calls["Sandbox.exec"], fake.round_trips(), fake.calls["Sandbox.create"], seconds


def main() -> int:
    os.environ.setdefault("MODAL_TOKEN_ID", "ak-bench-fake")
    os.environ.setdefault("MODAL_TOKEN_SECRET", "as-bench-fake")
    with tempfile.TemporaryDirectory() as tmp:
        host, sandbox_dir = Path(tmp, "host"), Path(tmp, "sandbox")
        for i in range(FILES):
            sub = host / f"d{i // 100}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"F{i}.lean").write_text(f"theorem t{i} : True := trivial\n")
        fake = FakeModal(fresh_dirs=[sandbox_dir])
        sys.modules["modal"] = fake
        from atp_notebook.backends.modal import ModalBackend, ModalConfig

        image = replace(DEFAULT_IMAGE, tag="bench/lean:fake", workdir=str(sandbox_dir), baked_lake="")
        backend = ModalBackend(ModalConfig(image=image))
        box: dict[str, object] = {}
        rows = []

        def row(name: str, op: Callable[[], object], target: Callable[[int, int], bool], text: str) -> None:
            trips, calls, created, seconds = measure(fake, op)
            rows.append((name, trips, calls, created, seconds, target(trips, created), text))

        try:
            row("open (syncs 2,000 files in)", lambda: box.setdefault("s", backend.session(host)),
                lambda t, c: c == 1 and t <= 2, "1 creation, <= 2 round trips")
            session = box["s"]
            row("exec", lambda: session.exec("true").wait(), lambda t, c: t == 1, "1 round trip")
            row("sync in, nothing changed", session.sync_in, lambda t, c: t <= 1, "<= 1 round trip")
            row("sync out, nothing changed", session.sync_out, lambda t, c: t <= 1, "<= 1 round trip")
            (host / "d7" / "F777.lean").write_text("theorem changed : True := trivial\n")
            row("sync in, 1 file changed", session.sync_in, lambda t, c: t <= 2, "<= 2 (1 archive)")
            session.exec("echo '-- edited' >> d3/F333.lean").wait()
            row("sync out, 1 file changed", session.sync_out, lambda t, c: t <= 2, "<= 2 (1 archive)")
            row("close (final sync out)", session.close, lambda t, c: t <= 1, "<= 1 round trip")
            closing = fake.calls["Sandbox.terminate"], fake.calls["Sandbox.detach"]
        finally:
            fake.shutdown()
            sys.modules.pop("modal", None)

    print(f"{'':4}  {'operation':<30} {'round trips':>11} {'API calls':>9} {'created':>7} {'time':>8}  target")
    for name, trips, calls, created, seconds, ok, text in rows:
        print(f"{'PASS' if ok else 'MISS'}  {name:<30} {trips:>11} {calls:>9} {created:>7} {seconds:>7.2f}s  {text}")
    closed_ok = closing == (1, 1)
    print(f"{'PASS' if closed_ok else 'MISS'}  close terminated {closing[0]}x and detached {closing[1]}x (target 1, 1)")
    return 0 if all(r[5] for r in rows) and closed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
