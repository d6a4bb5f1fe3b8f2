"""``progress_terms.png``: every logged training loss term per epoch, next to nnU-Net's own ``progress.png``."""

from __future__ import annotations

import math
import os
from typing import Dict, List


def plot_loss_terms(logging: Dict[str, List], filename: str) -> None:
    """Plot all ``train_<term>`` series (one line each) into ``filename`` (written atomically)."""
    series = {k[len("train_"):]: v for k, v in logging.items()
              if k.startswith("train_") and k != "train_losses" and len(v)}
    if not series:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, values in sorted(series.items()):
        ax.plot(range(len(values)), [v if v is not None and not math.isnan(v) else float("nan") for v in values],
                label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss term (weighted, mean over the epoch)")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = f"{filename}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, filename)
