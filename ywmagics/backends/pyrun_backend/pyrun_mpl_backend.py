"""Matplotlib backend of the python runner: Agg rendering, figures sent to the notebook as PNG.

pyrun_server sets ``MPLBACKEND=module://pyrun_mpl_backend`` at start. ``plt.show()`` then sends
every open figure to the running cell as a display (at that point of the cell's output) and closes
it, like Jupyter's inline backend; figures still open when a cell ends are sent by the server.
Without the runner in the process, ``show()`` leaves the figures open and does nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from matplotlib.backends.backend_agg import (  # noqa: F401  (the names a backend module exports)
    FigureCanvasAgg,
    new_figure_manager,
    new_figure_manager_given_figure,
)

FigureCanvas = FigureCanvasAgg


def show(*args: Any, **kwargs: Any) -> None:
    """Send the open figures to the running cell and close them."""
    runner = sys.modules.get("pyrun_runner")
    if runner is not None:
        runner.show_figures()


def draw_if_interactive() -> None:
    """Nothing to redraw: figures are rendered when shown or when the cell ends."""
