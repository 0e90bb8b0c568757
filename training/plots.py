"""Report figures (matplotlib, headless): one panel per label on a three-column grid, and the
save step every figure shares."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLUMNS = 3
DPI = 90


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: Path) -> None:
    """Lay out, write (PNG, `DPI`) and close `fig`."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)


@contextmanager
def label_panels(
    labels: Sequence[str], path: Path, *, panel_height: float, title: str | None = None
) -> Iterator[list[Axes]]:
    """One panel per label (in order) on a `COLUMNS`-wide grid, saved to `path` when the block
    ends: the spare panels of the last row are hidden, `title` goes above the grid. The figure
    is closed unsaved if the block raises."""
    plt = pyplot()
    rows = math.ceil(len(labels) / COLUMNS)
    fig, axes = plt.subplots(
        rows, COLUMNS, figsize=(4 * COLUMNS, panel_height * rows), squeeze=False
    )
    panels = [axes[k // COLUMNS][k % COLUMNS] for k in range(rows * COLUMNS)]
    try:
        yield panels[: len(labels)]
    except BaseException:
        plt.close(fig)
        raise
    for spare in panels[len(labels) :]:
        spare.axis("off")
    if title is not None:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
