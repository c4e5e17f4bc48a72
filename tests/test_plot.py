"""The figures say what they show: properties a reader relies on, read off the matplotlib
objects the plot functions return (layer 0 out of the y-range, shared scales, colour limits
that fit the data, the floor and the thresholds drawn, seeds counted)."""
from pathlib import Path

import numpy as np
import pytest

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rgflow import plot  # noqa: E402
from rgflow.findings import DELTA, GATE_EXCESS, PLATEAU_REST_MAX  # noqa: E402
from rgflow.report import CONFIGS_V1  # noqa: E402
from rgflow.sweep import grid, load_results  # noqa: E402

# the quick configuration's ξ = 1 and 7 runs, stored by the regime search
STORE = Path(__file__).resolve().parent.parent / "notebooks" / "results" / "regime"


@pytest.fixture(scope="module")
def results():
    return load_results(STORE, grid(CONFIGS_V1["quick"], xi=[1.0, 7.0], seed=[0, 1, 2]))


@pytest.fixture(scope="module")
def figs(results):
    figs = plot.report_figures(results)
    yield figs
    for fig in figs.values():
        plt.close(fig)


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()] + [
        ax.get_legend().get_title().get_text()]


def test_report_figure_set(figs):
    assert sorted(figs) == ["cka", "drift", "loss", "rank_masked", "rank_pooled",
                            "rank_position", "rank_stream", "rank_visible", "relevance"]
    for name, fig in figs.items():
        titles = [ax.get_title() for ax in fig.axes] + [
            fig._suptitle.get_text() if fig._suptitle else ""]
        assert any(t for t in titles), name
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert all(ax.get_xlabel() for ax in panels), name
        assert panels[0].get_ylabel(), name  # (a panel sharing its y-axis may omit it)


@pytest.mark.parametrize("level", ["position", "masked", "pooled", "stream"])
def test_rank_figures_keep_layer_0_out_of_the_range(figs, results, level):
    ax = figs["rank_" + level].axes[0]
    y0, y1 = ax.get_ylim()
    judged = np.array([r.profiles[level][1:] for r in results])
    assert y0 <= judged.min() and judged.max() <= y1
    # the judged layers fill most of the height: layer 0 (0 at masked positions, ~7.8 at all
    # positions) would leave them less than half of it
    assert (judged.max() - judged.min()) / (y1 - y0) > 0.75
    layer0 = [r.profiles[level][0] for r in results]
    if min(layer0) < y0:  # its value is written at the edge
        texts = [t.get_text() for t in ax.texts]
        assert any("%.3g" % np.mean(layer0[:3]) in t for t in texts), texts
    assert "3 seeds" in " ".join(legend_texts(ax))
    assert "band: min–max" in " ".join(legend_texts(ax))
    assert plot.LEVEL_NAMES[level] in ax.get_title()


def test_rank_figures_mark_the_collapse_threshold_where_judged(figs, results):
    for level, marked in (("masked", True), ("position", True), ("pooled", False)):
        ax = figs["rank_" + level].axes[0]
        marks = sorted(float(seg[0][1]) for c in ax.collections if hasattr(c, "get_segments")
                       for seg in c.get_segments() if len(seg) == 2 and seg[0][1] == seg[1][1])
        if marked:
            want = sorted((1 - DELTA) * np.mean([r.profiles[level][1] for r in results
                                                 if r.config.xi == xi]) for xi in (1.0, 7.0))
            np.testing.assert_allclose(marks, want, rtol=1e-12)
        else:
            assert marks == [] and "not judged" in ax.get_title()


def test_drift_panels_share_the_y_scale(figs, results):
    a, b = [ax for ax in figs["drift"].axes]
    assert a.get_ylim() == b.get_ylim()
    top = max(max(r.drift) for r in results)
    assert top <= a.get_ylim()[1] <= 1.5 * top  # fitted to the data, not 0..1
    # the plateau's "every other transition" limit, 10 % of the largest mean drift
    for ax, xi in ((a, 1.0), (b, 7.0)):
        mean = np.mean([r.drift for r in results if r.config.xi == xi], axis=0)
        levels = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"]
        assert levels == [pytest.approx(PLATEAU_REST_MAX * mean.max(), rel=1e-12)]
        np.testing.assert_allclose([p.get_height() for p in ax.patches], mean, rtol=1e-12)
        assert "mean over 3 seeds" in legend_texts(ax)


def test_cka_heatmaps_show_the_seed_mean_on_one_fitted_colour_scale(figs, results):
    panels = [ax for ax in figs["cka"].axes if ax.images]
    assert len(panels) == 2
    means = [np.mean([r.cka_matrix for r in results if r.config.xi == xi], axis=0)
             for xi in (1.0, 7.0)]
    low = min(m.min() for m in means)
    assert 0.7 < low < 0.8  # the data: 0.7..1, which a 0..1 scale would wash out
    for ax, mean in zip(panels, means):
        assert ax.images[0].get_clim() == (pytest.approx(low, abs=1e-15), 1.0)
        np.testing.assert_array_equal(ax.images[0].get_array(), mean)
    assert "mean over 3 seeds" in figs["cka"]._suptitle.get_text()


def test_loss_figure_gives_each_xi_its_range_and_draws_floor_and_gate(figs, results):
    ax1, ax7, excess = figs["loss"].axes
    for ax, xi in ((ax1, 1.0), (ax7, 7.0)):
        runs = [r for r in results if r.config.xi == xi]
        y0, y1 = ax.get_ylim()
        # the gap from the final CE to the floor (~0.05-0.1 nat) is at least a tenth of the
        # height; a y-axis shared across ξ (0.3..1.8 nats) would make it a twentieth
        gap = min(r.masked_ce - r.bayes_floor for r in runs)
        assert gap / (y1 - y0) > 0.1
        floors = sorted(line.get_ydata()[0] for line in ax.lines
                        if line.get_linestyle() == ":" and len(line.get_xdata()) == 2)
        assert floors == sorted(r.bayes_floor for r in runs)
        gate = [r.bayes_floor + GATE_EXCESS for r in runs]
        band, = ax.patches  # the gate: one edge per seed's floor
        assert (band.get_y(), band.get_y() + band.get_height()) == (
            pytest.approx(min(gate), rel=1e-12), pytest.approx(max(gate), rel=1e-12))
    assert ax1.get_ylim() != ax7.get_ylim()
    # the excess panel: log scale, the gate drawn, one curve per run
    assert excess.get_yscale() == "log"
    levels = [line.get_ydata()[0] for line in excess.lines if line.get_linestyle() == "--"]
    assert levels == [GATE_EXCESS]
    curves = [line for line in excess.lines if line.get_linestyle() == "-"]
    assert len(curves) == len(results)
    r = results[0]
    np.testing.assert_allclose(curves[0].get_ydata(),
                               np.asarray(r.history["eval_loss"]) - r.bayes_floor)


def test_loss_figure_seeds_look_distinct_and_their_legend_covers_no_panel(figs):
    # up to 20 seeds never share colour and line style (the default cycle repeats after 10:
    # seeds 0 and 10, 1 and 11, ... of a 15-seed sweep looked the same)
    styles = [plot._seed_style(k) for k in range(20)]
    assert len({(tuple(s["color"]), s["ls"]) for s in styles}) == 20
    fig = figs["loss"]
    assert [ax.get_legend() is None for ax in fig.axes[:2]] == [True, True]
    legend, = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "seed 0", "seed 1", "seed 2", "Bayes floor (one per seed's held-out batch)",
        "gate: %g nats above the floor" % GATE_EXCESS]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    top = legend.get_window_extent(renderer).y1
    assert all(top < ax.get_tightbbox(renderer).y0 for ax in fig.axes)  # under the panels
    assert legend.get_window_extent(renderer).y0 >= 0  # and inside the figure


def test_relevance_panels_have_titles(figs):
    a, b = figs["relevance"].axes
    assert "explained" in a.get_title() and "rank" in b.get_title()
    assert "masked positions" in figs["relevance"]._suptitle.get_text()


def test_phase_diagram_axis_labels_and_undertrained_runs():
    rows = [{"status": "ok", "xi": x, "depth": 8, "seed": s, "ratio_masked": r, "learned": l}
            for x, s, r, l in [(0.5, 0, 0.93, 0.6), (0.5, 1, 0.94, 0.85), (2.0, 0, 0.87, 0.9),
                               (2.0, 1, 0.86, 0.9), (10.0, 0, 0.85, 0.95),
                               (10.0, 1, 0.84, 0.95)]]
    ax = plot.plot_phase_diagram(rows, level="masked")
    ax.figure.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "2", "10"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
    rings = [line for line in ax.lines if line.get_markeredgecolor() == "r"]
    assert len(rings) == 1 and list(rings[0].get_xdata()) == [0.5]
    assert list(rings[0].get_ydata()) == [0.93]
    assert any("undertrained" in t for t in legend_texts(ax))
    assert any("3 seeds" in t or "2 seeds" in t for t in legend_texts(ax))
    assert any(line.get_ydata()[0] == 1 - DELTA for line in ax.lines
               if line.get_linestyle() == "--")
    plt.close(ax.figure)


def test_cka_matrix_colour_limits_fit_the_data():
    ax = plot.plot_cka_matrix([[1.0, 0.72], [0.72, 1.0]])
    assert ax.images[0].get_clim() == (0.72, 1.0)
    ax = plot.plot_cka_matrix([[1.0, 0.72], [0.72, 1.0]], vmin=0.0)
    assert ax.images[0].get_clim() == (0.0, 1.0)
    plt.close("all")


def test_flow_figure_draws_every_checkpoint_and_block():
    from test_findings_criteria import fake_flow, fake_result

    runs = []
    for xi in (1.0, 7.0):
        for seed in range(2):
            r = fake_result(xi, seed, 0.9)
            r.history = {"flow": fake_flow([0.3, 0.08, 0.04, 0.012], [1.0, 0.97, 0.92, 0.9])}
            for k, p in enumerate(r.history["flow"]):
                p["update"] = [0.5 / (k + 1), 0.1, 0.01, 1e-3]
                p["grad_blocks"] = [0.1, 0.05, 0.01, 1e-3]
            runs.append(r)
    fig = plot.flow_figure(runs)
    axes = fig.axes
    assert len([a for a in axes if a.get_title()]) == 8  # 2 rows of 4 panels (+ colour bars)
    rank_ax = axes[0]
    assert len(rank_ax.lines) == 4  # one curve per checkpoint
    # the mean of the seeds' profiles at the last checkpoint
    np.testing.assert_allclose(rank_ax.lines[-1].get_ydata(), [0, 10, 9.667, 9.333, 9],
                               atol=1e-3)
    update_ax = [a for a in axes if a.get_title().startswith("relative update")][0]
    assert [l.get_label() for l in update_ax.lines] == ["block %d" % k for k in range(1, 5)]
    np.testing.assert_allclose(update_ax.lines[0].get_ydata(), [0.5, 0.25, 0.5 / 3, 0.125])
    assert "flow" in plot.report_figures.__doc__
    plt.close(fig)
    with pytest.raises(ValueError, match="flow"):
        plot.flow_figure([fake_result(1.0, 0, 0.9)])
    runs[1].history["flow"] = [dict(p, step=p["step"] + 1) for p in runs[1].history["flow"]]
    with pytest.raises(ValueError, match=r"xi = 1 \(seeds \[0, 1\]\) share no checkpoint"):
        plot.flow_figure(runs)
