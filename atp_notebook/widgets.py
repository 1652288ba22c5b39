"""The session panel: what ``%lean_sandbox status`` shows in a widget frontend.

It shows the backend, image, workdir, state, last sync, what is running and
the workdir's Lean files, with four buttons that act on the kernel's
:class:`~atp_notebook.kernel.KernelSession`: **sync** (both ways),
**restart**, **cancel** (every command started from the notebook that still
runs; the session stays) and **close**.

What is true about *cancel* (Jupyter's messaging, not a choice made here):
a button click reaches the kernel as a comm message, and the kernel handles
comm messages only between cells. So while a ``%%lean_sandbox`` cell is
running, a click waits until that cell ends; to stop a running cell use the
kernel's **Interrupt** (■, or ``I I``), which cancels the command and keeps
the session. The cancel button is for commands started with
``%lean_sandbox run --bg ...``: the kernel is idle while they run, so the
click is handled at once and kills them.

Without a widget frontend (terminal IPython) the same information is printed
as text; the panel's ``text/plain`` form is that text too.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets

from atp_notebook.kernel import KernelSession

__all__ = ["SessionPanel"]

_MAX_FILES = 20


class SessionPanel(widgets.VBox):
    """Status and controls of one :class:`KernelSession`; refreshes when its state changes."""

    def __init__(self, kernel: KernelSession, **kwargs: object) -> None:
        self.kernel = kernel
        self.info = widgets.HTML()
        self.message = widgets.HTML()
        self.buttons: dict[str, widgets.Button] = {}
        specs: list[tuple[str, str, str, Callable[[], str]]] = [
            ("sync", "refresh", "Sync the workdir both ways (host ⇄ sandbox)", self._sync),
            ("restart", "repeat", "Close the sandbox and open a fresh one", self._restart),
            ("cancel", "stop", "Cancel the commands running in the sandbox (the session stays open)", self._cancel),
            ("close", "power-off", "Close the sandbox (the next cell opens a new one)", self._close),
        ]
        for name, icon, tooltip, action in specs:
            button = widgets.Button(description=name, icon=icon, tooltip=tooltip,
                                    layout=widgets.Layout(width="auto"))
            button.on_click(self._handler(name, action))
            self.buttons[name] = button
        super().__init__(children=[self.info, widgets.HBox(list(self.buttons.values())), self.message], **kwargs)
        self._unsubscribe = kernel.subscribe(self.refresh)
        self.refresh()

    # -- actions ----------------------------------------------------------------------
    def _handler(self, name: str, action: Callable[[], str]) -> Callable[[widgets.Button], None]:
        def on_click(_: widgets.Button) -> None:
            try:
                text = action()
                self._say(text)
            except Exception as exc:  # noqa: BLE001 - shown in the panel, not lost in a log
                self._say(f"{name} failed: {exc}", error=True)
            self.refresh()

        return on_click

    def _sync(self) -> str:
        return f"synced ({self.kernel.sync('both')})"

    def _restart(self) -> str:
        self.kernel.restart()
        return "restarted: a fresh session is open"

    def _cancel(self) -> str:
        n = self.kernel.cancel()
        return f"cancelled {n} command{'s' if n != 1 else ''}" if n else "nothing was running"

    def _close(self) -> str:
        self.kernel.close()
        return "closed (the next cell opens a new session)"

    def _say(self, text: str, *, error: bool = False) -> None:
        colour = "#c62828" if error else "inherit"
        self.message.value = f'<span style="color: {colour}">{html.escape(text)}</span>'

    # -- view ----------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the kernel session's state into the widgets."""
        info = self.kernel.describe()
        files = self._files()
        if files:
            info["files"] = files
        rows = "".join(
            f'<tr><th style="text-align: left; padding-right: 1em">{html.escape(k)}</th>'
            f'<td style="text-align: left"><code>{html.escape(v)}</code></td></tr>'
            for k, v in info.items()
        )
        self.info.value = f"<table>{rows}</table>"
        is_open = self.kernel.is_open
        self.buttons["cancel"].disabled = not self.kernel.running
        self.buttons["close"].disabled = not is_open
        self.buttons["sync"].disabled = False
        self.buttons["restart"].disabled = False

    def _files(self) -> str:
        root = self.kernel.workdir
        try:
            names = sorted(p.relative_to(root).as_posix() for p in Path(root).glob("*.lean"))
        except OSError:
            return ""
        if len(names) > _MAX_FILES:
            names = names[:_MAX_FILES] + [f"… {len(names) - _MAX_FILES} more"]
        return ", ".join(names)

    def text(self) -> str:
        return self.kernel.status_text()

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, **kwargs: object) -> dict | None:
        """The widget view, with the whole status as ``text/plain`` (ipywidgets cuts it at 110 chars)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/plain"] = self.text()
        return bundle

    def close(self) -> None:
        unsubscribe = getattr(self, "_unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe()
        super().close()
