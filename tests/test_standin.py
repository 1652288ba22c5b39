"""The stand-in Lean toolchain (``tests/standin/``) replays real output faithfully.

The stand-in is a test double, so these tests check the double itself: its
index is current, every recording has the shape real Lean output has (the
corpus README's format facts), text and JSON recordings agree, the exit codes
and ``{file}`` substitution are right, unknown input is refused, the knobs
work, and the scripts behave the same under busybox as under dash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, STANDIN

BIN = STANDIN / "bin"
LEAN = BIN / "lean"
LAKE = BIN / "lake"
REINDEX = STANDIN / "reindex"

# The corpus README's header regex for `lean` text output.
HEADER = re.compile(
    r"^([^:\n]+\.lean):(\d+):(\d+)(?:-(\d+):(\d+))?: (error|warning)(?:\(([^)]*)\))?: (.*)$"
)
JSON_KEYS = {
    "caption", "data", "endPos", "fileName", "isSilent",
    "keepFullRange", "kind", "pos", "severity",
}
SEVERITIES = {"error", "warning", "information"}
NAMED_ERROR_SUFFIX = "._namedError"

# Fixtures other parts of the project rely on, with their exit codes.
EXPECTED_EXIT = {
    "ok_add": 0,
    "sorry_warn": 0,
    "unknown_ident": 1,
    "decide_false": 1,
    "eval_info": 0,
    "unsolved_goals": 1,
    "mathlib_first": 0,
    "mathlib_error": 1,
    "tutorial_first": 0,
    "tutorial_broken": 1,
    "tutorial_fixed": 0,
    "project_basic": 0,
    "project_main": 0,
}

VERSION_LINE = (
    "Lean (version 4.26.0, x86_64-unknown-linux-gnu, "
    "commit 0000000000000000000000000000000000000000, Release)\n"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def fixture_names() -> list[str]:
    return sorted(p.name[: -len(".lean")] for p in FIXTURES.glob("*.lean"))


def host_env(**extra: str) -> dict[str, str]:
    """A clean environment: the host PATH, no stand-in knobs from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
    env.update(extra)
    return env


def run(argv, *, cwd=None, env=None, input=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env if env is not None else host_env(),
        input=input,
        capture_output=True,
        timeout=timeout,
    )


def place(tmp_path: Path, name: str, rel: str = "Some Dir/Scratch.lean") -> str:
    """Copy fixture NAME's source to REL under tmp_path (lookup is by content)."""
    dest = tmp_path / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / f"{name}.lean", dest)
    return rel


def json_messages(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode("utf-8").splitlines()]


def render_text(messages: list[dict]) -> str:
    """What `lean FILE` prints for these `lean --json FILE` messages.

    Lean's Message.toString: caption first, a `file:line:col: severity[(name)]: `
    header for errors and warnings (no end position without
    -DprintMessageEndPos), bare text for information, a final newline added
    when missing.
    """
    out = []
    for m in messages:
        text = m["data"]
        if m["caption"]:
            text = m["caption"] + ":\n" + text
        if m["severity"] != "information":
            label = m["severity"]
            if m["kind"].endswith(NAMED_ERROR_SUFFIX):
                label += "(" + m["kind"][: -len(NAMED_ERROR_SUFFIX)] + ")"
            text = f"{m['fileName']}:{m['pos']['line']}:{m['pos']['column']}: {label}: {text}"
        if not text.endswith("\n"):
            text += "\n"
        out.append(text)
    return "".join(out)


# --------------------------------------------------------------------------- index


def read_index(path: Path) -> dict[str, str]:
    index = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, name = line.split(" ")
        assert name not in index.values(), f"{name} indexed twice"
        index[digest] = name
    return index


def test_index_matches_the_fixture_sources():
    expected = {
        hashlib.sha256((FIXTURES / f"{n}.lean").read_bytes()).hexdigest(): n
        for n in fixture_names()
    }
    assert read_index(FIXTURES / "INDEX") == expected, (
        "fixtures/INDEX is stale: run tests/standin/reindex"
    )


def test_index_is_what_reindex_writes(tmp_path):
    copy = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, copy)
    (copy / "INDEX").unlink()
    result = run([REINDEX, copy])
    assert result.returncode == 0, result.stderr
    assert (copy / "INDEX").read_bytes() == (FIXTURES / "INDEX").read_bytes(), (
        "fixtures/INDEX differs from reindex output: run tests/standin/reindex"
    )
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith("INDEX")) == ["INDEX"]


def test_reindex_refuses_a_source_without_recordings(tmp_path):
    shutil.copyfile(FIXTURES / "ok_add.lean", tmp_path / "lonely.lean")
    (tmp_path / "lonely.out.txt").write_text("")
    result = run([REINDEX, tmp_path])
    assert result.returncode == 1
    assert b"lonely.out.jsonl" in result.stderr
    assert not (tmp_path / "INDEX").exists()


def test_reindex_refuses_two_fixtures_with_the_same_content(tmp_path):
    for name in ("one", "two"):
        shutil.copyfile(FIXTURES / "ok_add.lean", tmp_path / f"{name}.lean")
        (tmp_path / f"{name}.out.txt").write_text("")
        (tmp_path / f"{name}.out.jsonl").write_text("")
    result = run([REINDEX, tmp_path])
    assert result.returncode == 1
    assert b"same content" in result.stderr


def test_every_fixture_is_complete_and_the_required_ones_exist():
    names = fixture_names()
    assert set(EXPECTED_EXIT) <= set(names)
    for path in FIXTURES.iterdir():
        if path.name == "INDEX" or path.is_dir():  # repl/: the stand-in repl's transcripts
            continue
        base = path.name.split(".", 1)[0]
        assert base in names, f"{path.name} has no {base}.lean"
    for name in names:
        for ext in ("out.txt", "out.jsonl"):
            data = (FIXTURES / f"{name}.{ext}").read_bytes()
            assert data == b"" or data.endswith(b"\n"), f"{name}.{ext} must end with a newline"
            data.decode("utf-8")


# ------------------------------------------------------------- every fixture's output


@pytest.mark.parametrize("name", fixture_names())
def test_json_output_has_the_shape_of_real_lean(name, tmp_path):
    rel = place(tmp_path, name)
    result = run([LEAN, "--json", rel], cwd=tmp_path)
    assert result.stderr == b""
    source_lines = (FIXTURES / f"{name}.lean").read_text(encoding="utf-8").split("\n")
    for raw in result.stdout.decode("utf-8").splitlines():
        msg = json.loads(raw)
        assert set(msg) == JSON_KEYS
        # compact, keys sorted, non-ASCII unescaped: byte-identical re-serialisation
        assert json.dumps(msg, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == raw
        assert msg["severity"] in SEVERITIES
        assert msg["fileName"] == rel
        assert msg["caption"] == "" and msg["isSilent"] is False and msg["keepFullRange"] is False
        assert isinstance(msg["kind"], str) and msg["kind"]
        start = (msg["pos"]["line"], msg["pos"]["column"])
        end = (msg["endPos"]["line"], msg["endPos"]["column"])
        assert start <= end
        for line, column in (start, end):
            assert 1 <= line <= len(source_lines), f"{name}: line {line} outside the source"
            assert 0 <= column <= len(source_lines[line - 1]), (
                f"{name}: column {column} outside line {line}"
            )


@pytest.mark.parametrize("name", fixture_names())
def test_text_output_has_the_shape_of_real_lean_and_agrees_with_json(name, tmp_path):
    rel = place(tmp_path, name)
    text = run([LEAN, rel], cwd=tmp_path)
    js = run([LEAN, "--json", rel], cwd=tmp_path)
    assert text.stderr == b"" and js.stderr == b""
    out = text.stdout.decode("utf-8")
    assert "{file}" not in out and "{file}" not in js.stdout.decode("utf-8")

    headers = [HEADER.match(line) for line in out.splitlines()]
    headers = [h for h in headers if h]
    for h in headers:
        assert h.group(1) == rel
        assert h.group(4) is None, "the CLI prints no end position by default"
    for line in out.splitlines():
        if line.startswith(rel + ":"):
            assert HEADER.match(line), f"malformed header: {line!r}"

    messages = json_messages(js.stdout)
    problems = [m for m in messages if m["severity"] != "information"]
    assert [(int(h.group(2)), int(h.group(3)), h.group(6)) for h in headers] == [
        (m["pos"]["line"], m["pos"]["column"], m["severity"]) for m in problems
    ]
    assert out == render_text(messages)


@pytest.mark.parametrize("name", fixture_names())
def test_exit_code_follows_the_recording(name, tmp_path):
    rel = place(tmp_path, name)
    messages = json_messages(run([LEAN, "--json", rel], cwd=tmp_path).stdout)
    exit_file = FIXTURES / f"{name}.exit"
    if exit_file.exists():
        expected = int(exit_file.read_text().strip())
    else:
        expected = 1 if any(m["severity"] == "error" for m in messages) else 0
    if name in EXPECTED_EXIT:
        assert expected == EXPECTED_EXIT[name]
    assert run([LEAN, rel], cwd=tmp_path).returncode == expected
    assert run([LEAN, "--json", rel], cwd=tmp_path).returncode == expected


def test_specific_recordings():
    def text(name):
        return (FIXTURES / f"{name}.out.txt").read_text(encoding="utf-8")

    assert text("ok_add") == "" and text("mathlib_first") == "" and text("tutorial_fixed") == ""
    assert text("sorry_warn") == "{file}:1:8: warning: declaration uses `sorry`\n"
    assert text("eval_info").splitlines()[0] == "4"
    assert text("decide_false").splitlines()[1:] == ["  2 + 2 = 5", "is false"]
    assert "⊢ p" in text("unsolved_goals")
    assert text("tutorial_broken").startswith(
        "{file}:3:6: error(lean.unknownIdentifier): Unknown identifier `reverse_reverse`"
    )
    assert "linarith failed to find a contradiction" in text("mathlib_error")
    assert (FIXTURES / "project_main.lean").read_text().startswith("import Project.Basic\n")


# ------------------------------------------------------------------- file argument


@pytest.mark.parametrize(
    "rel",
    ["Scratch.lean", "./Scratch.lean", "Project/Basic.lean", 'odd & "name"\\x.lean'],
)
def test_file_placeholder_becomes_the_path_as_given(rel, tmp_path):
    place(tmp_path, "unknown_ident", rel)
    text = run([LEAN, rel], cwd=tmp_path).stdout.decode()
    assert text.startswith(f"{rel}:1:44: error(lean.unknownIdentifier): ")
    (msg,) = json_messages(run([LEAN, "--json", rel], cwd=tmp_path).stdout)
    assert msg["fileName"] == rel


def test_absolute_path_and_stdin(tmp_path):
    path = tmp_path / "x.lean"
    shutil.copyfile(FIXTURES / "sorry_warn.lean", path)
    assert run([LEAN, path]).stdout.decode().startswith(f"{path}:1:8: warning: ")
    source = (FIXTURES / "sorry_warn.lean").read_bytes()
    result = run([LEAN, "--json", "--stdin"], input=source)
    assert result.returncode == 0
    assert json_messages(result.stdout)[0]["fileName"] == "<stdin>"


def test_options_are_accepted_and_ignored(tmp_path):
    rel = place(tmp_path, "decide_false")
    plain = run([LEAN, "--json", rel], cwd=tmp_path)
    with_opts = run(
        [LEAN, "-DmaxHeartbeats=400000", "-D", "pp.unicode=true", "--root=.", "-j2", "--json", rel],
        cwd=tmp_path,
    )
    assert (with_opts.returncode, with_opts.stdout) == (plain.returncode, plain.stdout)


def test_unsupported_option_is_refused(tmp_path):
    rel = place(tmp_path, "ok_add")
    result = run([LEAN, "--frobnicate", rel], cwd=tmp_path)
    assert result.returncode == 2
    assert b"unsupported option --frobnicate" in result.stderr


def test_unknown_input_is_refused_not_answered(tmp_path):
    (tmp_path / "New.lean").write_text("theorem t : True := trivial\n")
    digest = hashlib.sha256(b"theorem t : True := trivial\n").hexdigest()
    for mode in ([], ["--json"]):
        result = run([LEAN, *mode, "New.lean"], cwd=tmp_path)
        assert result.returncode == 2
        assert result.stdout == b""
        assert result.stderr.decode() == (
            f"stand-in lean: no recorded output for New.lean (sha256 {digest}); "
            "record one in tests/standin/fixtures/\n"
        )


def test_missing_file_fails(tmp_path):
    result = run([LEAN, "Nope.lean"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"Nope.lean" in result.stderr


def test_version():
    result = run([LEAN, "--version"])
    assert (result.returncode, result.stdout.decode()) == (0, VERSION_LINE)


def test_exit_file_and_fixtures_override(tmp_path):
    fixtures = tmp_path / "fx"
    fixtures.mkdir()
    (fixtures / "odd.lean").write_text("#exit\n")
    (fixtures / "odd.out.txt").write_text("{file}:1:0: warning: odd\n")
    (fixtures / "odd.out.jsonl").write_text("")
    (fixtures / "odd.exit").write_text("3\n")
    assert run([REINDEX, fixtures]).returncode == 0
    (tmp_path / "a.lean").write_text("#exit\n")
    result = run([LEAN, "a.lean"], cwd=tmp_path, env=host_env(STANDIN_FIXTURES=str(fixtures)))
    assert (result.returncode, result.stdout) == (3, b"a.lean:1:0: warning: odd\n")


# ---------------------------------------------------------------------------- knobs


def test_flood_prints_many_lines_fast(tmp_path):
    rel = place(tmp_path, "eval_info")
    recorded = run([LEAN, rel], cwd=tmp_path).stdout.decode().splitlines()
    start = time.monotonic()
    result = run([LEAN, rel], cwd=tmp_path, env=host_env(STANDIN_FLOOD="100000"))
    elapsed = time.monotonic() - start
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 0
    assert lines[: len(recorded)] == recorded
    assert lines[len(recorded):] == [str(i) for i in range(1, 100001)]
    # ~0.05 s in practice; a per-line shell or awk-concatenation loop takes seconds
    assert elapsed < 10

    result = run([LEAN, "--json", rel], cwd=tmp_path, env=host_env(STANDIN_FLOOD="1000"))
    messages = json_messages(result.stdout)
    assert len(messages) == 2 + 1000
    flood = messages[2:]
    assert all(m["severity"] == "information" and m["fileName"] == rel for m in flood)
    assert [m["data"] for m in flood] == [str(i) for i in range(1, 1001)]


def test_flood_keeps_the_recorded_exit_code(tmp_path):
    rel = place(tmp_path, "decide_false")
    result = run([LEAN, rel], cwd=tmp_path, env=host_env(STANDIN_FLOOD="10"))
    assert result.returncode == 1
    assert result.stdout.decode().splitlines()[-1] == "10"


def test_line_delay_streams_the_first_line_before_the_end(tmp_path):
    rel = place(tmp_path, "unsolved_goals")
    expected = run([LEAN, rel], cwd=tmp_path).stdout
    n = expected.count(b"\n")
    assert n >= 4
    delay = 0.15
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(LEAN), rel], cwd=tmp_path, stdout=subprocess.PIPE,
        env=host_env(STANDIN_LINE_DELAY=str(delay)),
    )
    stamps, lines = [], []
    for line in proc.stdout:
        stamps.append(time.monotonic())
        lines.append(line)
    proc.wait(timeout=30)
    end = time.monotonic()
    assert b"".join(lines) == expected
    assert proc.returncode == 1
    # each line is preceded by one delay: the first one cannot arrive earlier,
    # and n - 1 more delays separate it from the end
    assert stamps[0] - start >= delay * 0.9
    assert end - stamps[0] >= (n - 1) * delay * 0.9


def test_sleep_delays_all_output(tmp_path):
    rel = place(tmp_path, "sorry_warn")
    start = time.monotonic()
    result = run([LEAN, rel], cwd=tmp_path, env=host_env(STANDIN_SLEEP="0.4"))
    assert time.monotonic() - start >= 0.4 * 0.9
    assert result.stdout.decode().endswith("declaration uses `sorry`\n")


def test_killing_lean_during_sleep_closes_its_pipes(tmp_path):
    rel = place(tmp_path, "sorry_warn")
    proc = subprocess.Popen(
        [str(LEAN), rel], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=host_env(STANDIN_SLEEP="30"), start_new_session=True,
    )
    try:
        time.sleep(0.3)
        proc.kill()  # the lean process only, not its group
        out, _ = proc.communicate(timeout=5)  # EOF at once: no orphan holds the pipe
        assert out == b""
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned `sleep`, if any
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------- lake


def test_lake_version():
    result = run([LAKE, "--version"])
    assert (result.returncode, result.stdout) == (
        0, b"Lake version 5.0.0-src+0000000 (Lean version 4.26.0)\n"
    )


def test_lake_env_runs_the_command_with_lean_path(tmp_path):
    root = os.path.realpath(tmp_path)
    result = run([LAKE, "env", "sh", "-c", 'printf "%s" "$LEAN_PATH"; exit 7'], cwd=tmp_path)
    assert result.returncode == 7
    assert result.stdout.decode().split(":") == [
        f"{root}/.lake/packages/mathlib/.lake/build/lib/lean",
        f"{root}/.lake/build/lib/lean",
    ]
    listing = run([LAKE, "env"], cwd=tmp_path).stdout.decode()
    assert f"LEAN_PATH={root}/.lake/packages/mathlib/.lake/build/lib/lean:" in listing


def test_lake_env_lean_is_the_default_check_command(tmp_path):
    rel = place(tmp_path, "tutorial_broken", "Scratch.lean")
    direct = run([LEAN, "--json", rel], cwd=tmp_path)
    # lake puts its own directory first on PATH, as the real one puts the toolchain's
    env = host_env(PATH="/usr/bin:/bin")
    via_lake = run([LAKE, "env", "lean", "--json", rel], cwd=tmp_path, env=env)
    assert direct.returncode == 1
    assert (via_lake.returncode, via_lake.stdout) == (direct.returncode, direct.stdout)
    via_lake_lean = run([LAKE, "lean", "--json", rel], cwd=tmp_path, env=env)
    assert via_lake_lean.stdout == direct.stdout


def test_lake_build_cache_and_unknown_commands(tmp_path):
    build = run([LAKE, "build"], cwd=tmp_path)
    assert build.returncode == 0
    last = build.stdout.decode().splitlines()[-1]
    assert re.fullmatch(r"Build completed successfully(?: \(\d+ jobs\))?\.", last)
    targets = run([LAKE, "build", "Project"], cwd=tmp_path).stdout.decode().splitlines()
    assert targets == ["✔ [1/2] Built Project", "Build completed successfully (2 jobs)."]
    cache = run([LAKE, "exe", "cache", "get"], cwd=tmp_path)
    assert (cache.returncode, cache.stdout) == (0, b"No files to download\n")
    unknown = run([LAKE, "frobnicate"], cwd=tmp_path)
    assert unknown.returncode == 1
    assert unknown.stdout == b""
    assert b"unknown command 'frobnicate'" in unknown.stderr
    assert run([LAKE, "exe", "nope"], cwd=tmp_path).returncode == 1


# -------------------------------------------------------------------------- busybox


@pytest.fixture(scope="module")
def busybox_bin(tmp_path_factory) -> Path:
    """A directory holding only busybox applet links (the scratch image's PATH)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        msg = "busybox not installed (apt-get install busybox-static)"
        if in_ci():
            pytest.fail(msg + " -- under CI=true the busybox tests must run")
        pytest.skip(msg)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    bindir = tmp_path_factory.mktemp("busybox-bin")
    for applet in applets.stdout.split():
        (bindir / applet).symlink_to(busybox)
    return bindir


def busybox_run(bindir: Path, script: Path, args, *, cwd, **knobs) -> subprocess.CompletedProcess:
    env = {"PATH": str(bindir), **knobs}
    return run([bindir / "sh", script, *args], cwd=cwd, env=env)


def dash_run(script: Path, args, *, cwd, **knobs) -> subprocess.CompletedProcess:
    shell = shutil.which("dash") or "/bin/sh"
    return run([shell, script, *args], cwd=cwd, env=host_env(**knobs))


@pytest.mark.parametrize("name", fixture_names())
def test_busybox_and_dash_give_identical_output(name, busybox_bin, tmp_path):
    rel = place(tmp_path, name)
    for mode in ([], ["--json"]):
        under_bb = busybox_run(busybox_bin, LEAN, [*mode, rel], cwd=tmp_path)
        under_dash = dash_run(LEAN, [*mode, rel], cwd=tmp_path)
        assert (under_bb.returncode, under_bb.stdout, under_bb.stderr) == (
            under_dash.returncode, under_dash.stdout, under_dash.stderr
        )
        assert under_bb.stderr == b""


def test_busybox_knobs_unknown_input_and_lake(busybox_bin, tmp_path):
    rel = place(tmp_path, "decide_false", 'a&b "c"\\d.lean')
    for mode in ([], ["--json"]):
        args = [*mode, rel]
        flood_bb = busybox_run(busybox_bin, LEAN, args, cwd=tmp_path, STANDIN_FLOOD="100000")
        flood_dash = dash_run(LEAN, args, cwd=tmp_path, STANDIN_FLOOD="100000")
        assert flood_bb.returncode == flood_dash.returncode == 1
        assert flood_bb.stdout == flood_dash.stdout
        assert flood_bb.stdout.count(b"\n") == 100000 + (3 if not mode else 1)
        delayed = busybox_run(busybox_bin, LEAN, args, cwd=tmp_path, STANDIN_LINE_DELAY="0.01")
        plain = dash_run(LEAN, args, cwd=tmp_path)
        assert (delayed.returncode, delayed.stdout) == (plain.returncode, plain.stdout)

    (tmp_path / "New.lean").write_text("-- nothing recorded\n")
    unknown_bb = busybox_run(busybox_bin, LEAN, ["New.lean"], cwd=tmp_path)
    unknown_dash = dash_run(LEAN, ["New.lean"], cwd=tmp_path)
    assert unknown_bb.returncode == 2
    assert unknown_bb.stderr == unknown_dash.stderr

    version = busybox_run(busybox_bin, LEAN, ["--version"], cwd=tmp_path)
    assert version.stdout.decode() == VERSION_LINE
    via_lake = busybox_run(busybox_bin, LAKE, ["env", "lean", "--json", rel], cwd=tmp_path)
    assert via_lake.returncode == 1
    assert json_messages(via_lake.stdout)[0]["fileName"] == rel
    for args in (["--version"], ["build"], ["exe", "cache", "get"]):
        assert busybox_run(busybox_bin, LAKE, args, cwd=tmp_path).stdout == dash_run(
            LAKE, args, cwd=tmp_path
        ).stdout


def test_busybox_reindex_writes_the_same_index(busybox_bin, tmp_path):
    copy = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, copy)
    (copy / "INDEX").unlink()
    result = busybox_run(busybox_bin, REINDEX, [copy], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (copy / "INDEX").read_bytes() == (FIXTURES / "INDEX").read_bytes()
