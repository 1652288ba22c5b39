"""Warm checks through the Lean REPL (leanprover-community/repl).

Checking a file with ``lake env lean`` pays for its imports every time:
``import Mathlib`` is seconds of loading and gigabytes of memory, per cell.
The Lean REPL keeps environments alive between requests, so this module runs
ONE REPL process per sandbox session (a command whose stdin stays open) and:

* splits a cell's file into its import header and its body
  (:func:`split_header`); the header is elaborated once per distinct header
  (an environment kept per header, LRU-bounded), the body runs in it, and
  the positions of its messages are shifted back to the file's own lines, so
  a warm check reads exactly as a cold ``lake env lean --json`` would;
* chains cells like a notebook (``%%lean_sandbox --chain``): a cell runs in
  the environment left by the cell run before it; re-running a cell rewinds
  to the environment it started from, so declarations never stack up;
* reports the goals of ``sorry``\\ s and the proof states of tactic blocks;
* enforces the per-check timeout the REPL lacks (kill, restart, replay the
  headers and chained cells still needed), restarts a REPL that crashed or
  grew past a memory bound, and falls back to the plain cold check where the
  sandbox has no REPL.

The protocol (see the repl's README and ``lean-corpus/repl`` transcripts):
requests are JSON objects separated by blank lines; each response is a
pretty-printed JSON object followed by a blank line. A command response has
``env`` and, when non-empty, ``messages``, ``sorries``, ``tactics``; a tactic
response ``proofState``, ``goals``, ``proofStatus``; a failure is
``{"message": ...}``. Key order is not significant.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from atp_notebook.backends.base import CANCEL_EXIT_CODE, TIMEOUT_EXIT_CODE, AtpError
from atp_notebook.check import CheckResult
from atp_notebook.diagnostics import Diagnostic, Goal, to_json_line

__all__ = [
    "CommandResponse",
    "Header",
    "Message",
    "Pos",
    "ReplFailure",
    "Sorry",
    "Tactic",
    "TacticResponse",
    "encode_request",
    "parse_response",
    "parse_transcript",
    "split_blocks",
    "split_header",
]


# -- the protocol's types -------------------------------------------------------------


@dataclass(frozen=True)
class Pos:
    """A position: ``line`` 1-based, ``column`` 0-based (code points), as Lean counts."""

    line: int
    column: int

    @classmethod
    def parse(cls, value: Any) -> Pos | None:
        if not isinstance(value, Mapping):
            return None
        line, column = value.get("line"), value.get("column")
        if not isinstance(line, int) or not isinstance(column, int):
            return None
        return cls(line, column)


@dataclass(frozen=True)
class Message:
    """A message of a REPL response (``severity`` is ``info``, ``warning`` or ``error``)."""

    severity: str
    pos: Pos
    end_pos: Pos | None
    data: str

    @classmethod
    def parse(cls, value: Mapping[str, Any]) -> Message:
        pos = Pos.parse(value.get("pos"))
        severity, data = value.get("severity"), value.get("data")
        if pos is None or not isinstance(severity, str) or not isinstance(data, str):
            raise ValueError(f"not a REPL message: {value!r}")
        return cls(severity, pos, Pos.parse(value.get("endPos")), data)

    def to_diagnostic(self, file: str, line_offset: int = 0) -> Diagnostic:
        """This message as a :class:`Diagnostic` of ``file``, ``line_offset`` lines further down."""
        end = self.end_pos
        return Diagnostic(
            file=file,
            line=self.pos.line + line_offset,
            column=self.pos.column,
            end_line=end.line + line_offset if end else None,
            end_column=end.column if end else None,
            severity=self.severity,
            message=self.data,
        )


@dataclass(frozen=True)
class Sorry:
    """A ``sorry`` and its goal. Sorries found by a tactic step have no position."""

    goal: str
    proof_state: int | None
    pos: Pos | None
    end_pos: Pos | None

    @classmethod
    def parse(cls, value: Mapping[str, Any]) -> Sorry:
        goal = value.get("goal")
        if not isinstance(goal, str):
            raise ValueError(f"not a REPL sorry: {value!r}")
        return cls(goal, _int(value.get("proofState")), Pos.parse(value.get("pos")), Pos.parse(value.get("endPos")))


@dataclass(frozen=True)
class Tactic:
    """One tactic step (``allTactics``): the goals before it, where it is."""

    tactic: str
    goals: str
    proof_state: int | None
    pos: Pos | None
    end_pos: Pos | None
    used_constants: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Mapping[str, Any]) -> Tactic:
        tactic, goals = value.get("tactic"), value.get("goals")
        if not isinstance(tactic, str) or not isinstance(goals, str):
            raise ValueError(f"not a REPL tactic: {value!r}")
        used = value.get("usedConstants") or ()
        return cls(tactic, goals, _int(value.get("proofState")), Pos.parse(value.get("pos")),
                   Pos.parse(value.get("endPos")), tuple(str(c) for c in used))


@dataclass(frozen=True)
class CommandResponse:
    """The answer to a ``cmd`` (or ``path``) request: the new environment and what Lean said."""

    env: int
    messages: tuple[Message, ...] = ()
    sorries: tuple[Sorry, ...] = ()
    tactics: tuple[Tactic, ...] = ()
    infotree: Any = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def has_errors(self) -> bool:
        return any(m.severity == "error" for m in self.messages)


@dataclass(frozen=True)
class TacticResponse:
    """The answer to a ``tactic`` request (or to a ``pickleTo`` of a proof state)."""

    proof_state: int
    goals: tuple[str, ...]
    proof_status: str | None = None
    messages: tuple[Message, ...] = ()
    sorries: tuple[Sorry, ...] = ()
    traces: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ReplFailure:
    """``{"message": ...}``: the REPL refused the request (unknown environment, Lean error, ...)."""

    message: str


Response = CommandResponse | TacticResponse | ReplFailure


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_response(value: Mapping[str, Any]) -> Response:
    """Type one decoded response object; :class:`ValueError` when it is none of the three shapes."""
    if not isinstance(value, Mapping):
        raise ValueError(f"a REPL response is a JSON object, not {type(value).__name__}")
    messages = tuple(Message.parse(m) for m in value.get("messages") or ())
    sorries = tuple(Sorry.parse(s) for s in value.get("sorries") or ())
    if _int(value.get("env")) is not None:
        return CommandResponse(
            env=value["env"],
            messages=messages,
            sorries=sorries,
            tactics=tuple(Tactic.parse(t) for t in value.get("tactics") or ()),
            infotree=value.get("infotree"),
            raw=value,
        )
    if _int(value.get("proofState")) is not None and "goals" in value:
        return TacticResponse(
            proof_state=value["proofState"],
            goals=tuple(str(g) for g in value.get("goals") or ()),
            proof_status=value.get("proofStatus"),
            messages=messages,
            sorries=sorries,
            traces=tuple(str(t) for t in value.get("traces") or ()),
            raw=value,
        )
    if isinstance(value.get("message"), str) and len(value) == 1:
        return ReplFailure(value["message"])
    raise ValueError(f"not a REPL response: {json.dumps(value, ensure_ascii=False)[:200]}")


def encode_request(request: Mapping[str, Any]) -> str:
    """One request on the wire: compact-ish JSON on one line, then the blank line that ends it.

    ``json.dumps`` escapes newlines inside strings, so the REPL's rule of
    joining a request's raw lines never changes what is sent.
    """
    return json.dumps(request, ensure_ascii=False) + "\n\n"


def split_blocks(text: str, joiner: str = "") -> list[str]:
    """Split a transcript into its blank-line separated blocks, as the REPL reads requests.

    Each block's lines are stripped of trailing whitespace and joined without
    a separator (the REPL's own rule: a raw newline inside a request
    disappears); blank lines only separate. ``joiner="\\n"`` keeps a
    block's lines apart instead (its text as written, right-stripped).
    """
    blocks: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line:
            current.append(line)
        elif current:
            blocks.append(joiner.join(current))
            current = []
    if current:
        blocks.append(joiner.join(current))
    return blocks


def iter_responses(text: str) -> Iterator[Response]:
    """The responses of a REPL's output (pretty-printed objects, each followed by a blank line)."""
    for block in _output_blocks(text):
        yield parse_response(json.loads(block))


def _output_blocks(text: str) -> list[str]:
    """Responses are separated by blank lines; JSON never holds a raw newline inside a string."""
    return [b for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


def parse_transcript(requests: str, responses: str) -> list[tuple[Mapping[str, Any], Response]]:
    """Pair a transcript's requests (``*.in``) with its responses (``*.expected.out``)."""
    reqs = [json.loads(b) for b in split_blocks(requests)]
    resps = list(iter_responses(responses))
    if len(reqs) != len(resps):
        raise ValueError(f"{len(reqs)} requests but {len(resps)} responses")
    return list(zip(reqs, resps, strict=True))


# -- headers ---------------------------------------------------------------------------

_IMPORT = re.compile(r"^(?:(?:public|private|meta)\s+)*import\s+\S")
_HEADER_KEYWORD = re.compile(r"^(?:module|prelude)\s*(?:--.*)?$")


@dataclass(frozen=True)
class Header:
    """A file split into its import header and body.

    Attributes
    ----------
    imports:
        The header's import lines (each stripped), in order; ``module`` and
        ``prelude`` lines count as header lines too.
    import_lines:
        The 1-based file line of each entry of :attr:`imports`.
    body:
        The file from line :attr:`offset` + 1 on, exactly as written.
    offset:
        Lines before the body: blank lines, comments and imports. A body
        position on line L is line L + offset of the file.
    """

    imports: tuple[str, ...]
    import_lines: tuple[int, ...]
    body: str
    offset: int

    @property
    def text(self) -> str:
        """The header command sent to the REPL: the import lines, one per line."""
        return "\n".join(self.imports)

    def file_line(self, header_line: int) -> int:
        """The file line of line ``header_line`` of :attr:`text`."""
        if 1 <= header_line <= len(self.import_lines):
            return self.import_lines[header_line - 1]
        return header_line


def split_header(text: str) -> Header | None:
    """Split ``text`` at the end of its import header; ``None`` when it can't be split by lines.

    The header is the longest run of leading lines that are blank, ``--``
    comments, ``/- ... -/`` comments (nested as Lean nests them), or header
    keywords (``import``, ``public import``, ``module``, ``prelude``). A doc
    comment (``/--``, ``/-!``) starts the body. A line that mixes an import
    with something else (``import A open B``), or a block comment that starts
    on an import line, makes the split ambiguous: ``None``, and the caller
    checks the file whole.
    """
    lines = text.split("\n")
    imports: list[str] = []
    import_lines: list[int] = []
    depth = 0  # nesting of /- -/ comments open at the start of a line
    offset = 0
    for number, line in enumerate(lines, 1):
        if depth:
            depth = _comment_depth(line, depth)
            if depth < 0:
                return None
            offset = number
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            offset = number
            continue
        if stripped.startswith("/-") and not stripped.startswith(("/--", "/-!")):
            depth = _comment_depth(stripped, 0)
            if depth < 0:
                return None
            if depth == 0 and not _only_comment(stripped):
                return None  # code after a one-line comment: not a header line
            offset = number
            continue
        code = stripped.split("--", 1)[0].rstrip()
        if _IMPORT.match(code) or _HEADER_KEYWORD.match(stripped):
            words = code.split()
            if "/-" in code or (_IMPORT.match(code) and not _one_import(words)):
                return None
            imports.append(code)
            import_lines.append(number)
            offset = number
            continue
        break
    else:
        offset = len(lines)
    body = "\n".join(lines[offset:])
    return Header(tuple(imports), tuple(import_lines), body, offset)


def _one_import(words: list[str]) -> bool:
    """``[public] [meta] import A.B`` (Lean 4 imports name one module per keyword; ``import A B`` too)."""
    rest = [w for w in words if w not in ("public", "private", "meta")]
    return len(rest) >= 2 and rest[0] == "import" and all(
        re.fullmatch(r"[^\s()\[\]{}:]+", w) and w not in ("open", "import") for w in rest[1:]
    )


def _comment_depth(line: str, depth: int) -> int:
    """The ``/- -/`` nesting depth after ``line``, starting at ``depth`` (-1: code after the close)."""
    i = 0
    while i < len(line):
        pair = line[i : i + 2]
        if pair == "/-":
            depth += 1
            i += 2
        elif pair == "-/" and depth:
            depth -= 1
            i += 2
            if depth == 0 and line[i:].strip() and not line[i:].strip().startswith("--"):
                return -1
        else:
            i += 1
    return depth


def _only_comment(stripped: str) -> bool:
    return _comment_depth(stripped, 0) == 0



# -- one REPL process ----------------------------------------------------------------------

#: How the REPL is started in the session's workdir: Lake puts the project's and
#: Mathlib's oleans on ``LEAN_PATH`` and runs ``repl`` from ``PATH`` (the
#: project's image builds it at the image's toolchain).
DEFAULT_REPL_COMMAND = "lake env repl"
#: Environment variable tagging the REPL's processes (the memory probe finds them by it).
TAG_VAR = "ATP_REPL_TAG"
#: Stray lines kept per request when the REPL prints something that is no response.
_MAX_STRAY = 1000
#: What a shell or Lake says when the REPL binary is not there.
_MISSING = re.compile(
    r"not found|no such file|could not execute|unknown executable|cannot execute|"
    r"failed to execute|permission denied",
    re.IGNORECASE,
)


class ReplError(AtpError):
    """The Lean REPL could not answer."""


class ReplUnavailable(ReplError):
    """The sandbox has no Lean REPL (the command was not found)."""


class ReplCrashed(ReplError):
    """The REPL process ended; ``exit_code`` and the tail of its ``stderr`` say how."""

    def __init__(self, message: str, exit_code: int, stderr: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr = stderr


class ReplTimeout(ReplError):
    """A request took longer than its timeout (the process is killed by the caller)."""


class ReplProcess:
    """One running REPL: write a request, read its response.

    ``handle`` is a :class:`~atp_notebook.backends.machinery.StreamingHandle`
    started with ``stdin=True``. Counts what it sends and receives
    (:attr:`requests`, :attr:`bytes_sent`, :attr:`bytes_received`).
    """

    def __init__(self, handle: Any, tag: str = "") -> None:
        self.handle = handle
        self.tag = tag
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.answered = 0  # responses read
        self.log: list[Mapping[str, Any]] = []  # requests sent, in order (for tests and stats)
        self._cursor = handle.cursor()
        self._pending: deque[str] = deque()

    @property
    def alive(self) -> bool:
        return not self.handle.finished

    def request(
        self,
        request: Mapping[str, Any],
        timeout_s: float | None = None,
        tick: Callable[[], float] | None = None,
    ) -> tuple[Response, list[str]]:
        """Send ``request``; its typed response and any stray lines printed before it.

        Raises :class:`ReplTimeout` after ``timeout_s`` (the process is left
        running: kill it), :class:`ReplCrashed` if the process ends first, and
        lets :class:`KeyboardInterrupt` through. ``tick`` is called while
        waiting (a live view moving its clock); it returns seconds until it
        wants the next call.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        data = encode_request(request).encode("utf-8")
        try:
            self.handle.write(data)
        except (OSError, ValueError):
            raise self._crashed() from None
        self.requests += 1
        self.bytes_sent += len(data)
        self.log.append(request)
        buffer: list[str] = []
        stray: list[str] = []
        while True:
            while self._pending:
                line = self._pending.popleft()
                if line.strip():
                    buffer.append(line)
                    continue
                if not buffer:
                    continue
                decoded = _decode(buffer)
                if decoded is None:
                    continue  # a blank line inside stray output: read on
                value, extra = decoded
                stray.extend(extra[:_MAX_STRAY])
                self.answered += 1
                return parse_response(value), stray
            wait = min(max(tick(), 0.005), 0.5) if tick is not None else 0.5
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReplTimeout(f"the Lean REPL gave no answer within {timeout_s:g} s")
                wait = min(wait, left)
            lines, done = self._cursor.take(wait)
            if lines:
                self.bytes_received += sum(len(line) for line in lines) + len(lines)
                self._pending.extend(lines)
            elif done:
                if buffer:
                    decoded = _decode(buffer)
                    if decoded is not None:
                        self.answered += 1
                        return parse_response(decoded[0]), stray + decoded[1]
                raise self._crashed()

    def _crashed(self) -> ReplError:
        result = self.handle.wait()
        stderr = result.stderr.strip()
        tail = "\n".join(stderr.splitlines()[-20:])
        if self.answered == 0 and (result.exit_code == 127 or _MISSING.search(stderr)):
            return ReplUnavailable(tail or f"the REPL command exited with code {result.exit_code}")
        reason = f": {tail}" if tail else ""
        return ReplCrashed(f"the Lean REPL exited with code {result.exit_code}{reason}", result.exit_code, tail)

    def kill(self) -> None:
        self.handle.cancel()

    def close(self) -> None:
        """End the REPL: EOF on its stdin, then a kill if it is still there."""
        try:
            self.handle.close_stdin()
        except (OSError, ValueError, NotImplementedError):
            pass
        self.handle.cancel()


def _decode(buffer: list[str]) -> tuple[Any, list[str]] | None:
    """The JSON object the buffered lines end with, and the stray lines before it; None if none yet."""
    try:
        return json.loads("\n".join(buffer)), []
    except ValueError:
        pass
    for i in range(1, len(buffer)):
        if buffer[i].startswith("{"):
            try:
                return json.loads("\n".join(buffer[i:])), buffer[:i]
            except ValueError:
                continue
    return None


def memory_probe_script(tag: str) -> str:
    """A POSIX sh script printing the summed resident memory (KiB) of the processes tagged ``tag``."""
    entry = shlex.quote(f"{TAG_VAR}={tag}")
    return (
        f"t={entry}; kb=0; "
        'for f in $(grep -lsxzF "$t" /proc/[0-9]*/environ 2>/dev/null); do '
        "p=${f%/environ}; "
        "r=$(sed -n 's/^VmRSS:[^0-9]*\\([0-9][0-9]*\\).*/\\1/p' \"$p/status\" 2>/dev/null); "
        "kb=$((kb + ${r:-0})); done; echo $kb"
    )


# -- warm checks -------------------------------------------------------------------------------

#: Import roots whose oleans never change inside a session (the toolchain and
#: the image's Mathlib): their header environments are kept until evicted.
#: A header importing anything else (the project's own modules) is reloaded
#: after any other command ran in the session (a ``lake build`` may have
#: rebuilt what it imports).
LIBRARY_ROOTS = frozenset({
    "Init", "Std", "Lean", "Lake", "Mathlib", "Batteries", "Aesop", "Qq", "ProofWidgets",
    "Plausible", "ImportGraph", "LeanSearchClient", "Cli",
})


def _library_only(header: Header) -> bool:
    for line in header.imports:
        words = [w for w in line.split() if w not in ("public", "private", "meta", "import")]
        if line.split()[0] in ("module", "prelude"):
            continue
        if any(w.split(".")[0] not in LIBRARY_ROOTS for w in words):
            return False
    return True


@dataclass
class _Link:
    """One cell of a chain: its identity, its body, the env it left (None once the REPL restarted)."""

    cell: str
    body: str
    env: int | None
    options: Mapping[str, Any] = field(default_factory=dict)  # sent with it (allTactics): a replay sends them again


@dataclass
class _HeaderEnv:
    env: int
    generation: int  # the kernel's command count when it was loaded


class WarmChecker:
    """The session's Lean REPL, its header environments and its chain of cells.

    Owned by a :class:`~atp_notebook.kernel.KernelSession` (one per kernel);
    :meth:`check` is what a ``%%lean_sandbox`` cell calls. The REPL starts on
    first use and is restarted whenever it is gone (killed on a timeout or an
    interrupt, crashed, over :attr:`memory_mb`, or its sandbox replaced);
    environments are then rebuilt as cells need them.

    Parameters
    ----------
    kernel:
        The kernel session the REPL runs in.
    command:
        How the REPL is started in the workdir (:data:`DEFAULT_REPL_COMMAND`).
    max_headers:
        Header environments kept (least recently used ones are dropped). The
        REPL never frees an environment: memory is given back by restarting.
    memory_mb:
        Resident memory of the REPL (MiB) beyond which it is restarted before
        the next check; 0 disables the bound. Measured after a check (at most
        once per ``probe_interval_s``, and after the first check of each
        process), off the check's critical path, from ``/proc`` in the sandbox.
    """

    def __init__(
        self,
        kernel: Any,
        *,
        command: str = DEFAULT_REPL_COMMAND,
        max_headers: int = 4,
        memory_mb: float = 12288,
        probe_interval_s: float = 10.0,
    ) -> None:
        self.kernel = kernel
        self.command = command
        self.max_headers = max(1, max_headers)
        self.memory_mb = memory_mb
        self.probe_interval_s = probe_interval_s
        self._last_probe: float | None = None
        self.process: ReplProcess | None = None
        self.unavailable: str | None = None  # why there is no REPL, once known
        self.starts = 0
        self.requests = 0  # over every process
        self.bytes_sent = 0
        self.rss_kb: int | None = None  # the last probe's answer
        self._headers: OrderedDict[str, _HeaderEnv] = OrderedDict()
        self._chain_header: Header | None = None
        self._chain: list[_Link] = []
        self._probe: threading.Thread | None = None
        self._lock = threading.Lock()
        self._tick: Callable[[], float] | None = None  # the running check's view, while it waits

    # -- the process -------------------------------------------------------------------------
    def _ensure(self) -> ReplProcess:
        if self._probe is not None:
            self._probe.join()
            self._probe = None
        proc = self.process
        if proc is not None and proc.alive and self.memory_mb and self.rss_kb is not None:
            if self.rss_kb > self.memory_mb * 1024:
                used = self.rss_kb / 1024
                self.kernel.say(
                    f"The Lean REPL used {used:,.0f} MiB, over its bound of {self.memory_mb:,.0f} MiB "
                    "(LeanSandbox.repl_memory_mb): restarted it; imports and chained cells are reloaded as needed."
                )
                self.reset()
                proc = None
        if proc is not None and proc.alive:
            return proc
        self._forget_envs()
        tag = uuid.uuid4().hex
        handle = self.kernel.start(self.command, env={TAG_VAR: tag}, timeout_s=0, sync_in=False,
                                   stdin=True, track=False)
        self.process = ReplProcess(handle, tag)
        self.rss_kb = None
        self.starts += 1
        return self.process

    def _forget_envs(self) -> None:
        """The REPL's envs are gone: drop the header map, keep the chain's cells for a replay."""
        self._headers.clear()
        for link in self._chain:
            link.env = None

    def reset(self) -> None:
        """Stop the REPL (if any); caches are rebuilt on the next check. The chain is kept."""
        proc, self.process = self.process, None
        if proc is not None:
            proc.close()
        self._forget_envs()
        self.rss_kb = None

    def close(self) -> None:
        """Stop the REPL and forget everything (the kernel session closes)."""
        self.reset()
        self._chain, self._chain_header = [], None
        self.unavailable = None

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def cancel(self) -> bool:
        """Kill the REPL if a check is waiting on it (the cell then reports the cancel)."""
        proc = self.process
        if proc is not None and self.busy:
            proc.kill()
            return True
        return False

    def _send(self, request: Mapping[str, Any], deadline: float | None) -> tuple[Response, list[str]]:
        proc = self._ensure()
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        before = proc.bytes_sent
        try:
            return proc.request(request, timeout, self._tick)
        finally:
            self.requests += 1
            self.bytes_sent += proc.bytes_sent - before

    # -- environments ------------------------------------------------------------------------------
    def _header_env(self, header: Header, deadline: float | None) -> tuple[int | None, list[Diagnostic], bool]:
        """The env of ``header`` (loading it if needed): ``(env, header messages, was cached)``.

        A header with errors (a missing module) is not kept, and its env is
        None: the body is not run, as ``lean`` would not run it either.
        """
        key = header.text
        generation = getattr(self.kernel, "generation", 0)
        self._ensure()
        cached = self._headers.get(key)
        if cached is not None and (cached.generation == generation or _library_only(header)):
            self._headers.move_to_end(key)
            return cached.env, [], True
        response, _ = self._send({"cmd": header.text}, deadline)
        if isinstance(response, ReplFailure):
            raise ReplError(f"the Lean REPL refused the imports: {response.message}")
        if not isinstance(response, CommandResponse):
            raise ReplError("the Lean REPL answered the imports with a proof state")
        messages = [
            m.to_diagnostic("", header.file_line(m.pos.line) - m.pos.line) for m in response.messages
        ]
        if response.has_errors:
            return None, messages, False
        self._headers[key] = _HeaderEnv(response.env, generation)
        self._headers.move_to_end(key)
        while len(self._headers) > self.max_headers:
            self._headers.popitem(last=False)
        return response.env, messages, False

    def _chain_start(self, cell: str, header: Header, deadline: float | None) -> tuple[int | None, list[Diagnostic], bool]:
        """Where a chained cell starts: rewinds to a re-run cell's start, else the chain's tip."""
        if header.imports or self._chain_header is None:
            # a cell with imports (or the first chained cell) starts a new chain
            restart = self._chain_header is None or header.text != self._chain_header.text
            if restart or (self._chain and self._chain[0].cell != cell and header.imports):
                self._chain = []
            self._chain_header = header
        index = next((i for i, link in enumerate(self._chain) if link.cell == cell), None)
        if index is not None:
            del self._chain[index:]  # re-running a cell rewinds the chain to where it started
        env, messages, cached = self._header_env(self._chain_header, deadline)
        if env is None:
            return None, messages, False
        replayed = False
        for link in self._chain:
            if link.env is None:  # the REPL restarted: rebuild the chain's envs in order
                response, _ = self._send({"cmd": link.body, "env": env, **link.options}, deadline)
                if not isinstance(response, CommandResponse):
                    raise ReplError(f"replaying chained cell {link.cell!r} failed: {response}")
                link.env = response.env
                replayed = True
            env = link.env
        return env, messages, cached and not replayed

    # -- a check ---------------------------------------------------------------------------------
    def check(
        self,
        file: str,
        text: str,
        *,
        cell: str | None = None,
        chain: bool = False,
        goals: bool = True,
        timeout_s: float | None = None,
        sink: Any = None,
    ) -> CheckResult:
        """Check ``text`` (the content of ``file``, relative to the workdir) in the REPL.

        ``cell`` identifies the cell for ``chain`` (default: the text). Raises
        :class:`ReplUnavailable` when the sandbox has no REPL (the caller falls
        back to the cold check); a crash, timeout or interrupt is reported in
        the result, and the REPL restarts on the next check.
        """
        with self._lock:
            self._tick = getattr(sink, "tick", None)
            try:
                return self._check(file, text, cell=cell if cell is not None else text, chain=chain,
                                   goals=goals, timeout_s=timeout_s, sink=sink)
            finally:
                self._tick = None

    def _check(self, file: str, text: str, *, cell: str, chain: bool, goals: bool,
               timeout_s: float | None, sink: Any) -> CheckResult:
        started = time.monotonic()
        deadline = None if not timeout_s else started + timeout_s
        self.kernel.sync_in(cell_file=file)
        header = split_header(text)
        diags: list[Diagnostic] = []
        goal_list: list[Goal] = []
        warm = False
        exit_code, stderr, interrupted = 0, "", False
        try:
            if header is None:  # not splittable by lines: the whole file, imports and all
                header = Header((), (), text, 0)
                env: int | None = None
                request: dict[str, Any] = {"cmd": text}
                diags = []
            else:
                if chain:
                    env, diags, warm = self._chain_start(cell, header, deadline)
                else:
                    env, diags, warm = self._header_env(header, deadline)
                request = {"cmd": header.body, "env": env}
            if header.imports and env is None:
                exit_code = 1  # the imports failed: like lean, stop there
                stderr = "" if diags else "the Lean REPL could not load the imports"
            else:
                if goals:
                    request["allTactics"] = True
                response, stray = self._send(request, deadline)
                if isinstance(response, ReplFailure):
                    exit_code, stderr = 1, f"Lean REPL: {response.message}"
                elif isinstance(response, CommandResponse):
                    diags += [m.to_diagnostic(file, header.offset) for m in response.messages]
                    goal_list = _goals(response, header.offset)
                    if chain:
                        options = {k: v for k, v in request.items() if k not in ("cmd", "env")}
                        self._chain.append(_Link(cell, header.body, response.env, options))
                    exit_code = 1 if any(d.is_error for d in diags) else 0
                if stray:
                    stderr = "\n".join(stray)
        except ReplUnavailable as exc:
            self.unavailable = str(exc)
            self.reset()
            raise
        except ReplTimeout:
            self.reset()
            exit_code = TIMEOUT_EXIT_CODE
            stderr = (f"atp_notebook: the check timed out after {timeout_s:g} s; the Lean REPL was killed "
                      "and starts again with the next check\n")
        except ReplCrashed as exc:
            self.reset()
            exit_code = exc.exit_code or 1
            if exit_code == CANCEL_EXIT_CODE:  # cancel() from another thread (the session panel)
                stderr = "atp_notebook: the check was cancelled; the Lean REPL starts again with the next check\n"
            else:
                stderr = f"{exc}\natp_notebook: the Lean REPL crashed; it starts again with the next check\n"
        except KeyboardInterrupt:
            self.reset()
            exit_code, interrupted = CANCEL_EXIT_CODE, True
        diags = [d if d.file else dataclasses.replace(d, file=file) for d in diags]
        lines = [to_json_line(d) for d in diags]
        if sink is not None and lines:
            sink.feed_lines(lines, dict(enumerate(diags)))
        self._schedule_probe()
        try:
            self.kernel.sync_out()
        except Exception as exc:  # noqa: BLE001 - the check's own outcome must still be shown
            self.kernel.say(f"Could not sync files back from the sandbox: {exc}")
        backend = self.kernel.backend.name if self.kernel.backend is not None else self.kernel.backend_name
        return CheckResult(
            exit_code=exit_code,
            stdout="".join(line + "\n" for line in lines),
            stderr=stderr,
            duration_s=time.monotonic() - started,
            file=file,
            diagnostics=diags,
            path=self.kernel.workdir / file,
            command=f"Lean REPL ({self.command})",
            interrupted=interrupted,
            backend=backend,
            engine="repl",
            warm=warm,
            goals=goal_list,
        )

    # -- memory ------------------------------------------------------------------------------------
    def _schedule_probe(self) -> None:
        """Measure the REPL's memory on a thread; the next check acts on the answer."""
        proc = self.process
        if not self.memory_mb or proc is None or not proc.alive or self.kernel.session is None:
            return
        now = time.monotonic()
        if self.rss_kb is not None and self._last_probe is not None and now - self._last_probe < self.probe_interval_s:
            return
        self._last_probe = now
        session = self.kernel.session

        def probe() -> None:
            try:
                result = session.exec(memory_probe_script(proc.tag), timeout_s=30).wait()
                kb = result.stdout.strip()
                self.rss_kb = int(kb) if result.exit_code == 0 and kb.isdigit() and int(kb) > 0 else None
            except Exception:  # noqa: BLE001 - no /proc (macOS), a closing session: no bound this time
                self.rss_kb = None

        self._probe = threading.Thread(target=probe, name="atp-repl-memory", daemon=True)
        self._probe.start()

    def describe(self) -> str:
        """One line for the status panel."""
        if self.unavailable:
            return "not in this sandbox (checks run cold)"
        proc = self.process
        if proc is None or not proc.alive:
            return "not started" if not self.starts else "stopped (starts with the next check)"
        parts = [f"{len(self._headers)} header{'s' if len(self._headers) != 1 else ''} loaded"]
        if self._chain:
            parts.append(f"{len(self._chain)} chained cell{'s' if len(self._chain) != 1 else ''}")
        if self.rss_kb:
            parts.append(f"{self.rss_kb / 1024:,.0f} MiB")
        return "running, " + ", ".join(parts)


def _goals(response: CommandResponse, offset: int) -> list[Goal]:
    """The sorries' and tactic steps' goals of a response, at the file's lines."""
    found: list[Goal] = []
    for s in response.sorries:
        if s.pos is not None:
            end = s.end_pos
            found.append(Goal(s.pos.line + offset, s.pos.column, end.line + offset if end else None,
                              end.column if end else None, s.goal, "sorry"))
    at_sorries = {(g.line, g.column, g.goal) for g in found}
    for t in response.tactics:
        if t.pos is not None and (t.pos.line + offset, t.pos.column, t.goals) in at_sorries:
            continue  # the `sorry` tactic itself: its goal is listed once, as the sorry's
        if t.pos is not None:
            end = t.end_pos
            found.append(Goal(t.pos.line + offset, t.pos.column, end.line + offset if end else None,
                              end.column if end else None, t.goals, "tactic", t.tactic))
    found.sort(key=lambda g: (g.line, g.column))
    return found
