"""Matplotlib figures outside pyplot, and their PNG encoding: the leaf every stage that draws uses
(evaluation plots, the audit's thumbnails, the apps' pictures, the report)."""

from __future__ import annotations

import base64
import io


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure outside pyplot: no global figure registry and no backend switch for the process
    (savefig renders through Agg by itself), so cnnlab's plots never change a caller's matplotlib setup."""
    from matplotlib.figure import Figure  # optional heavy import: matplotlib (drawing only)

    return Figure(figsize=figsize)


def figure_png_base64(fig) -> str:
    """PNG bytes of `fig`, base64-encoded for an <img src="data:..."> tag."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")
