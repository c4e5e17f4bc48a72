"""Figures of the analysis: rank-vs-depth curves, drift bars, CKA heatmaps.

matplotlib is imported inside each function, so ``import rgflow`` works without it; every
function draws on ``ax`` (a new figure's Axes if None), never calls ``show`` and returns the
Axes, so it works headless (Agg) and in notebooks alike.
"""
import numpy as np

__all__ = ["plot_rank_profiles", "plot_drift", "plot_cka_matrix"]


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
