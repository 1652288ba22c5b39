"""The live view of a run: streaming output while it runs, diagnostics when it is done.

Two modes, the same cells:

``rich`` (a Jupyter kernel)
    One output is shown with ``display(view, display_id=True)`` and then
    updated in place. Every update carries ``text/html`` and ``text/plain``,
    so JupyterLab, nbconvert and headless runs all get something readable.
    Updates are throttled: at most one per :attr:`LiveView.interval` while
    output flows (the interval stretches for long runs, to at most 5 s), one
    per second while it is quiet (the elapsed time moves). The view keeps
    only the last :attr:`LiveView.tail` lines; the full output goes to a log
    file under the workdir's ``.atp/logs/``, which the view links to.

``plain`` (terminal IPython, scripts)
    Each output line is written to ``stdout`` as it arrives (as Lean's text),
    then one summary line.

The view is fed raw stdout lines, with their parse when the pipeline already
made one; the rich view renders only the lines it shows, when it shows them,
so a flood of output costs a deque append per line. The log on disk holds the
command's output exactly as printed, then its stderr and the verdict.

When the run is over the rich view shows a table of the diagnostics
(severity, ``line:col`` against the cell, message) and the cell's source with
the reported spans marked. All text is HTML-escaped.
"""

from __future__ import annotations

import html
import itertools
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from atp_notebook.diagnostics import Diagnostic, Goal, Item, OutputLine, render_one

#: How a view turns a raw stdout line into an item (``parse_json_line`` for ``--json``).
Parser = Callable[[str], Item]

__all__ = [
    "LiveView",
    "RunLog",
    "render_diagnostics_html",
    "render_goals_html",
    "render_goals_text",
    "render_source_html",
]

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
#: The longest wait between two updates of a long, busy run.
MAX_INTERVAL_S = 5.0
#: While no output arrives, the elapsed time is refreshed this often.
IDLE_INTERVAL_S = 1.0
#: Rows of the diagnostics table (the rest are counted, and in the log).
MAX_TABLE_ROWS = 200
#: Lines of a cell's source shown with marks.
MAX_SOURCE_LINES = 2000
#: Goals listed under a cell (the rest are counted; ``result.goals`` has them all).
MAX_GOALS = 100
#: Characters of output gathered before the run log writes them to disk.
_LOG_CHUNK = 1 << 18
#: Run logs kept per workdir; older ones are deleted.
KEEP_LOGS = 100

_RANK = {"information": 1, "warning": 2, "error": 3}
_COLOURS = {
    "error": ("#c62828", "rgba(229,57,53,0.16)"),
    "warning": ("#b26a00", "rgba(255,167,38,0.20)"),
    "information": ("#1565c0", "rgba(66,165,245,0.14)"),
}
_GLYPH = {"error": "✗", "warning": "⚠", "information": "ℹ"}
_MONO = "font-family: var(--jp-code-font-family, monospace); font-size: var(--jp-code-font-size, 13px)"
_PRE = f"margin: 0.3em 0; padding: 0.3em 0.5em; white-space: pre-wrap; {_MONO}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# -- the log on disk -------------------------------------------------------------------------

_log_ids = itertools.count(1)


class RunLog:
    """The whole output of one run, written to ``<workdir>/.atp/logs/<time>-<name>.log``."""

    def __init__(self, workdir: Path, name: str, header: str = "") -> None:
        folder = Path(workdir) / ".atp" / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:60] or "run"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # names sort by time: a second's stamp, then this process's run counter
        self.path = folder / f"{stamp}-{next(_log_ids):06d}-{os.getpid()}-{slug}.log"
        self._file: IO[str] | None = open(self.path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._buffer: list[str] = []
        self._buffered = 0  # characters in _buffer
        if header:
            self._file.write(header.rstrip("\n") + "\n")
        _prune(folder, KEEP_LOGS)

    def write(self, text: str) -> None:
        """Append ``text``; written to disk once ~256 KB or 4096 pieces have gathered (and at :meth:`close`).

        So a flood is written while the command still runs, and memory holds
        little of it here.
        """
        self._buffer.append(text)
        self._buffered += len(text)
        if self._buffered >= _LOG_CHUNK or len(self._buffer) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self._file is not None and self._buffer:
            self._file.write("".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0])
            self._buffer.clear()
            self._buffered = 0

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest logs (names sort by time; no stat per file)."""
    try:
        logs = sorted(name for name in os.listdir(folder) if name.endswith(".log"))
    except OSError:
        return
    for name in logs[: max(0, len(logs) - keep)]:
        try:
            (folder / name).unlink()
        except OSError:
            pass


# -- the view -----------------------------------------------------------------------------------


class LiveView:
    """Shows one run (a check or a command) while it runs and when it is done.

    Feed it items (:meth:`feed`), call :meth:`tick` between batches (it
    decides whether an update is due and says when it next wants a call),
    then :meth:`finish`. ``mode`` is ``"rich"`` or ``"plain"`` (see the
    module docstring). ``out`` is the stream plain mode writes to (default
    ``sys.stdout`` at the time of each write, so IPython's capture sees it).
    """

    def __init__(
        self,
        *,
        title: str,
        backend: str = "",
        command: str = "",
        mode: str = "rich",
        source: str | None = None,
        log: RunLog | None = None,
        tail: int = 200,
        interval: float = 0.1,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        parse: Parser | None = None,
    ) -> None:
        if mode not in ("rich", "plain"):
            raise ValueError(f"mode must be 'rich' or 'plain', not {mode!r}")
        self.title = title
        self.backend = backend
        self.command = command
        self.mode = mode
        self.source = source
        self.log = log
        self.interval = interval
        self.parse = parse
        # [raw line, item or None, rendered text or None]: rendered when first shown
        self.lines: deque[list[Any]] = deque(maxlen=max(tail, 1))
        self.total_lines = 0
        self.updates = 0  # display messages sent (the first display included)
        self.started = time.monotonic()
        self.phase = "running"  # then "ok", "failed" or "interrupted"
        self.summary = ""
        self.duration_s: float | None = None
        self.diagnostics: Sequence[Diagnostic] = ()
        self.goals: Sequence[Goal] = ()
        self.stderr = ""
        self._out = out
        self._err = err
        self._handle: Any = None
        self._dirty = False
        self._last_update = 0.0
        self._spin = 0

    # -- the run's life --------------------------------------------------------------
    def start(self) -> LiveView:
        """Show the view (rich mode); plain mode shows nothing until output arrives."""
        self.started = time.monotonic()
        if self.mode == "rich":
            from IPython.display import display

            self._handle = display(self, display_id=True)
            self.updates += 1
            self._last_update = time.monotonic()
        return self

    def feed(self, line: str | Item, item: Item | None = None) -> None:
        """One stdout line, with its parse if already made (an item alone is accepted too)."""
        if not isinstance(line, str):
            item, line = line, _render(line).rstrip("\n")
        self.feed_lines([line], {0: item} if item is not None else {})

    def feed_lines(self, lines: list[str], parsed: dict[int, Item], text: str | None = None) -> None:
        """A batch of stdout lines; ``parsed[i]`` is line ``i``'s parse where one was made.

        ``text`` is the batch joined with newlines, when the caller made it already.
        """
        if not lines:
            return
        if self.log is not None:
            self.log.write(("\n".join(lines) if text is None else text) + "\n")
        self.total_lines += len(lines)
        if self.mode == "plain":
            out = self._out or sys.stdout
            for i, line in enumerate(lines):
                item = parsed.get(i)
                if item is None and self.parse is not None:
                    item = self.parse(line)
                out.write(_render(item) if item is not None else line + "\n")
            out.flush()  # what arrived is shown now
            return
        first = max(0, len(lines) - (self.lines.maxlen or len(lines)))  # only the tail can be shown
        self.lines.extend([lines[i], parsed.get(i), None] for i in range(first, len(lines)))
        self._dirty = True

    def tick(self) -> float:
        """Update the display if one is due; return seconds until the next one could be."""
        if self.mode == "plain" or self._handle is None or self.phase != "running":
            return 0.5
        now = time.monotonic()
        interval = min(max(self.interval, (now - self.started) / 100), MAX_INTERVAL_S)
        since = now - self._last_update
        due = interval if self._dirty else max(IDLE_INTERVAL_S, interval)
        if since >= due:
            self._update()
            return interval
        return due - since

    def finish(
        self,
        *,
        status: str,
        summary: str,
        duration_s: float | None = None,
        diagnostics: Sequence[Diagnostic] = (),
        stderr: str = "",
        goals: Sequence[Goal] = (),
    ) -> None:
        """Show the outcome. ``status`` is ``ok``, ``failed`` or ``interrupted``.

        ``goals`` (a REPL check's) are listed under the cell: collapsed in
        rich mode, as text before the summary line in plain mode.
        """
        self.phase = status
        self.summary = summary
        self.duration_s = duration_s if duration_s is not None else time.monotonic() - self.started
        self.diagnostics = diagnostics
        self.goals = goals
        self.stderr = stderr
        if self.log is not None:
            if stderr:
                self.log.write("--- stderr ---\n" + stderr + ("" if stderr.endswith("\n") else "\n"))
            self.log.write(f"--- {status}: {summary} ({self.duration_s:.2f} s) ---\n")
            self.log.close()
        if self.mode == "plain":
            if stderr:
                err = self._err or sys.stderr
                err.write(stderr if stderr.endswith("\n") else stderr + "\n")
                err.flush()
            out = self._out or sys.stdout
            if goals:
                out.write(render_goals_text(goals) + "\n")
            out.write(self._status_line() + "\n")
            out.flush()
            return
        if self._handle is None:
            self.start()
        self._update()

    def _update(self) -> None:
        self._handle.update(self)
        self.updates += 1
        self._spin += 1
        self._dirty = False
        self._last_update = time.monotonic()

    # -- rendering ---------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        return self.duration_s if self.duration_s is not None else time.monotonic() - self.started

    def _status_line(self) -> str:
        where = f" · {self.backend}" if self.backend else ""
        if self.phase == "running":
            spin = SPINNER[self._spin % len(SPINNER)]
            cmd = f" · {self.command}" if self.command else ""
            lines = f" · {self.total_lines} line{'s' if self.total_lines != 1 else ''}" if self.total_lines else ""
            return f"{spin} {self.title}{where}{cmd} · {self.elapsed_s:.1f} s{lines}"
        mark = {"ok": "✓", "failed": "✗", "interrupted": "■"}.get(self.phase, "·")
        return f"{mark} {self.title}: {self.summary}{where} · {self.elapsed_s:.2f} s"

    def _log_ref(self) -> tuple[str, str | None]:
        """The log's path as shown, and a link relative to the current directory (or None)."""
        if self.log is None:
            return "", None
        path = self.log.path
        try:
            rel = os.path.relpath(path, os.getcwd())
        except ValueError:  # another drive on Windows
            return str(path), None
        if rel.startswith(".."):
            return str(path), None
        return rel, rel.replace(os.sep, "/")

    def _shown_lines(self) -> list[tuple[str | None, str]]:
        """``(severity, text)`` of the tail, rendering lines not rendered yet."""
        rows: list[tuple[str | None, str]] = []
        for entry in self.lines:
            if entry[2] is None:
                item = entry[1]
                if item is None and self.parse is not None:
                    item = self.parse(entry[0])
                entry[1] = None  # keep only the text
                if isinstance(item, Diagnostic):
                    entry[2] = (item.severity, _render(item).rstrip("\n"))
                else:
                    entry[2] = (None, item.text if isinstance(item, OutputLine) else entry[0])
                entry[0] = ""
            rows.append(entry[2])
        return rows

    def _hidden(self) -> int:
        return self.total_lines - len(self.lines)

    def _tail_text(self) -> str:
        hidden = self._hidden()
        head = f"… {hidden} earlier lines (full log on disk)\n" if hidden > 0 else ""
        return head + "\n".join(text for _, text in self._shown_lines())

    def text(self) -> str:
        """The ``text/plain`` form."""
        parts = [self._status_line()]
        if self.lines:
            parts.append(self._tail_text())
        if self.goals and self.phase != "running":
            parts.append(render_goals_text(self.goals))
        if self.stderr:
            parts.append("stderr:\n" + self.stderr.rstrip("\n"))
        shown, _ = self._log_ref()
        if shown and self.phase != "running":
            parts.append(f"full log: {shown}")
        return "\n".join(parts)

    def html(self) -> str:
        """The ``text/html`` form."""
        colour = {"ok": "#2e7d32", "failed": "#c62828", "interrupted": "#6d4c41"}.get(self.phase, "inherit")
        parts = [f'<div class="atp-run" style="{_MONO}">']
        parts.append(f'<div style="color: {colour}; font-weight: 600">{_e(self._status_line())}</div>')
        shown, href = self._log_ref()
        tail = self._tail_html()
        if self.phase == "running":
            parts.append(tail)
        else:
            if self.diagnostics:
                parts.append(render_diagnostics_html(self.diagnostics))
            if self.source is not None and self.diagnostics:
                parts.append(render_source_html(self.source, self.diagnostics))
            if self.goals:
                parts.append(render_goals_html(self.goals))
            if self.lines:
                if self.source is not None:
                    lines = f"{self.total_lines} line{'s' if self.total_lines != 1 else ''}"
                    parts.append(f"<details><summary>output ({lines})</summary>{tail}</details>")
                else:
                    parts.append(tail)
            if self.stderr:
                parts.append(f'<div>stderr:</div><pre style="{_PRE}; color: #c62828">{_e(self.stderr.rstrip())}</pre>')
            if shown:
                link = f'<a href="{_e(href)}" target="_blank">{_e(shown)}</a>' if href else f"<code>{_e(shown)}</code>"
                parts.append(f'<div style="opacity: 0.7">full log: {link}</div>')
        parts.append("</div>")
        return "".join(parts)

    def _tail_html(self) -> str:
        rows = []
        hidden = self._hidden()
        if hidden > 0:
            rows.append(f'<span style="opacity: 0.6">… {hidden} earlier lines (full log on disk)</span>')
        for severity, text in self._shown_lines():
            if severity is None:
                rows.append(_e(text))
            else:
                rows.append(f'<span style="color: {_COLOURS[severity][0]}">{_e(text)}</span>')
        return f'<pre style="{_PRE}; max-height: 24em; overflow: auto">' + "\n".join(rows) + "</pre>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def __repr__(self) -> str:
        return self.text()


def _render(item: Item) -> str:
    """One item as Lean's text, ending with a newline."""
    if isinstance(item, Diagnostic):
        return render_one(item)
    return item.text + "\n"


# -- diagnostics as HTML -------------------------------------------------------------------------


def render_diagnostics_html(diags: Sequence[Diagnostic], limit: int = MAX_TABLE_ROWS) -> str:
    """A table: severity, ``line:col`` (1-based line, 0-based column), message."""
    rows = []
    for d in diags[:limit]:
        fg, bg = _COLOURS[d.severity]
        name = f" ({d.name})" if d.name else ""
        where = f"{d.line}:{d.column}"
        rows.append(
            "<tr>"
            f'<td style="color: {fg}; background: {bg}; white-space: nowrap; text-align: left">'
            f"{_GLYPH[d.severity]} {_e(d.severity)}{_e(name)}</td>"
            f'<td style="white-space: nowrap; text-align: right">{_e(where)}</td>'
            f'<td style="text-align: left"><pre style="{_PRE}; margin: 0; padding: 0">{_e(d.message)}</pre></td>'
            "</tr>"
        )
    more = ""
    if len(diags) > limit:
        more = f'<div style="opacity: 0.7">… and {len(diags) - limit} more messages (see the output and the log)</div>'
    return (
        '<table class="atp-diagnostics" style="border-collapse: collapse; margin: 0.4em 0">'
        "<thead><tr><th style=\"text-align: left\">severity</th><th>line:col</th>"
        "<th style=\"text-align: left\">message</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + more
    )


def render_goals_text(goals: Sequence[Goal], limit: int = MAX_GOALS) -> str:
    """``goals:`` then each goal's ``line:col what`` and the goal indented (the plain form)."""
    parts = [f"goals ({len(goals)}):"]
    parts += ["  " + g.render().replace("\n", "\n  ") for g in goals[:limit]]
    if len(goals) > limit:
        parts.append(f"  … and {len(goals) - limit} more (result.goals)")
    return "\n".join(parts)


def render_goals_html(goals: Sequence[Goal], limit: int = MAX_GOALS) -> str:
    """A collapsed ``goals (N)`` section: per goal, ``line:col``, the tactic or ``sorry``, the goal."""
    rows = []
    for g in goals[:limit]:
        what = (f'<code>{_e(g.tactic)}</code>' if g.kind == "tactic"
                else '<span style="color: #b26a00">sorry</span>')
        rows.append(
            f'<div class="atp-goal" style="margin: 0.3em 0"><span style="opacity: 0.7">{g.line}:{g.column}</span> '
            f'{what}<pre style="{_PRE}; margin: 0.1em 0 0 1.5em; background: rgba(127,127,127,0.08)">'
            f"{_e(g.goal or 'no goals')}</pre></div>"
        )
    if len(goals) > limit:
        rows.append(f'<div style="opacity: 0.7">… and {len(goals) - limit} more (result.goals)</div>')
    sorries = sum(g.kind == "sorry" for g in goals)
    label = f"goals ({len(goals)}" + (f", {sorries} sorr{'ies' if sorries != 1 else 'y'}" if sorries else "") + ")"
    return f'<details class="atp-goals"><summary>{_e(label)}</summary>{"".join(rows)}</details>'


def _spans(diags: Iterable[Diagnostic], lines: Sequence[str]) -> dict[int, list[tuple[int, int, Diagnostic]]]:
    """Per 0-based line index: ``(start, end, diag)`` column ranges (end exclusive).

    A message without an end position marks the rest of its line; a range
    running past the source's end stops there; an empty range marks one cell.
    """
    out: dict[int, list[tuple[int, int, Diagnostic]]] = {}
    count = len(lines)
    for d in diags:
        first = d.line - 1
        if not 0 <= first < count:
            continue
        last, end_col = first, None
        if d.end_line is not None and d.end_column is not None and d.end_line - 1 >= first:
            last, end_col = d.end_line - 1, d.end_column
            if last >= count:
                last, end_col = count - 1, None
        for i in range(first, last + 1):
            text = lines[i]
            start = min(max(d.column, 0), len(text)) if i == first else 0
            end = end_col if (i == last and end_col is not None) else len(text)
            end = min(max(end, start), len(text))
            if end == start:
                end = start + 1  # still mark one cell (maybe just past the end of the line)
            out.setdefault(i, []).append((start, end, d))
    return out


def render_source_html(source: str, diags: Sequence[Diagnostic], max_lines: int = MAX_SOURCE_LINES) -> str:
    """The cell's source with line numbers and each diagnostic's span marked.

    Lines are 1-based and columns 0-based code points (Lean's convention), so
    the marks land on the cell's own text. The most severe message wins where
    spans overlap; hovering a mark shows the messages.
    """
    lines = source.split("\n")
    if lines and lines[-1] == "" and source.endswith("\n"):
        lines.pop()
    spans = _spans(diags, lines)
    width = len(str(min(len(lines), max_lines)))
    rows = []
    for i, text in enumerate(lines[:max_lines]):
        marks = spans.get(i, [])
        worst = max((_RANK[d.severity] for _, _, d in marks), default=0)
        gutter_sev = next((s for s, r in _RANK.items() if r == worst), None) if worst else None
        glyph = _GLYPH[gutter_sev] if gutter_sev else " "
        gutter_colour = _COLOURS[gutter_sev][0] if gutter_sev else "inherit"
        body = _mark_line(text, marks) if marks else _e(text)
        rows.append(
            f'<span style="opacity: 0.55">{i + 1:>{width}}</span> '
            f'<span style="color: {gutter_colour}">{glyph}</span> {body}'
        )
    if len(lines) > max_lines:
        rows.append(f'<span style="opacity: 0.6">… {len(lines) - max_lines} more lines</span>')
    return f'<pre class="atp-source" style="{_PRE}">' + "\n".join(rows) + "</pre>"


def _mark_line(text: str, marks: list[tuple[int, int, Diagnostic]]) -> str:
    length = max([len(text)] + [end for _, end, _ in marks])
    padded = text.ljust(length)
    best: list[Diagnostic | None] = [None] * length
    covering: list[list[Diagnostic]] = [[] for _ in range(length)]
    for start, end, d in marks:
        for col in range(start, end):
            covering[col].append(d)
            current = best[col]
            if current is None or _RANK[d.severity] > _RANK[current.severity]:
                best[col] = d
    out = []
    col = 0
    while col < length:
        key = (best[col].severity if best[col] else None, tuple(map(id, covering[col])))
        end = col + 1
        while end < length and (best[end].severity if best[end] else None, tuple(map(id, covering[end]))) == key:
            end += 1
        chunk = _e(padded[col:end])
        d = best[col]
        if d is None:
            out.append(chunk)
        else:
            fg, bg = _COLOURS[d.severity]
            title = "\n".join(f"{x.severity}: {x.message}" for x in covering[col])
            out.append(
                f'<span class="atp-{d.severity}" title="{_e(title)}" '
                f'style="background: {bg}; text-decoration: underline wavy {fg}">{chunk}</span>'
            )
        col = end
    return "".join(out)

