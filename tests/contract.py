"""The backend contract, as tests every backend runs.

A backend's test module subclasses :class:`ContractTests` and provides the
``make_backend`` fixture: ``make_backend(**config) -> ComputeBackend``. Every
command here is POSIX sh using only busybox applets, so the same tests run
on the host and inside a minimal container.
"""

from __future__ import annotations

import threading
import time

import pytest

from atp_notebook.backends.base import (
    CANCEL_EXIT_CODE,
    TIMEOUT_EXIT_CODE,
    AtpError,
    ComputeBackend,
    SessionClosedError,
)

# Prints "alive" or "dead" for the pid stored in the file $1 (zombies count as dead).
PROC_STATE = (
    'p=$(cat "$1"); s=$(cut -d" " -f3 /proc/$p/stat 2>/dev/null); '
    'if [ -n "$s" ] && [ "$s" != Z ]; then echo alive; else echo dead; fi'
)


def proc_state(session, pidfile: str) -> str:
    return session.exec(f"set -- {pidfile}; {PROC_STATE}").wait().stdout.strip()


def take_lines(cursor, n: int, timeout_s: float = 15) -> list[str]:
    """The next ``n`` stdout lines from ``cursor`` (fewer if the command ends or time runs out)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(lines) < n and time.monotonic() < deadline:
        batch, done = cursor.take(deadline - time.monotonic())
        lines += batch
        if done:
            break
    return lines


#: Echoes each line of stdin back as "got <line>" until EOF.
ECHO_LOOP = 'while read -r l; do echo "got $l"; done; echo bye'


class ContractTests:
    """Behaviour every ComputeBackend must have (see DESIGN.md)."""

    @pytest.fixture
    def backend(self, make_backend) -> ComputeBackend:
        return make_backend()

    @pytest.fixture
    def session(self, backend, tmp_path):
        with backend.session(tmp_path) as session:
            yield session

    # -- streaming -----------------------------------------------------------
    def test_lines_stream_before_the_command_ends(self, session):
        with session.exec("echo first; sleep 1; echo second") as handle:
            lines = handle.stream()
            assert next(lines) == "first"
            first_at = handle.elapsed_s
            assert not handle.finished
            assert list(lines) == ["second"]
            result = handle.wait()
        assert result.exit_code == 0
        # the first line came out well before the end (the command sleeps 1 s between them)
        assert first_at < result.duration_s / 2

    def test_last_line_without_newline_is_yielded(self, session):
        handle = session.exec("printf 'a\\nb'")
        assert list(handle.stream()) == ["a", "b"]
        assert handle.wait().stdout == "a\nb"

    def test_crlf_line_ends_are_stripped_but_stdout_is_exact(self, session):
        handle = session.exec("printf 'a\\r\\nb\\rc\\n\\n'")
        assert list(handle.stream()) == ["a", "b\rc", ""]
        assert handle.wait().stdout == "a\r\nb\rc\n\n"

    def test_wait_returns_whole_output_after_partial_stream(self, session):
        handle = session.exec("for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2")
        assert next(handle.stream()) == "line1"
        result = handle.wait()
        assert result.stdout == "".join(f"line{i}\n" for i in range(1, 6))
        assert result.stderr == "oops\n"

    def test_ten_megabytes_of_mixed_output_do_not_deadlock(self, session):
        cmd = "(yes out | head -c 5000000) & (yes err | head -c 5000000 >&2); wait"
        result = session.exec(cmd, timeout_s=120).wait()
        assert result.exit_code == 0
        assert len(result.stdout) == 5_000_000 and set(result.stdout) == {"o", "u", "t", "\n"}
        assert len(result.stderr) == 5_000_000 and set(result.stderr) == {"e", "r", "\n"}

    def test_non_utf8_bytes_are_replaced_not_fatal(self, session):
        handle = session.exec("printf 'caf\\303\\251 \\377\\376 ok\\n'; printf '\\377' >&2")
        assert list(handle.stream()) == ["café \ufffd\ufffd ok"]
        assert handle.wait().stderr == "\ufffd"

    def test_exit_code_and_stderr_are_reported(self, session):
        result = session.exec("echo out; echo err >&2; exit 3").wait()
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")

    # -- timeout and cancel ------------------------------------------------------
    def test_timeout_kills_the_whole_tree(self, session):
        start = time.monotonic()
        result = session.exec("sleep 30 & echo $! > child.pid; echo started; wait", timeout_s=1).wait()
        assert result.exit_code == TIMEOUT_EXIT_CODE
        assert "timed out after 1 s" in result.stderr
        assert result.stdout == "started\n"
        assert time.monotonic() - start < 15
        time.sleep(0.3)
        assert proc_state(session, "child.pid") == "dead"

    def test_cancel_from_another_thread_keeps_the_session(self, session):
        handle = session.exec("sleep 30 & echo $! > child.pid; wait")
        threading.Timer(0.5, handle.cancel).start()
        result = handle.wait()
        assert result.exit_code == CANCEL_EXIT_CODE
        assert result.duration_s < 15
        time.sleep(0.3)
        assert proc_state(session, "child.pid") == "dead"
        assert session.exec("echo still here").wait().stdout == "still here\n"

    def test_cancel_after_finish_is_a_noop(self, session):
        with session.exec("echo done; exit 4") as handle:
            result = handle.wait()
        handle.cancel()
        assert handle.wait() == result
        assert result.exit_code == 4

    def test_timeout_zero_means_no_timeout(self, backend, tmp_path):
        with backend.session(tmp_path, timeout_s=1) as session:
            result = session.exec("sleep 2; echo slept", timeout_s=0).wait()
        assert (result.exit_code, result.stdout) == (0, "slept\n")

    # -- stdin -------------------------------------------------------------------
    def test_stdin_round_trip_each_line_answered_before_the_next(self, session):
        handle = session.exec(ECHO_LOOP, stdin=True, timeout_s=0)
        cursor = handle.cursor()
        handle.write("a\n")
        assert take_lines(cursor, 1) == ["got a"]  # answered now, not at EOF
        handle.write(b"b\n")
        assert take_lines(cursor, 1) == ["got b"]
        assert not handle.finished
        handle.close_stdin()
        handle.close_stdin()  # idempotent
        result = handle.wait()
        assert (result.exit_code, result.stdout) == (0, "got a\ngot b\nbye\n")

    def test_stdin_utf8_and_megabytes_echoed_back_do_not_deadlock(self, session):
        big = "x" * (3 << 20)
        handle = session.exec('read -r first; echo "$first"; cat', stdin=True, timeout_s=120)
        handle.write("héllo ∀ x, x = x 🦆\n")
        handle.write(big + "\n")  # more than any pipe holds, while it comes back
        handle.close_stdin()
        result = handle.wait()
        assert result.exit_code == 0
        assert result.stdout == "héllo ∀ x, x = x 🦆\n" + big + "\n"

    def test_concurrent_writes_never_interleave(self, session):
        handle = session.exec("cat", stdin=True, timeout_s=60)
        lines = {f"{t}:" + str(t) * 5000 for t in range(4)}

        def feed(line: str) -> None:
            for _ in range(20):
                handle.write(line + "\n")

        threads = [threading.Thread(target=feed, args=(line,)) for line in lines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        handle.close_stdin()
        out = handle.wait().stdout.splitlines()
        assert len(out) == 80 and set(out) == lines

    def test_write_after_the_command_ended_raises(self, session):
        handle = session.exec('read -r l; echo "got $l"', stdin=True, timeout_s=0)
        handle.write("one\n")
        assert handle.wait().stdout == "got one\n"
        with pytest.raises(BrokenPipeError):
            handle.write("two\n")
        handle.close_stdin()  # a no-op now

    def test_writing_to_a_command_that_exits_unread_fails_soon(self, session):
        handle = session.exec("exit 0", stdin=True, timeout_s=0)
        errors: list[BaseException] = []

        def feed() -> None:
            try:
                while True:
                    handle.write(b"x" * 65536)
                    time.sleep(0.01)
            except OSError as exc:
                errors.append(exc)

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        writer.join(20)
        assert not writer.is_alive(), "a write to a command that had exited hung"
        assert errors
        assert handle.wait().exit_code == 0

    def test_without_stdin_a_command_reads_eof_and_write_is_refused(self, session):
        handle = session.exec("cat; echo done", timeout_s=10)
        with pytest.raises(AtpError, match="stdin=True"):
            handle.write("x\n")
        handle.close_stdin()  # nothing to close: a no-op
        result = handle.wait()
        assert (result.exit_code, result.stdout) == (0, "done\n")

    def test_cancel_kills_an_interactive_command_and_keeps_the_session(self, session):
        handle = session.exec("echo ready; " + ECHO_LOOP, stdin=True, timeout_s=0)
        cursor = handle.cursor()
        assert take_lines(cursor, 1) == ["ready"]
        handle.write("a\n")
        assert take_lines(cursor, 1) == ["got a"]
        handle.cancel()
        result = handle.wait()
        assert result.exit_code == CANCEL_EXIT_CODE
        assert result.duration_s < 15
        with pytest.raises(BrokenPipeError):
            handle.write("late\n")
        assert session.exec("echo still here").wait().stdout == "still here\n"

    # -- environment -------------------------------------------------------------
    def test_env_precedence(self, make_backend, tmp_path):
        backend = make_backend(env={"A": "cfg", "B": "cfg", "C": "cfg"})
        with backend.session(tmp_path, env={"B": "sess", "C": "sess"}) as session:
            result = session.exec('echo "$A $B $C"', env={"C": "exec"}).wait()
        assert result.stdout == "cfg sess exec\n"

    def test_commands_run_in_the_workdir(self, session, tmp_path):
        (tmp_path / "hello.txt").write_text("from host\n")
        session.sync_in()
        result = session.exec("cat hello.txt; echo made > made.txt").wait()
        assert result.stdout == "from host\n"
        session.sync_out()
        assert (tmp_path / "made.txt").read_text() == "made\n"

    # -- lifecycle ---------------------------------------------------------------
    def test_close_is_idempotent_and_exec_after_close_fails(self, backend, tmp_path):
        session = backend.session(tmp_path)
        assert session.exec("true").wait().exit_code == 0
        session.close()
        session.close()
        with pytest.raises(SessionClosedError, match="closed"):
            session.exec("true")

    def test_close_kills_what_still_runs(self, backend, tmp_path):
        session = backend.session(tmp_path)
        handle = session.exec("sleep 30")
        time.sleep(0.3)
        start = time.monotonic()
        session.close()
        assert handle.wait().exit_code == CANCEL_EXIT_CODE
        assert time.monotonic() - start < 15

    def test_one_shot_run_syncs_and_tears_down(self, backend, tmp_path):
        (tmp_path / "in.txt").write_text("x\n")
        result = backend.run(tmp_path, "cat in.txt > out.txt; echo hi")
        assert (result.exit_code, result.stdout) == (0, "hi\n")
        assert (tmp_path / "out.txt").read_text() == "x\n"

    def test_one_shot_start_streams(self, backend, tmp_path):
        with backend.start(tmp_path, "echo a; echo b") as handle:
            assert list(handle.stream()) == ["a", "b"]
            assert handle.wait().exit_code == 0
