"""The claims' criteria on synthetic profiles: monotone, bumpy, concentrated, spread."""
import numpy as np
import pytest

from rgflow import findings as F


def test_monotone_collapse_cases():
    emb = 9.0  # layer 0 is reported, never judged
    assert F.monotone_collapse([emb, 14, 13.5, 13, 12.5, 12]).status == "holds"
    # a rise well above tolerance breaks monotonicity
    v = F.monotone_collapse([emb, 13, 13.5, 12.8, 12, 11])
    assert v.status == "fails" and v.figures["max_rise"] == pytest.approx(0.5)
    # a rise inside the 1% tolerance is fine
    assert F.monotone_collapse([emb, 14, 14.1, 13, 12.5, 12, 11.5, 11]).status == "holds"
    # monotone but too shallow: ratio 0.97 > 0.95
    v = F.monotone_collapse([emb, 14, 13.9, 13.8, 13.7, 13.58])
    assert v.status == "fails" and v.figures["ratio"] == pytest.approx(0.97)
    # flat profile: Spearman 0
    assert F.monotone_collapse([emb, 14, 14, 14, 14]).figures["spearman"] == 0.0
    # embedding excluded: a low layer 0 does not count as a rise into layer 1
    assert F.monotone_collapse([1.0, 14, 13, 12]).status == "holds"


def test_undertrained_gates_every_criterion():
    assert F.monotone_collapse([5, 14, 12, 10], learned=0.79).status == "undertrained"
    assert F.monotone_collapse([5, 14, 12, 10], learned=0.80).status == "holds"
    assert F.plateau([0.5, 0.0, 0.0], learned=0.1).status == "undertrained"
    v = F.selectivity([[5, 14, 12]], [[5, 13, 13]], short_learned=[0.5], long_learned=[0.9])
    assert v.status == "undertrained" and v.learned == [0.5, 0.9]


def test_learned_share():
    assert F.learned_share(2.08, 1.58, 2.08) == 0.0
    assert F.learned_share(1.58, 1.58, 2.08) == 1.0
    assert F.learned_share(1.663, 1.58, 2.08) == pytest.approx(0.834)
    with pytest.raises(ValueError):
        F.learned_share(1.0, 2.0, 2.0)


def test_selectivity_cases():
    short = [[5, 14, 12.0], [5, 14, 12.6], [5, 14, 12.2]]    # R = .857, .9, .871
    long_ = [[5, 13, 13.0], [5, 13, 12.9], [5, 13, 13.3]]    # R = 1, .992, 1.023
    v = F.selectivity(short, long_)
    assert v.status == "holds"
    assert v.figures["short_range"] == pytest.approx([12 / 14, 0.9])
    # one long-xi seed drops 3%: not >= 1 - delta/3
    v = F.selectivity(short, long_[:2] + [[5, 13, 12.6]])
    assert v.status == "fails"
    # one short-xi seed does not collapse
    assert F.selectivity(short[:2] + [[5, 14, 13.5]], long_).status == "fails"
    # the pilot's default picture: both ratios ~0.88-0.9 -> fails
    assert F.selectivity([[5, 13.6, 11.8]], [[5, 12.7, 11.3]]).status == "fails"
    v = F.selectivity(short, long_, short_pooled=short, long_pooled=long_)
    assert v.figures["pooled_short_ratios"] == v.figures["short_ratios"]


def test_plateau_cases():
    v = F.plateau([0.147, 0.359, 0.001, 0.0, 0.0, 0.0])  # the pilot's no-LN xi=1 picture
    assert v.status == "holds"
    assert sorted(v.figures["top2_transitions"]) == [0, 1]
    assert v.figures["top2_share"] == pytest.approx(0.506 / 0.507, rel=1e-9)
    spread = F.plateau(np.full(12, 0.05))
    assert spread.status == "fails" and spread.figures["top2_share"] == pytest.approx(2 / 12)
    # 60% in two, but a third transition at 20% of the largest
    v = F.plateau([0.4, 0.3, 0.08, 0.01, 0.01])
    assert v.figures["top2_share"] > 0.6 and v.status == "fails"
    assert F.plateau([0.0, 0.0, 0.0]).status == "fails"  # no drift at all is not a plateau
    # one or two transitions: the top two are the whole drift, so nothing is judged
    for few in ([0.3], [0.1, 0.1], [0.5, 0.0]):
        assert F.plateau(few).status == "not judged"
    assert F._all_hold(["not judged", "not judged"]) == "not judged"
    assert F._all_hold(["holds", "not judged"]) == "holds"
    assert F._all_hold(["fails", "not judged"]) == "fails"
    assert F._count(["holds", "fails", "not judged"]) == {"holds": 1, "of": 2}


@pytest.mark.parametrize("bad", [[1.0, 2.0], [[1, 2, 3]], [1, np.nan, 2], []])
def test_profiles_are_validated(bad):
    with pytest.raises(ValueError):
        F.monotone_collapse(bad)


def test_gate_interval_and_compare_against_scipy():
    from scipy import stats
    from rgflow.findings import compare, gate, interval
    assert gate(1.60, 1.58, 1.61) == {"excess": 0.02, "adjacent_margin": 0.01, "passed": True}
    assert not gate(1.6001, 1.58, 1.61)["passed"]            # above the floor by > 0.02
    assert not gate(1.59, 1.58, 1.585)["passed"]             # worse than the adjacent rule
    assert gate(1.59, 1.58, 1.585, excess_max=0.5)["adjacent_margin"] == -0.005
    assert gate(1.59, 1.58, 1.585, require_adjacent=False)["passed"]
    assert not gate(1.61, 1.58, 1.7, require_adjacent=False)["passed"]
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.0, 1.0, 10), rng.normal(0.4, 2.0, 13)
    r = interval(a)
    lo, hi = stats.t.interval(0.95, 9, loc=a.mean(), scale=stats.sem(a))
    assert (r["lo"], r["hi"]) == pytest.approx((lo, hi), rel=1e-12)
    c = compare(a, b)
    t = stats.ttest_ind(b, a, equal_var=False)
    ci = t.confidence_interval(0.95)
    assert (c["lo"], c["hi"], c["df"]) == pytest.approx((ci.low, ci.high, t.df), rel=1e-10)
    sp = np.sqrt((9 * a.var(ddof=1) + 12 * b.var(ddof=1)) / 21)
    assert c["hedges_g"] == pytest.approx((b.mean() - a.mean()) / sp * (1 - 3 / (4 * 23 - 9)))
    assert interval([2.5])["lo"] == 2.5 and np.isnan(interval([2.5])["sd"])
    for bad in ([], [np.nan, 1.0]):
        with pytest.raises(ValueError):
            interval(bad)
    with pytest.raises(ValueError):
        compare([1.0], [1.0, 2.0])


def fake_result(xi, seed, ratio, excess=0.005, margin=0.01, init_ratio=1.0, drift=None):
    """A stored run whose masked erank profile falls linearly to ``ratio`` x rank[1]."""
    from rgflow.experiments import Config, Result
    prof = [3.0] + list(np.linspace(10.0, 10.0 * ratio, 5))
    init = [3.0] + list(np.linspace(10.0, 10.0 * init_ratio, 5))
    rank = {"erank": {"masked": prof}}
    floor = 1.5
    return Result(config=Config(xi=xi, seed=seed, depth=5), history={}, masked_ce=floor + excess,
                  bayes_floor=floor, unigram_entropy=2.0, learned=0.9, profiles={},
                  drift=drift or [0.5, 0.01, 0.01, 0.01, 0.3], cka_matrix=[], relevance={},
                  verdicts={}, adjacent_ce=floor + excess + margin,
                  measures={"rank": rank}, init={"rank": {"erank": {"masked": init}}})


def test_verdicts_over_gated_seeds():
    short = [fake_result(1.0, s, 0.85 + 0.002 * s) for s in range(10)]
    long_ = [fake_result(7.0, s, 0.99 + 0.001 * s) for s in range(10)]
    short.append(fake_result(1.0, 10, 1.2, excess=0.5))        # fails the gate: not counted
    long_.append(fake_result(7.0, 10, 0.5, margin=-0.001))      # worse than the adjacent rule
    v = F.verdicts(short + long_)
    assert v["short"]["n_runs"] == 11 and v["short"]["n_gated"] == 10 and v["short"]["enough"]
    assert v["short"]["collapse"] == {"holds": 10, "of": 10}
    assert v["long"]["collapse"] == {"holds": 0, "of": 10}
    assert v["short"]["R"]["mean"] == pytest.approx(0.859)
    assert v["short"]["R_init"]["mean"] == pytest.approx(1.0)
    assert v["short"]["plateau"] == {"holds": 10, "of": 10}
    sel = v["selectivity"]
    assert sel["holds"] and sel["delta_R"]["diff"] == pytest.approx(0.9945 - 0.859)
    assert sel["short_collapses"] == {"holds": 10, "of": 10}
    # nine gated seeds are not enough for a verdict
    v9 = F.verdicts(short[1:] + long_)
    assert not v9["short"]["enough"] and not v9["selectivity"]["holds"]
    # a stricter gate removes every run; thresholds move the verdicts
    assert F.verdicts(short + long_, excess_max=0.001)["short"]["n_gated"] == 0
    assert F.verdicts(short + long_, delta=0.2)["short"]["collapse"]["holds"] == 0
    assert F.verdicts(short + long_, top2_share=0.99)["short"]["plateau"]["holds"] == 0


def test_spearman_is_reported_not_judged_unless_asked():
    flat_tail = fake_result(1.0, 0, 0.9)
    flat_tail.measures["rank"]["erank"]["masked"] = [3.0, 10.0, 9.0, 9.0, 9.0, 9.0]
    assert F.run_figures(flat_tail)["collapse"] == "holds"
    assert F.run_figures(flat_tail, spearman_max=-0.9)["collapse"] == "fails"


def test_sensitivity_rows_move_with_thresholds():
    short = [fake_result(1.0, s, 0.9 + 0.004 * s, excess=0.003 * s) for s in range(10)]
    long_ = [fake_result(7.0, s, 0.99, excess=0.004) for s in range(10)]
    rows = {(name, value): out for name, value, out in F.sensitivity(short + long_)}
    assert set(F.SENSITIVITY) == {name for name, _ in rows}
    # the default gate (0.02 nats) keeps seeds 0..6, R = 0.900 .. 0.924: every one collapses
    # by delta = 0.05, only seed 0 (R = 0.9) by delta = 0.1
    assert rows[("delta", F.DELTA)]["collapse ξ=1"] == "7/7"
    assert rows[("delta", 0.1)]["collapse ξ=1"] == "1/7"
    # excess 0.003 s: a 0.005 gate keeps seeds 0, 1; 0.01 keeps 0..3
    assert rows[("excess_max", 0.005)]["collapse ξ=1"] == "2/2"
    assert rows[("excess_max", 0.01)]["collapse ξ=1"] == "4/4"
    assert rows[("excess_max", F.GATE_EXCESS)]["selective (R)"].startswith("no verdict")  # 7 < 10
    assert rows[("excess_max", 0.1)]["selective (R)"].startswith("holds (Δ +0.0")
    # the adjacent-rule condition: every fake run beats the rule, so dropping it changes nothing
    assert rows[("require_adjacent", False)] == rows[("require_adjacent", True)]
    # a run close to the floor but worse than the rule counts only without the condition
    worse = fake_result(1.0, 10, 0.85, excess=0.001, margin=-0.002)
    rows = {(name, value): out for name, value, out in F.sensitivity(short + long_ + [worse])}
    assert rows[("require_adjacent", True)]["collapse ξ=1"] == "7/7"
    assert rows[("require_adjacent", False)]["collapse ξ=1"] == "8/8"
    # a linear decline from layer 1 peaks at layer 1: both readings of claim (i) agree
    assert rows[("delta", 0.1)]["after peak ξ=1"] == "1/7"


def test_collapse_after_peak_cases():
    # an idle block 1 then a decline from block 2 (the gated small networks' shape)
    v = F.collapse_after_peak([0.0, 2.4, 11.7, 10.4, 10.4, 10.3])
    assert v.status == "holds" and v.figures["peak_layer"] == 2
    assert v.figures["ratio"] == pytest.approx(10.3 / 11.7)
    assert F.monotone_collapse([0.0, 2.4, 11.7, 10.4, 10.4, 10.3]).status == "fails"
    # a rise after the peak beyond tolerance breaks it; one within tolerance does not
    assert F.collapse_after_peak([0.0, 12.0, 10.0, 10.5, 10.0]).status == "fails"
    assert F.collapse_after_peak([0.0, 12.0, 10.0, 10.1, 10.0]).status == "holds"
    # too shallow a fall, and a maximum at the last layer (nothing after it)
    v = F.collapse_after_peak([0.0, 12.0, 11.9, 11.7])
    assert v.status == "fails" and v.figures["ratio"] == pytest.approx(11.7 / 12.0)
    v = F.collapse_after_peak([0.0, 10.0, 11.0, 12.0])
    assert v.status == "fails" and v.figures["peak_layer"] == 3 and v.figures["ratio"] == 1.0
    # ties: the first maximal layer
    assert F.collapse_after_peak([0.0, 12.0, 12.0, 10.0]).figures["peak_layer"] == 1
    assert F.collapse_after_peak([0.0, 12.0, 12.0, 10.0], delta=0.2).status == "fails"


def test_gate_of_prefers_the_gate_batch():
    r = fake_result(1.0, 0, 0.9, excess=0.005, margin=0.01)
    g = F.gate_of(r)
    assert g["passed"] and g["sequences"] == r.config.eval_size and g["margin_se"] is None
    # the large batch says the network is worse than the adjacent rule: that decides
    r.gate = {"size": 65536, "masked_ce": 1.51, "bayes_floor": 1.5, "adjacent_ce": 1.509,
              "excess_se": 1e-4, "margin_se": 2e-4}
    g = F.gate_of(r)
    assert not g["passed"] and g["adjacent_margin"] == pytest.approx(-0.001)
    assert g["sequences"] == 65536 and g["margin_se"] == 2e-4
    assert F.run_figures(r)["gate"] == g


def test_run_figures_reads_the_peak_the_init_and_the_masked_drift():
    r = fake_result(7.0, 0, 0.9, init_ratio=1.02)
    r.measures["rank"]["erank"]["masked"] = [0.0, 2.0, 12.0, 11.0, 10.8, 10.8]
    r.measures["drift_masked"] = [0.1, 0.1, 0.1, 0.1, 0.1]
    f = F.run_figures(r)
    assert f["collapse"] == "fails" and f["R"] == pytest.approx(5.4)
    assert f["collapse_peak"] == "holds" and f["R_peak"] == pytest.approx(0.9)
    assert f["peak_layer"] == 2
    assert f["R_init"] == pytest.approx(1.02) and f["R_peak_init"] == 1.0
    assert f["plateau"] == "holds" and f["plateau_masked"] == "fails"
    assert f["top2_share_masked"] == pytest.approx(0.4)
    cell = F.cell_verdicts([r])
    assert cell["collapse_peak"] == {"holds": 1, "of": 1}
    assert cell["plateau_masked"] == {"holds": 0, "of": 1}
    assert cell["R_peak"]["mean"] == pytest.approx(0.9)


def fake_flow(excesses, ratios, floor=1.5):
    """Flow points whose masked erank falls from 10 at layer 1 to 10 x ratio at layer K."""
    return [{"step": 10 * (i + 1), "loss": floor + e,
             "erank_masked": [0.0] + list(np.linspace(10.0, 10.0 * r, 4)),
             "drift": [0.5, 0.01, 0.01, 0.3], "drift_masked": [0.2, 0.2, 0.2, 0.2]}
            for i, (e, r) in enumerate(zip(excesses, ratios))]


def test_excess_curve_reads_each_run_where_it_first_reaches_a_level():
    runs = []
    for seed, shift in enumerate((0.0, 0.01)):
        r = fake_result(1.0, seed, 0.9)
        r.history = {"flow": fake_flow([0.3, 0.08, 0.04 + shift, 0.012],
                                       [1.0, 0.97, 0.92, 0.9])}
        runs.append(r)
    f = F.flow_figures(runs[0])
    assert [p["step"] for p in f] == [10, 20, 30, 40]
    assert f[1]["excess"] == pytest.approx(0.08) and f[1]["R_peak"] == pytest.approx(0.97)
    assert f[-1]["collapse_peak"] == "holds" and f[0]["collapse_peak"] == "fails"
    assert f[0]["plateau"] == "holds" and f[0]["plateau_masked"] == "fails"
    rows = {row["level"]: row for row in F.excess_curve(runs, levels=(0.1, 0.05, 0.03, 0.01))}
    assert rows[0.1]["runs"] == 2 and rows[0.1]["R_peak"]["mean"] == pytest.approx(0.97)
    assert rows[0.1]["shift_R_peak"] == pytest.approx(0.07)
    # seed 1 reaches 0.05 only at its last point (excess 0.012), seed 0 at its third
    assert rows[0.05]["step"] == 35 and rows[0.05]["collapse_peak"] == {"holds": 2, "of": 2}
    assert rows[0.1]["collapse_peak"] == {"holds": 0, "of": 2}  # R_peak 0.97 > 0.95
    assert rows[0.03]["runs"] == 2 and rows[0.01]["runs"] == 0 and rows[0.01]["R"] is None
    assert rows["end"]["runs"] == 2 and rows["end"]["shift_R_peak"] == 0.0
    # runs stored without a flow, and runs that fail the gate, are left out
    assert F.excess_curve([fake_result(1.0, 5, 0.9)]) == []
    bad = fake_result(1.0, 6, 0.9, margin=-0.01)
    bad.history = runs[0].history
    assert F.excess_curve(runs + [bad])[0]["runs"] == 2
    # ... unless every run is asked for (where no run reaches the gate)
    assert F.excess_curve(runs + [bad], gated=False)[0]["runs"] == 3
    assert F.excess_curve([bad], gated=False)[-1]["runs"] == 1


def test_block_activity_medians_over_gated_runs():
    runs = []
    for seed in range(3):
        r = fake_result(1.0, seed, 0.9)
        r.config = r.config.replace(steps=20000)
        r.measures["update"] = [0.01 * (seed + 1), 1.0, 0.0, 0.0, 0.0]
        r.grad_norms = {"blocks": [0.1, 0.2, 0.3, 0.4, 0.5 + seed]}
        r.inactive_units = [0.5, 0.0, 0.9, 0.9, 0.9]
        r.history = {"flow": [{"step": s, "update": [s / 1000.0] * 5} for s in (90, 1100, 9000)]}
        runs.append(r)
    runs.append(fake_result(1.0, 9, 0.9, margin=-0.01))  # not gated: left out
    rows = F.block_activity(runs)
    assert len(rows) == 5 and all(row["runs"] == 3 for row in rows)
    assert rows[0]["update"] == pytest.approx(0.02) and rows[4]["grad_norm"] == 1.5
    assert rows[2]["inactive_units"] == 0.9
    assert rows[0]["update_at"] == {90: 0.09, 1100: 1.1, 9000: 9.0}  # nearest in log step
    # checkpoints not every run has are skipped, not looked up
    runs[1].history["flow"] = runs[1].history["flow"][:2]
    assert F.block_activity(runs)[0]["update_at"] == {90: 0.09, 1100: 1.1}
    # a checkpoint at the last step is the end's figure, not a column of its own
    for r in runs:
        r.config = r.config.replace(steps=1100)
    assert F.block_activity(runs)[0]["update_at"] == {90: 0.09}
    with pytest.raises(ValueError, match="depths"):
        F.block_activity([runs[0], _deeper(runs[2])])


def _deeper(r):
    import copy
    out = copy.deepcopy(r)
    out.config = out.config.replace(depth=6)
    return out


def test_a_zero_rank_1_is_no_ratio_and_no_crash():
    r = fake_result(1.0, 0, 0.9)
    r.measures["rank"]["erank"]["masked"] = [0.0, 0.0, 3.0, 2.0, 2.0, 2.0]
    f = F.run_figures(r)
    assert np.isnan(f["R"]) and f["R_peak"] == pytest.approx(2 / 3)
    runs = [fake_result(1.0, s, 0.85) for s in range(10)] + [r]
    v = F.verdicts(runs + [fake_result(7.0, s, 0.99) for s in range(10)])
    assert v["short"]["R"]["n"] == 10 and v["short"]["collapse"]["of"] == 11


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on [2, 2, 2]
@pytest.mark.parametrize("scale", [1e-300, 1e-170, 1e200, 1e300])
def test_interval_and_compare_do_not_depend_on_the_units(scale):
    """Tiny values underflowed to a zero SD (a zero-width interval, an undefined g) and huge
    ones overflowed (NaN intervals, g = 0): the figures must be those of the same values in
    units near 1 (scipy.stats there), scaled back, to 1e-12 relative."""
    from scipy import stats
    a, b = np.array([1.0, 1.1, 1.3]), np.array([1.2, 1.4])   # unequal n, n = 2
    flat = np.array([2.0, 2.0, 2.0])                          # zero variance on one side
    r = F.interval(a * scale)
    lo, hi = stats.t.interval(0.95, 2, loc=a.mean(), scale=stats.sem(a))
    assert (r["mean"], r["sd"], r["lo"], r["hi"]) == pytest.approx(
        (a.mean() * scale, a.std(ddof=1) * scale, lo * scale, hi * scale), rel=1e-12)
    for x, y in ((a, b), (flat, b), (b, flat)):
        c = F.compare(x * scale, y * scale)
        t = stats.ttest_ind(y, x, equal_var=False)
        ci = t.confidence_interval(0.95)
        sp = np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1))
                     / (x.size + y.size - 2))
        g = (y.mean() - x.mean()) / sp * (1 - 3 / (4 * (x.size + y.size) - 9))
        assert (c["diff"], c["lo"], c["hi"]) == pytest.approx(
            ((y.mean() - x.mean()) * scale, ci.low * scale, ci.high * scale), rel=1e-12)
        assert (c["df"], c["hedges_g"]) == pytest.approx((t.df, g), rel=1e-12)


@pytest.mark.parametrize("xscale, yscale",
                         [(1.0, 1.0), (1e-300, 1e-20), (1e200, 1e-100), (1e-170, 1e130)])
def test_trend_matches_scipy_linregress_in_any_units(xscale, yscale):
    """The slope and its t-interval against scipy.stats.linregress (n - 2 degrees of freedom)
    on the same points in units near 1, scaled back, to 1e-12 relative."""
    from scipy import stats
    x = np.log([1.0, 1.0, 2.0, 4.0, 4.0, 7.0, 15.0])
    y = np.array([0.99, 0.97, 0.96, 0.93, 0.95, 0.90, 0.86])
    ref = stats.linregress(x, y)
    half = stats.t.ppf(0.975, x.size - 2) * ref.stderr
    r = F.trend(x * xscale, y * yscale)
    k = yscale / xscale
    assert r["n"] == 7
    assert (r["slope"], r["lo"], r["hi"]) == pytest.approx(
        (ref.slope * k, (ref.slope - half) * k, (ref.slope + half) * k), rel=1e-12)


def test_trend_edge_cases():
    # points on a line: the slope exactly, a zero-width interval
    r = F.trend([0.0, 1.0, 2.0, 3.0], [1.0, 0.75, 0.5, 0.25])
    assert (r["slope"], r["lo"], r["hi"]) == (-0.25, -0.25, -0.25)
    assert F.trend([1.0, 1.0, 2.0], [0.5, 0.5, 0.5])["slope"] == 0.0
    for x, y in (([0.0, 1.0], [1.0, 2.0]),              # too few points for an interval
                 ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]),    # no spread in x
                 ([0.0, 1.0, np.nan], [1.0, 2.0, 3.0]),
                 ([0.0, 1.0, 2.0], [1.0, np.inf, 3.0]),
                 ([0.0, 1.0, 2.0], [1.0, 2.0]),
                 ([[0.0, 1.0, 2.0]], [[1.0, 2.0, 3.0]])):
        with pytest.raises(ValueError, match="trend needs"):
            F.trend(x, y)
    # a slope beyond float64's range is an error, not an infinity
    with pytest.raises(ValueError, match="beyond float64's range"):
        F.trend([0.0, 1e-300, 2e-300], [1e300, -1e300, 1e300])


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.1, float("nan"), True, "0.95"])
def test_a_confidence_outside_0_1_is_refused(confidence):
    for f, args in ((F.interval, ([1.0, 2.0, 3.0],)), (F.compare, ([1.0, 2.0], [2.0, 3.0])),
                    (F.trend, ([0.0, 1.0, 2.0], [1.0, 2.0, 4.0]))):
        with pytest.raises(ValueError, match="confidence must be"):
            f(*args, confidence=confidence)


def test_interval_and_compare_edge_cases():
    from scipy import stats
    # identical groups: no difference, g 0; both groups constant: a point interval, no g
    c = F.compare([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])
    t = stats.ttest_ind([1.0, 2.0, 4.0], [1.0, 2.0, 4.0], equal_var=False)
    assert c["diff"] == 0.0 and c["hedges_g"] == 0.0
    assert (c["lo"], c["hi"], c["df"]) == pytest.approx(tuple(t.confidence_interval()) + (4.0,))
    c = F.compare([1.0, 1.0], [2.0, 2.0, 2.0])
    assert (c["diff"], c["lo"], c["hi"]) == (1.0, 1.0, 1.0) and np.isnan(c["hedges_g"])
    r = F.interval([5.0, 5.0, 5.0])
    assert (r["lo"], r["hi"], r["sd"]) == (5.0, 5.0, 0.0)
    for bad in ([1.0, np.inf], [np.nan, np.nan]):
        with pytest.raises(ValueError):
            F.compare(bad, [1.0, 2.0])
        with pytest.raises(ValueError):
            F.compare([1.0, 2.0], bad)
    # Spearman's rho with ties against scipy
    for y in ([3.0, 3.0, 2.0, 2.0, 1.0], [1.0, 2.0, 2.0, 1.0], [4.0, 4.0, 4.0, 5.0]):
        assert F._spearman(np.arange(len(y)), y) == pytest.approx(
            stats.spearmanr(np.arange(len(y)), y).statistic, abs=1e-14)


def test_selectivity_needs_enough_gated_seeds_on_both_sides():
    """With no gated run at xi = 1 (the paper-size store) claim (ii) has no verdict, and
    says which xi lacks seeds; it neither fails nor holds."""
    long_ = [fake_result(7.0, s, 0.99 + 0.001 * s) for s in range(10)]
    short = [fake_result(1.0, s, 0.85, margin=-0.001) for s in range(10)]   # none gated
    v = F.verdicts(short + long_)
    for key in ("selectivity", "selectivity_peak"):
        sel = v[key]
        assert not sel["holds"] and sel["status"] == "no verdict"
        assert sel["delta_R"] is None and sel["short_collapses"] == {"holds": 0, "of": 0}
        assert sel["missing"] == [{"xi": 1.0, "gated": 0}]
    # 9 gated seeds at xi = 1, every one collapsing: still no verdict, figures given
    short = [fake_result(1.0, s, 0.85 + 0.002 * s) for s in range(9)]
    sel = F.verdicts(short + long_)["selectivity"]
    assert sel["status"] == "no verdict" and sel["missing"] == [{"xi": 1.0, "gated": 9}]
    assert sel["delta_R"]["diff"] == pytest.approx(0.9945 - 0.858)
    # enough on both sides: a verdict, holds or fails
    sel = F.verdicts(short + [fake_result(1.0, 9, 0.96)] + long_)["selectivity"]
    assert sel["status"] == "fails" and sel["missing"] == []
    sel = F.verdicts(short + [fake_result(1.0, 9, 0.9)] + long_)["selectivity"]
    assert sel["status"] == "holds" and sel["holds"]
    # the sensitivity table says so too
    rows = {(n, val): out for n, val, out in F.sensitivity(short + long_)}
    assert rows[("delta", F.DELTA)]["selective (R)"].startswith("no verdict (Δ +0.13")


def test_v1_selectivity_does_not_depend_on_the_order_of_the_runs():
    """A run with a zero rank[1] has no ratio (NaN): it can neither collapse nor stay flat, so
    claim (ii) fails wherever it is in the list (max/min over a list with a NaN depend on
    where the NaN is: the verdict held when it came second)."""
    long_ = [[5, 13, 13.0], [5, 13, 13.1]]
    short = [[5, 14, 12.0], [5, 0.0, 3.0]]
    for s, l in ((short, long_), (short[::-1], long_), ([short[0]], long_ + [[5, 0.0, 3.0]]),
                 ([short[0]], [[5, 0.0, 3.0]] + long_)):
        v = F.selectivity(s, l)
        assert v.status == "fails"
        assert v.figures["short_range"] == pytest.approx([12 / 14] * 2)
    assert F.selectivity([short[0]], long_).status == "holds"
