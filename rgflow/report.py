"""The findings report: ξ ∈ {1, 7} × seeds at a documented configuration, every claim judged
by :mod:`rgflow.findings`, written as report.json, report.md and PNG figures.

The ``rgflow reproduce`` command calls :func:`reproduce`.
"""
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from . import findings
from .experiments import Config, Result
from .sweep import grid, load_record, sweep

__all__ = ["CONFIGS", "summarize", "write_report", "reproduce"]

SHORT_XI, LONG_XI = 1.0, 7.0

# The documented configurations (README, "Findings"). "paper" is the abstract's setting at
# the pilot's default size; "quick" is the small setting the test suite and --quick use.
CONFIGS = {
    "paper": Config(),
    "quick": Config(length=16, width=16, hidden=256, depth=8, steps=2000),
}

# (claim key in summarize(), rank level) for claim (i)
COLLAPSE_SETS = (("collapse_masked", "masked"), ("collapse_visible", "visible"),
                 ("collapse_all", "position"))


def _all_hold(statuses):
    """Aggregate per-seed statuses: undertrained if any run is, else holds iff all hold."""
    if any(s == findings.UNDERTRAINED for s in statuses):
        return findings.UNDERTRAINED
    return findings.HOLDS if all(s == findings.HOLDS for s in statuses) else findings.FAILS


def summarize(results):
    """Verdicts of the three claims over a set of runs at short and long ξ.

    Parameters
    ----------
    results : list of Result (any number of seeds at xi = 1 and xi = 7; other runs ignored).

    Returns
    -------
    dict with, for each xi ("1", "7"): per claim-(i) subset and for the plateau, the list of
    per-seed Verdict dicts and the aggregate status (holds iff every seed holds); the
    selectivity Verdict dict at the position level (all positions) and at masked positions;
    and the learned shares.
    """
    by_xi = {SHORT_XI: [], LONG_XI: []}
    for r in results:
        if r.config.xi in by_xi:
            by_xi[r.config.xi].append(r)
    for xi, runs in by_xi.items():
        if not runs:
            raise ValueError("summarize needs runs at xi = %g" % xi)
        runs.sort(key=lambda r: r.config.seed)
    out = {"per_xi": {}}
    for xi, runs in by_xi.items():
        entry = {"seeds": [r.config.seed for r in runs],
                 "learned": [r.learned for r in runs],
                 "masked_ce": [r.masked_ce for r in runs],
                 "bayes_floor": [r.bayes_floor for r in runs]}
        for key, _ in COLLAPSE_SETS + (("plateau", None),):
            verdicts = [r.verdicts[key] for r in runs]
            entry[key] = {"status": _all_hold([v["status"] for v in verdicts]),
                          "runs": verdicts}
        out["per_xi"]["%g" % xi] = entry
    short, long_ = by_xi[SHORT_XI], by_xi[LONG_XI]
    for name, level in (("selectivity", "position"), ("selectivity_masked", "masked")):
        out[name] = findings.selectivity(
            [r.profiles[level] for r in short], [r.profiles[level] for r in long_],
            [r.learned for r in short], [r.learned for r in long_],
            [r.profiles["pooled"] for r in short], [r.profiles["pooled"] for r in long_],
        ).to_dict()
    return out


def _fmt(x, digits=3):
    return ("%." + str(digits) + "f") % x if isinstance(x, (int, float)) else str(x)


def _markdown(summary, results, config):
    lines = ["# rgflow findings report", "",
             "Configuration (ξ and seed vary): `%s`" % json.dumps(
                 {k: v for k, v in config.to_dict().items() if k not in ("xi", "seed")}), ""]
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
              "| ξ | positions | seed | rank[0] | rank[1] | rank[K] | ratio | max rise | "
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
              "| ξ | seed | top-2 share | top-2 transitions | rest max / largest | verdict |",
              "| --- | --- | --- | --- | --- | --- |"]
    for xi, entry in summary["per_xi"].items():
        for seed, v in zip(entry["seeds"], entry["plateau"]["runs"]):
            f = v["figures"]
            lines.append("| %s | %d | %s | %s | %s | %s |" % (
                xi, seed, _fmt(f["top2_share"], 2), f["top2_transitions"],
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
    lines += ["", "Figures: rank_*.png, drift.png, cka.png, loss.png, relevance.png.", ""]
    return "\n".join(lines)


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

    Returns the summary dict (see :func:`summarize`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    config = config or results[0].config
    (out / "report.json").write_text(json.dumps(
        {"summary": summary, "runs": [json.loads(r.to_json()) for r in results]}, indent=1))
    (out / "report.md").write_text(_markdown(summary, results, config))
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
        with ProcessPoolExecutor(workers) as ex:
            sweep(configs, executor=ex, store=store, progress=progress)
    else:
        sweep(configs, store=store, progress=progress)
    results = []
    for c in configs:
        payload = load_record(store / (c.key() + ".json"), c.key())
        if payload is None or payload["status"] != "ok":
            raise RuntimeError("run %s failed: %s" % (c.key(), payload and payload.get("error")))
        results.append(Result.from_json(json.dumps(payload["result"])))
    return write_report(results, out, config=base)
