"""matplotlib figures for the HTML report: headless (Agg), embedded as base64 PNG."""

from __future__ import annotations

import base64
import io
from typing import Any


def png(fig: Any) -> str:
    import matplotlib.pyplot as plt  # matplotlib (~0.5 s) only when a figure is drawn

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    import matplotlib  # only when a figure is drawn, as above

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the headless backend is chosen

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax
