"""The report's details: report.json starts with the rgflow version and a UTC timestamp, the
tables say what their columns mean, thresholds are printed readably and drift transitions are
named by the layers they join."""
import json
import re
from datetime import datetime, timezone

import numpy as np
import pytest

import rgflow as rg
from rgflow.experiments import Config, run
from rgflow.report import write_report

TINY = Config(steps=20, hidden=32, depth=3, width=8, length=8, eval_size=128, batch_size=32)


@pytest.fixture(scope="module")
def results():
    return [run(TINY.replace(xi=xi, seed=seed), progress=False)
            for xi in (1.0, 7.0) for seed in (0, 1)]


@pytest.fixture(scope="module")
def report(tmp_path_factory, results):
    out = tmp_path_factory.mktemp("report")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    summary = write_report(results, out, figures=False)
    after = datetime.now(timezone.utc)
    return dict(out=out, summary=summary, before=before, after=after,
                doc=json.loads((out / "report.json").read_text()),
                md=(out / "report.md").read_text())


def test_report_json_starts_with_version_and_utc_time(report):
    doc = report["doc"]
    assert list(doc) == ["rgflow_version", "created_utc", "summary", "runs"]
    assert doc["rgflow_version"] == rg.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["created_utc"])
    created = datetime.strptime(doc["created_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc)
    assert report["before"] <= created <= report["after"]
    from rgflow.report import _finite
    assert doc["summary"] == json.loads(json.dumps(_finite(report["summary"])))
    assert "NaN" not in (report["out"] / "report.json").read_text()  # valid JSON
    assert report["md"].splitlines()[2] == "rgflow %s, written %s." % (rg.__version__,
                                                                       doc["created_utc"])


def test_every_run_table_says_what_its_columns_mean(report):
    md = report["md"]
    assert "| ξ | seed | gated | rank[1] | peak | rank[peak] | rank[K] | R | R_peak |" in md
    assert "Peak: the layer where the rank is largest." in md
    assert "## The gate" in md and "## Verdicts over gated seeds" in md
    assert "## Verdicts as a function of the excess" in md
    assert "## What each block does" in md and "## Sensitivity" in md


def test_thresholds_are_printed_readably(report):
    md = report["md"]
    assert "(ratio <= 0.95), no ξ=7 seed does (ratio >= 0.983)" in md
    assert "0.983333" not in md and "0.950000" not in md


def test_transitions_are_named_by_the_layers_they_join(report, results):
    md = report["md"]
    assert ("Transition l→l+1 is the drift 1 − CKA(z_l, z_{l+1}) between layers l and l+1; "
            "layers count from 0, the embedding, to K = 3.") in md
    for r in results:
        a, b = rg.findings.plateau(r.drift).figures["top2_transitions"]
        row = next(line for line in md.splitlines()
                   if line.startswith("| %g | %d | " % (r.config.xi, r.config.seed))
                   and "→" in line)
        assert row.split(" | ")[10] == "%d→%d, %d→%d" % (a, a + 1, b, b + 1)


def test_summary_is_the_verdicts_per_measure(report, results):
    from rgflow.report import MEASURE_LEVELS
    summary = report["summary"]
    assert list(summary) == ["%s/%s" % ml for ml in MEASURE_LEVELS]
    assert summary["erank/masked"]["short"]["n_runs"] == 2


def test_old_records_are_refused(results, tmp_path):
    import copy
    old = copy.deepcopy(results[0])
    old.measures = {}
    with pytest.raises(ValueError, match=r"\(xi, seed: \(1, 0\)\); rerun"):
        write_report([old], tmp_path, figures=False)
    no_gate = copy.deepcopy(results[0])
    no_gate.gate = {}
    with pytest.raises(ValueError, match="gate batch"):
        write_report([no_gate], tmp_path, figures=False)
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path, figures=False)


def test_gated_markdown_states_counts_intervals_and_sensitivity(monkeypatch):
    from test_findings_criteria import fake_result

    import rgflow.report as report
    monkeypatch.setattr(report, "MEASURE_LEVELS", (("erank", "masked"),))
    short = [fake_result(1.0, s, 0.85 + 0.002 * s) for s in range(10)]
    long_ = [fake_result(7.0, s, 0.99 + 0.001 * s) for s in range(10)]
    long_.append(fake_result(7.0, 10, 0.5, margin=-0.001))
    text = "\n".join(report.gated_markdown(short + long_))
    assert "| 7 | 10 | 2048 | +0.0050 | -0.0010 | **no** |" in text
    assert ("| erank | masked | 1 | 10/10 | 10/10 | 0.859 [0.855, 0.863] | 1.000 [1.000, 1.000] "
            "| 10/10 | 1 | 0.859 [0.855, 0.863] | 1.000 [1.000, 1.000] | 10/10 |") in text
    assert "| erank | masked | 7 | 10/11 | 0/10 | 0.995 [0.992, 0.997] |" in text
    assert ("| erank | masked | +0.136 [+0.131, +0.140] | 27.11 | holds | "
            "+0.136 [+0.131, +0.140] | 27.11 | holds |") in text
    assert "| spearman_max | not judged | 10/10 | 0/10 |" in text


def test_no_gated_run_at_one_xi_is_said_plainly_and_judged_nowhere(monkeypatch):
    """The paper-size store's picture: every xi = 1 run fails the gate. The text says so and
    gives claim (ii) no verdict (it printed "fails", as if judged)."""
    from test_findings_criteria import fake_result

    import rgflow.report as report
    monkeypatch.setattr(report, "MEASURE_LEVELS", (("erank", "masked"),))
    short = [fake_result(1.0, s, 0.85, margin=-0.002) for s in range(3)]
    long_ = [fake_result(7.0, s, 0.9 + 0.01 * s) for s in range(3)]
    text = "\n".join(report.gated_markdown(short + long_))
    assert ("No run at ξ = 1 passes the gate (0 of 3): no figure and no verdict at ξ = 1, "
            "and none on claim (ii), which compares both ξ.") in text
    assert ("Only 3 gated seeds at ξ = 7, fewer than the 10 a verdict needs: its counts are "
            "shown for what they are.") in text
    assert "| erank | masked | — | — | no verdict | — | — | no verdict |" in text
    assert "| delta | 0.05 | 0/0 | 3/3 | 0/0 | 3/3 | 0/0 | 3/3 | no verdict | no verdict |" in text
    # the one sensitivity row that gates the ξ = 1 runs gives the difference (ratios 0.85 x 3
    # and 0.90, 0.91, 0.92: Δ 0.06, Welch df 2, half-width t(0.975, 2) x 0.01 / 3 = 0.0248),
    # still no verdict
    row = next(line for line in text.splitlines() if line.startswith("| require_adjacent | no"))
    assert row.endswith("| no verdict (Δ +0.060 [+0.035, +0.085]) | "
                        "no verdict (Δ +0.060 [+0.035, +0.085]) |")
    assert not re.search(r"\| \**(holds|fails)", text)  # no cell gives claim (ii) a verdict
    head = "\n".join(report.headline_markdown(short + long_))
    assert "| (ii) selectivity | on R (ξ = 7 − ξ = 1) | **no verdict** | |" in head
    assert "| (ii) selectivity | on R_peak | **no verdict** | |" in head
    assert "No run at ξ = 1 passes the gate (0 of 3)" in head
    assert not re.search(r"\| \**(holds|fails)", head)


def test_an_undefined_figure_is_a_word_not_nan(monkeypatch, tmp_path):
    """Identical ratios on each side leave Hedges' g undefined (pooled SD 0); a zero rank[1]
    leaves R undefined: the text says so (it printed "nan")."""
    from test_findings_criteria import fake_result

    import rgflow.report as report
    monkeypatch.setattr(report, "MEASURE_LEVELS", (("erank", "masked"),))
    runs = [fake_result(1.0, s, 0.9) for s in range(10)] + \
        [fake_result(7.0, s, 0.99) for s in range(10)]
    zero = fake_result(1.0, 10, 0.9)
    zero.measures["rank"]["erank"]["masked"] = [0.0, 0.0, 3.0, 2.0, 2.0, 2.0]
    runs.append(zero)
    head = "\n".join(report.headline_markdown(runs))
    assert "**fails**: Δ = +0.090 [+0.090, +0.090], g undefined (SD 0) |" in head
    for r in runs:
        r.gate = {"size": 64, "masked_ce": r.masked_ce, "bayes_floor": r.bayes_floor,
                  "adjacent_ce": r.adjacent_ce, "excess_se": 1e-4, "margin_se": 1e-4}
        r.relevance, r.cka_matrix = {}, [[1.0]]
    write_report(runs, tmp_path, figures=False)
    md = (tmp_path / "report.md").read_text()  # gated_markdown's tables and every run's
    assert "| erank | masked | +0.090 [+0.090, +0.090] | undefined (SD 0) | fails |" in md
    assert "| 1 | 10 | yes | 0.00 | 2 | 3.00 | 2.00 | undefined | 0.667 |" in md
    assert not re.search(r"\bnan\b", head + md, re.I)


def test_architectures_side_by_side():
    """The README's MLP-vs-transformer table: one column per architecture and ξ, claim (ii)
    per architecture, the transformer − MLP difference of R_peak by hand (Welch), and the
    cells short of MIN_SEEDS named."""
    from test_findings_criteria import fake_result

    from rgflow.report import architectures_markdown

    def as_transformer(r):
        r.config = r.config.replace(arch="transformer")
        return r

    mlp = [fake_result(1.0, s, 0.85 + 0.01 * s) for s in range(3)]
    mlp.append(fake_result(1.0, 3, 0.5, excess=0.05))             # fails the gate
    mlp += [fake_result(7.0, s, 0.99) for s in range(3)]
    tr = [as_transformer(fake_result(1.0, s, 0.97 + 0.01 * s)) for s in range(3)]
    tr += [as_transformer(fake_result(7.0, s, 0.99 + 0.001 * s)) for s in range(3)]
    text = "\n".join(architectures_markdown(mlp + tr))
    assert ("| claim | reading | MLP ξ = 1 | transformer ξ = 1 | MLP ξ = 7 | "
            "transformer ξ = 7 |") in text
    assert "| gate | runs within 0.02 nats of the floor that beat the adjacent rule | " \
           "3/4 | 3/3 | 3/3 | 3/3 |" in text
    assert "| gate | excess over the floor, every run (nats) | 0.0050–0.0500 | 0.0050 |" in text
    # 0.85, 0.86, 0.87: mean 0.86, half-width t(0.975, 2) x 0.01 / sqrt(3) = 0.0248
    assert "| (i) collapse | from the peak | 3/3, R_peak 0.860 [0.835, 0.885] | 0/3," in text
    # 0.98 - 0.86 = 0.12; Welch df 4, half-width t(0.975, 4) x 0.01 x sqrt(2/3) = 0.0227;
    # g = 0.12 / 0.01 x (1 - 3 / (4 x 6 - 9)) = 9.60
    assert "| transformer − MLP | R_peak at ξ = 1 | +0.120 [+0.097, +0.143] | 9.60 | " \
           "descriptive |" in text
    assert "| (ii) selectivity, MLP | R_peak, ξ = 7 − ξ = 1 |" in text
    assert text.count("| no verdict |") == 2
    assert ("Fewer gated seeds than the 10 a verdict needs in MLP ξ = 1 (3), MLP ξ = 7 (3), "
            "transformer ξ = 1 (3), transformer ξ = 7 (3)") in text
    with pytest.raises(ValueError, match="both architectures"):
        architectures_markdown(mlp)
    other_size = as_transformer(fake_result(7.0, 5, 0.99))
    other_size.config = other_size.config.replace(width=8)
    with pytest.raises(ValueError, match="differ in more than arch, heads, seed"):
        architectures_markdown(mlp + tr + [other_size])


def test_tasks_side_by_side():
    """The README's chain-vs-hidden-Markov table: the task's relevant context beside its
    cells, claim (ii) of each longer ξ against the shortest, figures by hand."""
    from test_findings_criteria import fake_result

    import rgflow as rg
    from rgflow.report import tasks_markdown

    def hmm(r):
        r.config = r.config.replace(task="hmm", noise=0.3)
        return r

    runs = [fake_result(1.0, s, 0.85 + 0.01 * s) for s in range(3)]
    runs += [fake_result(7.0, s, 0.99) for s in range(3)]
    runs += [hmm(fake_result(1.0, s, 0.97 + 0.01 * s)) for s in range(3)]
    runs += [hmm(fake_result(7.0, s, 0.9)) for s in range(2)]
    runs.append(hmm(fake_result(7.0, 2, 0.5, excess=0.05)))      # fails the gate
    for r, share in zip(runs[6:9], (0.90, 0.92, 0.94)):             # hmm, xi = 1
        r.relevance = {"relevant_share": [0.0, 0.5, share]}
    runs[-1].relevance = {"relevant_share": [0.0, 0.5, 0.1]}         # not gated: not counted
    runs[-2].relevance = {"relevant_share": [0.0, 0.5, 0.8]}
    planned = [r.config for r in runs] + [runs[0].config.replace(seed=9)]
    planned.append(runs[0].config.replace(xi=15.0))                 # nothing stored yet
    text = "\n".join(tasks_markdown(runs, planned))
    context = rg.relevant_context(rg.HiddenMarkovTask.noisy(8, 7.0, 0.3))
    assert context.length == 3  # the README's Quick start table: noise 0.3, ξ = 7
    assert text.splitlines()[1] == "|" + " --- |" * 12
    rows = {tuple(line.split(" | ")[:2]): line for line in text.splitlines()[2:]}
    # 0.90, 0.92, 0.94: half-width t(0.975, 2) x 0.02 / sqrt(3) = 0.0497
    assert rows["| hmm, noise 0.3", "1"].endswith("| 0.920 [0.870, 0.970] |")
    assert rows["| hmm, noise 0.3", "7"].endswith("| 0.800 |")   # one gated run has it
    assert rows["| chain", "1"].endswith("| — |")
    assert text.splitlines()[2].startswith(
        "| chain | 1 | 1 | undefined | 3 of 4 | 3 | 0.0050 | 3/3, R 0.860 [0.835, 0.885] | "
        "3/3, R_peak 0.860 [0.835, 0.885] |")
    assert ("| hmm, noise 0.3 | 7 | 3 | %.2f | 3 of 3 | 2 | 0.0050–0.0500 |"
            % context.decay_length) in text
    # chain: 0.99 - 0.86 = +0.13, Welch df 2 (one side without spread), half-width
    # t(0.975, 2) x 0.01 / sqrt(3) = 0.0248
    assert "| chain | ξ = 7 − ξ = 1 | 3 at ξ = 7, 3 at ξ = 1 | +0.130 [+0.105, +0.155] |" \
        in text
    assert "| hmm, noise 0.3 | ξ = 7 − ξ = 1 | 2 at ξ = 7, 3 at ξ = 1 | -0.080 [" in text
    assert "| chain | 15 | 1 | undefined | 0 of 1 | 0 | — | — | — | — | — | — |" in text
    assert "| chain | ξ = 15 − ξ = 1 | 0 at ξ = 15, 3 at ξ = 1 | — | — | no verdict |" in text
    assert text.count("| no verdict |") == 3
    # the trend over xi: every gated run's R_peak against ln xi, and the cells' means
    # (scipy's regression here); a task with one xi has no trend
    from scipy import stats

    def fit(x, y):
        f = stats.linregress(np.log(x), y)
        half = stats.t.ppf(0.975, len(x) - 2) * f.stderr
        return "%+.3f [%+.3f, %+.3f]" % (f.slope, f.slope - half, f.slope + half)

    for task, pts in (("chain", [(1.0, 0.85), (1.0, 0.86), (1.0, 0.87)] + [(7.0, 0.99)] * 3),
                      ("hmm, noise 0.3", [(1.0, 0.97), (1.0, 0.98), (1.0, 0.99),
                                          (7.0, 0.9), (7.0, 0.9)])):
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        assert "| %s | R_peak against ln ξ, ξ = 1, 7 | %d | %s | — |" % (
            task, len(pts), fit(x, y)) in text   # two cell means: no interval
    three = tasks_markdown(runs + [fake_result(15.0, s, 0.95 + 0.01 * s) for s in range(2)])
    means = [0.86, 0.99, 0.955]
    assert ("| chain | R_peak against ln ξ, ξ = 1, 7, 15 | 8 | %s | %s |" % (
        fit([1.0] * 3 + [7.0] * 3 + [15.0] * 2, [0.85, 0.86, 0.87] + [0.99] * 3 + [0.95, 0.96]),
        fit([1.0, 7.0, 15.0], means))) in three
    one = tasks_markdown([hmm(fake_result(7.0, s, 0.9)) for s in range(3)])
    assert "| hmm, noise 0.3 | R_peak against ln ξ, ξ = 7 | 3 | — | — |" in one
    # runs of one task and xi that differ in more than their seed are not one cell
    with pytest.raises(ValueError, match="differ in more than seed"):
        tasks_markdown(runs + [fake_result(1.0, 5, 0.9)], [runs[0].config.replace(depth=4)])
