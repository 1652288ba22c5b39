"""The getting-started notebook in a real JupyterLab, driven by a real browser.

JupyterLab is started by the test (loopback, a free port, a token) over a
copy of ``notebooks/``; its kernels get the stand-in ``lean``/``lake``/``repl``
first on PATH, the REPL answering the ``#eval`` cell only after a few seconds
(``STANDIN_REPL_SLOW``) so that a running check can be seen. Chromium (the
system's, through Playwright) opens notebook 1 and runs it with
*Run > Run All Cells*; the test then asserts what the page shows:

* the live view while a check runs: while the ``#eval`` cell still runs
  (prompt ``[*]``), its status line (spinner, ``Lean REPL``, elapsed time) is
  on the page and no message yet; then its two messages, checked warm;
* the broken cell's diagnostics table has the row ``3:6`` with Lean's
  message, and the cell's source is shown with line numbers and the span
  ``reverse_reverse`` marked on line 3 (the cell's own third line);
* the ``sorry`` cell lists its goal under the cell, collapsed until clicked;
* the ``%lean_sandbox status`` panel follows the session (``closed`` after the
  notebook's last cell) and its buttons act: **sync** opens and syncs
  (``idle``), **restart** opens a fresh session, **close** closes it.

Screenshots of those moments go to ``test-artifacts/browser/``. Without a
Chromium the test skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.browser_support import JupyterLab, find_chromium
from tests.conftest import STANDIN_BIN, in_ci

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "01-getting-started.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "browser"
#: The stand-in REPL answers the #eval cell after this many seconds: long enough to see it run.
REPL_SLOW = "#eval 2 + 2:3"
#: Milliseconds a single wait may take (a page element, a cell's end).
WAIT_MS = 60_000

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = "no Chromium found (apt-get install chromium); the browser test needs one"
        if in_ci():
            pytest.fail(reason + " -- under CI=true the browser test must run")
        pytest.skip(reason)
    for module, package in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            reason = f"the {package} package is not installed (pip install {package})"
            if in_ci():
                pytest.fail(reason + " -- under CI=true the browser test must run")
            pytest.skip(reason)
    return path


@pytest.fixture
def lab(tmp_path):
    """JupyterLab over a copy of ``notebooks/``; stopped (kernels too) however the test ends."""
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "lean_*"))
    env = {
        "PATH": f"{STANDIN_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "STANDIN_REPL_SLOW": REPL_SLOW,
        # the notebooks sit in "home": the panel says ~/notebooks/..., and its screenshot names no temp path
        "HOME": str(tmp_path),
        # `%lean_sandbox use auto` must mean the local stand-in here, even where Docker has the image.
        "DOCKER_HOST": "unix:///nonexistent/atp-notebook-tests/docker.sock",
        "MODAL_CONFIG_PATH": str(tmp_path / "no-modal.toml"),
        "MODAL_TOKEN_ID": "",
        "MODAL_TOKEN_SECRET": "",
    }
    server = JupyterLab(root, tmp_path / "lab", env)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if server.log_path.exists():
            shutil.copy(server.log_path, ARTIFACTS / "jupyterlab.log")


def _shot(target, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target.screenshot(path=str(ARTIFACTS / name))


# A cell found by the first line of its source; its prompt and output text, read in one go.
_CELL_STATE = """
(needle) => {
  for (const cell of document.querySelectorAll('.jp-Notebook .jp-CodeCell')) {
    const editor = cell.querySelector('.jp-InputArea-editor .cm-line');
    if (!editor || editor.textContent.trim() !== needle) continue;
    const prompt = cell.querySelector('.jp-InputArea-prompt');
    const output = cell.querySelector('.jp-OutputArea');
    return {prompt: prompt ? prompt.textContent : '', output: output ? output.innerText : ''};
  }
  return null;
}
"""


def _running_with(page, needle: str, shown: str, not_yet: str) -> None:
    """Wait until the cell ``needle`` runs (``[*]``) and shows ``shown`` but not ``not_yet``."""
    page.wait_for_function(
        f"""([needle, shown, notYet]) => {{
          const s = ({_CELL_STATE})(needle);
          return s !== null && s.prompt.includes('*') && s.output.includes(shown) && !s.output.includes(notYet);
        }}""",
        arg=[needle, shown, not_yet],
        timeout=WAIT_MS,
        polling=20,
    )


def _done(page, needle: str, timeout: float = WAIT_MS) -> dict:
    """Wait until the cell ``needle`` has run (a number in its prompt); its state."""
    page.wait_for_function(
        f"(needle) => {{ const s = ({_CELL_STATE})(needle); return s !== null && /\\[\\d+\\]/.test(s.prompt); }}",
        arg=needle,
        timeout=timeout,
    )
    return page.evaluate(_CELL_STATE, needle)


def _cell(page, first_line: str):
    """The notebook's code cell whose first source line is ``first_line``."""
    line = page.locator(".jp-InputArea-editor .cm-line").filter(has_text=re.compile(rf"^{re.escape(first_line)}$"))
    return page.locator(".jp-Notebook .jp-CodeCell").filter(has=line.first)


def _run_all_cells(page, attempts: int = 3) -> None:
    """*Run > Run All Cells*, until the first cell has run.

    JupyterLab can still be settling its kernel connection when the status
    bar first says "Idle"; a Run All in that moment queues nothing (every
    prompt stays ``[ ]``). Then the menu is used again, at most ``attempts`` times.
    """
    first = "%load_ext atp_notebook"
    for attempt in range(1, attempts + 1):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            _done(page, first, timeout=20_000)
            return
        except Exception as exc:  # noqa: BLE001 - playwright's TimeoutError: nothing ran
            if attempt == attempts:
                raise AssertionError(f"Run All Cells ran nothing, {attempts} times") from exc
            print(f"Run All Cells ran nothing (attempt {attempt}); using the menu again")


def _button(panel, label: str):
    """A panel button by its label (its accessible name also holds the icon's glyph)."""
    return panel.locator("button.widget-button", has_text=re.compile(rf"^\s*{label}\s*$"))


def test_getting_started_in_jupyterlab(chromium, lab):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        console: list[str] = []  # the page's console, kept as an artifact
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.goto(lab.url(f"lab/tree/{NOTEBOOK}"))
            notebook = page.locator(".jp-NotebookPanel .jp-Notebook")
            expect(notebook).to_be_visible()
            # the kernel is up (the toolbar's indicator says "idle" before a kernel even exists)
            expect(page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle")

            _run_all_cells(page)

            # -- the live view while the check runs (the REPL takes 3 s over this cell), then its result
            examples = "%%lean_sandbox Examples.lean"
            # the clock moves while the REPL works (the first frame says 0.0 s): the view is updated
            _running_with(page, examples, "Lean REPL (lake env repl) · 1.", "info: 4")
            _shot(_cell(page, examples), "1-running.png")
            state = page.evaluate(_CELL_STATE, examples)
            assert re.search(r"Examples\.lean · local · Lean REPL \(lake env repl\) · \d+\.\d s$",
                             state["output"], re.M), state
            state = _done(page, examples)
            assert "✓ Examples.lean: 2 info messages · warm · local" in state["output"]
            rows = _cell(page, examples).locator("table.atp-diagnostics tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.nth(1).locator("td").nth(1)).to_have_text("2:0")
            expect(rows.nth(1).locator("td").nth(2)).to_have_text("Nat.succ (n : Nat) : Nat")

            # -- the notebook ran to its end
            _done(page, "%lean_sandbox close")
            _shot(page, "0-notebook-after-run-all.png")

            # -- the diagnostics table and the marked source, against the cell's own lines
            broken = _cell(page, "%%lean_sandbox --no-raise --out broken")
            output = broken.locator(".jp-OutputArea")
            expect(output.locator(".atp-run")).to_contain_text("✗ Scratch.lean: 1 error · warm · local")
            table = output.locator("table.atp-diagnostics")
            expect(table).to_be_visible()
            row = table.locator("tbody tr")
            expect(row).to_have_count(1)
            expect(row.locator("td").nth(0)).to_contain_text("error")
            expect(row.locator("td").nth(1)).to_have_text("3:6")
            expect(row.locator("td").nth(2)).to_have_text("Unknown identifier `reverse_reverse`")
            source = output.locator("pre.atp-source")
            expect(source).to_be_visible()
            mark = source.locator("span.atp-error")
            expect(mark).to_have_text("reverse_reverse")
            lines = source.inner_text().split("\n")
            assert [line.split()[0] for line in lines] == ["1", "2", "3"], lines
            assert re.fullmatch(r"3 ✗ {3}rw \[reverse_reverse\]", lines[2]), lines[2]
            assert "error: Unknown identifier `reverse_reverse`" in mark.get_attribute("title")
            broken.scroll_into_view_if_needed()
            _shot(broken, "2-diagnostics-table-and-marked-source.png")

            # -- the goal left by a sorry, under the cell, collapsed until clicked
            sorry = _cell(page, "%%lean_sandbox Sorry.lean --out open_goal").locator(".jp-OutputArea")
            goals = sorry.locator("details.atp-goals")
            expect(goals.locator("summary")).to_have_text("goals (1, 1 sorry)")
            expect(goals.locator("pre")).to_be_hidden()
            goals.locator("summary").click()
            expect(goals.locator("pre")).to_have_text("n : Nat\n⊢ n < n + 1")
            expect(goals.locator(".atp-goal")).to_contain_text("2:2 sorry")
            sorry.scroll_into_view_if_needed()
            _shot(sorry, "7-goals-under-the-cell.png")

            # -- the session panel follows the session, and its buttons act on it
            panel = _cell(page, "%lean_sandbox status").locator(".jp-OutputArea .widget-vbox").first
            expect(panel).to_be_visible()
            panel.scroll_into_view_if_needed()
            state_cell = panel.locator("tr", has=page.locator("th", has_text=re.compile(r"^state$"))).locator("td")
            message = panel.locator(".widget-html").last
            expect(state_cell).to_have_text("closed")  # the notebook's last cell closed the session
            expect(_button(panel, "close")).to_be_disabled()
            _shot(panel, "3-panel-closed-by-the-last-cell.png")

            _button(panel, "sync").click()
            expect(message).to_have_text("synced (in: ok; out: ok)")
            expect(state_cell).to_have_text("idle")
            expect(panel.locator("tr", has=page.locator("th", has_text="last sync"))).to_contain_text("(out: ok)")
            expect(_button(panel, "close")).to_be_enabled()
            workdir = panel.locator("tr", has=page.locator("th", has_text=re.compile(r"^workdir$"))).locator("td")
            expect(workdir).to_have_text(re.compile(r"^~/notebooks/lean_"))
            _shot(panel, "4-panel-after-sync.png")  # docs/session-panel.png

            _button(panel, "restart").click()
            expect(message).to_have_text("restarted: a fresh session is open")
            expect(state_cell).to_have_text("idle")
            _shot(panel, "5-panel-after-restart.png")

            _button(panel, "close").click()
            expect(message).to_have_text("closed (the next cell opens a new session)")
            expect(state_cell).to_have_text("closed")
            expect(_button(panel, "close")).to_be_disabled()
            _shot(panel, "6-panel-after-close.png")
        except BaseException:
            try:
                _shot(page, "failure.png")
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
            raise
        finally:
            browser.close()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "console.log").write_text("\n".join(console) + "\n", encoding="utf-8")
