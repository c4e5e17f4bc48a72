"""The findings report: ξ ∈ {1, 7} × seeds at a documented configuration, every claim judged
by :mod:`rgflow.findings`, written as report.json, report.md and PNG figures.

The ``rgflow reproduce`` command calls :func:`reproduce`. The verdicts come from
:func:`rgflow.findings.summarize`; this module only formats them.
"""
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import findings
from .experiments import Config
from .findings import COLLAPSE_SETS, LONG_XI, SHORT_XI, summarize
from .sweep import grid, load_results, process_pool, sweep

__all__ = ["CONFIGS", "write_report", "reproduce"]

# The documented configurations (README, "Findings"). "paper" is the abstract's setting at
# the pilot's default size; "quick" is the small setting the test suite and --quick use.
CONFIGS = {
    "paper": Config(),
    "quick": Config(length=16, width=16, hidden=256, depth=8, steps=2000),
}

def computed_on_lines(places):
    """One line per distinct place in ``places`` (``Result.computed_on`` dicts) that runs were
    computed on (bits may differ between OpenBLAS CPU kernels, never between thread counts)."""
    seen = []
    for w in places:
        text = ("rgflow %s, OpenBLAS %s kernel, %s threads, %s" % (
            w["rgflow"], w["core"], w["threads"], w["cpu"]) if w else "not recorded (older run)")
        if text not in seen:
            seen.append(text)
    return seen


def _fmt(x, digits=3):
    return ("%." + str(digits) + "f") % x if isinstance(x, (int, float)) else str(x)


def _transitions(indices):
    """Drift transitions by the layers they join: index l is z_l -> z_{l+1} (z_0 = embedding)."""
    return ", ".join("%d→%d" % (l, l + 1) for l in indices)


def _markdown(summary, results, config, header):
    lines = ["# rgflow findings report", "",
             "rgflow %s, written %s." % (header["rgflow_version"], header["created_utc"]), "",
             "Configuration (ξ and seed vary): `%s`" % json.dumps(
                 {k: v for k, v in config.to_dict().items() if k not in ("xi", "seed")}), ""]
    lines += ["Computed on: " + "; ".join(computed_on_lines(r.computed_on for r in results)),
              ""]
    lines += ["## Training", "", "| ξ | seed | masked CE | Bayes floor | learned share |",
              "| --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (r.config.xi, r.config.seed)):
        lines.append("| %g | %d | %s | %s | %s |" % (r.config.xi, r.config.seed,
                     _fmt(r.masked_ce), _fmt(r.bayes_floor), _fmt(r.learned, 2)))
    lines += ["", "Runs that closed less than %d%% of the gap from the unigram entropy to the "
              "Bayes floor are judged *undertrained*." % round(100 * findings.LEARNED_MIN), ""]
    lines += ["## (i) Monotone collapse of the position-level effective rank", "",
              "Criterion: " + next(iter(summary["per_xi"].values()))["collapse_all"]["runs"][0]
              ["criterion"] + ". Layer 0 (the embedding) is reported, not judged.", "",
              "Largest step: the largest change rank[l+1] − rank[l] between consecutive layers "
              "1..K; negative means the rank fell at every step. The criterion allows a rise of "
              "up to %g × rank[1]." % findings.MONOTONE_TOL, "",
              "| ξ | positions | seed | rank[0] | rank[1] | rank[K] | ratio | largest step | "
              "Spearman | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for xi, entry in summary["per_xi"].items():
        for key, level in COLLAPSE_SETS:
            for seed, v in zip(entry["seeds"], entry[key]["runs"]):
                f = v["figures"]
                lines.append("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
                    xi, level if level != "position" else "all", seed, _fmt(f["embedding_rank"], 2),
                    _fmt(f["rank_1"], 2), _fmt(f["rank_K"], 2), _fmt(f["ratio"]),
                    _fmt(f["max_rise"]), _fmt(f["spearman"], 2), v["status"]))
            lines.append("| %s | %s | all seeds | | | | | | | **%s** |" % (
                xi, level if level != "position" else "all", entry[key]["status"]))
    lines += ["", "## (ii) Selective collapse", ""]
    for name, label in (("selectivity", "all positions"), ("selectivity_masked",
                                                           "masked positions")):
        v = summary[name]
        f = v["figures"]
        lines += ["Position level, %s. Criterion: %s." % (label, v["criterion"]), "",
                  "| ξ | R = rank[K]/rank[1] per seed | pooled-level R (not judged) |",
                  "| --- | --- | --- |",
                  "| %g | %s | %s |" % (SHORT_XI, ", ".join(_fmt(x) for x in f["short_ratios"]),
                                        ", ".join(_fmt(x) for x in f.get("pooled_short_ratios", []))),
                  "| %g | %s | %s |" % (LONG_XI, ", ".join(_fmt(x) for x in f["long_ratios"]),
                                        ", ".join(_fmt(x) for x in f.get("pooled_long_ratios", []))),
                  "", "Verdict: **%s**" % v["status"], ""]
    lines += ["## (iii) Fixed-point plateau of the kernel drift", "",
              "Criterion: " + next(iter(summary["per_xi"].values()))["plateau"]["runs"][0]
              ["criterion"] + ".", "",
              "Transition l→l+1 is the drift 1 − CKA(z_l, z_{l+1}) between layers l and l+1; "
              "layers count from 0, the embedding, to K = %d." % config.depth, "",
              "| ξ | seed | top-2 share | top-2 transitions | rest max / largest | verdict |",
              "| --- | --- | --- | --- | --- | --- |"]
    for xi, entry in summary["per_xi"].items():
        for seed, v in zip(entry["seeds"], entry["plateau"]["runs"]):
            f = v["figures"]
            lines.append("| %s | %d | %s | %s | %s | %s |" % (
                xi, seed, _fmt(f["top2_share"], 2), _transitions(f["top2_transitions"]),
                _fmt(f["rest_max_over_largest"], 3), v["status"]))
        lines.append("| %s | all seeds | | | | **%s** |" % (xi, entry["plateau"]["status"]))
    lines += ["", "## Relevance decomposition (masked positions)", "",
              "Share of the representation's variance linearly explained by the exact Bayes "
              "log-posterior, and the effective rank of what it leaves (irrelevant degrees of "
              "freedom), per layer, mean over seeds.", "",
              "| ξ | quantity | " + " | ".join("z%d" % l for l in range(config.depth + 1)) + " |",
              "| --- | --- | " + " | ".join("---" for _ in range(config.depth + 1)) + " |"]
    for xi in (SHORT_XI, LONG_XI):
        runs = [r for r in results if r.config.xi == xi]
        for q in ("relevant_share", "irrelevant_rank"):
            mean = np.mean([r.relevance[q] for r in runs], axis=0)
            lines.append("| %g | %s | %s |" % (xi, q, " | ".join(_fmt(x, 2) for x in mean)))
    if all(r.measures and r.adjacent_ce is not None for r in results):
        lines += [""] + gated_markdown(results)
    lines += ["", "Figures: rank_*.png, drift.png, cka.png, loss.png, relevance.png.", ""]
    return "\n".join(lines)


MEASURE_LEVELS = (("erank", "masked"), ("erank", "position"), ("erank", "visible"),
                  ("erank_uncentered", "masked"), ("participation", "masked"),
                  ("stable", "masked"), ("numerical", "masked"), ("erank", "stream"))


def _ci(r, digits=3):
    if r is None:
        return "—"
    if r["n"] < 2:
        return _fmt(r["mean"], digits)
    return "%s [%s, %s]" % (_fmt(r["mean"], digits), _fmt(r["lo"], digits), _fmt(r["hi"], digits))


def _range(values, digits=0):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return _fmt(lo, digits) if lo == hi else "%s–%s" % (_fmt(lo, digits), _fmt(hi, digits))


def _pm(value, se, digits=4):
    return ("%+.*f" % (digits, value)) + ("" if se is None else " ± %.*f" % (digits, se))


def _diff(d):
    if d is None:
        return "—", "—"
    return "%+.3f [%+.3f, %+.3f]" % (d["diff"], d["lo"], d["hi"]), "%.2f" % d["hedges_g"]


def gated_markdown(results):
    """The gate, the verdicts over gated seeds (:func:`rgflow.findings.verdicts`) for every
    measure and level of MEASURE_LEVELS, claim (ii) on both ratios, and the sensitivity table
    of the masked erank verdicts, as markdown lines. Needs runs that store every measure
    (``Result.measures``)."""
    lines = ["## The gate", "",
             "A run is evidence when its held-out masked CE is within %g nats of the Bayes "
             "floor and below the adjacent-token rule's CE, both judged on the run's gate "
             "batch (± one standard error, sequences as clusters). Runs that fail it are "
             "listed, never counted." % findings.GATE_EXCESS, "",
             "| ξ | seed | sequences | excess over floor (nats) | margin over adjacent rule "
             "(nats) | gated |", "| --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (r.config.xi, r.config.seed)):
        g = findings.gate_of(r)
        lines.append("| %g | %d | %d | %s | %s | %s |" % (
            r.config.xi, r.config.seed, g["sequences"], _pm(g["excess"], g["excess_se"]),
            _pm(g["adjacent_margin"], g["margin_se"]), "yes" if g["passed"] else "**no**"))
    lines += ["", "## Verdicts over gated seeds", "",
              "Claim (i) is read two ways: from layer 1 (R = rank[K]/rank[1], as the paper "
              "states it) and from the layer p where the rank peaks (R_peak = rank[K]/rank[p], "
              "<= 1 by construction: only its size says anything, against the same figure at "
              "initialisation). Each ratio is a mean [95 %% t-interval] over gated seeds; "
              "claims hold in k of n gated seeds; a verdict needs %d gated seeds per ξ."
              % findings.MIN_SEEDS, "",
              "| measure | level | ξ | gated | (i) from layer 1 | R | R at init | "
              "(i) from the peak | peak layer | R_peak | R_peak at init | (iii) plateau, "
              "stream | (iii) plateau, masked tokens |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    selective = []
    for measure, level in MEASURE_LEVELS:
        v = findings.verdicts(results, measure, level)
        for name, xi in (("short", findings.SHORT_XI), ("long", findings.LONG_XI)):
            c = v[name]
            gated = [f for f in c["runs"] if f["gate"]["passed"]]
            lines.append("| %s | %s | %g | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                         % (measure, level, xi, c["n_gated"], c["n_runs"],
                            findings._statement(c["collapse"]), _ci(c["R"]), _ci(c["R_init"]),
                            findings._statement(c["collapse_peak"]),
                            _range([f["peak_layer"] for f in gated]), _ci(c["R_peak"]),
                            _ci(c["R_peak_init"]), findings._statement(c["plateau"]),
                            findings._statement(c["plateau_masked"])))
        selective.append((measure, level, v["selectivity"], v["selectivity_peak"]))
    lines += ["", "Claim (ii), selectivity: Δ = ratio(ξ=%g) − ratio(ξ=%g) over gated seeds, "
              "Welch 95 %% interval and Hedges' g; it holds when every ξ=%g seed collapses "
              "(ratio <= %g), no ξ=%g seed does (ratio >= %.3g), Δ's interval lies above 0 and "
              "both ξ have enough gated seeds." % (
                  findings.LONG_XI, findings.SHORT_XI, findings.SHORT_XI, 1 - findings.DELTA,
                  findings.LONG_XI, 1 - findings.DELTA / 3), "",
              "| measure | level | Δ R | g | (ii) on R | Δ R_peak | g | (ii) on R_peak |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for measure, level, first, peak in selective:
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            measure, level, *_diff(first["delta_R"]), "holds" if first["holds"] else "fails",
            *_diff(peak["delta_R"]), "holds" if peak["holds"] else "fails"))
    curve = findings.excess_curve(results)
    if curve:
        lines += ["", "## Verdicts as a function of the excess (masked positions, centred "
                  "erank)", "",
                  "Every run read at the first checkpoint of its flow during training whose "
                  "masked CE is within the level of the Bayes floor (measurement batch; "
                  "log-spaced checkpoints, so the stopping point is approximate), then at the "
                  "end. 'moves' is the mean absolute change of a figure from there to the end "
                  "of training, to compare with the seed SD of the end figures.", "",
                  "| ξ | excess level (nats) | runs | median step | R_peak | (i) from the peak "
                  "| moves | top-2 share | (iii) plateau | moves |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in curve:
            lines.append("| %g | %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
                row["xi"], row["level"] if row["level"] == "end" else "≤ %g" % row["level"],
                row["runs"], row["step"] if row["step"] is not None else "—",
                _ci(row["R_peak"]), findings._statement(row["collapse_peak"]),
                _fmt(row["shift_R_peak"]) if row["shift_R_peak"] is not None else "—",
                _ci(row["top2_share"]), findings._statement(row["plateau"]),
                _fmt(row["shift_top2_share"]) if row["shift_top2_share"] is not None else "—"))
    activity = findings.block_activity(results)
    if activity:
        marks = sorted({at for row in activity for at in row["update_at"]})
        lines += ["", "## What each block does (gated runs, medians)", "",
                  "Relative update ||z_k − z_{k−1}|| / ||z_{k−1}|| (centred over sequences) "
                  "along training and at the end, the block's gradient norm on the held-out "
                  "batch at the end, and its share of switched-off hidden units (pre-activation "
                  "below −3 on 99 % of sequences).", "",
                  "| ξ | block | runs | " + " | ".join("update at step %d" % m for m in marks)
                  + " | update at the end | gradient norm | switched-off units |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in marks) + " | --- | --- | --- |"]
        for row in activity:
            lines.append("| %g | %d | %d | %s%s | %s | %s |" % (
                row["xi"], row["block"], row["runs"],
                "".join("%.3g | " % row["update_at"][m] if m in row["update_at"] else "— | "
                        for m in marks),
                "%.3g" % row["update"], "%.2g" % row["grad_norm"],
                "—" if row["inactive_units"] is None else "%.0f %%" % (100 * row["inactive_units"])))
    rows = findings.sensitivity(results)
    keys = list(rows[0][2])
    lines += ["", "## Sensitivity (masked positions, centred erank)", "",
              "Each row moves one threshold, the others at their defaults.", "",
              "| threshold | value | " + " | ".join(keys) + " |",
              "| --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for name, value, out in rows:
        shown = ("not judged" if value is None else "yes" if value is True else
                 "no" if value is False else "%g" % value)
        lines.append("| %s | %s | %s |" % (name, shown, " | ".join(out[k] for k in keys)))
    return lines


def _figures(results, out):
    # no matplotlib.use("Agg") here: it would switch a notebook's backend for good (matplotlib
    # falls back to Agg by itself without a display)
    import matplotlib.pyplot as plt

    from .plot import report_figures

    for name, fig in report_figures(results).items():
        fig.savefig(out / (name + ".png"), dpi=100)
        plt.close(fig)


def write_report(results, out, config=None, figures=True):
    """Write report.json, report.md and (with ``figures``) PNGs for ``results`` into ``out``.

    report.json holds ``rgflow_version``, ``created_utc`` (ISO 8601, e.g.
    "2026-01-31T12:00:00Z"), ``summary`` and ``runs``, in that order. Returns the summary dict
    (see :func:`summarize`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    config = config or results[0].config
    from ._version import __version__
    header = {"rgflow_version": __version__,
              "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    (out / "report.json").write_text(json.dumps(
        dict(header, summary=summary, runs=[json.loads(r.to_json()) for r in results]),
        indent=1))
    (out / "report.md").write_text(_markdown(summary, results, config, header))
    if figures:
        _figures(results, out)
    return summary


def reproduce(out="rgflow-report", quick=False, seeds=3, workers=2, progress=True,
              config=None):
    """Train ξ = 1 and ξ = 7 runs for ``seeds`` seeds at the documented configuration and
    write the report into ``out`` (runs are stored under out/runs and reused on a re-run).

    ``quick`` selects ``CONFIGS["quick"]`` (minutes on 2 cores), else ``CONFIGS["paper"]``.
    Returns the summary dict.
    """
    base = config or CONFIGS["quick" if quick else "paper"]
    configs = grid(base, xi=[SHORT_XI, LONG_XI], seed=list(range(seeds)))
    out = Path(out)
    store = out / "runs"
    if workers > 1:
        with process_pool(workers) as ex:
            sweep(configs, executor=ex, store=store, progress=progress)
    else:
        sweep(configs, store=store, progress=progress)
    return write_report(load_results(store, configs), out, config=base)
