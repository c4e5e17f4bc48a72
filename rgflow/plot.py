"""Figures of the analysis: rank-vs-depth curves, drift bars, CKA heatmaps.

matplotlib is imported inside each function, so ``import rgflow`` works without it; every
function draws on ``ax`` (a new figure's Axes if None), never calls ``show`` and returns the
Axes, so it works headless (Agg) and in notebooks alike.
"""
import numpy as np

__all__ = ["plot_rank_profiles", "plot_drift", "plot_cka_matrix", "plot_phase_diagram"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def plot_rank_profiles(profiles, labels=None, ax=None, band="minmax"):
    """Rank against depth for several runs, one curve per label with a band over its seeds.

    Parameters
    ----------
    profiles : sequence of array_like (depth+1,), one per run (e.g. ``rank_profile`` outputs)
    labels : sequence of str, one per run (runs sharing a label are seeds of one setting);
        None gives every run its own label.
    band : {"minmax", "sd"}
        Shaded band: min..max over seeds, or mean +- one standard deviation.

    Returns the matplotlib Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = plot_rank_profiles([[3, 2, 1], [3, 2.5, 1.5]], labels=["xi=1", "xi=1"])
    """
    curves = [np.asarray(p, dtype=np.float64) for p in profiles]
    if not curves or any(c.ndim != 1 or c.shape != curves[0].shape for c in curves):
        raise ValueError("profiles must be a non-empty sequence of equal-length 1-D arrays")
    labels = [str(i) for i in range(len(curves))] if labels is None else list(labels)
    if len(labels) != len(curves):
        raise ValueError("labels must have one entry per profile (%d), got %d"
                         % (len(curves), len(labels)))
    if band not in ("minmax", "sd"):
        raise ValueError("band must be 'minmax' or 'sd', got %r" % (band,))
    ax = _axes(ax)
    depth = np.arange(curves[0].size)
    for label in dict.fromkeys(labels):  # first-seen order
        group = np.stack([c for c, lab in zip(curves, labels) if lab == label])
        mean = group.mean(axis=0)
        line, = ax.plot(depth, mean, marker="o", label="%s (%d)" % (label, len(group)))
        if len(group) > 1:
            lo, hi = ((group.min(axis=0), group.max(axis=0)) if band == "minmax" else
                      (mean - group.std(axis=0), mean + group.std(axis=0)))
            ax.fill_between(depth, lo, hi, color=line.get_color(), alpha=0.25)
    ax.set_xlabel("depth (layer)")
    ax.set_ylabel("effective rank")
    ax.legend()
    return ax


def plot_drift(drift, ax=None):
    """Kernel drift 1 - CKA(z_l, z_{l+1}) as bars over layer transitions.

    drift : array_like (depth,), e.g. ``drift_profile(stream)``.  Returns the Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = plot_drift([0.1, 0.5, 0.05])
    """
    d = np.asarray(drift, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError("drift must be 1-D, got shape %s" % (d.shape,))
    ax = _axes(ax)
    ax.bar(np.arange(d.size), d)
    ax.set_xticks(np.arange(d.size))
    ax.set_xticklabels(["%d→%d" % (i, i + 1) for i in range(d.size)], rotation=45)
    ax.set_xlabel("layer transition")
    ax.set_ylabel("1 − CKA")
    return ax


def plot_cka_matrix(matrix, ax=None):
    """Heatmap of a layer x layer CKA matrix (values in [0, 1]).

    matrix : array_like (L, L), e.g. ``cka_matrix(stream)``.  Returns the Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = plot_cka_matrix([[1.0, 0.5], [0.5, 1.0]])
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError("matrix must be square, got shape %s" % (m.shape,))
    ax = _axes(ax)
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
    ax.figure.colorbar(im, ax=ax, label="linear CKA")
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    return ax


def plot_phase_diagram(table, level="position", ax=None):
    """Collapse ratio rank[K] / rank[1] against ξ, one line per depth, seed error bars.

    table : the output of :func:`rgflow.sweep` (list of dict rows or a DataFrame); rows whose
        status is not "ok" are skipped.  level : which rank profile ("position", "masked",
        "visible", "pooled", "stream").  Error bars span min..max over seeds; the dashed line
        at 1 - findings.DELTA marks the collapse threshold.  Returns the Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [{"status": "ok", "xi": x, "depth": 4, "seed": s, "ratio_position": r}
    ...         for x, s, r in [(1, 0, .8), (1, 1, .85), (7, 0, 1.0), (7, 1, .98)]]
    >>> ax = plot_phase_diagram(rows)
    """
    from .findings import DELTA

    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    key = "ratio_" + level
    rows = [r for r in rows if r.get("status") == "ok" and key in r]
    if not rows:
        raise ValueError("table has no successful rows with %r" % key)
    ax = _axes(ax)
    for depth in sorted({r["depth"] for r in rows}):
        xis = sorted({r["xi"] for r in rows if r["depth"] == depth})
        vals = [[r[key] for r in rows if r["depth"] == depth and r["xi"] == x] for x in xis]
        mean = np.array([np.mean(v) for v in vals])
        lo = mean - np.array([np.min(v) for v in vals])
        hi = np.array([np.max(v) for v in vals]) - mean
        ax.errorbar(xis, mean, yerr=[lo, hi], marker="o", capsize=3, label="depth %d" % depth)
    ax.axhline(1 - DELTA, color="k", ls="--", lw=1, label="collapse threshold")
    ax.set_xscale("log")
    ax.set_xlabel("correlation length ξ")
    ax.set_ylabel("rank[K] / rank[1] (%s level)" % level)
    ax.legend()
    return ax
