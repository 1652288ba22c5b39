"""Lean messages: parse ``lean`` text and ``lean --json`` output, render them back.

Lean reports a message as a header line followed by continuation lines::

    Foo.lean:3:8-3:13: error(lean.unknownIdentifier): Unknown identifier `x`
    Foo.lean:5:0: warning: declaration uses 'sorry'

and prints information messages (``#eval``, ``#check``, traces, ``Try this:``)
with no header at all.  ``lean --json`` prints one JSON object per message
instead.  This module turns both forms into :class:`Diagnostic` objects and
keeps everything else (bare info output, lake's lines, ``PANIC`` lines, crash
text) as :class:`OutputLine` items, in order, so nothing is ever dropped.

Positions follow Lean: lines are 1-based, columns 0-based (code points).
Severities are normalised to ``error``, ``warning`` and ``information``
(the REPL's and the CLI's ``info`` become ``information``).

Text parsing is lossless: ``render_text(parse_text(t)) == t`` for any ``t``.
One ambiguity cannot be resolved from the text alone: bare info output that
directly follows a message looks exactly like that message's continuation
lines, so it is attached to the message (it stays in the item's ``raw`` text
and in its ``message``).  Runtime lines (``PANIC at ...``, ``INTERNAL PANIC``,
``uncaught exception: ...``, ``Stack overflow detected``) are the exception:
they never belong to a message and end the one before them.  ``--json``
output has no such ambiguity, which is why checks use it by default.

Typical use::

    items = parse_json_lines(stdout.splitlines())
    errors = [d for d in diagnostics(items) if d.is_error]
    print(render_text(items), end="")
    print(format_summary(summarize(items)))          # "1 error, 2 warnings"
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "SEVERITIES",
    "Diagnostic",
    "OutputLine",
    "Item",
    "parse_text",
    "parse_json_line",
    "parse_json_lines",
    "from_repl_message",
    "to_json_line",
    "Goal",
    "render_text",
    "render_one",
    "diagnostics",
    "has_errors",
    "summarize",
    "format_summary",
]

#: The normalised severities, most severe first.
SEVERITIES: tuple[str, ...] = ("error", "warning", "information")

_SEVERITY_ALIASES: dict[str, str] = {
    "error": "error",
    "warning": "warning",
    "information": "information",
    "info": "information",
}

#: A text header: ``FILE:LINE:COL[-ENDLINE:ENDCOL]: SEVERITY[(NAME)]: MESSAGE``.
#: ``FILE`` is a ``.lean`` path not starting with whitespace (a Windows drive
#: prefix is allowed) or ``<stdin>``; the message part may be empty.
_HEADER_RE = re.compile(
    r"^(?P<file>(?:[A-Za-z]:)?[^:\s][^:\n]*\.lean|<stdin>)"
    r":(?P<line>\d+):(?P<column>\d+)"
    r"(?:-(?P<end_line>\d+):(?P<end_column>\d+))?"
    r": (?P<severity>error|warning|information|info)"
    r"(?:\((?P<name>[^)\n]*)\))?"
    r":(?: (?P<message>.*))?$"
)

#: Lines printed by the Lean runtime (stderr), never part of a message.
_RUNTIME_RE = re.compile(
    r"^(?:PANIC at |INTERNAL PANIC|uncaught exception: |Stack overflow detected)"
)

_SORRY_RE = re.compile(r"^declaration uses ['`]sorry['`]$")

_NAMED_ERROR_SUFFIX = "._namedError"


@dataclass(frozen=True)
class Diagnostic:
    """One Lean message with its position.

    Attributes:
        file: The file name as Lean printed it (``Foo.lean``, ``<stdin>``,
            ``C:\\tmp\\x.lean``, ``<cell>`` for REPL messages).
        line: 1-based line of the start position.
        column: 0-based column (code points) of the start position.
        end_line: 1-based line of the end position, ``None`` when absent.
        end_column: 0-based column of the end position, ``None`` when absent.
        severity: ``"error"``, ``"warning"`` or ``"information"``; ``"info"``
            is accepted and normalised to ``"information"``.
        message: The whole message, possibly multi-line, without a trailing
            newline.
        name: The error name, e.g. ``lean.unknownIdentifier`` (shown as
            ``error(lean.unknownIdentifier)``), ``None`` when absent.
        kind: The raw ``kind`` of a ``--json`` message (``hasSorry``,
            ``[anonymous]``, ``lean.unknownIdentifier._namedError``); ``None``
            when the source did not say (text output, REPL).
        raw: The exact original text of a message parsed from text output
            (header and continuation lines, with their line terminators);
            ``None`` otherwise.  Not part of equality.
    """

    file: str
    line: int
    column: int
    end_line: int | None
    end_column: int | None
    severity: str
    message: str
    name: str | None = None
    kind: str | None = None
    raw: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Normalise the severity (``info`` -> ``information``) and reject unknown ones."""
        severity = _SEVERITY_ALIASES.get(self.severity)
        if severity is None:
            raise ValueError(
                f"unknown Lean severity {self.severity!r}; expected one of "
                f"{', '.join(SEVERITIES)} (or 'info')"
            )
        if severity != self.severity:
            object.__setattr__(self, "severity", severity)

    @property
    def is_error(self) -> bool:
        """Whether this message is an error (the check fails on it)."""
        return self.severity == "error"

    @property
    def is_warning(self) -> bool:
        """Whether this message is a warning."""
        return self.severity == "warning"

    @property
    def is_sorry(self) -> bool:
        """Whether this is a "declaration uses sorry" message.

        True for ``kind`` ``hasSorry`` or a first line in either wording
        (``'sorry'`` or with backticks); only the first line is checked, as text
        output may attach bare info lines to the message.
        """
        first_line = self.message.partition("\n")[0]
        return self.kind == "hasSorry" or bool(_SORRY_RE.match(first_line))

    def shifted(self, line_offset: int, file: str | None = None) -> Diagnostic:
        """Return a copy with both lines moved by ``line_offset`` (and ``file`` replaced if given).

        Used to show a message against a cell's own lines (a negative offset)
        or to move REPL positions past a header (a positive one).  Lines are
        not clamped: a message inside a header gets a line below 1.  The
        ``raw`` text, if any, gets the same positions and file in its header
        so that rendering keeps the original formatting.
        """
        new_file = self.file if file is None else file
        new_line = self.line + line_offset
        new_end = None if self.end_line is None else self.end_line + line_offset
        raw = self.raw
        if raw is not None:
            raw = _rewrite_header(raw, new_file, new_line, new_end)
        return dataclasses.replace(
            self, file=new_file, line=new_line, end_line=new_end, raw=raw
        )


@dataclass(frozen=True)
class OutputLine:
    """One line of output that is not part of a message.

    Bare info output, lake's own lines, runtime ``PANIC`` lines, crash text,
    blank lines, and ``--json`` lines that are not messages.

    Attributes:
        text: The line without its terminator (a ``\\r`` of a ``\\r\\n``
            ending is not part of it).
        end: The terminator as found: ``"\\n"``, ``"\\r\\n"``, or ``""`` for
            a last line without one.
    """

    text: str
    end: str = "\n"

    @property
    def is_runtime_error(self) -> bool:
        """Whether the line comes from the Lean runtime (``PANIC at ...``, ``uncaught exception: ...``)."""
        return bool(_RUNTIME_RE.match(self.text))


#: What the parsers return: messages and the other lines, in output order.
Item = Union[Diagnostic, OutputLine]


# --------------------------------------------------------------------------
# text output


def _split_lines(text: str) -> list[tuple[str, str]]:
    """Split ``text`` into ``(line, terminator)`` pairs, losslessly.

    Only ``\\n`` ends a line (``str.splitlines`` would also split on form
    feeds and Unicode separators, which can occur inside Lean messages).
    """
    pieces = text.split("\n")
    out: list[tuple[str, str]] = []
    for piece in pieces[:-1]:
        if piece.endswith("\r"):
            out.append((piece[:-1], "\r\n"))
        else:
            out.append((piece, "\n"))
    if pieces[-1]:
        out.append((pieces[-1], ""))
    return out


def _diagnostic_from_block(
    header: re.Match[str], block: list[tuple[str, str]]
) -> Diagnostic:
    """Build a Diagnostic from a header match and its lines (header first)."""
    lines = [header.group("message") or ""] + [line for line, _ in block[1:]]
    end_line = header.group("end_line")
    end_column = header.group("end_column")
    return Diagnostic(
        file=header.group("file"),
        line=int(header.group("line")),
        column=int(header.group("column")),
        end_line=None if end_line is None else int(end_line),
        end_column=None if end_column is None else int(end_column),
        severity=header.group("severity"),
        message="\n".join(lines).rstrip("\n"),
        name=header.group("name") or None,
        raw="".join(line + end for line, end in block),
    )


def parse_text(text: str) -> list[Item]:
    """Parse ``lean``'s plain-text output into messages and other lines, in order.

    A line matching the header form starts a :class:`Diagnostic`; the lines
    after it, up to the next header or runtime line, are its continuation
    lines.  Lines before the first header and runtime lines become
    :class:`OutputLine` items.  Bare info output right after a message is
    indistinguishable from continuation lines and is attached to the message.

    The parse is lossless: ``render_text(parse_text(text)) == text``.
    """
    items: list[Item] = []
    header: re.Match[str] | None = None
    block: list[tuple[str, str]] = []

    def flush() -> None:
        nonlocal header, block
        if header is not None:
            items.append(_diagnostic_from_block(header, block))
        header, block = None, []

    for line, end in _split_lines(text):
        match = _HEADER_RE.match(line)
        if match is not None:
            flush()
            header, block = match, [(line, end)]
        elif _RUNTIME_RE.match(line):
            flush()
            items.append(OutputLine(line, end))
        elif header is not None:
            block.append((line, end))
        else:
            items.append(OutputLine(line, end))
    flush()
    return items


def _rewrite_header(
    raw: str, file: str, line: int, end_line: int | None
) -> str | None:
    """Put ``file``, ``line`` and ``end_line`` into the header of ``raw``; ``None`` if it has none."""
    first, sep, rest = raw.partition("\n")
    cr = "\r" if first.endswith("\r") else ""
    head = first[:-1] if cr else first
    match = _HEADER_RE.match(head)
    if match is None:
        return None
    replacements = [("file", file), ("line", str(line))]
    if match.group("end_line") is not None and end_line is not None:
        replacements.append(("end_line", str(end_line)))
    for group, value in sorted(
        replacements, key=lambda r: match.start(r[0]), reverse=True
    ):
        head = head[: match.start(group)] + value + head[match.end(group) :]
    return head + cr + sep + rest


# --------------------------------------------------------------------------
# --json output and REPL messages


def _position(value: Any) -> tuple[int, int] | None:
    """``(line, column)`` from a ``{"line": L, "column": C}`` object, else ``None``."""
    if not isinstance(value, Mapping):
        return None
    line, column = value.get("line"), value.get("column")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (line, column)):
        return None
    return line, column  # type: ignore[return-value]


def _name_from_kind(kind: str | None) -> str | None:
    """The error name of a ``kind`` such as ``lean.unknownIdentifier._namedError``."""
    if kind and kind.endswith(_NAMED_ERROR_SUFFIX):
        return kind[: -len(_NAMED_ERROR_SUFFIX)] or None
    return None


def _diagnostic_from_json(obj: Mapping[str, Any]) -> Diagnostic | None:
    """A Diagnostic from a decoded ``lean --json`` message, ``None`` if it is not one.

    Required: ``severity``, ``pos`` and ``data``.  Tolerated when missing:
    ``fileName`` (becomes ``""``), ``endPos``, ``kind``, ``caption``,
    ``isSilent``, ``keepFullRange``.
    """
    severity = obj.get("severity")
    data = obj.get("data")
    pos = _position(obj.get("pos"))
    if not isinstance(severity, str) or severity not in _SEVERITY_ALIASES:
        return None
    if not isinstance(data, str) or pos is None:
        return None
    end = _position(obj.get("endPos"))
    file = obj.get("fileName")
    kind = obj.get("kind")
    kind = kind if isinstance(kind, str) else None
    caption = obj.get("caption")
    message = f"{caption}:\n{data}" if isinstance(caption, str) and caption else data
    return Diagnostic(
        file=file if isinstance(file, str) else "",
        line=pos[0],
        column=pos[1],
        end_line=None if end is None else end[0],
        end_column=None if end is None else end[1],
        severity=severity,
        message=message.rstrip("\n"),
        name=_name_from_kind(kind),
        kind=kind,
    )


def parse_json_line(line: str) -> Item:
    """Parse one line of ``lean --json`` output (streaming-friendly).

    A JSON object with a message's shape becomes a :class:`Diagnostic`;
    anything else (lake's ``✔ [3/4] Built X``, ``error: ...`` lines, crash
    text, blank lines, other JSON) becomes an :class:`OutputLine` holding the
    line as it was.  A trailing ``\\n`` or ``\\r\\n`` is ignored.
    """
    text = line[:-1] if line.endswith("\n") else line
    text = text[:-1] if text.endswith("\r") else text
    candidate = text.strip()
    if candidate.startswith("{") and candidate.endswith("}"):
        try:
            obj = json.loads(candidate)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            diag = _diagnostic_from_json(obj)
            if diag is not None:
                return diag
    return OutputLine(text)


def to_json_line(diag: Diagnostic) -> str:
    """``diag`` as one line of ``lean --json`` (the nine keys, sorted, compact, UTF-8 unescaped).

    What a warm check prints for the messages it got from the REPL, so its
    output reads exactly as a cold ``lake env lean --json`` check's.
    """
    end = None
    if diag.end_line is not None:
        end = {"column": diag.end_column if diag.end_column is not None else diag.column, "line": diag.end_line}
    obj = {
        "caption": "",
        "data": diag.message,
        "endPos": end,
        "fileName": diag.file,
        "isSilent": False,
        "keepFullRange": False,
        "kind": diag.kind or ("hasSorry" if diag.is_sorry else "[anonymous]"),
        "pos": {"column": diag.column, "line": diag.line},
        "severity": diag.severity,
    }
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Goal:
    """A goal Lean showed at a place of the file: at a ``sorry``, or before a tactic step.

    Attributes:
        line, column, end_line, end_column: Where (file lines, 1-based; columns 0-based).
        goal: The goal(s) as Lean prints them (``h : p\n⊢ q``; several goals
            are separated by blank lines). Empty once a proof is complete.
        kind: ``"sorry"`` or ``"tactic"``.
        tactic: The tactic's text (``kind == "tactic"``), else ``None``.
    """

    line: int
    column: int
    end_line: int | None
    end_column: int | None
    goal: str
    kind: str
    tactic: str | None = None

    def render(self) -> str:
        """``3:2 sorry`` / ``3:2 simp`` then the goal, indented."""
        what = self.tactic if self.kind == "tactic" else "sorry"
        head = f"{self.line}:{self.column} {what}"
        body = "\n".join("  " + line if line else "" for line in (self.goal or "no goals").split("\n"))
        return f"{head}\n{body}"


def parse_json_lines(lines: Iterable[str] | str) -> list[Item]:
    """Parse ``lean --json`` output, one item per line, in order; nothing is dropped.

    ``lines`` is an iterable of lines (with or without terminators), or the
    whole output as one string, which is split on ``\\n``.
    """
    if isinstance(lines, str):
        lines = [line for line, _ in _split_lines(lines)]
    return [parse_json_line(line) for line in lines]


def from_repl_message(msg: Mapping[str, Any], file: str = "<cell>") -> Diagnostic:
    """Convert a Lean REPL message to a :class:`Diagnostic`.

    The REPL's shape is ``{"severity": "info|warning|error", "pos": {"line",
    "column"}, "endPos": {...} | null, "data": "..."}``; ``info`` becomes
    ``information``.  Positions are kept as given (the REPL reports tactic-mode
    messages at line 0); use :meth:`Diagnostic.shifted` to move them.

    Raises:
        ValueError: if ``msg`` lacks a known severity, a position or the data.
    """
    if not isinstance(msg, Mapping):
        raise ValueError(f"a REPL message is a JSON object, got {type(msg).__name__}")
    severity = msg.get("severity")
    if not isinstance(severity, str) or severity not in _SEVERITY_ALIASES:
        raise ValueError(
            f"REPL message has severity {severity!r}; expected info, warning or error"
        )
    pos = _position(msg.get("pos"))
    if pos is None:
        raise ValueError(
            f"REPL message has no valid 'pos' (got {msg.get('pos')!r}); "
            'expected {"line": L, "column": C}'
        )
    data = msg.get("data")
    if not isinstance(data, str):
        raise ValueError(f"REPL message has no string 'data' (got {data!r})")
    end = _position(msg.get("endPos"))
    return Diagnostic(
        file=file,
        line=pos[0],
        column=pos[1],
        end_line=None if end is None else end[0],
        end_column=None if end is None else end[1],
        severity=severity,
        message=data.rstrip("\n"),
    )


# --------------------------------------------------------------------------
# rendering and summaries


def render_one(
    diag: Diagnostic,
    file: str | None = None,
    line_offset: int = 0,
    *,
    end_pos: bool = False,
) -> str:
    """Render one message in Lean's text form, ending with a newline.

    ``FILE:LINE:COL: SEVERITY[(NAME)]: MESSAGE`` with ``file`` replacing the
    message's file and ``line_offset`` added to its lines (to show positions
    against a cell's own lines).  Information messages get an ``info:``
    header so their position shows.  ``end_pos=True`` adds
    ``-ENDLINE:ENDCOL`` when known, like ``-DprintMessageEndPos=true``.
    Always built from the fields; :func:`render_text` uses ``raw`` instead.
    """
    where = f"{diag.file if file is None else file}:{diag.line + line_offset}:{diag.column}"
    if end_pos and diag.end_line is not None and diag.end_column is not None:
        where += f"-{diag.end_line + line_offset}:{diag.end_column}"
    label = "info" if diag.severity == "information" else diag.severity
    if diag.name:
        label += f"({diag.name})"
    text = f"{where}: {label}: {diag.message}"
    return text if text.endswith("\n") else text + "\n"


def render_text(items: Iterable[Item]) -> str:
    """Render items as Lean's familiar text output.

    A message parsed from text gives back its exact original text, so
    ``render_text(parse_text(t)) == t``; other messages are rendered by
    :func:`render_one`; output lines come out as they were.
    """
    parts: list[str] = []
    for item in items:
        if isinstance(item, Diagnostic):
            parts.append(item.raw if item.raw is not None else render_one(item))
        else:
            parts.append(item.text + item.end)
    return "".join(parts)


def diagnostics(items: Iterable[Item]) -> list[Diagnostic]:
    """Only the messages among ``items``, in order."""
    return [item for item in items if isinstance(item, Diagnostic)]


def has_errors(items: Iterable[Item]) -> bool:
    """Whether any of ``items`` is an error message."""
    return any(isinstance(item, Diagnostic) and item.is_error for item in items)


def summarize(items: Iterable[Item]) -> dict[str, int]:
    """Count messages by severity: ``{"error": n, "warning": n, "information": n}``."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for item in items:
        if isinstance(item, Diagnostic):
            counts[item.severity] += 1
    return counts


def format_summary(counts: Mapping[str, int]) -> str:
    """Describe counts from :func:`summarize`: ``"2 errors, 1 warning"``, or ``"no messages"``."""
    words = {
        "error": ("error", "errors"),
        "warning": ("warning", "warnings"),
        "information": ("info message", "info messages"),
    }
    parts = []
    for severity in SEVERITIES:
        n = counts.get(severity, 0)
        if n:
            singular, plural = words[severity]
            parts.append(f"{n} {singular if n == 1 else plural}")
    return ", ".join(parts) if parts else "no messages"
