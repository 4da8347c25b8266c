"""Install progress in a notebook: an ipywidgets view, or the text lines of
:mod:`ywmagics.progress` where widgets can't show.

Both views are fed the same :class:`~ywmagics.events.Event` objects by the install callback, in
the kernel's own thread (ipykernel sends a widget's new value at once from that thread).

The widget view is displayed with a ``text/plain`` alternative that is replaced by the full event
log at the end, so a notebook run without a widget frontend (nbconvert, papermill) still shows
what happened.
"""

from __future__ import annotations

import html
import importlib.util
import sys
import time
from collections.abc import Sequence
from typing import Any

from ywmagics.events import Event
from ywmagics.progress import ProgressView, TextProgress, Tracker, summary_lines

__all__ = ["ProgressView", "TextProgress", "Tracker", "WidgetProgress", "make_progress"]


class WidgetProgress:
    """A progress bar, the current step, and a collapsible log of the events (ipywidgets)."""

    def __init__(self, title: str, expected: int) -> None:
        import ipywidgets as widgets  # type: ignore[import-untyped]

        self.tracker = Tracker(expected)
        self.title = title
        self._started = time.monotonic()
        self.bar = widgets.FloatProgress(
            value=0.0,
            min=0.0,
            max=1.0,
            bar_style="info",
            layout=widgets.Layout(width="auto", flex="1 1 auto"),
        )
        self.percent = widgets.Label(value="0%")
        self.step = widgets.Label(value="resolving…")
        self.message = widgets.HTML(value="")
        self.log = widgets.Textarea(
            value="",
            disabled=True,
            layout=widgets.Layout(width="100%", height="14em"),
        )
        self.accordion = widgets.Accordion(children=[self.log], selected_index=None)
        self.accordion.set_title(0, "Log")
        self.view = widgets.VBox(
            [
                widgets.HTML(value=f"<b>{html.escape(title)}</b>"),
                widgets.HBox([self.bar, self.percent]),
                self.step,
                self.message,
                self.accordion,
            ]
        )
        from IPython.display import display

        self.handle = display(  # type: ignore[no-untyped-call]
            self._bundle(f"{title}\n(progress is shown as a widget)"), raw=True, display_id=True
        )

    def _bundle(self, text: str) -> dict[str, Any]:
        bundle = dict(self.view._repr_mimebundle_() or {})
        bundle["text/plain"] = text
        return bundle

    def _set_progress(self, value: float) -> None:
        self.bar.value = value
        self.percent.value = f"{value:.0%}"

    def event(self, event: Event) -> None:
        self.tracker.update(event)
        self._set_progress(self.tracker.fraction)
        self.step.value = self.tracker.step[:200]
        self.log.value = "\n".join(self.tracker.lines)

    def _finish_text(self, last: Sequence[str]) -> None:
        # What frontends without widgets show: the whole log, as the text lines would be.
        if self.handle is not None:
            self.handle.update(
                self._bundle("\n".join([self.title, *self.tracker.lines, *last])), raw=True
            )

    def done(self, results: Sequence[dict[str, Any]]) -> None:
        lines = summary_lines(results)
        self._set_progress(self.bar.max)
        self.bar.bar_style = "success"
        elapsed = time.monotonic() - self._started
        self.step.value = f"ready in {elapsed:.1f} s"
        self.message.value = "<br>".join(f"<code>{html.escape(line)}</code>" for line in lines)
        self._finish_text(lines)

    def failed(self, error: BaseException) -> None:
        """The bar turns red (orange when interrupted), whole even if it failed at 0 %; the
        error itself is shown once, as the cell's error, below: not again here."""
        interrupted = isinstance(error, KeyboardInterrupt)
        self.bar.bar_style = "warning" if interrupted else "danger"
        self.bar.value = self.bar.max
        self.percent.value = "stopped" if interrupted else "failed"
        self.step.value = (
            "install interrupted" if interrupted else "install failed: the error is below"
        )
        self._finish_text(["install interrupted" if interrupted else "install failed"])


def widgets_available() -> bool:
    """Whether a widget frontend may be listening: an ipykernel kernel, with ipywidgets."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython.core.getipython import get_ipython

    shell = get_ipython()  # type: ignore[no-untyped-call]
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    return importlib.util.find_spec("ipywidgets") is not None


def make_progress(mode: str, title: str, expected: int) -> ProgressView:
    """A widget view (``mode`` "widgets", or "auto" in a kernel), else text lines."""
    if mode == "widgets" or (mode == "auto" and widgets_available()):
        try:
            return WidgetProgress(title, expected)
        except ImportError:
            pass
    return TextProgress(title, expected)
