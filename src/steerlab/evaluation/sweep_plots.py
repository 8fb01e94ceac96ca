"""PNG figures for sweeps: a layer x strength heatmap and per-layer curves, drawn off-screen (Agg, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Sequence


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


def heatmap_png(
    matrix: Sequence[Sequence[float]],
    layers: Sequence[int],
    values: Sequence[float],
    *,
    title: str,
    value_label: str,
    colour_label: str,
    mark: Sequence[tuple[int, int]] | None = None,
    centre: float | None = None,
    span: float | None = None,
    passing: Sequence[Sequence[bool]] | None = None,
    reliable: Sequence[Sequence[bool]] | None = None,
) -> bytes:
    """Layers down, grid values across; `mark` outlines recommended cells (row, column).

    With `centre`, one symmetric colour scale: centre +- max(|value - centre|, `span`), so a -0.08 cell is
    as pale as +0.08 and a grid of noise is not stretched to full colour. `passing` marks cells within the
    fluency bound with a dot (others are hatched); `reliable` prints a cell's value in bold when its
    interval excludes zero and greys it otherwise.
    """
    _matplotlib()
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(2.2 + 1.0 * len(values), 1.6 + 0.32 * len(layers)))
    ax = fig.add_subplot()
    flat = [x for row in matrix for x in row]
    norm = None
    if centre is not None:
        half = max([abs(x - centre) for x in flat] + [span or 0.0, 1e-12])
        norm = Normalize(vmin=centre - half, vmax=centre + half)
    image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r" if centre is not None else "viridis", norm=norm)
    ax.set_xticks(range(len(values)), [f"{v:+g}" for v in values], fontsize=9)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=9)
    ax.set_xlabel(value_label, fontsize=10)
    ax.set_ylabel("layer", fontsize=10)
    legend = []
    if passing is not None:
        legend.append("dot: within the fluency bound; hatched: outside it")
    if reliable is not None:
        legend.append("bold: 95% interval excludes 0")
    ax.set_title(title + ("\n" + "; ".join(legend) if legend else ""), fontsize=9)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if len(flat) <= 200:
                strong = reliable is None or reliable[i][j]
                ax.text(
                    j,
                    i,
                    f"{value:+.2f}" if centre is not None else f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    fontweight="bold" if strong else "normal",
                    color="black" if strong else "dimgrey",
                )
            if passing is not None:
                if passing[i][j]:
                    ax.plot(j + 0.36, i - 0.3, marker="o", markersize=3, color="black")
                else:
                    ax.add_patch(
                        Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="grey", linewidth=0)
                    )
    for mark_row, mark_col in mark or ():
        ax.add_patch(Rectangle((mark_col - 0.5, mark_row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5))
    fig.colorbar(image, ax=ax, label=colour_label)
    return _png(fig)


def curves_png(
    layers: Sequence[int],
    curves: dict[str, Sequence[float]],
    *,
    title: str,
    y_label: str,
    reference: float | None = None,
    bands: dict[str, Sequence[Sequence[float]]] | None = None,
    limits: tuple[float, float] | None = None,
) -> bytes:
    """One line per named series over layers; `reference` draws a dashed line (e.g. unsteered); `bands` shades
    each series' [low, high] per layer; `limits` fixes the y axis (0-1 for probabilities, so noise looks small)."""
    _matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for name, ys in curves.items():
        (line,) = ax.plot(list(layers), list(ys), marker="o", markersize=3, label=name)
        if bands and name in bands:
            ax.fill_between(
                list(layers),
                [b[0] for b in bands[name]],
                [b[1] for b in bands[name]],
                color=line.get_color(),
                alpha=0.18,
                linewidth=0,
            )
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="unsteered")
    if limits is not None:
        ax.set_ylim(*limits)
    if len(layers) <= 30:
        ax.set_xticks(list(layers))
    ax.set_xlabel("layer")
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
