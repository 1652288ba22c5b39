"""``%lean_sandbox`` and ``%%lean_sandbox``: check Lean files from notebook cells.

::

    %load_ext atp_notebook
    %lean_sandbox use {auto,local,docker,modal} [--workdir DIR] [--image TAG] [--timeout S]
    %lean_sandbox status | sync [in|out] | restart | close
    %lean_sandbox run [--bg] [--timeout S] [--out NAME] [--no-raise] CMD...
    %%lean_sandbox [FILE.lean] [--chain] [--cold] [--timeout S] [--out NAME] [--no-raise]

Checks run warm through the session's Lean REPL where the sandbox has one
(imports are loaded once per distinct header; ``--chain`` runs a cell in the
environment left by the cell run before it), cold with ``lake env lean
--json`` otherwise.

Defaults come from ``%config LeanSandbox.<option>`` (or
``c.LeanSandbox.<option>`` in an IPython profile); ``%config LeanSandbox``
lists them. The class is a
:class:`~IPython.core.magic.Magics`, which is a traitlets ``Configurable``,
as in jupysql.

Interrupting the kernel while a cell runs cancels the command (its process
tree gets SIGTERM, then SIGKILL after the backend's grace period, like the
ladder of IPython's ``%%script``), keeps the session, and ends the cell with
a one-line ``LeanCheckInterrupted``.
"""

from __future__ import annotations

import ast
import contextvars
import keyword
import threading
from typing import Any

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Dict, Enum, Float, Int, Unicode, observe

from atp_notebook.backends import BACKEND_NAMES
from atp_notebook.backends.base import AtpError, CommandHandle, CommandResult
from atp_notebook.check import (
    DEFAULT_CHECK_COMMAND,
    DEFAULT_FILE,
    CommandFailed,
    LeanCheckFailed,
    LeanCheckInterrupted,
    LeanSandboxError,
    build_command,
    cell_path,
    follow,
    relative_name,
    run_check,
    write_cell,
)
from atp_notebook.diagnostics import parse_json_line
from atp_notebook.display import LiveView, RunLog
from atp_notebook.kernel import DEFAULT_WORKDIR, KernelSession
from atp_notebook.project import prepare
from atp_notebook.repl import DEFAULT_REPL_COMMAND, ReplUnavailable

__all__ = ["BackgroundRun", "LeanSandbox", "load", "unload"]

ACTIONS = ("use", "status", "sync", "restart", "close", "run")
LINE_USAGE = """\
%lean_sandbox use {auto,local,docker,modal} [--workdir DIR] [--image TAG] [--timeout S] [--option KEY=VALUE]...
%lean_sandbox status | sync [in|out] | restart | close
%lean_sandbox run [--bg] [--timeout S] [--out NAME] [--no-raise] CMD..."""
CELL_USAGE = "%%lean_sandbox [FILE.lean] [--chain] [--cold] [--timeout S] [--out NAME] [--no-raise]"


def _is_zmq_shell(shell: Any) -> bool:
    """A Jupyter kernel's shell (rich display), as opposed to terminal IPython."""
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class BackgroundRun:
    """A command started with ``%lean_sandbox run --bg``: ``.handle``, ``.result`` once done."""

    def __init__(self, command: str, handle: CommandHandle) -> None:
        self.command = command
        self.handle = handle
        self.result: CommandResult | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> CommandResult | None:
        """Block until the command ended (or ``timeout``); its result, or None if still running."""
        self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        self.handle.cancel()

    def __repr__(self) -> str:
        state = f"exit {self.result.exit_code}" if self.result is not None else "running"
        return f"<BackgroundRun {self.command!r} ({state})>"


def _usage(message: str, usage: str) -> UsageError:
    return UsageError(f"{message}\nusage:\n{usage}")


def _check_name(name: str | None, usage: str) -> None:
    if name is not None and (not name.isidentifier() or keyword.iskeyword(name)):
        raise _usage(f"--out needs a Python variable name, not {name!r}.", usage)


def _check_timeout(value: float | None, usage: str) -> None:
    if value is not None and value <= 0:
        raise _usage(f"--timeout must be a positive number of seconds, not {value:g}.", usage)


@magics_class
class LeanSandbox(Magics):
    """Check Lean 4 + Mathlib files from cells, in one sandbox session per kernel.

    Options (``%config LeanSandbox.<name> = value``):

    ``backend``
        ``auto`` (default), ``local``, ``docker`` or ``modal``.
    ``image``
        Sandbox image tag; empty (default) means the package's default image.
    ``workdir``
        Host folder holding the cells' files: ``lean_workdir`` (default), a
        folder of the kernel's current directory (normally the notebook's
        folder), resolved when the session first opens. A Lean project
        matching the image is scaffolded there on the first check.
    ``timeout``
        Seconds a check or command may run before it is killed (exit 124);
        default 1800; 0 means no limit.
    ``check_command``
        Default ``lake env lean --json {file}``; ``{file}`` becomes the
        file's path relative to the workdir. Commands with ``--json`` are
        parsed line by line as they stream; others as Lean's text output.
    ``default_file``
        The file a cell writes when it names none: ``Scratch.lean``.
    ``view``
        ``auto`` (rich display in a Jupyter kernel, plain lines to stdout in
        terminal IPython), ``rich`` or ``plain``.
    ``tail_lines``, ``update_interval``
        Lines the live view keeps (the full log is on disk) and the shortest
        time between two of its updates.
    ``engine``
        ``auto`` (default): checks go through the session's Lean REPL, warm,
        where the sandbox has one, else cold with ``check_command`` (said
        once); ``repl``: the REPL or an error; ``lean``: always cold. A
        ``check_command`` changed from the default means cold under ``auto``.
    ``mode``
        ``file`` (default): each cell is a file checked on its own; ``chain``:
        each cell runs in the environment left by the cell run before it,
        like Python cells (the same as ``%%lean_sandbox --chain``).
    ``goals``
        Show the goals at each ``sorry`` and before each tactic step under
        the cell (REPL checks; default True).
    ``repl_command``, ``repl_memory_mb``, ``repl_max_headers``
        How the REPL starts (``lake env repl``), the resident memory (MiB)
        past which it is restarted, and how many import headers stay loaded.
    """

    backend = Enum(BACKEND_NAMES, default_value="auto", help="auto, local, docker or modal").tag(config=True)
    image = Unicode("", help="Sandbox image tag; empty: the default image").tag(config=True)
    workdir = Unicode(DEFAULT_WORKDIR, help="Host folder of the cells' files (relative: to the kernel's cwd)").tag(
        config=True
    )
    timeout = Float(1800.0, help="Seconds a check or command may run (0: no limit)").tag(config=True)
    check_command = Unicode(DEFAULT_CHECK_COMMAND, help="The check; {file} is the cell's file").tag(config=True)
    default_file = Unicode(DEFAULT_FILE, help="File written by a cell that names none").tag(config=True)
    view = Enum(("auto", "rich", "plain"), default_value="auto", help="How runs are shown").tag(config=True)
    tail_lines = Int(200, help="Output lines the live view keeps").tag(config=True)
    update_interval = Float(0.1, help="Shortest time (s) between two live-view updates").tag(config=True)
    engine = Enum(("auto", "repl", "lean"), default_value="auto",
                  help="auto: the Lean REPL where there is one; repl: only the REPL; lean: always cold").tag(config=True)
    mode = Enum(("file", "chain"), default_value="file",
                help="file: cells checked on their own; chain: each cell continues the one run before").tag(config=True)
    goals = Bool(True, help="Show goals at sorries and tactic steps (REPL checks)").tag(config=True)
    repl_command = Unicode(DEFAULT_REPL_COMMAND, help="How the Lean REPL is started in the workdir").tag(config=True)
    repl_memory_mb = Float(12288.0, help="Restart the REPL past this resident memory (MiB); 0: never").tag(config=True)
    repl_max_headers = Int(4, help="Import headers the REPL keeps loaded").tag(config=True)
    backend_options = Dict(
        {}, help="Fields of the backend's config, e.g. {'sync': 'copy', 'memory': '8g'} for docker"
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.kernel = KernelSession(self.backend, workdir=self.workdir, image=self.image,
                                    options=self.backend_options, say=self._say)
        self.background: list[BackgroundRun] = []
        self.last_view: LiveView | None = None  # the view of the latest run (for inspection)

    @observe("backend", "image", "workdir", "backend_options")
    def _reconfigure(self, change: Any) -> None:
        kernel = getattr(self, "kernel", None)
        if kernel is not None:
            kernel.configure(backend=self.backend, workdir=self.workdir, image=self.image,
                             options=self.backend_options)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _say(text: str) -> None:
        print(text, flush=True)

    @property
    def view_mode(self) -> str:
        """``rich`` or ``plain``: how runs are shown in this shell."""
        if self.view != "auto":
            return self.view
        return "rich" if _is_zmq_shell(self.shell) else "plain"

    def _timeout(self, value: float | None) -> float | None:
        if value is not None:
            return value
        return self.timeout if self.timeout > 0 else None

    def _open(self) -> None:
        try:
            self.kernel.ensure()
        except (AtpError, ValueError, TypeError, ImportError) as exc:  # no backend, bad name/option, no SDK
            raise LeanSandboxError(str(exc)) from exc

    def _backend_label(self) -> str:
        backend = self.kernel.backend
        return backend.name if backend is not None else self.kernel.backend_name

    def _store(self, name: str | None, value: object) -> None:
        if name:
            self.shell.user_ns[name] = value

    # -- %%lean_sandbox ------------------------------------------------------------------------
    @no_var_expand
    @magic_arguments.magic_arguments("%lean_sandbox")
    @magic_arguments.argument("file", nargs="?", metavar="FILE.lean",
                              help="file to write the cell to, relative to the workdir (default: Scratch.lean)")
    @magic_arguments.argument("--chain", action="store_true",
                              help="run in the environment left by the cell run before (needs the Lean REPL)")
    @magic_arguments.argument("--cold", action="store_true",
                              help="check cold with the check command, not through the REPL")
    @magic_arguments.argument("--timeout", type=float, metavar="S", help="seconds before the check is killed")
    @magic_arguments.argument("--out", metavar="NAME", help="store the CheckResult in this variable")
    @magic_arguments.argument("--no-raise", action="store_true", dest="no_raise",
                              help="do not fail the cell when the check fails")
    @cell_magic("lean_sandbox")
    def lean_sandbox_cell(self, line: str, cell: str) -> None:
        """Write the cell to FILE.lean in the workdir, check it in the sandbox, show the diagnostics.

        The output streams in as Lean prints it; when the check ends, the
        diagnostics are shown against the cell's own lines. A check fails
        when the command exits non-zero or reports an error (warnings and
        ``sorry`` don't fail it); a failed check fails the cell with a
        one-line ``LeanCheckFailed`` unless ``--no-raise`` is given.
        ``--out NAME`` stores a ``CheckResult`` (``ok``, ``exit_code``,
        ``diagnostics``, ``stdout``, ``stderr``, ``duration_s``, ``file``, ...).
        """
        try:
            args = magic_arguments.parse_argstring(self.lean_sandbox_cell, line)
        except UsageError as exc:
            raise _usage(str(exc), CELL_USAGE) from None
        except ValueError as exc:  # unbalanced quotes
            raise _usage(f"Cannot parse the options: {exc}.", CELL_USAGE) from None
        file = args.file or self.default_file
        if not file.endswith(".lean"):
            raise _usage(f"FILE must be a .lean file, not {file!r}.", CELL_USAGE)
        _check_name(args.out, CELL_USAGE)
        _check_timeout(args.timeout, CELL_USAGE)
        chain = args.chain or self.mode == "chain"
        if chain and (args.cold or self.engine == "lean"):
            raise _usage("--chain needs the Lean REPL: drop --cold (or set LeanSandbox.engine to auto).", CELL_USAGE)
        kernel = self.kernel
        try:
            cell_path(kernel.workdir, file)
        except ValueError as exc:
            raise _usage(str(exc), CELL_USAGE) from None

        self._open()
        workdir = kernel.workdir
        path = write_cell(workdir, file, cell)
        try:
            created = prepare(workdir, kernel.image, kernel)
        except AtpError as exc:
            raise LeanSandboxError(str(exc)) from exc
        if created is not None:
            self._say(created.describe() + ("" if created.warm else _project_hint(self._backend_label())))
        rel = relative_name(workdir, path)
        command = build_command(self.check_command, rel)
        warm = self._use_repl(args.cold, chain)
        shown = f"Lean REPL ({self.repl_command})" if warm else command
        log = RunLog(workdir, rel, header=f"$ {shown}\n# backend: {self._backend_label()}, workdir: {workdir}")
        view = LiveView(
            title=rel,
            backend=self._backend_label(),
            command=shown,
            mode=self.view_mode,
            source=cell if cell.endswith("\n") or not cell else cell + "\n",
            log=log,
            tail=self.tail_lines,
            interval=self.update_interval,
            parse=parse_json_line if "--json" in command else None,
        )
        self.last_view = view
        view.start()
        text = view.source or ""
        try:
            result = None
            if warm:
                result = self._check_warm(rel, text, file_given=args.file, chain=chain,
                                          timeout_s=self._timeout(args.timeout), view=view)
            if result is None:
                result = run_check(kernel, rel, command=self.check_command,
                                   timeout_s=self._timeout(args.timeout), sink=view)
        except KeyboardInterrupt:  # a second interrupt while the command was being killed
            view.finish(status="interrupted", summary="interrupted")
            raise LeanCheckInterrupted(f"{rel}: interrupted; the command is being killed, the session kept") from None
        except AtpError as exc:
            view.finish(status="failed", summary=str(exc))
            raise LeanSandboxError(str(exc)) from exc
        except Exception as exc:
            view.finish(status="failed", summary=f"{type(exc).__name__}: {exc}")
            raise
        result.log_path = log.path
        if result.interrupted:
            status, summary = "interrupted", "interrupted, the command was cancelled"
        elif result.ok:
            status, summary = "ok", result.summary()
        else:
            status = "failed"
            summary = result.summary() if result.errors else result.headline().split(": ", 1)[-1]
        if result.engine == "repl" and not result.interrupted:
            summary += " · warm" if result.warm else " · imports loaded"
        view.finish(status=status, summary=summary, duration_s=result.duration_s,
                    diagnostics=result.shown, stderr=result.stderr, goals=result.goals)
        self._store(args.out, result)
        if result.interrupted:
            raise LeanCheckInterrupted(result.headline(), result)
        if not result.ok and not args.no_raise:
            raise LeanCheckFailed(result)

    def _use_repl(self, cold: bool, chain: bool) -> bool:
        """Whether this check goes through the Lean REPL (see ``engine``)."""
        if cold or self.engine == "lean":
            return False
        if self.engine == "repl" or chain:
            return True
        checker = self.kernel.repl
        if checker is not None and checker.unavailable:
            return False  # said once already; checks run cold
        return self.check_command == DEFAULT_CHECK_COMMAND

    def _check_warm(self, rel: str, text: str, *, file_given: str | None, chain: bool,
                    timeout_s: float | None, view: LiveView) -> Any:
        """A check through the REPL; None when the sandbox has none and a cold check may stand in."""
        checker = self.kernel.warm_checker(command=self.repl_command, memory_mb=self.repl_memory_mb,
                                           max_headers=self.repl_max_headers)
        cell = (file_given or self._cell_id()) if chain else None
        try:
            return checker.check(rel, text, cell=cell, chain=chain, goals=self.goals,
                                 timeout_s=timeout_s, sink=view)
        except ReplUnavailable as exc:
            if self.engine == "repl" or chain:
                raise LeanSandboxError(
                    f"No Lean REPL in this sandbox ({exc}). --chain and LeanSandbox.engine = 'repl' need it: "
                    "use the project's image (atp-notebook image build), or put `repl` on the sandbox's PATH."
                ) from None
            self._say(f"No Lean REPL in this sandbox ({_one_line(str(exc))}): checks run cold with "
                      f"`{self.check_command}`, loading their imports every time. The project's image "
                      "carries the REPL (atp-notebook image build).")
            view.command = build_command(self.check_command, rel)
            return None

    def _cell_id(self) -> str | None:
        """The notebook's id of the running cell (JupyterLab and Notebook 7 send it), else None."""
        running = getattr(getattr(self.shell, "displayhook", None), "exec_result", None)
        cell_id = getattr(getattr(running, "info", None), "cell_id", None)
        if isinstance(cell_id, str) and cell_id:
            return cell_id
        get_parent = getattr(self.shell, "get_parent", None)
        parent = get_parent() if callable(get_parent) else None
        metadata = parent.get("metadata") if isinstance(parent, dict) else None
        cell_id = metadata.get("cellId") if isinstance(metadata, dict) else None
        return cell_id if isinstance(cell_id, str) and cell_id else None

    # -- %lean_sandbox ----------------------------------------------------------------------------
    @no_var_expand
    @magic_arguments.magic_arguments("lean_sandbox")
    @magic_arguments.argument("action", choices=ACTIONS, help="what to do")
    @magic_arguments.argument("args", nargs="*", help="the action's arguments (see above)")
    @line_magic("lean_sandbox")
    def lean_sandbox_line(self, line: str) -> None:
        """Manage the kernel's Lean sandbox session.

        ``use NAME [--workdir DIR] [--image TAG] [--timeout S]``: pick the
        backend (``auto``, ``local``, ``docker``, ``modal``) and open its
        session now. ``status``: backend, image, workdir, state (a panel with
        sync/restart/cancel/close buttons in Jupyter). ``sync [in|out]``:
        sync the workdir (both ways by default). ``restart``: a fresh
        session. ``close``: close it (the next cell opens a new one).
        ``run [--bg] [--timeout S] [--out NAME] [--no-raise] CMD...``: run a
        shell command in the session, streamed; ``$VARS`` reach the shell.
        """
        action, _, rest = line.strip().partition(" ")
        if action not in ACTIONS:
            what = f"Unknown action {action!r}" if action else "Say what to do"
            raise _usage(f"{what}; valid: {', '.join(ACTIONS)}.", LINE_USAGE)
        return getattr(self, f"_{action}")(rest.strip())

    def _parser(self, action: str) -> magic_arguments.MagicArgumentParser:
        return magic_arguments.MagicArgumentParser(prog=f"%lean_sandbox {action}", add_help=False)

    def _parse(self, parser: magic_arguments.MagicArgumentParser, rest: str) -> Any:
        try:
            return parser.parse_argstring(rest)
        except UsageError as exc:
            raise _usage(str(exc), LINE_USAGE) from None
        except ValueError as exc:
            raise _usage(f"Cannot parse the arguments: {exc}.", LINE_USAGE) from None

    def _no_args(self, action: str, rest: str) -> None:
        if rest:
            raise _usage(f"`{action}` takes no arguments (got {rest!r}).", LINE_USAGE)

    def _use(self, rest: str) -> None:
        parser = self._parser("use")
        parser.add_argument("backend", choices=BACKEND_NAMES)
        parser.add_argument("--workdir", metavar="DIR")
        parser.add_argument("--image", metavar="TAG")
        parser.add_argument("--timeout", type=float, metavar="S")
        parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                            help="a field of the backend's config, e.g. sync=copy (repeatable)")
        args = self._parse(parser, rest)
        _check_timeout(args.timeout, LINE_USAGE)
        options = _parse_options(args.option)
        with self.hold_trait_notifications():
            self.backend = args.backend
            self.backend_options = options
            if args.workdir is not None:
                self.workdir = args.workdir
            if args.image is not None:
                self.image = args.image
        if args.timeout is not None:
            self.timeout = args.timeout
        self._open()
        kernel = self.kernel
        name = self._backend_label()
        picked = f" (auto picked {name})" if args.backend == "auto" else ""
        self._say(f"Using the {name} backend{picked}: image {kernel.image.tag}, workdir {kernel.workdir}.")

    def _status(self, rest: str) -> Any:
        self._no_args("status", rest)
        if self.view_mode == "rich" and _widgets_available():
            from IPython.display import display

            from atp_notebook.widgets import SessionPanel

            display(SessionPanel(self.kernel))
            return None
        print(self.kernel.status_text())
        return None

    def _sync(self, rest: str) -> None:
        parser = self._parser("sync")
        parser.add_argument("direction", nargs="?", choices=("in", "out"))
        args = self._parse(parser, rest)
        self._open()
        try:
            report = self.kernel.sync(args.direction or "both")
        except AtpError as exc:
            raise LeanSandboxError(str(exc)) from exc
        self._say(f"Synced {report}.")

    def _restart(self, rest: str) -> None:
        self._no_args("restart", rest)
        self.kernel.close()
        self._open()
        self._say(f"Restarted: a fresh {self._backend_label()} session is open over {self.kernel.workdir}.")

    def _close(self, rest: str) -> None:
        self._no_args("close", rest)
        if not self.kernel.is_open:
            self._say("No session is open.")
            return
        name = self._backend_label()
        self.kernel.close()
        self._say(f"Closed the {name} session; the next cell opens a new one.")

    def _run(self, rest: str) -> None:
        opts, command = _split_run(rest)
        if not command.strip():
            raise _usage("`run` needs a shell command.", LINE_USAGE)
        _check_name(opts.out, LINE_USAGE)
        _check_timeout(opts.timeout, LINE_USAGE)
        self._open()
        kernel = self.kernel
        try:
            handle = kernel.start(command, timeout_s=self._timeout(opts.timeout))
        except AtpError as exc:
            raise LeanSandboxError(str(exc)) from exc
        title = f"$ {command if len(command) <= 80 else command[:79] + '…'}"
        first = command.split()[0] if command.split() else "run"
        log = RunLog(kernel.workdir, f"run-{first}", header=f"$ {command}")
        view = LiveView(title=title, backend=self._backend_label(), mode=self.view_mode, log=log,
                        tail=self.tail_lines, interval=self.update_interval)
        self.last_view = view
        view.start()
        if opts.bg:
            run = BackgroundRun(command, handle)
            self.background = [r for r in self.background if not r.done] + [run]
            ctx = contextvars.copy_context()  # the thread's display updates belong to this cell
            threading.Thread(target=ctx.run, args=(self._follow_background, run, view),
                             name="atp-bg", daemon=True).start()
            self._store(opts.out, run)
            self._say("Running in the background: cancel it with the panel of `%lean_sandbox status`"
                      + (f" or `{opts.out}.cancel()`." if opts.out else "."))
            return
        try:
            result, interrupted = follow(handle, lambda lines: view.feed_lines(lines, {}), view.tick)
        except KeyboardInterrupt:
            view.finish(status="interrupted", summary="interrupted")
            raise LeanCheckInterrupted("interrupted; the command is being killed, the session kept") from None
        finally:
            kernel.done(handle)
        try:
            kernel.sync_out()
        except Exception as exc:  # noqa: BLE001
            self._say(f"Could not sync files back from the sandbox: {exc}")
        status = "interrupted" if interrupted else ("ok" if result.exit_code == 0 else "failed")
        view.finish(status=status, summary=f"exit {result.exit_code}", duration_s=result.duration_s,
                    stderr=result.stderr)
        self._store(opts.out, result)
        if interrupted:
            raise LeanCheckInterrupted("interrupted; the command was cancelled and the session kept", result)
        if result.exit_code != 0 and not opts.no_raise:
            raise CommandFailed(command, result)

    def _follow_background(self, run: BackgroundRun, view: LiveView) -> None:
        try:
            result, _ = follow(run.handle, lambda lines: view.feed_lines(lines, {}), view.tick)
            run.result = result
            status = "ok" if result.exit_code == 0 else "failed"
            view.finish(status=status, summary=f"exit {result.exit_code}", duration_s=result.duration_s,
                        stderr=result.stderr)
        except BaseException as exc:  # noqa: BLE001 - kept for run.wait()
            run.error = exc
        finally:
            self.kernel.done(run.handle)
            run._done.set()


class _RunOptions:
    bg = False
    no_raise = False
    timeout: float | None = None
    out: str | None = None


def _split_run(rest: str) -> tuple[_RunOptions, str]:
    """Split ``run``'s leading options from the command, keeping the command's text as typed.

    Options end at the first word that is not one of them (or at ``--``);
    the rest of the line goes to the shell untouched (quotes, pipes, ``$VARS``).
    """
    opts = _RunOptions()
    text = rest
    while True:
        text = text.lstrip()
        word, _, after = text.partition(" ")
        if word == "--":
            return opts, after
        if word in ("--bg", "--no-raise"):
            setattr(opts, word[2:].replace("-", "_"), True)
            text = after
            continue
        name, eq, value = word.partition("=")
        if name in ("--timeout", "--out"):
            if not eq:
                after = after.lstrip()
                value, _, after = after.partition(" ")
            if not value:
                raise _usage(f"{name} needs a value.", LINE_USAGE)
            if name == "--timeout":
                try:
                    opts.timeout = float(value)
                except ValueError:
                    raise _usage(f"--timeout needs a number of seconds, not {value!r}.", LINE_USAGE) from None
            else:
                opts.out = value
            text = after
            continue
        if word.startswith("--") and len(word) > 2:
            raise _usage(f"Unknown option {word!r} for `run` (valid: --bg, --timeout S, --out NAME, "
                         "--no-raise; put `--` before a command that starts with a dash).", LINE_USAGE)
        return opts, text


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["sync=copy", "memory=8g", "cpus=2"]`` -> ``{"sync": "copy", "memory": "8g", "cpus": 2}``.

    Values that read as Python literals (numbers, True, tuples) become those;
    anything else stays a string.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise _usage(f"--option takes KEY=VALUE (e.g. sync=copy), not {pair!r}", LINE_USAGE)
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _project_hint(backend: str) -> str:
    if backend == "local":
        return (" With a real toolchain, fetch Mathlib's build cache once: "
                "`%lean_sandbox run lake exe cache get`.")
    return ""


# -- the extension hooks ----------------------------------------------------------------------------


def load(ipython: Any) -> LeanSandbox:
    """Register the magics with ``ipython`` (once) and close the session when it shuts down."""
    for existing in getattr(ipython, "configurables", []):
        if isinstance(existing, LeanSandbox):
            return existing
    magics = LeanSandbox(shell=ipython)
    ipython.register_magics(magics)
    try:  # IPython < 9 has a shutdown hook; 9 relies on atexit (kernel.py registers one)
        import IPython.core.hooks as hooks

        if "shutdown_hook" in getattr(hooks, "__all__", ()):
            kernel = magics.kernel
            ipython.set_hook("shutdown_hook", lambda _shell: kernel.close())
    except Exception:  # noqa: BLE001 - closing at exit is still covered by atexit
        pass
    return magics


def unload(ipython: Any) -> None:
    """Close the session and remove the magics (``%unload_ext atp_notebook``)."""
    configurables = getattr(ipython, "configurables", [])
    for magics in [c for c in configurables if isinstance(c, LeanSandbox)]:
        magics.kernel.close()
        configurables.remove(magics)
        manager = ipython.magics_manager
        for kind in ("line", "cell"):
            bound = manager.magics[kind].get("lean_sandbox")
            if getattr(bound, "__self__", None) is magics:
                del manager.magics[kind]["lean_sandbox"]
        manager.registry.pop(type(magics).__name__, None)

