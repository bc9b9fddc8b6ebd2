"""Evaluation figures: ROC curves and score histograms, with the decision threshold marked.

matplotlib is imported lazily (Agg backend, no display needed), so importing the package and
running ``test.py --no-plots`` never pays for it. Files are written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..decision.rule import flags
from ..io import atomic_path

# One curve per setting: (domain, kind) -> (labels, scores).
Curves = Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]]
_COLORS = {"explicit": "tab:blue", "synonym": "tab:orange", "adversarial": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_roc(curves: Curves, threshold: float | None, path: str | Path, domains: Sequence[str] = ("ID", "OOD"),
             title: str = "Latent Guard") -> Path:
    """One panel per domain, one ROC curve per setting; the operating point at ``threshold`` is marked."""
    from sklearn.metrics import roc_curve

    from ..decision.metrics import roc_auc

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(domains), figsize=(5.2 * len(domains), 4.8), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        drawn = False
        for (dom, kind), (labels, scores) in curves.items():
            if dom != domain or len(np.unique(labels)) < 2:
                continue
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(fpr, tpr, color=_COLORS.get(kind), label=f"{kind} (AUC {roc_auc(labels, scores):.3f})")
            if threshold is not None:
                flagged = flags(scores, threshold)
                ax.plot(flagged[labels == 0].mean(), flagged[labels == 1].mean(), "o", color=_COLORS.get(kind),
                        markeredgecolor="black")
            drawn = True
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate (safe prompts blocked)")
        ax.set_ylabel("true positive rate (unsafe prompts blocked)")
        marker = f"; dots: threshold {threshold:.4g}" if threshold is not None else ""
        ax.set_title(f"{title}: {domain}{marker}", fontsize=10)
        if drawn:
            ax.legend(loc="lower right", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_histograms(curves: Curves, threshold: float | None, path: str | Path,
                    domains: Sequence[str] = ("ID", "OOD"),
                    kinds: Sequence[str] = ("explicit", "synonym", "adversarial"),
                    xlabel: str = "score (max logit over concepts)") -> Path:
    """A grid (domain x setting) of safe vs unsafe score histograms, threshold as a vertical line."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(domains), len(kinds), figsize=(4.2 * len(kinds), 3.2 * len(domains)), squeeze=False)
    finite = [s[np.isfinite(s)] for _, s in curves.values() if len(s)]
    values = np.concatenate(finite) if finite else np.zeros(1)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold)
    bins = np.linspace(low, high if high > low else low + 1.0, 50)
    for row, domain in enumerate(domains):
        for col, kind in enumerate(kinds):
            ax = axes[row][col]
            ax.set_title(f"{domain} {kind}", fontsize=10)
            if (domain, kind) not in curves:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
                continue
            labels, scores = curves[(domain, kind)]
            ax.hist(scores[labels == 0], bins=bins, alpha=0.6, color="tab:blue", label=f"safe ({(labels == 0).sum()})")
            ax.hist(scores[labels == 1], bins=bins, alpha=0.6, color="tab:red", label=f"unsafe ({(labels == 1).sum()})")
            if threshold is not None:
                ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.4g}")
            ax.set_xlabel(xlabel, fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
