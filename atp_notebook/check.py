"""The check pipeline: write a Lean file, run the check in the session, stream, parse, judge.

Used by the ``%%lean_sandbox`` cell magic and by ``atp-notebook check FILE``;
it needs a :class:`~atp_notebook.kernel.KernelSession` and, optionally, a
sink that shows the output as it arrives (a
:class:`~atp_notebook.display.LiveView`). Nothing here imports IPython.

A check passes (:attr:`CheckResult.ok`) when the command exited 0 and
reported no error; warnings (``sorry`` included) and information messages do
not fail it.

Parsing is paid only where it is needed: while a ``--json`` check streams,
errors and warnings are parsed as they arrive (they decide the verdict and
are all shown), information messages only up to :data:`SHOWN_INFO` (beyond,
they are counted); the complete :attr:`CheckResult.diagnostics` list is
parsed from the output on first access. So a check that prints 100,000
``#eval`` lines does not spend its time building objects nobody looks at.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Protocol

from atp_notebook.backends.base import (
    CANCEL_EXIT_CODE,
    TIMEOUT_EXIT_CODE,
    AtpError,
    CommandResult,
)
from atp_notebook.diagnostics import (
    Diagnostic,
    Goal,
    Item,
    diagnostics,
    format_summary,
    parse_json_line,
    parse_json_lines,
    parse_text,
    render_one,
    summarize,
)

if TYPE_CHECKING:  # pragma: no cover
    from atp_notebook.backends.machinery import StreamingHandle
    from atp_notebook.kernel import KernelSession

__all__ = [
    "DEFAULT_CHECK_COMMAND",
    "DEFAULT_FILE",
    "CheckResult",
    "CommandFailed",
    "LeanCheckFailed",
    "LeanCheckInterrupted",
    "LeanSandboxError",
    "SHOWN_INFO",
    "Sink",
    "build_command",
    "cell_path",
    "cli_check",
    "find_project_root",
    "follow",
    "relative_name",
    "run_check",
    "write_cell",
]

#: The check command; ``{file}`` becomes the file's path relative to the workdir (shell-quoted).
DEFAULT_CHECK_COMMAND = "lake env lean --json {file}"
#: The file a ``%%lean_sandbox`` cell writes when it names none.
DEFAULT_FILE = "Scratch.lean"

_HEADLINE_MESSAGE_CHARS = 100


#: Information messages parsed while a check streams (and shown in its table);
#: the others are counted, and parsed only if ``result.diagnostics`` is read.
SHOWN_INFO = 200
#: A batch this long is joined once, for the bulk count and the log alike.
_BULK_LINES = 256


class Sink(Protocol):
    """Where a run's output goes while it arrives (a live view, a terminal)."""

    def feed_lines(self, lines: list[str], parsed: dict[int, Item], text: str | None = None) -> None:
        """A batch of stdout lines; ``parsed[i]`` is line ``i``'s parse where the pipeline made one.

        ``text``, when given, is ``"\\n".join(lines)`` already made (a flood's batch).
        """

    def tick(self) -> float:
        """Called between batches of output; returns seconds until it next wants a call."""


# -- results and errors --------------------------------------------------------------


class CheckResult:
    """The outcome of checking one Lean file.

    Attributes
    ----------
    ok:
        The check exited 0 and reported no error (warnings and ``sorry`` don't count).
    exit_code:
        The check command's exit code (``124`` timed out, ``130`` cancelled).
    diagnostics:
        Every message Lean reported, in order; lines 1-based, columns 0-based,
        and since the file IS the cell, line N is the cell's line N. (Parsed
        from ``stdout`` on first access.)
    stdout, stderr:
        The command's whole output.
    duration_s:
        Wall time of the command.
    file:
        The file's path relative to the workdir, as passed to the check.
    path:
        The file on the host.
    command:
        The command that ran.
    log_path:
        The full log of the run (``.atp/logs/...`` in the workdir), if one was written.
    interrupted:
        The user interrupted the cell and the command was cancelled.
    counts:
        Messages per severity (``{"error": n, "warning": n, "information": n}``).
    shown:
        The messages a view shows: every error and warning, and the first
        :data:`SHOWN_INFO` information messages, in order.
    engine:
        ``"lean"``: the check command ran cold (``lake env lean --json``);
        ``"repl"``: the file went through the session's Lean REPL.
    warm:
        The check reused a loaded environment: no import was elaborated for it
        (a REPL check whose header was already loaded).
    goals:
        The goals at each ``sorry`` and before each tactic step
        (:class:`~atp_notebook.diagnostics.Goal`), at the file's lines; REPL checks only.
    """

    def __init__(
        self,
        *,
        exit_code: int,
        stdout: str,
        duration_s: float,
        file: str,
        stderr: str = "",
        diagnostics: list[Diagnostic] | None = None,
        shown: list[Diagnostic] | None = None,
        counts: dict[str, int] | None = None,
        json_output: bool = True,
        path: Path | None = None,
        command: str = "",
        log_path: Path | None = None,
        interrupted: bool = False,
        backend: str = "",
        engine: str = "lean",
        warm: bool = False,
        goals: Sequence[Goal] = (),
    ) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.duration_s = duration_s
        self.file = file
        self.path = path
        self.command = command
        self.log_path = log_path
        self.interrupted = interrupted
        self.backend = backend
        self.engine = engine
        self.warm = warm
        self.goals = list(goals)
        self._json = json_output
        self._diagnostics = diagnostics
        if shown is None or counts is None:
            shown, infos = [], 0
            for d in self.diagnostics:
                if d.severity != "information" or infos < SHOWN_INFO:
                    infos += d.severity == "information"
                    shown.append(d)
            counts = summarize(self.diagnostics)
        self.shown = shown
        self.counts = counts
        self.ok = exit_code == 0 and not interrupted and counts.get("error", 0) == 0

    @property
    def diagnostics(self) -> list[Diagnostic]:
        if self._diagnostics is None:
            items = parse_json_lines(self.stdout) if self._json else parse_text(self.stdout)
            self._diagnostics = diagnostics(items)
        return self._diagnostics

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.shown if d.is_error]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.shown if d.severity == "warning"]

    @property
    def timed_out(self) -> bool:
        return self.exit_code == TIMEOUT_EXIT_CODE

    @property
    def cancelled(self) -> bool:
        return self.exit_code == CANCEL_EXIT_CODE

    def summary(self) -> str:
        """``2 errors, 1 warning`` (or ``no messages``)."""
        return format_summary(self.counts)

    def headline(self) -> str:
        """One line saying how the check went, naming the first error if any."""
        if self.interrupted:
            return f"{self.file}: interrupted; the check was cancelled and the session kept"
        if self.timed_out:
            return f"{self.file}: the check timed out and was killed (exit {self.exit_code})"
        if self.cancelled:
            return f"{self.file}: the check was cancelled (exit {self.exit_code}); the session is kept"
        errors = self.errors
        if errors:
            first = errors[0]
            message = first.message.strip().partition("\n")[0]
            if len(message) > _HEADLINE_MESSAGE_CHARS:
                message = message[: _HEADLINE_MESSAGE_CHARS - 1] + "…"
            n = self.counts.get("error", len(errors))
            return f"{self.file}: {n} error{'s' if n != 1 else ''} (first at line {first.line}: {message})"
        if self.exit_code != 0:
            reason = _first_line(self.stderr) or _last_output_line(self.stdout)
            tail = f": {reason}" if reason else ""
            return f"{self.file}: the check exited with code {self.exit_code} and reported no error{tail}"
        return f"{self.file}: ok ({self.summary()}, {self.duration_s:.2f} s{', warm' if self.warm else ''})"

    @property
    def how(self) -> str:
        """``warm``, ``repl`` (the REPL loaded the imports for this check) or ``cold``."""
        if self.engine != "repl":
            return "cold"
        return "warm" if self.warm else "repl"

    def __repr__(self) -> str:
        return (f"<CheckResult {self.file} ok={self.ok} exit_code={self.exit_code} "
                f"{self.summary()} {self.duration_s:.2f}s {self.how}>")


def _first_line(text: str, limit: int = 160) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def _last_output_line(stdout: str, limit: int = 160) -> str:
    for line in reversed(stdout.splitlines()):
        if line.strip() and not line.lstrip().startswith("{"):
            return line.strip()[:limit]
    return ""


class _OneLine:
    """Mixin: IPython shows the error as one line, without a Python traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class LeanCheckFailed(_OneLine, AtpError):
    """A Lean check failed (errors, a non-zero exit, a timeout); ``.result`` has the details."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.headline())
        self.result = result


class LeanCheckInterrupted(_OneLine, KeyboardInterrupt):
    """The cell was interrupted: its command was cancelled, the session kept."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class LeanSandboxError(_OneLine, AtpError):
    """The sandbox could not do what a cell asked (no backend, session died twice, ...)."""


class CommandFailed(_OneLine, AtpError):
    """A ``%lean_sandbox run`` command exited non-zero; ``.result`` has its output."""

    def __init__(self, command: str, result: CommandResult) -> None:
        shown = command if len(command) <= 60 else command[:59] + "…"
        if result.exit_code == TIMEOUT_EXIT_CODE:
            what = "timed out and was killed"
        elif result.exit_code == CANCEL_EXIT_CODE:
            what = "was cancelled"
        else:
            what = f"exited with code {result.exit_code}"
        reason = _first_line(result.stderr)
        super().__init__(f"`{shown}` {what}" + (f": {reason}" if reason else ""))
        self.result = result


# -- files and commands -------------------------------------------------------------------


def cell_path(workdir: Path, name: str) -> Path:
    """The host path of ``name`` inside ``workdir``; refuses anything that escapes it.

    Absolute paths, ``..`` climbing out, and symlinks leading out are all
    refused with :class:`ValueError`.
    """
    if not name or not name.strip():
        raise ValueError("The file name is empty.")
    pure = PurePosixPath(name.replace(os.sep, "/"))
    if pure.is_absolute() or Path(name).is_absolute():
        raise ValueError(f"{name!r} is absolute; give a path relative to the workdir.")
    root = Path(workdir).resolve()
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{name!r} leads outside the workdir {root}; give a path inside it.")
    if target == root:
        raise ValueError(f"{name!r} is the workdir itself, not a file.")
    return target


def write_cell(workdir: Path, name: str, text: str) -> Path:
    """Write a cell's ``text`` to ``name`` in ``workdir`` (creating folders); returns the path.

    The text is written as given, plus a final newline if it lacks one, so
    line N of the file is line N of the cell.
    """
    path = cell_path(workdir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if text and not text.endswith("\n"):
        text += "\n"
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return path  # unchanged: keep the mtime, so sync has nothing to move
    except OSError:
        pass
    path.write_bytes(data)
    return path


def relative_name(workdir: Path, path: Path) -> str:
    """``path`` relative to ``workdir`` in POSIX form (what the sandbox sees)."""
    return Path(path).resolve().relative_to(Path(workdir).resolve()).as_posix()


def build_command(template: str, file: str) -> str:
    """The check command for ``file``: ``{file}`` in ``template`` becomes the quoted path.

    Other braces are left alone (``${VAR}`` reaches the shell); a template
    without ``{file}`` gets the file appended.
    """
    quoted = shlex.quote(file)
    if "{file}" in template:
        return template.replace("{file}", quoted)
    return f"{template} {quoted}"


# -- following a command ------------------------------------------------------------------


def follow(
    handle: StreamingHandle,
    on_lines: Callable[[list[str]], None],
    tick: Callable[[], float] | None = None,
) -> tuple[CommandResult, bool]:
    """Feed ``handle``'s stdout lines to ``on_lines`` in batches as they arrive.

    Returns ``(result, interrupted)``. ``tick`` is called between batches (and
    at least every half second while the command is quiet); it returns how
    soon it wants the next call.

    A :class:`KeyboardInterrupt` (the kernel's interrupt, SIGINT) cancels the
    command, as IPython's ``%%script`` does: the process tree gets SIGTERM,
    then SIGKILL after the backend's grace period; the session stays open.
    The output up to the cancel is still delivered, and ``interrupted`` is
    True. A second interrupt while waiting for the kill stops the wait and
    propagates.
    """
    cursor = handle.cursor()
    interrupted = False
    wait_s = 0.1
    try:
        while True:
            lines, done = cursor.take(wait_s)
            if lines:
                on_lines(lines)
            wait_s = min(max(tick(), 0.005), 0.5) if tick is not None else 0.5
            if done:
                break
    except KeyboardInterrupt:
        interrupted = True
        handle.cancel()
    result = handle.wait()
    if interrupted:
        lines, _ = cursor.take(0)
        if lines:
            on_lines(lines)
    if tick is not None:
        tick()
    return result, interrupted


class _Collector:
    """Parses a ``--json`` check's lines as they stream, as far as needed (see the module doc)."""

    def __init__(self) -> None:
        self.shown: list[Diagnostic] = []
        self.counts = dict.fromkeys(("error", "warning", "information"), 0)
        self._infos = 0

    def add_lines(self, lines: list[str], text: str | None = None) -> dict[int, Item]:
        """Account for a batch (``text``: the batch joined, if made already); returns the parses made."""
        parsed: dict[int, Item] = {}
        info_key = '"severity":"information"'
        if self._infos >= SHOWN_INFO and text is not None:
            # A flood of #eval output: when every line of the batch is an information
            # message, count them in bulk (one count over the joined batch). Lean's
            # compact JSON holds the key once per message and never inside a string
            # (its quotes would be escaped there).
            infos = text.count(info_key)
            if infos == len(lines):
                self.counts["information"] += infos
                return parsed
        for i, line in enumerate(lines):
            if line[:1] != "{" and not line.lstrip().startswith("{"):
                continue  # lake's own lines, crash text: never a message
            if info_key in line and self._infos >= SHOWN_INFO:
                self.counts["information"] += 1  # Lean's compact JSON: only the key can look like this
                continue
            item = self.add(line)
            if item is not None:
                parsed[i] = item
        return parsed

    def add(self, line: str) -> Item | None:
        """Account for one stdout line; returns its parse if it was parsed."""
        if not line.lstrip().startswith("{"):
            return None  # lake's own lines, crash text: never a message
        if '"severity":"information"' in line:  # Lean's compact JSON: only the key can look like this
            self.counts["information"] += 1
            if self._infos >= SHOWN_INFO:
                return None
            item = parse_json_line(line)
            if isinstance(item, Diagnostic):
                self._infos += 1
                self.shown.append(item)
            else:
                self.counts["information"] -= 1
            return item
        item = parse_json_line(line)
        if isinstance(item, Diagnostic):
            self.counts[item.severity] += 1
            if item.severity != "information" or self._infos < SHOWN_INFO:
                self._infos += item.severity == "information"
                self.shown.append(item)
        return item


def run_check(
    kernel: KernelSession,
    file: str,
    *,
    command: str = DEFAULT_CHECK_COMMAND,
    timeout_s: float | None = None,
    sink: Sink | None = None,
) -> CheckResult:
    """Check ``file`` (relative to the kernel's workdir) in the kernel's session.

    Syncs in (the host's ``file`` wins over a sandbox edit of it: it is what
    was asked to be checked), runs ``command`` (a template with ``{file}``), streams the
    output into ``sink`` (with ``--json`` in the command, lines are Lean's
    JSON messages; otherwise Lean's text), syncs out, and judges. An
    interrupt cancels the command and returns a result with ``interrupted=True``.
    """
    full = build_command(command, file)
    json_mode = "--json" in full
    collector = _Collector() if json_mode else None

    def on_lines(lines: list[str]) -> None:
        text = "\n".join(lines) if len(lines) >= _BULK_LINES else None
        parsed = collector.add_lines(lines, text) if collector is not None else {}
        if sink is not None:
            sink.feed_lines(lines, parsed, text)

    handle = kernel.start(full, timeout_s=timeout_s, cell_file=file)  # the host's text is what is checked
    try:
        result, interrupted = follow(handle, on_lines, sink.tick if sink is not None else None)
    finally:
        kernel.done(handle)
    try:
        kernel.sync_out()
    except Exception as exc:  # noqa: BLE001 - the check's own outcome must still be shown
        kernel.say(f"Could not sync files back from the sandbox: {exc}")
    backend = kernel.backend.name if kernel.backend is not None else kernel.backend_name
    return CheckResult(
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        duration_s=result.duration_s,
        file=file,
        shown=collector.shown if collector is not None else None,
        counts=collector.counts if collector is not None else None,
        json_output=json_mode,
        path=kernel.workdir / file,
        command=full,
        interrupted=interrupted,
        backend=backend,
    )


# -- the command line: ``atp-notebook check FILE`` -------------------------------------------


class _TextSink:
    """Writes each item as Lean's text to a stream as it arrives."""

    def __init__(self, out: IO[str], json_output: bool) -> None:
        self._out = out
        self._json = json_output

    def feed_lines(self, lines: list[str], parsed: dict[int, Item], text: str | None = None) -> None:
        for i, line in enumerate(lines):
            item = parsed.get(i)
            if item is None and self._json:
                item = parse_json_line(line)
            self._out.write(render_one(item) if isinstance(item, Diagnostic) else line + "\n")
        self._out.flush()

    def tick(self) -> float:
        return 0.5


def find_project_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding a lakefile, else ``start``."""
    from atp_notebook.project import has_project

    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if has_project(folder):
            return folder
    return start


def cli_check(
    file: str,
    *,
    backend: str = "auto",
    workdir: str | None = None,
    image: str = "",
    timeout_s: float | None = None,
    command: str | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """``atp-notebook check FILE``: 0 passed, 1 failed, 2 bad input, 130 interrupted.

    Lean's messages go to ``out`` as they arrive; notes, the command's stderr
    and the verdict go to ``err``.
    """
    from atp_notebook.kernel import KernelSession
    from atp_notebook.project import prepare

    out = out or sys.stdout
    err = err or sys.stderr
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        print(f"atp-notebook check: no such file: {file}", file=err)
        return 2
    root = Path(workdir).expanduser().resolve() if workdir else find_project_root(path.parent)
    try:
        rel = relative_name(root, path)
    except ValueError:
        print(f"atp-notebook check: {file} is not inside the workdir {root}", file=err)
        return 2
    kernel = KernelSession(backend, workdir=root, image=image, say=lambda text: print(text, file=err))
    try:
        created = prepare(root, kernel.image, kernel)
        if created is not None:
            kernel.say(created.describe())
        template = command or DEFAULT_CHECK_COMMAND
        sink = _TextSink(out, "--json" in build_command(template, rel))
        result = run_check(kernel, rel, command=template, timeout_s=timeout_s, sink=sink)
    except (AtpError, ValueError) as exc:
        print(f"atp-notebook check: {exc}", file=err)
        return 1
    finally:
        kernel.close()
    if result.stderr:
        err.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
    print(result.headline(), file=err)
    if result.interrupted:
        return 130
    return 0 if result.ok else 1
