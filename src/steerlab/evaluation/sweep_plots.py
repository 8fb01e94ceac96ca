"""PNG figures for sweeps: a layer x strength heatmap and per-layer curves, drawn off-screen (Agg, no pyplot state)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from ..vector import write_atomic


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("sweep figures need matplotlib: pip install matplotlib==3.11.2 (or steerlab[eval])") from None


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def heatmap_png(matrix: Sequence[Sequence[float]], layers: Sequence[int], values: Sequence[float], *,
                title: str, value_label: str, colour_label: str, mark: tuple[int, int] | None = None,
                centre: float | None = None) -> bytes:
    """Layers down, grid values across; `mark` (row, column) outlines the recommended cell."""
    _matplotlib()
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(1.6 + 0.9 * len(values), 1.2 + 0.28 * len(layers)))
    ax = fig.add_subplot()
    flat = [x for row in matrix for x in row]
    norm = None
    if centre is not None and min(flat) < centre < max(flat):
        norm = TwoSlopeNorm(vcenter=centre, vmin=min(flat), vmax=max(flat))
    image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r" if centre is not None else "viridis", norm=norm)
    ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel(value_label)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    if len(flat) <= 200:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    if mark is not None:
        ax.add_patch(Rectangle((mark[1] - 0.5, mark[0] - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    fig.colorbar(image, ax=ax, label=colour_label)
    return _png(fig)


def curves_png(layers: Sequence[int], curves: dict[str, Sequence[float]], *, title: str, y_label: str,
               reference: float | None = None) -> bytes:
    """One line per named series over layers; `reference` draws a dashed horizontal line (e.g. unsteered)."""
    _matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for name, ys in curves.items():
        ax.plot(list(layers), list(ys), marker="o", markersize=3, label=name)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="unsteered")
    ax.set_xlabel("layer")
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def write_png(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write PNG bytes atomically, refusing to replace a file unless asked."""
    write_atomic(Path(path), data, overwrite=overwrite)
    return Path(path)
