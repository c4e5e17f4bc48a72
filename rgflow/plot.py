"""Figures of the analysis: rank-vs-depth curves, drift bars, CKA heatmaps, the phase diagram,
and the report's figures (:func:`report_figures`).

matplotlib is imported inside each function, so ``import rgflow`` works without it.  The
Axes-level functions draw on ``ax`` (a new figure's Axes if None) and return the Axes;
:func:`report_figures` returns whole Figures.  None calls ``show``, so all work headless (Agg)
and in notebooks alike.

Conventions: layer 0 is the embedding, reported but never judged, so it is drawn but does not
set the y-range (its value is written at the edge when it falls outside); a line is the mean
over seeds and its band (or error bar) the min..max over them, as each legend says.
"""
import numpy as np

__all__ = ["plot_rank_profiles", "plot_drift", "plot_cka_matrix", "plot_phase_diagram",
           "flow_figure", "report_figures", "LEVEL_NAMES"]

# what each rank level measures, in the report's words
LEVEL_NAMES = {"position": "all positions", "masked": "masked positions",
               "visible": "visible positions", "pooled": "pooled (mean over positions)",
               "stream": "whole stream (flattened)"}
BAND_NAMES = {"minmax": "min–max", "sd": "± 1 SD"}
PAD = 0.08  # fraction of the data range left free above and below


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def _fit_ylim(ax, values):
    """Set the y-range to the finite ``values`` (a list of arrays) with PAD of their range on
    each side."""
    v = np.concatenate([np.ravel(np.asarray(x, dtype=np.float64)) for x in values])
    v = v[np.isfinite(v)]
    lo, hi = v.min(), v.max()
    pad = PAD * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    ax.set_ylim(lo - pad, hi + pad)


def plot_rank_profiles(profiles, labels=None, ax=None, band="minmax", judged_from=1,
                       threshold=False, outside_legend=False):
    """Rank against depth for several runs, one curve per label with a band over its seeds.

    Parameters
    ----------
    profiles : sequence of array_like (depth+1,), one per run (e.g. ``rank_profile`` outputs)
    labels : sequence of str, one per run (runs sharing a label are seeds of one setting);
        None gives every run its own label.
    band : {"minmax", "sd"}
        Shaded band: min..max over seeds, or mean +- one standard deviation (the legend says
        which, and how many seeds).
    judged_from : int, default 1
        The y-range fits layers ``judged_from``..K only: layers before it (layer 0, the
        embedding, by default) are drawn in a grey strip, and a value outside the range is
        written at the edge instead of squashing the judged layers.
    threshold : bool, default False
        Mark each curve's collapse threshold (1 - findings.DELTA) x rank[1] at layer K.
    outside_legend : bool, default False
        Put the legend right of the Axes, where it cannot hide a curve.

    Returns the matplotlib Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = plot_rank_profiles([[3, 2, 1], [3, 2.5, 1.5]], labels=["xi=1", "xi=1"])
    >>> bool(ax.get_ylim()[1] < 3)      # layer 0 (3) does not set the range
    True
    """
    from .findings import DELTA

    curves = [np.asarray(p, dtype=np.float64) for p in profiles]
    if not curves or any(c.ndim != 1 or c.shape != curves[0].shape for c in curves):
        raise ValueError("profiles must be a non-empty sequence of equal-length 1-D arrays")
    labels = [str(i) for i in range(len(curves))] if labels is None else list(labels)
    if len(labels) != len(curves):
        raise ValueError("labels must have one entry per profile (%d), got %d"
                         % (len(curves), len(labels)))
    if band not in BAND_NAMES:
        raise ValueError("band must be 'minmax' or 'sd', got %r" % (band,))
    if not 0 <= judged_from < curves[0].size:
        raise ValueError("judged_from must lie in [0, %d), got %r"
                         % (curves[0].size, judged_from))
    ax = _axes(ax)
    depth = np.arange(curves[0].size)
    judged, hidden = [], []  # values that set the range; (x, value, colour) off it
    seeds = set()
    for label in dict.fromkeys(labels):  # first-seen order
        group = np.stack([c for c, lab in zip(curves, labels) if lab == label])
        seeds.add(len(group))
        mean = group.mean(axis=0)
        lo, hi = ((group.min(axis=0), group.max(axis=0)) if band == "minmax" else
                  (mean - group.std(axis=0), mean + group.std(axis=0)))
        name = label if len(group) == 1 else "%s (%d seeds)" % (label, len(group))
        line, = ax.plot(depth, mean, marker="o", label=name)
        if len(group) > 1:
            ax.fill_between(depth, lo, hi, color=line.get_color(), alpha=0.25, lw=0)
        judged += [lo[judged_from:], hi[judged_from:]]
        hidden += [(x, mean[x], line.get_color()) for x in range(judged_from)]
        if threshold:
            limit = (1 - DELTA) * mean[1]
            ax.hlines(limit, depth[-1] - 0.35, depth[-1] + 0.35, colors=line.get_color(),
                      linestyles="--", lw=2)
            judged.append([limit])
    if threshold:
        ax.plot([], [], "k--", lw=2, label="collapse threshold %g × rank[1]" % (1 - DELTA))
    _fit_ylim(ax, judged)
    if judged_from:
        ax.axvspan(-0.5, judged_from - 0.5, color="0.9", zorder=0)
        ax.text(judged_from / 2 - 0.5, 0.5, "embedding" if judged_from == 1 else "",
                rotation=90,
                transform=ax.get_xaxis_transform(), ha="center", va="center", fontsize=8,
                color="0.35")
        y0, y1 = ax.get_ylim()
        for k, (x, value, colour) in enumerate(hidden):
            if y0 <= value <= y1:
                continue
            below = value < y0
            edge = y0 + 0.03 * (y1 - y0) if below else y1 - 0.03 * (y1 - y0)
            ax.plot([x], [edge], marker="v" if below else "^", color=colour, ls="none",
                    clip_on=False)
            ax.annotate("%s %.3g" % ("↓" if below else "↑", value), (x, edge),
                        xytext=(6, (1 if below else -1) * 11 * k),
                        textcoords="offset points", color=colour, fontsize=8,
                        va="bottom" if below else "top")
    ax.set_xlim(-0.5, depth[-1] + 0.5)
    ax.set_xticks(depth)
    ax.set_xlabel("layer l (0 = embedding, l = block l's output)")
    ax.set_ylabel("effective rank (dimensions)")
    title = None
    if max(seeds) > 1:
        title = "line: mean over seeds; band: %s" % BAND_NAMES[band]
    ax.legend(title=title, fontsize=8, title_fontsize=8,
              **(dict(loc="upper left", bbox_to_anchor=(1.01, 1)) if outside_legend else {}))
    return ax


def plot_drift(drift, ax=None):
    """Kernel drift 1 - CKA(z_l, z_{l+1}) as bars over layer transitions.

    drift : array_like (depth,) for one run, or (seeds, depth): bars are then the mean over
        seeds, dots the seeds.  Returns the Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = plot_drift([0.1, 0.5, 0.05])
    """
    d = np.asarray(drift, dtype=np.float64)
    if d.ndim not in (1, 2) or d.shape[-1] == 0:
        raise ValueError("drift must be (depth,) or (seeds, depth), got shape %s" % (d.shape,))
    runs = np.atleast_2d(d)
    x = np.arange(runs.shape[1])
    ax = _axes(ax)
    label = "mean over %d seeds" % len(runs) if len(runs) > 1 else "drift"
    ax.bar(x, runs.mean(axis=0), color="C0", alpha=0.8, label=label)
    if len(runs) > 1:
        for k, run in enumerate(runs):
            ax.plot(x, run, "k.", ms=4, label="each seed" if k == 0 else None)
    ax.set_xticks(x)
    ax.set_xticklabels(["%d→%d" % (i, i + 1) for i in x], rotation=45)
    ax.set_xlabel("layer transition l→l+1")
    ax.set_ylabel("drift 1 − CKA(z_l, z_l+1)")
    return ax


def plot_cka_matrix(matrix, ax=None, vmin=None, vmax=None, label="linear CKA"):
    """Heatmap of a layer x layer CKA matrix.

    matrix : array_like (L, L), e.g. ``cka_matrix(stream)``.  vmin, vmax : colour limits,
    default the matrix's own finite min and max (CKA values often all lie in 0.7..1, which a
    0..1 scale would wash out; pass shared limits for panels compared side by side).  label :
    the colour bar's label.  Returns the Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = plot_cka_matrix([[1.0, 0.8], [0.8, 1.0]])
    >>> ax.images[0].get_clim()
    (0.8, 1.0)
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError("matrix must be square, got shape %s" % (m.shape,))
    ax = _axes(ax)
    vmin = float(np.nanmin(m)) if vmin is None else vmin
    vmax = float(np.nanmax(m)) if vmax is None else vmax
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis", origin="upper")
    ax.figure.colorbar(im, ax=ax, label=label)
    ticks = np.arange(m.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    return ax


def plot_phase_diagram(table, level="position", ax=None):
    """Collapse ratio rank[K] / rank[1] against ξ, one line per depth, seed error bars.

    table : the output of :func:`rgflow.sweep` (list of dict rows or a DataFrame); rows whose
        status is not "ok" are skipped.  level : which rank profile ("position" = all
        positions, "masked", "visible", "pooled", "stream").  The line is the mean over seeds
        and the error bars span their min..max; the dashed line at 1 - findings.DELTA marks
        the collapse threshold; runs that learned less than findings.LEARNED_MIN of the gap
        (undertrained: not evidence) are ringed in red.  ξ is on a log axis labelled with the
        grid's values.  Returns the Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [{"status": "ok", "xi": x, "depth": 4, "seed": s, "ratio_position": r,
    ...          "learned": 0.9} for x, s, r in [(1, 0, .8), (1, 1, .85), (7, 0, 1.0),
    ...                                          (7, 1, .98)]]
    >>> ax = plot_phase_diagram(rows)
    """
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    from .findings import DELTA, LEARNED_MIN

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
        n = max(len(v) for v in vals)
        ax.errorbar(xis, mean, yerr=[lo, hi], marker="o", capsize=3,
                    label="depth K = %d: mean over %d seeds, bars min–max" % (depth, n)
                    if n > 1 else "depth K = %d" % depth)
    under = [r for r in rows if r.get("learned", 1.0) < LEARNED_MIN]
    if under:
        ax.plot([r["xi"] for r in under], [r[key] for r in under], "o", mfc="none", mec="r",
                ms=10, mew=1.5, label="undertrained run (learned < %d %% of the gap)"
                % round(100 * LEARNED_MIN))
    ax.axhline(1 - DELTA, color="k", ls="--", lw=1,
               label="collapse threshold R = %g" % (1 - DELTA))
    ax.set_xscale("log")
    xis = sorted({r["xi"] for r in rows})
    ax.set_xticks(xis)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.5, 1, 2 (not 2×10⁰)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("correlation length ξ (tokens, log scale)")
    ax.set_ylabel("collapse ratio R = rank[K] / rank[1]")
    ax.set_title("R against ξ, %s" % LEVEL_NAMES.get(level, level))
    ax.legend(fontsize=8)
    return ax


def _seed_style(k):
    """Colour and line style of the k-th seed in the loss panels: tab20's ten strong colours,
    then its ten light ones dashed, so up to 20 seeds never look alike (the default cycle
    repeats after 10: seeds 0 and 10 were drawn the same)."""
    import matplotlib

    k %= 20
    return dict(color=matplotlib.colormaps["tab20"](2 * (k % 10) + k // 10),
                ls="-" if k < 10 else "--")


def _span(values):
    """ "38–43" for values spanning 38..43, "75" when they are all the same (0 decimals)."""
    lo, hi = "%.0f" % min(values), "%.0f" % max(values)
    return lo if lo == hi else "%s–%s" % (lo, hi)


def _seeds(results):
    """How many seeds each ξ has, in words ("3 seeds", or "2–3 seeds" when they differ)."""
    n = {r.config.xi: 0 for r in results}
    for r in results:
        n[r.config.xi] += 1
    counts = sorted(set(n.values()))
    if counts == [1]:
        return "1 seed"
    return "%s seeds" % "–".join(map(str, counts))


def flow_figure(results):
    """The flow during training (``Result.history["flow"]``) as a Figure, one row per ξ:

    1. masked-position effective rank against layer at every checkpoint, mean over seeds,
       coloured by training step (log scale);
    2. against step: excess over the Bayes floor, R_peak and the plateau's top-2 share
       (stream and masked tokens), median over seeds with a min–max band;
    3. each block's relative update ``||z_{k+1} - z_k|| / ||z_k||``, median over seeds;
    4. each block's gradient norm on the held-out batch, median over seeds;
    5. each block's share of switched-off hidden units (when every checkpoint has it).

    Raises ValueError when no run stores a flow.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from .findings import flow_figures

    runs = [r for r in results if r.history.get("flow")]
    if not runs:
        raise ValueError("no run stores a flow (runs from before train(flow_at=...))")
    xis = sorted({r.config.xi for r in runs})
    panels = [(2, "update", "relative update of each block"),
              (3, "grad_blocks", "gradient norm of each block")]
    if all("inactive_units" in p for r in runs for p in r.history["flow"]):
        panels.append((4, "inactive_units", "share of switched-off hidden units"))
    fig, axes = plt.subplots(len(xis), 2 + len(panels), figsize=(4.75 * (2 + len(panels)),
                             4.3 * len(xis)), squeeze=False, layout="constrained")
    for row, xi in zip(axes, xis):
        cell = sorted((r for r in runs if r.config.xi == xi), key=lambda r: r.config.seed)
        # checkpoints every seed of the cell has (equal configs share their flow steps)
        steps = sorted(set.intersection(*({p["step"] for p in r.history["flow"]}
                                          for r in cell)))
        if not steps:
            raise ValueError("the flows of the runs at xi = %g (seeds %s) share no checkpoint"
                             % (xi, [r.config.seed for r in cell]))
        at = [{p["step"]: p for p in r.history["flow"]} for r in cell]
        norm = LogNorm(vmin=steps[0], vmax=steps[-1])
        cmap = plt.get_cmap("viridis")
        for step in steps:
            rank = np.mean([a[step]["erank_masked"] for a in at], axis=0)
            row[0].plot(np.arange(len(rank)), rank, color=cmap(norm(step)), lw=1)
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=row[0],
                     label="training step")
        row[0].set_xlabel("layer (0 = embedding)")
        row[0].xaxis.get_major_locator().set_params(integer=True)
        row[0].set_ylabel("effective rank, masked positions")
        row[0].set_title("ξ = %g: rank by layer during training (mean of %d seeds)"
                         % (xi, len(cell)), fontsize=10)

        figs = [{f["step"]: f for f in flow_figures(r)} for r in cell]
        for name, label, colour in (("excess", "excess over floor (nats)", "k"),
                                    ("R_peak", "R_peak = rank[K]/rank[peak]", "C0"),
                                    ("top2_share", "top-2 drift share, stream", "C1"),
                                    ("top2_share_masked", "top-2 drift share, masked", "C2")):
            v = np.array([[f[step][name] for step in steps] for f in figs])
            row[1].plot(steps, np.median(v, axis=0), color=colour, label=label)
            row[1].fill_between(steps, v.min(axis=0), v.max(axis=0), color=colour, alpha=0.2)
        row[1].set_xscale("log")
        row[1].set_ylim(0, 1.05)
        row[1].set_xlabel("training step")
        row[1].set_ylabel("ratio or share; excess in nats (clipped at 1)")
        row[1].set_title("verdict figures during training (median, min–max band)",
                         fontsize=10)
        row[1].legend(fontsize=8, loc="upper left")

        for col, key, title in panels:
            v = np.array([[a[step][key] for step in steps] for a in at])  # seed, step, block
            med = np.median(v, axis=0)
            for k in range(med.shape[1]):
                row[col].plot(steps, med[:, k], color=plt.get_cmap("plasma")(
                    k / max(1, med.shape[1] - 1)), label="block %d" % (k + 1))
            row[col].set_xscale("log")
            if key == "inactive_units":
                row[col].set_ylim(-0.02, 1.02)
            else:
                row[col].set_yscale("log")
            row[col].set_xlabel("training step")
            row[col].set_title("%s (median over seeds)" % title, fontsize=10)
            row[col].legend(fontsize=7, ncol=2)
    fig.suptitle("The flow during training: where the representation forms, and whether the "
                 "later blocks converge or stop learning", fontsize=11)
    return fig


def report_figures(results):
    """The report's figures for a set of runs (:class:`rgflow.experiments.Result`, any ξ and
    seeds), as ``{name: matplotlib Figure}``; ``rgflow reproduce`` saves each as name.png.

    ``rank_<level>`` for every rank level, ``drift``, ``cka``, ``loss``, ``relevance`` and,
    for runs that store it, ``flow`` (:func:`flow_figure`): one
    panel (or line) per ξ, shared scales where panels are compared, layer 0 out of the
    y-range, the thresholds of the findings and the Bayes floor drawn, seeds counted.
    """
    import matplotlib.pyplot as plt

    from .findings import GATE_EXCESS, PLATEAU_REST_MAX, PLATEAU_TOP2_SHARE, plateau
    from .findings import COLLAPSE_SETS

    judged_levels = [level for _, level in COLLAPSE_SETS]  # where claim (i) is judged

    res = sorted(results, key=lambda r: (r.config.xi, r.config.seed))
    if not res:
        raise ValueError("results must hold at least one run")
    xis = sorted({r.config.xi for r in res})
    labels = ["ξ = %g" % r.config.xi for r in res]
    seeds = _seeds(res)
    figs = {}

    for level, name in LEVEL_NAMES.items():
        judged = level in judged_levels
        fig, ax = plt.subplots(figsize=(8.6, 4.4), layout="constrained")
        plot_rank_profiles([r.profiles[level] for r in res], labels=labels, ax=ax,
                           threshold=judged, outside_legend=True)
        ax.set_title("Effective rank by layer: %s\n%s" % (name, (
            "claim (i) collapse: falls monotonically from layer 1 to below the dashed mark "
            "at layer K;\nlayer 0, the embedding, is not judged" if judged else
            "reported, not judged (claim (i) is judged at %s)"
            % ", ".join(LEVEL_NAMES[x] for x in judged_levels))), fontsize=10)
        figs["rank_" + level] = fig

    fig, axes = plt.subplots(1, len(xis), figsize=(5.2 * len(xis), 4.2), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, xi in zip(axes[0], xis):
        drifts = np.array([r.drift for r in res if r.config.xi == xi])
        plot_drift(drifts, ax=ax)
        mean = drifts.mean(axis=0)
        ax.axhline(PLATEAU_REST_MAX * mean.max(), color="r", ls="--", lw=1,
                   label="%g × largest mean drift" % PLATEAU_REST_MAX)
        shares = [100 * plateau(d).figures["top2_share"] for d in drifts]
        ax.set_title("ξ = %g: top-2 transitions carry %s %%" % (xi, _span(shares)),
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax.label_outer()
    top = max(max(r.drift) for r in res)
    axes[0, 0].set_ylim(0, 1.3 * top)  # shared; the headroom keeps the legends off the bars
    fig.suptitle("Kernel drift between consecutive layers (whole stream, %s)\nclaim (iii) "
                 "plateau: top-2 carry ≥ %d %%, every other transition below the red line"
                 % (seeds, round(100 * PLATEAU_TOP2_SHARE)), fontsize=10)
    figs["drift"] = fig

    means = {xi: np.mean([r.cka_matrix for r in res if r.config.xi == xi], axis=0)
             for xi in xis}
    vmin = min(float(np.nanmin(m)) for m in means.values())
    fig, axes = plt.subplots(1, len(xis), figsize=(5.2 * len(xis), 4.4), squeeze=False,
                             layout="constrained")
    for ax, xi in zip(axes[0], xis):
        plot_cka_matrix(means[xi], ax=ax, vmin=vmin, vmax=1.0,
                        label="linear CKA, mean over seeds")
        ax.set_title("ξ = %g" % xi, fontsize=10)
    fig.suptitle("Linear CKA between every pair of layers (whole stream, mean over %s; "
                 "one colour scale)" % seeds, fontsize=10)
    figs["cka"] = fig

    # the seeds' legend goes under the panels (inside one, 10-15 seeds covered the curves and
    # the gate); the layout keeps the bottom strip free for it
    n_seeds = max(len([r for r in res if r.config.xi == xi]) for xi in xis)
    ncol = min(n_seeds + 2, 9)
    below = 0.25 + 0.2 * -(-(n_seeds + 2) // ncol)  # inches: a margin and the legend's rows
    fig, axes = plt.subplots(1, len(xis) + 1, figsize=(4.6 * (len(xis) + 1), 4.6 + below),
                             squeeze=False, layout="constrained")
    fig.get_layout_engine().set(rect=(0, below / (4.6 + below), 1, 1 - below / (4.6 + below)))
    excess_ax = axes[0, -1]
    for ax, xi, xi_colour in zip(axes[0], xis, ("C0", "C1", "C2", "C3", "C4", "C5")):
        runs = [r for r in res if r.config.xi == xi]
        gate = [r.bayes_floor + GATE_EXCESS for r in runs]
        shown = gate[:]
        for k, r in enumerate(runs):
            steps, ce = np.asarray(r.history["eval_steps"]), np.asarray(r.history["eval_loss"])
            style = _seed_style(k)
            ax.plot(steps, ce, marker=".", lw=1, **style)
            ax.axhline(r.bayes_floor, color=style["color"], ls=":", lw=1.5)
            shown += list(ce[len(ce) // 2:]) + [r.bayes_floor]
            excess_ax.plot(steps, ce - r.bayes_floor, color=xi_colour, lw=1, marker=".",
                           label="ξ = %g (%s)" % (xi, seeds) if k == 0 else None)
            if r.adjacent_ce is not None:
                excess_ax.axhline(r.adjacent_ce - r.bayes_floor, color=xi_colour, ls="-.",
                                  lw=0.8, label="adjacent-token rule, ξ = %g" % xi
                                  if k == 0 else None)
        ax.axhspan(min(gate), max(gate), color="r", alpha=0.2, lw=1, ec="r")
        # each ξ its own range, fitted to the second half of training: the last hundredths
        # of a nat to the floor show
        _fit_ylim(ax, shown)
        ends = ["%.3f" % (r.masked_ce - r.bayes_floor) for r in runs]
        ax.set_title("ξ = %g: %s nats above the floor at the end" % (
            xi, ", ".join(ends) if len(ends) <= 3 else "%s–%s" % (
                min(ends, key=float), max(ends, key=float))), fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out masked cross-entropy (nats)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=".", **_seed_style(k),
                      label="seed %d" % sorted({r.config.seed for r in res})[k])
               for k in range(n_seeds)]
    handles += [Line2D([], [], color="k", ls=":", label="Bayes floor (one per seed's held-out "
                       "batch)"),
                Line2D([], [], color="r", lw=6, alpha=0.3, label="gate: %g nats above the "
                       "floor" % GATE_EXCESS)]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.01), ncol=ncol,
               fontsize=8, frameon=False).set_in_layout(False)
    excess_ax.axhline(GATE_EXCESS, color="r", ls="--", label="%g nats: gate" % GATE_EXCESS)
    excess_ax.set_yscale("log")
    excess_ax.set_title("All runs: excess over the Bayes floor", fontsize=10)
    excess_ax.set_xlabel("training step")
    excess_ax.set_ylabel("masked CE − Bayes floor (nats, log scale)")
    excess_ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Held-out masked cross-entropy during training, %s per ξ; a run is evidence "
                 "when it ends within %g nats of the Bayes floor\nand below the adjacent-token "
                 "rule (judged on its gate batch; the curves are its measurement batch)" % (
                     seeds, GATE_EXCESS), fontsize=10)
    figs["loss"] = fig

    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4), layout="constrained")
    plot_rank_profiles([r.relevance["relevant_share"] for r in res], labels=labels,
                       ax=axes[0])
    axes[0].set_ylabel("share of variance explained")
    axes[0].set_title("Relevant part: share of the variance linearly\nexplained by the exact "
                      "Bayes log-posterior", fontsize=10)
    plot_rank_profiles([r.relevance["irrelevant_rank"] for r in res], labels=labels,
                       ax=axes[1], outside_legend=True)
    axes[0].get_legend().remove()  # one legend for both panels
    axes[1].set_ylabel("effective rank of the residual (dimensions)")
    axes[1].set_title("Irrelevant part: effective rank of what the\nlog-posterior leaves "
                      "unexplained", fontsize=10)
    fig.suptitle("Relevance decomposition at masked positions, %s" % seeds, fontsize=10)
    figs["relevance"] = fig
    if any(r.history.get("flow") for r in res):
        figs["flow"] = flow_figure(res)
    return figs
