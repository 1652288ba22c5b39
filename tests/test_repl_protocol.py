"""The Lean REPL's protocol as :mod:`atp_notebook.repl` types it, on every recorded transcript.

The corpus (``lean-corpus/repl``) holds real requests and responses of
leanprover-community/repl; every one must parse into the typed responses.
"""

from __future__ import annotations

import json

import pytest

from atp_notebook.diagnostics import Diagnostic, parse_json_line, to_json_line
from atp_notebook.repl import (
    CommandResponse,
    Message,
    Pos,
    ReplFailure,
    TacticResponse,
    _decode,
    encode_request,
    parse_response,
    parse_transcript,
    split_blocks,
    split_header,
)


def transcripts(corpus):
    return sorted((corpus / "repl").rglob("*.in"))


def test_every_corpus_transcript_parses(corpus):
    ins = transcripts(corpus)
    assert len(ins) == 74
    paired = 0
    kinds = {CommandResponse: 0, TacticResponse: 0, ReplFailure: 0}
    for path in ins:
        requests = path.read_text(encoding="utf-8")
        for block in split_blocks(requests):
            assert isinstance(json.loads(block), dict), path.name
        out = path.with_name(path.name[: -len(".in")] + ".expected.out")
        if not out.exists():
            continue
        pairs = parse_transcript(requests, out.read_text(encoding="utf-8"))
        paired += 1
        for _request, response in pairs:
            kinds[type(response)] += 1
    assert paired == 71
    assert all(kinds.values()), kinds  # all three shapes occur


def test_readme_transcript_is_typed_field_by_field(corpus):
    pairs = parse_transcript((corpus / "repl/readme.in").read_text(), (corpus / "repl/readme.expected.out").read_text())
    (req0, cmd), (_, step1), (_, step2) = pairs
    assert req0 == {"cmd": "def f (x : Unit) : Nat := by sorry"}
    assert isinstance(cmd, CommandResponse) and cmd.env == 0
    assert cmd.messages == (Message("warning", Pos(1, 4), Pos(1, 5), "declaration uses `sorry`"),)
    (sorry,) = cmd.sorries
    assert (sorry.goal, sorry.proof_state, sorry.pos, sorry.end_pos) == ("x : Unit\n⊢ Nat", 0, Pos(1, 29), Pos(1, 34))
    assert isinstance(step1, TacticResponse)
    assert (step1.proof_state, step1.goals, step1.proof_status) == (1, ("x : Unit\n⊢ Int",), "Incomplete: open goals remain")
    assert step2.goals == () and step2.proof_status == "Completed"


def test_tactics_and_failures(corpus):
    (_, resp), = parse_transcript((corpus / "repl/all_tactics.in").read_text(),
                                  (corpus / "repl/all_tactics.expected.out").read_text())
    assert [t.tactic for t in resp.tactics] == ["have t := 37", "exact t"]
    assert resp.tactics[1].goals == "t : Nat\n⊢ Nat" and resp.tactics[1].pos == Pos(1, 32)
    assert resp.tactics[0].used_constants == ("instOfNatNat", "Nat", "OfNat.ofNat")
    pairs = parse_transcript((corpus / "repl/unknown_environment.in").read_text(),
                             (corpus / "repl/unknown_environment.expected.out").read_text())
    assert pairs[0][1] == ReplFailure("Unknown environment.")


def test_requests_join_raw_lines_like_the_repl(corpus):
    blocks = split_blocks((corpus / "repl/invalid_line_break.in").read_text())
    assert json.loads(blocks[0]) == {"cmd": "theorem foo : 1 = 1 := bysorry"}


def test_bad_responses_are_refused():
    for value in ({}, {"env": "0"}, {"message": 3}, {"proofState": 1}, [], {"env": 0, "messages": [{"data": "x"}]}):
        with pytest.raises(ValueError):
            parse_response(value)  # type: ignore[arg-type]


def test_encode_request_is_one_line_then_a_blank_line():
    wire = encode_request({"cmd": "theorem a : 1 = 1 := by\n  rfl", "env": 3})
    assert wire.endswith("}\n\n") and wire.count("\n") == 2
    assert split_blocks(wire) == [wire.strip()]
    assert json.loads(wire) == {"cmd": "theorem a : 1 = 1 := by\n  rfl", "env": 3}
    assert "⊢" in encode_request({"cmd": "⊢"})  # UTF-8 as is, like the REPL's own output


def test_decode_separates_stray_output_from_the_response():
    assert _decode(['{"env":', ' 0}']) == ({"env": 0}, [])
    assert _decode(["hello from IO.println", '{"env": 1}']) == ({"env": 1}, ["hello from IO.println"])
    assert _decode(['{"env":']) is None


# -- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "imports", "offset", "body"),
    [
        ("import Mathlib\n\ntheorem t : True := trivial\n", ("import Mathlib",), 2, "theorem t : True := trivial\n"),
        ("theorem t : True := trivial\n", (), 0, "theorem t : True := trivial\n"),
        ("-- a comment\nimport A\n/- block\n  -/\nimport B.C -- why\ndef x := 1\n", ("import A", "import B.C"), 5,
         "def x := 1\n"),
        ("/- outer /- nested -/ still -/\nimport A\ndef x := 1", ("import A",), 2, "def x := 1"),
        ("module\n\npublic import Mathlib.Tactic\nmeta import A\n\ndef x := 1\n",
         ("module", "public import Mathlib.Tactic", "meta import A"), 5, "def x := 1\n"),
        ("/-- doc -/\ndef x := 1\n", (), 0, "/-- doc -/\ndef x := 1\n"),
        ("import A\n/-! module doc -/\n", ("import A",), 1, "/-! module doc -/\n"),
        ("import A B\n#check 1\n", ("import A B",), 1, "#check 1\n"),
    ],
)
def test_split_header(text, imports, offset, body):
    header = split_header(text)
    assert header is not None
    assert (header.imports, header.offset, header.body) == (imports, offset, body)
    # the body is the file from line offset + 1 on: nothing lost, nothing moved
    assert "\n".join(text.split("\n")[:offset] + [header.body]) == text


@pytest.mark.parametrize("text", ["import Mathlib open Nat\n", "import A /- c -/\n", "/- c -/ def x := 1\nimport A\n"])
def test_ambiguous_headers_are_not_split(text):
    assert split_header(text) is None


def test_header_lines_map_back_to_the_file():
    header = split_header("-- hi\nimport A\n\nimport B\nx")
    assert header.text == "import A\nimport B"
    assert [header.file_line(1), header.file_line(2)] == [2, 4]


def test_messages_shift_to_file_lines_and_print_as_lean_json():
    msg = Message("info", Pos(1, 0), Pos(1, 5), "4")
    diag = msg.to_diagnostic("Scratch.lean", 2)
    assert (diag.line, diag.column, diag.end_line, diag.end_column, diag.severity) == (3, 0, 3, 5, "information")
    line = to_json_line(diag)
    assert parse_json_line(line) == Diagnostic("Scratch.lean", 3, 0, 3, 5, "information", "4", kind="[anonymous]")
    assert list(json.loads(line)) == sorted(json.loads(line))  # keys sorted, as Lean prints them
