"""Tests for ``atp_notebook.diagnostics`` against the recorded Lean corpus.

Corpus files are read at run time through the ``corpus`` fixture (never
copied here).  Parametrization lists the corpus at collection time; when it
is absent, a single placeholder case runs and the fixture skips it (or fails
it under ``CI=true``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.conftest import corpus_path

from atp_notebook.diagnostics import (
    Diagnostic,
    OutputLine,
    diagnostics,
    format_summary,
    from_repl_message,
    has_errors,
    parse_json_line,
    parse_json_lines,
    parse_text,
    render_one,
    render_text,
    summarize,
)

# The header regex quoted in the corpus README, widened to info headers as
# real `lean` may print them; used as an independent count of headers.
README_HEADER = re.compile(
    r"^([^:\n]+\.lean):(\d+):(\d+)(?:-(\d+):(\d+))?: "
    r"(error|warning|info|information)(?:\(([^)]*)\))?: (.*)$",
    re.MULTILINE,
)
PANIC_LIKE = re.compile(r"^PANIC at ", re.MULTILINE)
MISSING = "<corpus missing>"


def _corpus_names(pattern: str) -> list[str]:
    """Corpus files matching ``pattern``, relative to the corpus root (for ids)."""
    root = corpus_path()
    names = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))
    return names or [MISSING]


CLI_TEXT = _corpus_names("cli-text/*.expected.out")
REPL_OUT = _corpus_names("repl/**/*.expected.out")


def _read(corpus: Path, name: str) -> str:
    """Read a corpus file exactly (no newline translation)."""
    assert name != MISSING, "the corpus exists but holds no files of this kind"
    return (corpus / name).read_bytes().decode("utf-8")


def _only(items: list, cls: type) -> list:
    return [item for item in items if isinstance(item, cls)]


# --------------------------------------------------------------------------
# plain text: every cli-text file


def test_corpus_file_counts(corpus: Path) -> None:
    assert len(list((corpus / "cli-text").glob("*.expected.out"))) == 30
    assert len(list((corpus / "repl").glob("**/*.expected.out"))) == 71
    assert len(CLI_TEXT) == 30 and len(REPL_OUT) == 71


@pytest.mark.parametrize("name", CLI_TEXT)
def test_cli_text_round_trip_is_exact(corpus: Path, name: str) -> None:
    text = _read(corpus, name)
    items = parse_text(text)
    assert render_text(items) == text
    # item by item, too: each item renders its own slice of the text, in order
    assert "".join(render_text([item]) for item in items) == text


@pytest.mark.parametrize("name", CLI_TEXT)
def test_cli_text_header_count_matches_regex(corpus: Path, name: str) -> None:
    text = _read(corpus, name)
    expected = len(README_HEADER.findall(text)) - len(
        [m for m in PANIC_LIKE.finditer(text) if README_HEADER.match(text, m.start())]
    )
    diags = diagnostics(parse_text(text))
    assert len(diags) == expected
    for diag in diags:
        assert diag.raw is not None
        header = README_HEADER.match(diag.raw)
        assert header is not None
        assert (diag.file, diag.line, diag.column) == (
            header.group(1),
            int(header.group(2)),
            int(header.group(3)),
        )
        assert diag.end_line == (int(header.group(4)) if header.group(4) else None)
        assert diag.severity in {"error", "warning"}  # the corpus has no info headers
        assert diag.message.startswith(header.group(8))
        assert not diag.message.endswith("\n")


@pytest.mark.parametrize("name", CLI_TEXT)
def test_cli_text_output_lines_are_not_headers(corpus: Path, name: str) -> None:
    for item in parse_text(_read(corpus, name)):
        if isinstance(item, OutputLine):
            assert not README_HEADER.match(item.text)
            assert "\n" not in item.text


def test_cli_text_total_headers(corpus: Path) -> None:
    diags = [
        d
        for name in CLI_TEXT
        for d in diagnostics(parse_text(_read(corpus, name)))
    ]
    assert len(diags) == 199
    assert sum(d.is_error for d in diags) == 120
    assert sum(d.is_warning for d in diags) == 79
    assert sum(d.end_line is None for d in diags) == 34
    assert sum(d.end_line is not None and d.end_line > d.line for d in diags) == 5


def _diags(corpus: Path, stem: str) -> list[Diagnostic]:
    return diagnostics(parse_text(_read(corpus, f"cli-text/{stem}.lean.expected.out")))


def test_macro_stack_named_error(corpus: Path) -> None:
    diags = _diags(corpus, "macroStack")
    assert len(diags) == 4
    first, second, last = diags[0], diags[1], diags[-1]
    assert (first.file, first.line, first.column, first.end_line, first.end_column) == (
        "macroStack.lean", 4, 5, 4, 6,
    )
    assert first.severity == "error"
    assert first.name == "lean.unknownIdentifier"
    assert first.message == "Unknown identifier `x`"
    assert second.name is None
    assert second.message.splitlines()[:3] == [
        "Unknown identifier `x`",
        "with resulting expansion",
        "  binrel% GT.gt✝ x 0",
    ]
    assert (last.line, last.column, last.end_line, last.end_column) == (17, 0, 17, 6)
    assert last.message.startswith(
        "failed to synthesize instance of type class\n  HAdd Nat String ?m\n\nHint: "
    )
    assert last.message.endswith("while expanding\n  bla! x")


def test_simp_trace_multi_line_ranges(corpus: Path) -> None:
    diags = _diags(corpus, "simp_trace")
    assert [(d.line, d.column, d.end_line, d.end_column) for d in diags] == [
        (85, 0, 85, 7),
        (101, 101, 102, 40),
        (105, 101, 106, 53),
    ]
    assert diags[0].is_warning and diags[0].is_sorry
    assert diags[1].message.startswith("unsolved goals\nx y : Nat\n")
    # documented ambiguity: bare trace output after a message is attached to it
    assert "[Meta.Tactic.simp.rewrite]" in diags[1].message
    items = parse_text(_read(corpus, "cli-text/simp_trace.lean.expected.out"))
    assert items[0] == OutputLine("Try this: simp only [f]")


def test_hole_errors_have_no_end_positions(corpus: Path) -> None:
    diags = _diags(corpus, "holeErrors")
    assert len(diags) == 15
    assert all(d.end_line is None and d.end_column is None for d in diags)
    assert (diags[0].line, diags[0].column) == (3, 10)
    assert diags[0].message == (
        "don't know how to synthesize implicit argument\n  @id ?m\ncontext:\n⊢ Sort u_1"
    )
    assert (diags[-1].line, diags[-1].column) == (19, 8)
    assert diags[-1].message == "failed to infer 'let rec' declaration type"


def test_dbg_macros_panic_lines_are_output(corpus: Path) -> None:
    items = parse_text(_read(corpus, "cli-text/dbgMacros.lean.expected.out"))
    assert diagnostics(items) == []
    panics = [i for i in items if isinstance(i, OutputLine) and i.is_runtime_error]
    assert [p.text for p in panics] == [
        "PANIC at f dbgMacros:2:14: unexpected zero",
        "PANIC at g dbgMacros:10:14: unreachable code has been reached",
        "PANIC at h dbgMacros:16:0: assertion violation: x != 0",
    ]
    assert items[1] == OutputLine("0")


def test_guess_lex_trailing_space_kept(corpus: Path) -> None:
    items = parse_text(_read(corpus, "cli-text/guessLex.lean.expected.out"))
    assert diagnostics(items) == []
    assert items[0] == OutputLine("Inferred termination argument: ", "\n")
    assert all(isinstance(i, OutputLine) and i.end == "\n" for i in items)


def test_2505_bare_output_then_backtick_sorry(corpus: Path) -> None:
    items = parse_text(_read(corpus, "cli-text/2505.lean.expected.out"))
    assert [type(i) for i in items] == [OutputLine, OutputLine, Diagnostic]
    assert items[0].text.startswith("target : A")
    diag = items[2]
    assert (diag.line, diag.column, diag.end_line, diag.end_column) == (14, 0, 14, 7)
    assert diag.message == "declaration uses `sorry`"
    assert diag.is_sorry and not diag.is_error


def test_10488_invalid_dotted_ident_and_positions(corpus: Path) -> None:
    diags = _diags(corpus, "10488")
    assert (diags[0].line, diags[0].column, diags[0].end_line) == (8, 10, None)
    named = [d for d in diags if d.name]
    assert [(d.line, d.column, d.end_line, d.end_column, d.name) for d in named] == [
        (34, 14, 34, 19, "lean.invalidDottedIdent")
    ]
    assert (diags[-1].line, diags[-1].column, diags[-1].end_line, diags[-1].end_column) == (
        41, 13, 41, 17,
    )


def test_tcloop_duplicate_last_line_kept(corpus: Path) -> None:
    (diag,) = _diags(corpus, "tcloop")
    lines = diag.message.splitlines()
    assert lines[0] == "failed to synthesize"
    assert lines[-1] == lines[-2] == "use `set_option diagnostics true` to get diagnostic information"


def test_shifted_text_diagnostic_rewrites_header(corpus: Path) -> None:
    diag = _diags(corpus, "simp_trace")[1]
    moved = diag.shifted(-100, file="Cell.lean")
    assert (moved.file, moved.line, moved.end_line) == ("Cell.lean", 1, 2)
    assert (moved.column, moved.end_column) == (101, 40)
    assert moved.raw is not None and diag.raw is not None
    assert moved.raw.startswith("Cell.lean:1:101-2:40: error: unsolved goals\n")
    assert moved.raw.split("\n", 1)[1] == diag.raw.split("\n", 1)[1]
    assert moved.shifted(100, file="simp_trace.lean").raw == diag.raw


# --------------------------------------------------------------------------
# plain text: synthetic edge cases


def test_empty_text() -> None:
    assert parse_text("") == []
    assert render_text([]) == ""


@pytest.mark.parametrize(
    "text",
    [
        "x.lean:1:0: error: oops",
        "x.lean:1:0: error: oops\n  detail",
        "hello",
        "\n",
        "\n\n",
        "a\n\nb",
        "x.lean:1:0: error: oops\n\n",
        "x.lean:1:0-1:4: warning: w\r\nmore\r\n",
        "x.lean:1:0: error: \n",
        "x.lean:1:0: error:\n",
        "x.lean:2:0: info: 1\nx.lean:3:0: information: 2\n",
        "PANIC at f Foo.lean:2:14: unexpected zero\n",
        "C:\\tmp\\x.lean:1:0: error(lean.unknownIdentifier): Unknown identifier `y`\n",
        "line with form feed \x0c and \u2028 separator\nx.lean:1:0: error: e \x0c f\n",
    ],
)
def test_round_trip_synthetic(text: str) -> None:
    assert render_text(parse_text(text)) == text


def test_no_trailing_newline() -> None:
    items = parse_text("a.lean:1:0: error: x\n  y")
    (diag,) = items
    assert diag.message == "x\n  y"
    assert diag.raw == "a.lean:1:0: error: x\n  y"
    (line,) = parse_text("hello")
    assert line == OutputLine("hello", "")


def test_info_headers_normalised() -> None:
    items = parse_text("x.lean:2:0: info: 1\nx.lean:3:0-3:5: information: 2\n")
    assert [d.severity for d in diagnostics(items)] == ["information", "information"]
    assert [d.message for d in diagnostics(items)] == ["1", "2"]


def test_panic_line_ends_a_message_and_is_not_a_header() -> None:
    text = "x.lean:1:0: error: e\nmore\nPANIC at f x:2:14: zero\nafter\n"
    items = parse_text(text)
    assert [type(i) for i in items] == [Diagnostic, OutputLine, OutputLine]
    assert items[0].message == "e\nmore"
    assert items[1].is_runtime_error and not items[2].is_runtime_error
    assert render_text(items) == text


def test_indented_header_like_line_is_continuation() -> None:
    text = "x.lean:1:0: error: e\n  y.lean:2:0: error: quoted\n<stdin>:3:1: warning: w\n"
    diags = diagnostics(parse_text(text))
    assert [(d.file, d.message) for d in diags] == [
        ("x.lean", "e\n  y.lean:2:0: error: quoted"),
        ("<stdin>", "w"),
    ]


def test_crlf_text() -> None:
    text = "pre\r\nx.lean:1:0-1:4: warning: w\r\nmore\r\n"
    items = parse_text(text)
    assert items[0] == OutputLine("pre", "\r\n")
    assert items[1].message == "w\nmore"
    assert render_text(items) == text


def test_trailing_blank_lines_stay_in_raw_only() -> None:
    (diag,) = parse_text("x.lean:1:0: error: oops\n\n\n")
    assert diag.message == "oops"
    assert diag.raw == "x.lean:1:0: error: oops\n\n\n"


# --------------------------------------------------------------------------
# --json


def _json_lines(corpus: Path) -> list[str]:
    return _read(corpus, "cli-json/recorded.jsonl").splitlines()


def test_recorded_json(corpus: Path) -> None:
    lines = _json_lines(corpus)
    assert len(lines) == 12
    items = parse_json_lines(lines)
    diags = diagnostics(items)
    assert len(items) == len(diags) == 12
    assert [d.severity for d in diags] == [
        "warning", "error", "information", "information",
        "warning", "error", "information", "information", "information",
        "warning", "warning", "error",
    ]
    assert [(d.line, d.column, d.end_line, d.end_column) for d in diags] == [
        (3, 8, 3, 11), (5, 12, 5, 18), (7, 0, 7, 6), (8, 0, 8, 6),
        (3, 8, 3, 21), (3, 27, 3, 50), (3, 0, 3, 6), (7, 0, 7, 6), (7, 0, 7, 6),
        (1, 8, 1, 18), (1, 0, 1, 7), (1, 0, 1, 7),
    ]
    assert [d.kind for d in diags] == [
        "hasSorry", "[anonymous]", "[anonymous]", "[anonymous]",
        "hasSorry", "lean.unknownIdentifier._namedError",
        "[anonymous]", "[anonymous]", "[anonymous]",
        "hasSorry", "hasSorry", "hasSorry",
    ]
    assert [d.name for d in diags] == [None] * 5 + ["lean.unknownIdentifier"] + [None] * 6
    assert diags[1].message == "Tactic `decide` proved that the proposition\n  2 = 3\nis false"
    assert diags[4].file == "EmpiricistLean/Scratch_x.lean"
    assert diags[10].file == "C:\\tmp\\sorry.lean"
    last = diags[11]
    assert last.kind == "hasSorry" and last.is_sorry and last.is_error
    assert [d.is_sorry for d in diags].count(True) == 5
    assert diags[:] == [parse_json_line(line) for line in lines]
    assert all(d.raw is None for d in diags)


def test_recorded_json_renders_as_lean_text(corpus: Path) -> None:
    diags = diagnostics(parse_json_lines(_json_lines(corpus)))
    assert render_one(diags[0]) == "t.lean:3:8: warning: declaration uses `sorry`\n"
    assert render_one(diags[1]) == (
        "t.lean:5:12: error: Tactic `decide` proved that the proposition\n  2 = 3\nis false\n"
    )
    assert render_one(diags[2]) == "t.lean:7:0: info: 'foo' does not depend on any axioms\n"
    assert render_one(diags[5]) == (
        "EmpiricistLean/Scratch_x.lean:3:27: error(lean.unknownIdentifier): "
        "Unknown identifier `rfl_this_is_not_a_thing`\n"
    )
    assert render_one(diags[5], end_pos=True).startswith(
        "EmpiricistLean/Scratch_x.lean:3:27-3:50: error(lean.unknownIdentifier): "
    )
    assert render_one(diags[1], file="Cell", line_offset=-4) == (
        "Cell:1:12: error: Tactic `decide` proved that the proposition\n  2 = 3\nis false\n"
    )
    text = render_text(diags)
    assert text == "".join(render_one(d) for d in diags)
    # the rendered text parses back to the same messages, minus end positions and kind
    again = diagnostics(parse_text(text))
    assert [(d.file, d.line, d.column, d.severity, d.message, d.name) for d in again] == [
        (d.file, d.line, d.column, d.severity, d.message, d.name) for d in diags
    ]


@pytest.mark.parametrize(
    "key", ["endPos", "kind", "isSilent", "caption", "keepFullRange", "fileName"]
)
def test_json_line_with_key_removed_still_parses(corpus: Path, key: str) -> None:
    obj = json.loads(_json_lines(corpus)[5])
    del obj[key]
    diag = parse_json_line(json.dumps(obj, ensure_ascii=False))
    assert isinstance(diag, Diagnostic)
    assert (diag.line, diag.column, diag.severity) == (3, 27, "error")
    assert diag.message == "Unknown identifier `rfl_this_is_not_a_thing`"
    if key == "endPos":
        assert (diag.end_line, diag.end_column) == (None, None)
    if key == "kind":
        assert diag.kind is None and diag.name is None


def test_json_null_end_pos_caption_and_trailing_newline() -> None:
    line = json.dumps(
        {"data": "a\nb\n", "endPos": None, "fileName": "F.lean", "caption": "cap",
         "pos": {"line": 2, "column": 1}, "severity": "information"}
    )
    diag = parse_json_line(line + "\n")
    assert isinstance(diag, Diagnostic)
    assert diag.end_line is None and diag.severity == "information"
    assert diag.message == "cap:\na\nb"
    assert render_one(diag) == "F.lean:2:1: info: cap:\na\nb\n"


def test_both_sorry_wordings() -> None:
    for data in ["declaration uses 'sorry'", "declaration uses `sorry`"]:
        line = json.dumps(
            {"data": data, "fileName": "F.lean", "pos": {"line": 1, "column": 0},
             "severity": "warning"}
        )
        diag = parse_json_line(line)
        assert isinstance(diag, Diagnostic) and diag.kind is None and diag.is_sorry


def test_garbage_lines_kept_in_order(corpus: Path) -> None:
    real = _json_lines(corpus)
    garbage = [
        "✔ [3/4] Built Foo",
        "error: build failed",
        "",
        "INTERNAL PANIC: out of memory",
        "{not json",
        "[1, 2]",
        '{"severity": "error"}',
        '{"severity": "fatal", "pos": {"line": 1, "column": 0}, "data": "x"}',
        '{"severity": "error", "pos": {"line": true, "column": 0}, "data": "x"}',
        "  ",
    ]
    mixed = [garbage[0], real[0], *garbage[1:4], real[1], *garbage[4:], real[5]]
    items = parse_json_lines(mixed)
    assert len(items) == len(mixed)
    kinds = [type(i) for i in items]
    assert kinds == [OutputLine, Diagnostic, OutputLine, OutputLine, OutputLine, Diagnostic,
                     *[OutputLine] * 6, Diagnostic]
    outs = [i.text for i in items if isinstance(i, OutputLine)]
    assert outs == garbage
    assert items[4].is_runtime_error
    assert render_text(items[:3]) == (
        "✔ [3/4] Built Foo\nt.lean:3:8: warning: declaration uses `sorry`\nerror: build failed\n"
    )


def test_parse_json_lines_accepts_a_whole_string(corpus: Path) -> None:
    text = _read(corpus, "cli-json/recorded.jsonl")
    assert parse_json_lines(text) == parse_json_lines(text.splitlines())
    assert parse_json_lines("") == []
    assert parse_json_line("lake: ok\r\n") == OutputLine("lake: ok")


# --------------------------------------------------------------------------
# REPL transcripts


def _repl_responses(text: str) -> list[dict]:
    """Split a REPL transcript into its JSON responses, checking the blank-line framing."""
    decoder = json.JSONDecoder()
    responses, index = [], 0
    while index < len(text):
        obj, end = decoder.raw_decode(text, index)
        assert isinstance(obj, dict)
        assert text.startswith("\n\n", end), "each response is followed by a blank line"
        responses.append(obj)
        index = end + 2
    return responses


_SEVERITY_FIELD = re.compile(r'"severity":\s*"(info|warning|error)"')


@pytest.mark.parametrize("name", REPL_OUT)
def test_repl_messages_convert(corpus: Path, name: str) -> None:
    text = _read(corpus, name)
    assert text.endswith("}\n\n")
    responses = _repl_responses(text)
    assert responses
    count = 0
    for response in responses:
        for msg in response.get("messages", []):
            diag = from_repl_message(msg)
            count += 1
            assert diag.file == "<cell>"
            assert diag.severity == {"info": "information"}.get(msg["severity"], msg["severity"])
            assert (diag.line, diag.column) == (msg["pos"]["line"], msg["pos"]["column"])
            end = msg.get("endPos")
            assert (diag.end_line, diag.end_column) == (
                (end["line"], end["column"]) if end else (None, None)
            )
            assert diag.message == msg["data"]
            assert diag.name is None and diag.kind is None
    assert count == len(_SEVERITY_FIELD.findall(text))


def test_repl_total_messages(corpus: Path) -> None:
    total = 0
    by_severity = {"error": 0, "warning": 0, "information": 0}
    independent = 0
    for name in REPL_OUT:
        text = _read(corpus, name)
        independent += len(_SEVERITY_FIELD.findall(text))
        diags = [
            from_repl_message(m, file=name)
            for r in _repl_responses(text)
            for m in r.get("messages", [])
        ]
        total += len(diags)
        for key, value in summarize(diags).items():
            by_severity[key] += value
    assert total == independent == 87
    assert by_severity == {"error": 26, "warning": 50, "information": 11}


def test_repl_readme_sorry_position(corpus: Path) -> None:
    (first, *_) = _repl_responses(_read(corpus, "repl/readme.expected.out"))
    (diag,) = [from_repl_message(m, file="Cell.lean") for m in first["messages"]]
    assert diag == Diagnostic("Cell.lean", 1, 4, 1, 5, "warning", "declaration uses `sorry`")
    assert diag.is_sorry
    assert render_one(diag.shifted(2)) == "Cell.lean:3:4: warning: declaration uses `sorry`\n"


def test_from_repl_message_shapes() -> None:
    diag = from_repl_message(
        {"severity": "info", "pos": {"line": 1, "column": 0}, "endPos": None, "data": "f : Nat"}
    )
    assert diag.severity == "information" and diag.end_line is None
    diag = from_repl_message({"severity": "error", "pos": {"line": 0, "column": 0}, "data": "x"})
    assert (diag.line, diag.end_line) == (0, None)
    for bad in [
        {"severity": "fatal", "pos": {"line": 1, "column": 0}, "data": "x"},
        {"severity": "error", "data": "x"},
        {"severity": "error", "pos": {"line": 1, "column": 0}},
    ]:
        with pytest.raises(ValueError):
            from_repl_message(bad)


# --------------------------------------------------------------------------
# the model


def test_diagnostic_model() -> None:
    diag = Diagnostic("F.lean", 3, 2, None, None, "info", "hello")
    assert diag.severity == "information" and not diag.is_error
    with pytest.raises(ValueError, match="unknown Lean severity"):
        Diagnostic("F.lean", 1, 0, None, None, "fatal", "x")
    with pytest.raises(AttributeError):
        diag.line = 4  # type: ignore[misc]
    moved = diag.shifted(-2)
    assert (moved.line, moved.end_line, moved.file) == (1, None, "F.lean")
    assert diag.shifted(0) == diag
    # raw text is not part of equality
    (parsed,) = diagnostics(parse_text("F.lean:3:2: info: hello\n"))
    assert parsed == diag and parsed.raw == "F.lean:3:2: info: hello\n"


def test_summaries() -> None:
    items = parse_text(
        "pre\nA.lean:1:0: error: e1\nA.lean:2:0: error: e2\nA.lean:3:0: warning: w\n"
    )
    counts = summarize(items)
    assert counts == {"error": 2, "warning": 1, "information": 0}
    assert format_summary(counts) == "2 errors, 1 warning"
    assert format_summary(summarize([])) == "no messages"
    assert format_summary({"information": 1}) == "1 info message"
    assert has_errors(items) and not has_errors(items[-1:])
