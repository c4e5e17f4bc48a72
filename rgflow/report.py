"""The findings report: ξ ∈ {1, 7} × seeds at a documented configuration, every claim judged
over the seeds that pass the training gate, written as report.json, report.md and PNG figures.

The ``rgflow reproduce`` command calls :func:`reproduce`. The verdicts come from
:func:`rgflow.findings.verdicts` (per measure and level) and the gate from
:func:`rgflow.findings.gate_of`; this module only formats them.
"""
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import findings
from .experiments import Config
from .findings import LONG_XI, SHORT_XI
from .sweep import grid, load_results, process_pool, sweep

__all__ = ["CONFIGS", "CONFIGS_V1", "MEASURE_LEVELS", "write_report", "reproduce",
           "gated_markdown", "headline_markdown"]

# The documented configurations (README, "Findings"), each with the recipe the recipe study
# chose at its size (notebooks/04_training_recipe.ipynb; cosine learning rate 3e-3, 500
# warm-up steps): 30,000 steps of batch 128 at the small size ("quick"); at the paper's size
# 10,000 steps of batch 512, the one recipe tried that gates at xi = 7 there (batch 128 leaves
# 11 of 12 blocks switched off).
RECIPE = dict(steps=30000, lr=3e-3, schedule="cosine", warmup=500)
CONFIGS = {
    "paper": Config(**dict(RECIPE, steps=10000, batch_size=512)),
    "quick": Config(length=16, width=16, hidden=256, depth=8, **RECIPE),
}
# The configurations of the first findings (3 seeds, 3,000 and 2,000 steps, an 80 %-of-the-gap
# gate; docs/findings-v1.md), kept to read their stored records.
CONFIGS_V1 = {
    "paper": Config(),
    "quick": Config(length=16, width=16, hidden=256, depth=8, steps=2000),
}


def computed_on_lines(places):
    """One line per distinct place in ``places`` (``Result.computed_on`` dicts) that runs were
    computed on (bits may differ between OpenBLAS CPU kernels, never between thread counts)."""
    seen = []
    for w in places:
        text = ("rgflow %s, OpenBLAS %s kernel, %s thread%s, %s" % (
            w["rgflow"], w["core"], w["threads"], "" if w["threads"] == 1 else "s", w["cpu"])
            if w else "not recorded (older run)")
        if text not in seen:
            seen.append(text)
    return seen


def _fmt(x, digits=3):
    if isinstance(x, float) and np.isnan(x):
        return "undefined"  # e.g. R with a zero rank[1]: no number to print
    return ("%." + str(digits) + "f") % x if isinstance(x, (int, float)) else str(x)


def _transitions(indices):
    """Drift transitions by the layers they join: index l is z_l -> z_{l+1} (z_0 = embedding)."""
    return ", ".join("%d→%d" % (l, l + 1) for l in indices)


def summary_of(results):
    """What report.json's ``summary`` holds: ``"<measure>/<level>"`` ->
    :func:`rgflow.findings.verdicts` for every pair of MEASURE_LEVELS."""
    return {"%s/%s" % (m, l): findings.verdicts(results, m, l) for m, l in MEASURE_LEVELS}


def _markdown(results, config, header):
    lines = ["# rgflow findings report", "",
             "rgflow %s, written %s." % (header["rgflow_version"], header["created_utc"]), "",
             "Configuration (ξ and seed vary): `%s`" % json.dumps(
                 {k: v for k, v in config.to_dict().items() if k not in ("xi", "seed")}), ""]
    lines += ["Computed on: " + "; ".join(computed_on_lines(r.computed_on for r in results)),
              ""]
    lines += gated_markdown(results)
    lines += ["", "## Every run (masked positions, centred erank; stream and masked-token "
              "drift)", "",
              "Peak: the layer where the rank is largest. Transition l→l+1 is the drift "
              "1 − CKA(z_l, z_{l+1}) between layers l and l+1; layers count from 0, the "
              "embedding, to K = %d." % config.depth, "",
              "| ξ | seed | gated | rank[1] | peak | rank[peak] | rank[K] | R | R_peak | "
              "top-2 share | top-2 transitions | top-2 share, masked |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (r.config.xi, r.config.seed)):
        f = findings.run_figures(r)
        rank = findings._rank_of(r, "erank", "masked")
        p = findings.plateau(r.drift)
        lines.append("| %g | %d | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            r.config.xi, r.config.seed, "yes" if f["gate"]["passed"] else "no",
            _fmt(rank[1], 2), f["peak_layer"], _fmt(rank[f["peak_layer"]], 2),
            _fmt(rank[-1], 2), _fmt(f["R"]), _fmt(f["R_peak"]), _fmt(f["top2_share"], 2),
            _transitions(p.figures["top2_transitions"]),
            _fmt(f["top2_share_masked"], 2) if "top2_share_masked" in f else "—"))
    lines += ["", "## Relevance decomposition (masked positions, gated runs, mean over seeds)",
              "",
              "Variance of the masked tokens' representations linearly explained by the exact "
              "Bayes log-posterior (relevant) and left over (irrelevant), in absolute units, "
              "with the effective rank of the leftover beside them.", "",
              "| ξ | quantity | " + " | ".join("z%d" % l for l in range(config.depth + 1)) + " |",
              "| --- | --- | " + " | ".join("---" for _ in range(config.depth + 1)) + " |"]
    for xi in (SHORT_XI, LONG_XI):
        runs = [r for r in results if r.config.xi == xi and findings.gate_of(r)["passed"]]
        for q in ("relevant_variance", "irrelevant_variance", "irrelevant_rank"):
            if runs and all(q in r.relevance for r in runs):
                mean = np.mean([r.relevance[q] for r in runs], axis=0)
                lines.append("| %g | %s | %s |" % (xi, q.replace("_", " "),
                                                   " | ".join("%.3g" % x for x in mean)))
    lines += ["", "Figures: rank_*.png, drift.png, cka.png, loss.png, relevance.png%s." % (
        ", flow.png" if any(r.history.get("flow") for r in results) else ""), ""]
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


def _count_cell(c, key, ratio=None, label=None):
    """A cell of :func:`rgflow.findings.cell_verdicts` ``c`` as "k/n" gated seeds where
    ``key`` holds, with the interval of ``ratio`` (named ``label``) when there is one."""
    text = findings._statement(c[key])
    if ratio and c[ratio] is not None:
        text += ", %s %s" % (label or ratio, _ci(c[ratio]))
    return text


def _range(values, digits=0):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return _fmt(lo, digits) if lo == hi else "%s–%s" % (_fmt(lo, digits), _fmt(hi, digits))


def _pm(value, se, digits=4):
    return ("%+.*f" % (digits, value)) + ("" if se is None else " ± %.*f" % (digits, se))


def _g(d):
    """Hedges' g of a :func:`rgflow.findings.compare` dict, or that it is undefined (both
    sides without spread: pooled SD 0)."""
    return "undefined (SD 0)" if np.isnan(d["hedges_g"]) else "%.2f" % d["hedges_g"]


def _diff(d):
    if d is None:
        return "—", "—"
    return "%+.3f [%+.3f, %+.3f]" % (d["diff"], d["lo"], d["hi"]), _g(d)


def _shortfall(v):
    """Sentences for each ξ of :func:`rgflow.findings.verdicts` ``v`` with fewer gated seeds
    than a verdict needs (none when both have enough)."""
    lines = []
    for name, xi in (("short", SHORT_XI), ("long", LONG_XI)):
        c = v[name]
        if c["n_gated"] == 0:
            lines.append("No run at ξ = %g passes the gate (0 of %d): no figure and no verdict "
                         "at ξ = %g, and none on claim (ii), which compares both ξ."
                         % (xi, c["n_runs"], xi))
        elif not c["enough"]:
            lines.append("Only %d gated seed%s at ξ = %g, fewer than the %d a verdict needs: "
                         "its counts are shown for what they are." % (
                             c["n_gated"], "" if c["n_gated"] == 1 else "s", xi,
                             findings.MIN_SEEDS))
    return lines


def _excess_curve_lines(curve, gated):
    """Markdown lines of :func:`rgflow.findings.excess_curve`'s rows, over gated runs or over
    every run."""
    lines = ["", "## Verdicts as a function of the excess (masked positions, centred erank%s)"
             % ("" if gated else "; every run, gated or not"), ""]
    if not curve:
        return lines + ["No %s stores a flow during training." % ("gated run" if gated else "run")]
    lines += ["Every %s read at the first checkpoint of its flow during training "
              "whose masked CE is within the level of the Bayes floor (measurement batch; "
              "log-spaced checkpoints, so the stopping point is approximate), then at the "
              "end. 'moves' is the mean absolute change of a figure from there to the end "
              "of training; in the 'end' row it gives the seed SD of the end figures, to "
              "compare with." % ("gated run" if gated else "run, gated or not,"), "",
              "| ξ | excess level (nats) | runs | median step | R_peak | (i) from the peak "
              "| moves | top-2 share | (iii) plateau | moves |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def moves(row, name):
        if row["level"] == "end":
            r = row[name]
            return "SD %s" % _fmt(r["sd"]) if r is not None and r["n"] > 1 else "—"
        shift = row["shift_" + name]
        return _fmt(shift) if shift is not None else "—"

    for row in curve:
        lines.append("| %g | %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            row["xi"], row["level"] if row["level"] == "end" else "≤ %g" % row["level"],
            row["runs"], row["step"] if row["step"] is not None else "—",
            _ci(row["R_peak"]), findings._statement(row["collapse_peak"]),
            moves(row, "R_peak"), _ci(row["top2_share"]),
            findings._statement(row["plateau"]), moves(row, "top2_share")))
    return lines


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
    selective, shortfall = [], None
    for measure, level in MEASURE_LEVELS:
        v = findings.verdicts(results, measure, level)
        shortfall = shortfall if shortfall is not None else _shortfall(v)
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
    if shortfall:
        lines += [""] + shortfall
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
            measure, level, *_diff(first["delta_R"]), first["status"],
            *_diff(peak["delta_R"]), peak["status"]))
    lines += _excess_curve_lines(findings.excess_curve(results), gated=True)
    if not all(findings.gate_of(r)["passed"] for r in results):
        lines += _excess_curve_lines(findings.excess_curve(results, gated=False), gated=False)
    activity = findings.block_activity(results)
    if not activity:
        lines += ["", "## What each block does", "",
                  "No gated run stores its blocks' updates and gradient norms."]
    else:
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
    lines += ["", "## Sensitivity (masked positions, centred erank)", "",
              "Each row moves one threshold, the others at their defaults.", ""]
    return lines + sensitivity_markdown(results)


def sensitivity_markdown(results):
    """The sensitivity table (:func:`rgflow.findings.sensitivity`: each threshold moved over
    its range, the others at their defaults) as markdown lines: per row, the claims'
    "holds in k of n gated seeds" at each ξ and the selectivity verdicts."""
    rows = findings.sensitivity(results)
    keys = list(rows[0][2])
    lines = ["| threshold | value | " + " | ".join(keys) + " |",
             "| --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for name, value, out in rows:
        shown = ("not judged" if value is None else "yes" if value is True else
                 "no" if value is False else "%g" % value)
        lines.append("| %s | %s | %s |" % (name, shown, " | ".join(out[k] for k in keys)))
    return lines


def headline_markdown(results):
    """The README's compact table of the verdicts (masked positions, centred erank; the gate,
    claim (i) both ways, (ii) on both ratios, (iii) on both drifts), as markdown lines."""
    v = findings.verdicts(results)
    short, long_ = v["short"], v["long"]

    def cells(key, ratio=None, label=None):
        return [_count_cell(c, key, ratio, label) for c in (short, long_)]

    def selective(key):
        sel = v[key]
        d = sel["delta_R"]
        return "**%s**%s" % (sel["status"], "" if d is None else
                             ": Δ = %+.3f [%+.3f, %+.3f], g %s" % (
                                 d["diff"], d["lo"], d["hi"],
                                 _g(d) if np.isnan(d["hedges_g"]) else "= " + _g(d)))

    lines = ["| claim | reading | ξ = %g | ξ = %g |" % (SHORT_XI, LONG_XI),
             "| --- | --- | --- | --- |",
             "| gate | runs within %g nats of the floor that beat the adjacent rule | %d/%d | "
             "%d/%d |" % (findings.GATE_EXCESS, short["n_gated"], short["n_runs"],
                          long_["n_gated"], long_["n_runs"]),
             "| (i) collapse | from layer 1, gated seeds where it holds | %s | %s |"
             % tuple(cells("collapse", "R")),
             "| (i) collapse | from the peak | %s | %s |" % tuple(cells("collapse_peak",
                                                                      "R_peak")),
             "| (i) at initialisation | R_peak of the untrained network | %s | %s |" % (
                 _ci(short["R_peak_init"]), _ci(long_["R_peak_init"])),
             "| (ii) selectivity | on R (ξ = %g − ξ = %g) | %s | |" % (
                 LONG_XI, SHORT_XI, selective("selectivity")),
             "| (ii) selectivity | on R_peak | %s | |" % selective("selectivity_peak"),
             "| (iii) plateau | stream drift | %s | %s |" % tuple(cells("plateau", "top2_share",
                                                                      "top-2 share")),
             "| (iii) plateau | masked-token drift | %s | %s |" % tuple(
                 cells("plateau_masked", "top2_share_masked", "top-2 share"))]
    shortfall = _shortfall(v)
    if shortfall:
        lines += [""] + shortfall
    return lines


def architectures_markdown(results):
    """Residual MLP and transformer side by side (masked positions, centred erank): the table
    of :func:`headline_markdown` with one column per architecture and ξ, claim (ii) per
    architecture, and the transformer − MLP difference of R_peak at each ξ (Welch), as
    markdown lines. ``results`` holds both architectures (``config.arch``), whose runs of one
    ξ differ in seed, ``arch`` and ``heads`` only (ValueError otherwise); every cell is
    stated as "k/n gated seeds" with its interval, and a sentence says which cells have
    fewer gated seeds than a verdict needs. The difference between architectures is
    unpaired (Welch) although runs of one seed share their batches: the gate drops runs of
    one architecture and not the other, which breaks the pairs."""
    archs = [a for a in ("mlp", "transformer") if any(r.config.arch == a for r in results)]
    if len(archs) != 2:
        raise ValueError("results must hold runs of both architectures, got %s" % archs)
    _cells_by([r.config for r in results], lambda c: c.xi,
              {"seed": 0, "arch": "mlp", "heads": 2})
    v = {a: findings.verdicts([r for r in results if r.config.arch == a]) for a in archs}
    cols = [(a, side) for side in ("short", "long") for a in archs]
    names = {"mlp": "MLP", "transformer": "transformer"}

    def row(claim, reading, cell):
        return "| %s | %s | %s |" % (claim, reading, " | ".join(cell(v[a][s]) for a, s in cols))

    def count(key, ratio=None, label=None):
        return lambda c: _count_cell(c, key, ratio, label)

    def excess(c):
        return _range([f["gate"]["excess"] for f in c["runs"]], 4)

    def peak_layers(c):
        return _range([f["peak_layer"] for f in c["runs"] if f["gate"]["passed"]])

    lines = ["| claim | reading | %s |" % " | ".join(
                 "%s ξ = %g" % (names[a], SHORT_XI if s == "short" else LONG_XI)
                 for a, s in cols),
             "| --- | --- |" + " --- |" * len(cols),
             row("gate", "runs within %g nats of the floor that beat the adjacent rule"
                 % findings.GATE_EXCESS,
                 lambda c: "%d/%d" % (c["n_gated"], c["n_runs"])),
             row("gate", "excess over the floor, every run (nats)", excess),
             row("(i) collapse", "from layer 1, gated seeds where it holds",
                 count("collapse", "R")),
             row("(i) collapse", "from the peak", count("collapse_peak", "R_peak")),
             row("(i) collapse", "peak after block (gated runs)", peak_layers),
             row("(i) at initialisation", "R_peak of the untrained network",
                 lambda c: _ci(c["R_peak_init"])),
             row("(iii) plateau", "stream drift", count("plateau", "top2_share", "top-2 share")),
             row("(iii) plateau", "masked-token drift",
                 count("plateau_masked", "top2_share_masked", "top-2 share")),
             "", "| comparison | reading | Δ [95 % CI] | Hedges' g | verdict |",
             "| --- | --- | --- | --- | --- |"]
    for a in archs:
        sel = v[a]["selectivity_peak"]
        d, g = _diff(sel["delta_R"])
        lines.append("| (ii) selectivity, %s | R_peak, ξ = %g − ξ = %g | %s | %s | %s |"
                     % (names[a], LONG_XI, SHORT_XI, d, g, sel["status"]))
    for side, xi in (("short", SHORT_XI), ("long", LONG_XI)):
        gated = {a: [f["R_peak"] for f in v[a][side]["runs"]
                     if f["gate"]["passed"] and np.isfinite(f["R_peak"])] for a in archs}
        diff = (findings.compare(gated["mlp"], gated["transformer"])
                if min(len(x) for x in gated.values()) >= 2 else None)
        d, g = _diff(diff)
        lines.append("| transformer − MLP | R_peak at ξ = %g | %s | %s | descriptive |"
                     % (xi, d, g))
    short = [(names[a], xi, v[a][s]["n_gated"]) for a in archs
             for s, xi in (("short", SHORT_XI), ("long", LONG_XI))
             if not v[a][s]["enough"]]
    if short:
        lines += ["", "Fewer gated seeds than the %d a verdict needs in %s: those counts and "
                  "intervals are descriptive, and claim (ii) gets no verdict there." % (
                      findings.MIN_SEEDS, ", ".join("%s ξ = %g (%d)" % c for c in short))]
    return lines


def _task_name(config):
    return config.task if config.task == "chain" else "%s, noise %g" % (config.task,
                                                                       config.noise)


def _cells_by(configs, label, ignore):
    """{label(config): that cell's configuration without ``ignore`` (a Config with those
    fields at one value)}; ValueError when two configurations of one label differ in another
    field (a size, a chain, a recipe): their runs are not one cell."""
    cells = {}
    for c in configs:
        key, rest = label(c), c.replace(**ignore)
        if cells.setdefault(key, rest) != rest:
            raise ValueError("runs labelled %r differ in more than %s: %r and %r"
                             % (key, ", ".join(sorted(ignore)), cells[key], rest))
    return cells


def tasks_markdown(results, planned=None):
    """Chain and hidden-Markov tasks side by side (masked positions, centred erank), as
    markdown lines: per task and ξ, the task's relevant context (:func:`rgflow.relevant_context`
    of the cell's task: tokens whose influence is >= 0.01, and the decay length), the gate,
    claims (i) and (iii) as "k/n gated seeds" with intervals and the share of the last
    layer's variance the posterior explains (relevance decomposition, masked positions, gated
    runs); then claim (ii) per task, R_peak at each longer ξ against the shortest (Welch),
    with a verdict only where both cells have the gated seeds a verdict needs; then the
    trend of R_peak against ln ξ per task, over the gated runs and over the cells' means
    (:func:`rgflow.findings.trend`).
    ``planned`` (Configs, optional) adds a row for every planned cell and says how many of
    each cell's runs are stored. Runs of one task and ξ must differ in their seed only (ValueError
    otherwise)."""
    from .chains import relevant_context
    from .experiments import make_chain

    planned = list(planned or ())

    def label(c):
        return (_task_name(c), c.xi)

    configs = _cells_by([r.config for r in results] + planned, label, {"seed": 0})
    groups, want = {key: [] for key in configs}, {}
    for r in results:
        groups[label(r.config)].append(r)
    for c in planned:
        want[label(c)] = want.get(label(c), 0) + 1
    cells = {key: findings.cell_verdicts(runs) for key, runs in groups.items()}
    order = sorted(cells, key=lambda k: (k[0] != "chain", k))

    def count(c, key, ratio, name):
        return _count_cell(c, key, ratio, name) if c["n_gated"] else "—"

    def relevant_share(key):
        # relevance_decomposition at masked positions, last layer, over the gated runs
        shares = [r.relevance["relevant_share"][-1] for r in groups[key]
                  if findings.gate_of(r)["passed"] and r.relevance.get("relevant_share")]
        return _ci(findings.interval(shares)) if shares else "—"

    lines = ["| task | ξ | context ≥ 0.01 (tokens) | decay length (tokens) | runs | gated | "
             "excess (nats) | (i) from layer 1 | (i) from the peak | (iii) stream | "
             "(iii) masked tokens | relevant share, last layer |", "|" + " --- |" * 12]
    for key in order:
        c = cells[key]
        influence = relevant_context(make_chain(configs[key]))
        runs = "%d" % c["n_runs"] if key not in want else "%d of %d" % (c["n_runs"], want[key])
        lines.append("| %s | %g | %d | %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
            key[0], key[1], influence.length, _fmt(float(influence.decay_length), 2), runs,
            c["n_gated"], _range([f["gate"]["excess"] for f in c["runs"]], 4),
            count(c, "collapse", "R", "R"), count(c, "collapse_peak", "R_peak", "R_peak"),
            count(c, "plateau", "top2_share", "top-2"),
            count(c, "plateau_masked", "top2_share_masked", "top-2"), relevant_share(key)))
    lines += ["", "| task | claim (ii) on R_peak | gated seeds | Δ [95 % CI] | Hedges' g | "
              "verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for task in dict.fromkeys(k[0] for k in order):
        xis = sorted(k[1] for k in cells if k[0] == task)
        for xi in xis[1:]:
            short, long_ = cells[task, xis[0]], cells[task, xi]
            sel = findings._selective({"short": short, "long": long_}, "R_peak",
                                      findings.DELTA, xis=(xis[0], xi))
            d, g = _diff(sel["delta_R"])
            gated = "%d at ξ = %g, %d at ξ = %g" % (long_["n_gated"], xi, short["n_gated"],
                                                   xis[0])
            lines.append("| %s | ξ = %g − ξ = %g | %s | %s | %s | %s |"
                         % (task, xi, xis[0], gated, d, g, sel["status"]))
    lines += ["", "| task | trend of R_peak over ξ | gated runs | slope per e-fold of ξ, every "
              "run [95 % CI] | slope per e-fold of ξ, cell means [95 % CI] |",
              "| --- | --- | --- | --- | --- |"]

    def slope(x, y):
        if len(x) < 3 or len(set(x)) < 2:
            return "—"
        t = findings.trend(np.log(x), y)
        return "%+.3f [%+.3f, %+.3f]" % (t["slope"], t["lo"], t["hi"])

    for task in dict.fromkeys(k[0] for k in order):
        points = sorted((xi, f["R_peak"]) for (t, xi), c in cells.items() if t == task
                        for f in c["runs"] if f["gate"]["passed"] and np.isfinite(f["R_peak"]))
        xis = sorted({xi for xi, _ in points})
        means = [np.mean([r for x, r in points if x == xi]) for xi in xis]
        lines.append("| %s | R_peak against ln ξ, ξ = %s | %d | %s | %s |" % (
            task, ", ".join("%g" % xi for xi in xis), len(points),
            slope([xi for xi, _ in points], [r for _, r in points]), slope(xis, means)))
    lines += ["", "Context: the farthest distance at which hiding one visible token moves a "
              "masked token's exact posterior by ≥ 0.01 in total variation; decay length: "
              "tokens per e-fold of that influence beyond the neighbours (undefined for a "
              "chain, whose influence beyond them is 0). Relevant share: the part of the "
              "masked positions' variance at the last layer that the exact Bayes "
              "log-posterior explains linearly (`rgflow.analysis.relevance_decomposition`). "
              "A verdict on claim (ii) needs %d gated seeds at both ξ. Trend: the least-squares "
              "slope of R_peak against ln ξ (`rgflow.findings.trend`, t-interval), over every "
              "gated run with a finite R_peak (each run one point, taken as independent) and "
              "over the cells' means (one point per ξ: it assumes neither independent runs nor "
              "equal spreads, and counts how far the cells stray from a line); a "
              "description, not a verdict. Claim (ii) predicts a positive slope." \
              % findings.MIN_SEEDS]
    return lines


def _figures(results, out):
    # no matplotlib.use("Agg") here: it would switch a notebook's backend for good (matplotlib
    # falls back to Agg by itself without a display)
    import matplotlib.pyplot as plt

    from .plot import report_figures

    for name, fig in report_figures(results).items():
        fig.savefig(out / (name + ".png"), dpi=100)
        plt.close(fig)


def _finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (valid JSON)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(results, out, config=None, figures=True):
    """Write report.json, report.md and (with ``figures``) PNGs for ``results`` into ``out``.

    ``results`` are runs that store every measure and their gate figures (runs of this
    version of :func:`rgflow.experiments.run`). report.json holds ``rgflow_version``,
    ``created_utc`` (ISO 8601, e.g. "2026-01-31T12:00:00Z"), ``summary`` (:func:`summary_of`)
    and ``runs``, in that order (NaN, e.g. the SD of a single seed, is written as null).
    Returns the summary.
    """
    if not results:
        raise ValueError("results must hold at least one run")
    old = [(r.config.xi, r.config.seed) for r in results
           if not r.measures or r.adjacent_ce is None or not r.gate]
    if old:
        raise ValueError("runs stored before every measure and the gate batch were recorded "
                         "cannot be judged (xi, seed: %s); rerun them" % ", ".join(
                             "(%g, %d)" % t for t in sorted(set(old))))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_of(results)
    config = config or results[0].config
    from ._version import __version__
    header = {"rgflow_version": __version__,
              "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    (out / "report.json").write_text(json.dumps(_finite(
        dict(header, summary=summary, runs=[json.loads(r.to_json()) for r in results])),
        indent=1, allow_nan=False))
    (out / "report.md").write_text(_markdown(results, config, header))
    if figures:
        _figures(results, out)
    return summary


def reproduce(out="rgflow-report", quick=False, seeds=10, workers=2, progress=True,
              config=None, store=None):
    """Train ξ = 1 and ξ = 7 runs for seeds 0 .. ``seeds`` - 1 at the documented
    configuration and write the report into ``out``, judging every stored run of that
    configuration at those two ξ (the seeds trained here and any other seed already in the
    store, e.g. the extra ξ = 1 seeds of notebooks/gated_sweep.py).

    ``quick`` selects ``CONFIGS["quick"]`` (the small size), else ``CONFIGS["paper"]``.
    Runs are stored in ``store`` (default ``out/runs``) and reused: pointing ``store`` at the
    records committed in notebooks/results/gated-<size>/ judges them without training.
    Returns the summary (:func:`summary_of`).
    """
    base = config or CONFIGS["quick" if quick else "paper"]
    configs = grid(base, xi=[SHORT_XI, LONG_XI], seed=list(range(seeds)))
    out = Path(out)
    store = out / "runs" if store is None else Path(store)
    if workers > 1:
        with process_pool(workers) as ex:
            sweep(configs, executor=ex, store=store, progress=progress)
    else:
        sweep(configs, store=store, progress=progress)
    runs = load_results(store, configs)  # every requested seed, or RuntimeError
    requested = {c.key() for c in configs}
    like_base = base.replace(xi=SHORT_XI, seed=0)
    runs += [r for r in load_results(store) if r.config.key() not in requested
             and r.config.xi in (SHORT_XI, LONG_XI)
             and r.config.replace(xi=SHORT_XI, seed=0) == like_base]
    runs.sort(key=lambda r: (r.config.xi, r.config.seed))
    return write_report(runs, out, config=base)
