"""Matplotlib backend of the python runner: Agg rendering, figures sent to the notebook as PNG.

pyrun_server sets ``MPLBACKEND=module://pyrun_mpl_backend`` at start. ``plt.show()`` then sends
every open figure to the running cell as a display (at that point of the cell's output) and closes
it, like Jupyter's inline backend; figures still open when a cell ends are sent by the server.
Without the runner in the process, ``show()`` leaves the figures open and does nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from matplotlib.backends import backend_agg

# The names a backend module exports. The two functions are made at run time (matplotlib < 3.6
# needs them), so matplotlib's type stubs do not know them.
FigureCanvasAgg = backend_agg.FigureCanvasAgg
new_figure_manager = backend_agg.new_figure_manager  # type: ignore[attr-defined]
new_figure_manager_given_figure = backend_agg.new_figure_manager_given_figure  # type: ignore[attr-defined]
FigureCanvas = FigureCanvasAgg


def show(*args: Any, **kwargs: Any) -> None:
    """Send the open figures to the running cell and close them."""
    runner = sys.modules.get("pyrun_runner")
    if runner is not None:
        runner.show_figures()


def draw_if_interactive() -> None:
    """Nothing to redraw: figures are rendered when shown or when the cell ends."""
