"""The paper's three claims as criteria on measured profiles, each returning a :class:`Verdict`.

Every threshold is a named module constant, documented here and echoed in each verdict, so a
report says exactly what was tested. None is tuned to make a claim pass.

(i)  Monotone collapse (per run, position-level effective rank over layers 1..K; layer 0 is the
     embedding, whose per-position rank is at most V + 1 by construction, so it is reported but
     kept out of the criterion):
       - non-increasing within a tolerance: every step rank[l+1] - rank[l] <= MONOTONE_TOL * rank[1]
       - rank[K] / rank[1] <= 1 - DELTA
       - Spearman rho(depth, rank) <= SPEARMAN_MAX: judged by the v1 pipeline; the verdicts
         over seeds report it and judge it only when asked (it ranks the noise of flat tails)
     and read from the layer where the rank peaks (:func:`collapse_after_peak`).
(ii) Selectivity (across runs at short and long correlation length), on R = rank[K]/rank[1] and
     on R_peak: every short-xi run collapses (ratio <= 1 - DELTA), no long-xi run does
     (ratio >= 1 - DELTA / 3), and the Welch interval of the long-minus-short difference lies
     above 0 (v1: the two ranges disjoint).
(iii) Fixed-point plateau (per run, drift d_l = 1 - CKA(z_l, z_{l+1}), l = 0..K-1): the two
     largest transitions carry >= PLATEAU_TOP2_SHARE of the total drift and every other
     transition's drift is <= PLATEAU_REST_MAX of the largest. With fewer than 3 transitions
     (depth < 3) the two largest are all of the drift and the criterion cannot fail: such a
     run is "not judged" and counts neither way.

The verdicts over seeds (:func:`verdicts`, what ``rgflow reproduce`` states) count only runs
that pass the training gate (:func:`gate_of`): masked CE within GATE_EXCESS nats of the exact
Bayes floor and below the adjacent-token rule's, on the run's 65,536-sequence gate batch. They
read claim (i) also from the rank's peak (:func:`collapse_after_peak`), state "holds in k of n"
with t-intervals and Welch differences, and need MIN_SEEDS gated seeds per ξ;
:func:`sensitivity` moves every threshold and :func:`excess_curve` reads the verdicts along
training.

The per-run Verdict functions and :func:`summarize` are the first findings' pipeline
(docs/findings-v1.md), gated on the share of the gap from the unigram entropy H(pi) to the
Bayes floor that the final masked CE closed, ``(H(pi) - CE) / (H(pi) - floor)``: a run below
LEARNED_MIN is "undertrained". That gate let through networks a two-token lookup beats; it is
kept to read the v1 records.
"""
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "Verdict", "learned_share", "monotone_collapse", "selectivity", "plateau", "collapse_ratio",
    "collapse_crossover", "collapse_after_peak", "gate", "gate_of", "interval", "compare", "trend",
    "run_figures", "cell_verdicts", "verdicts", "sensitivity", "flow_figures",
    "excess_curve", "block_activity", "summarize", "GATE_EXCESS",
    "SHORT_XI", "LONG_XI",
    "DELTA", "MONOTONE_TOL", "SPEARMAN_MAX", "PLATEAU_TOP2_SHARE", "PLATEAU_REST_MAX",
    "LEARNED_MIN",
]

DELTA = 0.05               # a collapse is a drop of at least 5% from block 1 to block K
MONOTONE_TOL = 0.01        # a rise of up to 1% of rank[1] between layers still counts as flat
SPEARMAN_MAX = -0.9        # depth and rank strongly anti-correlated
PLATEAU_TOP2_SHARE = 0.60  # two transitions carry at least 60% of the drift
PLATEAU_REST_MAX = 0.10    # every other transition at most 10% of the largest
LEARNED_MIN = 0.80         # runs must close 80% of the unigram-to-Bayes gap
GATE_EXCESS = 0.02         # nats above the Bayes floor a run may stay (see gate())
CONFIDENCE = 0.95          # intervals: t-based for a mean, Welch for a difference

HOLDS, FAILS, UNDERTRAINED = "holds", "fails", "undertrained"
NO_VERDICT = "no verdict"  # claim (ii) with fewer than MIN_SEEDS gated seeds at a xi
NOT_JUDGED = "not judged"  # claim (iii) on fewer than 3 transitions: its top two are all of it

SHORT_XI, LONG_XI = 1.0, 7.0  # the correlation lengths the claims compare


@dataclass
class Verdict:
    """The outcome of one criterion.

    Attributes
    ----------
    claim : short name of the claim ("monotone collapse", ...).
    status : "holds", "fails" or "undertrained".
    criterion : the criterion in words, thresholds included.
    figures : the numbers the decision used (JSON-serialisable).
    learned : share of the unigram-to-Bayes gap closed by each run that entered the verdict.
    """
    claim: str
    status: str
    criterion: str
    figures: dict = field(default_factory=dict)
    learned: list = field(default_factory=list)

    @property
    def holds(self):
        return self.status == HOLDS

    def to_dict(self):
        return asdict(self)


def learned_share(masked_ce, bayes_floor, unigram_entropy):
    """Share of the gap from the unigram entropy to the Bayes floor closed by a model.

    1.0 means the model reaches the floor, 0.0 that it does no better than predicting pi.

    >>> learned_share(1.6, bayes_floor=1.58, unigram_entropy=2.08)
    0.96
    """
    gap = unigram_entropy - bayes_floor
    if not gap > 0:
        raise ValueError("the unigram entropy must exceed the Bayes floor (no context to learn)")
    return round(float((unigram_entropy - masked_ce) / gap), 12)


def _spearman(x, y):
    """Spearman rank correlation with average ranks for ties (no SciPy needed)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))


def _gate(learned):
    return [float(s) for s in learned], any(s < LEARNED_MIN for s in learned)


def _profile(values, name, min_len):
    p = np.asarray(values, dtype=float)
    if p.ndim != 1 or p.shape[0] < min_len or not np.all(np.isfinite(p)):
        raise ValueError("%s must be a finite 1-D profile of length >= %d, got shape %s"
                         % (name, min_len, p.shape))
    return p


def monotone_collapse(rank, learned=1.0, *, delta=None, tol=None, spearman_max=None):
    """Claim (i) for one run: rank falls monotonically with depth after the embedding.

    Parameters
    ----------
    rank : (depth+1,) position-level effective rank, layer 0 = embedding (needs depth >= 2).
    learned : share of the unigram-to-Bayes gap the run closed (see :func:`learned_share`).
    delta, tol, spearman_max : thresholds (default DELTA, MONOTONE_TOL, SPEARMAN_MAX).

    >>> monotone_collapse([5.0, 14.0, 13.0, 12.5, 12.0]).status
    'holds'
    >>> monotone_collapse([5.0, 14.0, 14.5, 13.0, 12.0]).status
    'fails'
    """
    delta = DELTA if delta is None else delta
    tol = MONOTONE_TOL if tol is None else tol
    spearman_max = SPEARMAN_MAX if spearman_max is None else spearman_max
    r = _profile(rank, "rank", 3)
    body = r[1:]
    depth = np.arange(1, len(r))
    rises = np.diff(body)
    max_rise = float(rises.max())
    rho = _spearman(depth, body)
    ratio = float(body[-1] / body[0]) if body[0] > 0 else float("nan")
    ok = (max_rise <= tol * body[0]) and rho <= spearman_max and ratio <= 1 - delta
    learned_list, under = _gate([learned])
    return Verdict(
        claim="monotone collapse",
        status=UNDERTRAINED if under else (HOLDS if ok else FAILS),
        criterion=("over layers 1..K: every rise <= %g x rank[1], Spearman rho <= %g, "
                   "rank[K]/rank[1] <= %g" % (tol, spearman_max, 1 - delta)),
        figures={"embedding_rank": float(r[0]), "rank_1": float(body[0]),
                 "rank_K": float(body[-1]), "max_rise": max_rise,
                 "max_rise_allowed": float(tol * body[0]), "spearman": rho,
                 "ratio": ratio},
        learned=learned_list,
    )


def collapse_ratio(rank):
    """rank[K] / rank[1] of a (depth+1,) profile (layer 0, the embedding, excluded); NaN when
    rank[1] is 0 (no ratio to speak of)."""
    r = _profile(rank, "rank", 3)
    return float(r[-1] / r[1]) if r[1] > 0 else float("nan")


def collapse_after_peak(rank, *, delta=None, tol=None):
    """Claim (i) read from the peak: the rank falls from the layer where it is largest.

    Trained networks can leave block 1 nearly idle at masked positions (their rank there is
    that of a near-constant input) and build the representation in the next blocks, so
    ``rank[1]`` is no baseline for a decline. This criterion takes the first layer of maximal
    rank among 1..K, ``p``: it holds when every later rise is <= ``tol`` x rank[p] and
    ``R_peak = rank[K] / rank[p] <= 1 - delta``. ``R_peak <= 1`` by construction, so only the
    size of the fall carries information; the same figure of the untrained network on the same
    batch is its null. Figures: ``peak_layer``, ``rank_peak``, ``rank_K``, ``ratio``
    (R_peak), ``max_rise``.

    >>> v = collapse_after_peak([0.0, 2.4, 11.7, 10.4, 10.4, 10.3])
    >>> v.status, v.figures["peak_layer"], round(v.figures["ratio"], 3)
    ('holds', 2, 0.88)
    >>> collapse_after_peak([0.0, 15.2, 15.3, 15.4]).status  # rises to the last layer
    'fails'
    """
    delta = DELTA if delta is None else delta
    tol = MONOTONE_TOL if tol is None else tol
    r = _profile(rank, "rank", 3)
    body = r[1:]
    p = int(np.argmax(body))
    tail = body[p:]
    max_rise = float(np.diff(tail).max()) if tail.size > 1 else 0.0
    ratio = float(tail[-1] / tail[0]) if tail[0] > 0 else float("nan")
    ok = tail.size > 1 and max_rise <= tol * tail[0] and ratio <= 1 - delta
    return Verdict(
        claim="collapse after the peak",
        status=HOLDS if ok else FAILS,
        criterion=("from the layer p of maximal rank (1..K): every rise <= %g x rank[p], "
                   "rank[K]/rank[p] <= %g" % (tol, 1 - delta)),
        figures={"peak_layer": p + 1, "rank_peak": float(tail[0]), "rank_K": float(tail[-1]),
                 "ratio": ratio, "max_rise": max_rise},
        learned=[],
    )


def selectivity(short_ranks, long_ranks, short_learned=None, long_learned=None,
                short_pooled=None, long_pooled=None):
    """Claim (ii): collapse at short correlation length, none at long, in every seed.

    Parameters
    ----------
    short_ranks, long_ranks : sequences of (depth+1,) position-level rank profiles, one per
        seed, at short (xi ~ 1) and long (xi ~ 7) correlation length.
    short_learned, long_learned : learned shares per run (default: all 1.0).
    short_pooled, long_pooled : optional pooled-level profiles, reported beside (not judged).

    >>> v = selectivity([[5, 14, 12], [5, 14, 12.5]], [[5, 13, 13], [5, 13, 13.1]])
    >>> v.status, v.figures["short_ratios"]
    ('holds', [0.857142857143, 0.892857142857])
    """
    if len(short_ranks) == 0 or len(long_ranks) == 0:
        raise ValueError("selectivity needs at least one run at each correlation length")
    rs = [round(collapse_ratio(p), 12) for p in short_ranks]
    rl = [round(collapse_ratio(p), 12) for p in long_ranks]
    short_learned = [1.0] * len(rs) if short_learned is None else list(short_learned)
    long_learned = [1.0] * len(rl) if long_learned is None else list(long_learned)
    # a NaN ratio (zero rank[1]) neither collapses nor stays flat; min/max over a list holding
    # one depend on where it is, so the ranges are over the finite ratios
    fs, fl = [r for r in rs if np.isfinite(r)], [r for r in rl if np.isfinite(r)]
    ok = (len(fs) == len(rs) and len(fl) == len(rl)
          and max(rs) <= 1 - DELTA and min(rl) >= 1 - DELTA / 3 and max(rs) < min(rl))
    learned_list, under = _gate(short_learned + long_learned)

    def span(v):
        return [min(v), max(v)] if v else [float("nan")] * 2

    figures = {"short_ratios": rs, "long_ratios": rl,
               "short_range": span(fs), "long_range": span(fl)}
    if short_pooled is not None and long_pooled is not None:
        figures["pooled_short_ratios"] = [round(collapse_ratio(p), 12) for p in short_pooled]
        figures["pooled_long_ratios"] = [round(collapse_ratio(p), 12) for p in long_pooled]
    return Verdict(
        claim="selective collapse",
        status=UNDERTRAINED if under else (HOLDS if ok else FAILS),
        criterion=("R = rank[K]/rank[1] at the position level: every short-xi run R <= %g, "
                   "every long-xi run R >= %.3g (= 1 - %g/3), ranges disjoint"
                   % (1 - DELTA, 1 - DELTA / 3, DELTA)),
        figures=figures,
        learned=learned_list,
    )


def plateau(drift, learned=1.0, *, top2_share=None, rest_max=None):
    """Claim (iii) for one run: drift concentrated in one or two transitions.

    Parameters
    ----------
    drift : (depth,) drift per transition, 1 - CKA(z_l, z_{l+1}), l = 0..depth-1.
    top2_share, rest_max : thresholds (default PLATEAU_TOP2_SHARE, PLATEAU_REST_MAX).

    With fewer than 3 transitions the status is "not judged" (the criterion cannot fail).

    >>> plateau([0.3, 0.01, 0.2, 0.005, 0.0]).status
    'holds'
    >>> plateau([0.1, 0.1, 0.1, 0.1]).status
    'fails'
    >>> plateau([0.1, 0.1]).status
    'not judged'
    """
    top2_share = PLATEAU_TOP2_SHARE if top2_share is None else top2_share
    rest_max = PLATEAU_REST_MAX if rest_max is None else rest_max
    d = _profile(drift, "drift", 1)
    total = float(d.sum())
    order = np.argsort(d)[::-1]
    top2 = float(d[order[:2]].sum())
    share = top2 / total if total > 0 else 0.0
    largest = float(d[order[0]])
    rest = d[order[2:]]
    rest_max_found = float(rest.max()) if rest.size else 0.0
    ok = total > 0 and share >= top2_share and rest_max_found <= rest_max * largest
    learned_list, under = _gate([learned])
    judged = HOLDS if ok else FAILS
    return Verdict(
        claim="fixed-point plateau",
        status=UNDERTRAINED if under else (judged if d.size >= 3 else NOT_JUDGED),
        criterion=("top-2 transitions carry >= %g of the total drift and every other "
                   "transition <= %g x the largest (judged on >= 3 transitions)"
                   % (top2_share, rest_max)),
        figures={"top2_share": share, "top2_transitions": [int(i) for i in order[:2]],
                 "largest": largest, "rest_max": rest_max_found,
                 "rest_max_over_largest": rest_max_found / largest if largest > 0 else 0.0,
                 "total": total},
        learned=learned_list,
    )


# (claim key in summarize(), rank level) for claim (i)
COLLAPSE_SETS = (("collapse_masked", "masked"), ("collapse_visible", "visible"),
                 ("collapse_all", "position"))


def _all_hold(statuses):
    """Aggregate per-seed statuses: undertrained if any run is, else holds iff every judged
    run holds ("not judged" when none is)."""
    if any(s == UNDERTRAINED for s in statuses):
        return UNDERTRAINED
    judged = [s for s in statuses if s != NOT_JUDGED]
    if not judged:
        return NOT_JUDGED
    return HOLDS if all(s == HOLDS for s in judged) else FAILS


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
        out[name] = selectivity(
            [r.profiles[level] for r in short], [r.profiles[level] for r in long_],
            [r.learned for r in short], [r.learned for r in long_],
            [r.profiles["pooled"] for r in short], [r.profiles["pooled"] for r in long_],
        ).to_dict()
    return out


def collapse_crossover(xis, ratios, threshold=None):
    """Where the mean collapse ratio crosses ``threshold`` (default 1 - DELTA) going up in ξ.

    Parameters
    ----------
    xis : (k,) correlation lengths; ratios : (k,) mean collapse ratio rank[K]/rank[1] at each.

    Returns the first ξ* at which the ratio, interpolated linearly in log ξ between grid
    points, rises through the threshold (collapse below it, none above), or None when it never
    does on the grid — a result in itself.

    >>> collapse_crossover([1, 2, 4, 8], [0.8, 0.9, 0.97, 1.0])
    3.28...
    >>> collapse_crossover([1, 7], [0.88, 0.85]) is None
    True
    """
    threshold = 1 - DELTA if threshold is None else threshold
    order = np.argsort(np.asarray(xis, dtype=float))
    x = np.log(np.asarray(xis, dtype=float)[order])
    r = np.asarray(ratios, dtype=float)[order]
    for i in range(len(r) - 1):
        if r[i] <= threshold < r[i + 1]:
            t = (threshold - r[i]) / (r[i + 1] - r[i])
            return float(np.exp(x[i] + t * (x[i + 1] - x[i])))
    return None


def gate(masked_ce, bayes_floor, adjacent_ce, excess_max=None, require_adjacent=True):
    """The training gate in nats: is a run good enough to count as evidence?

    A run passes when its held-out masked CE is within ``excess_max`` (default
    :data:`GATE_EXCESS`) nats of the exact Bayes floor *and* below the CE of the adjacent-token
    lookup rule (:meth:`MarkovChain.adjacent_loss`) on the same batch: a network that does not
    beat two-token lookup has not learned the task the claims are about.

    Returns a dict: ``excess`` (CE - floor), ``adjacent_margin`` (adjacent CE - CE, > 0 when
    the network beats the rule), ``passed``. ``require_adjacent=False`` drops the second
    condition (for the sensitivity table only).

    >>> gate(1.58, 1.57, 1.584)
    {'excess': 0.01, 'adjacent_margin': 0.004, 'passed': True}
    >>> gate(1.60, 1.57, 1.584)["passed"]
    False
    """
    excess_max = GATE_EXCESS if excess_max is None else float(excess_max)
    excess = round(float(masked_ce) - float(bayes_floor), 12)
    margin = round(float(adjacent_ce) - float(masked_ce), 12)
    return {"excess": excess, "adjacent_margin": margin,
            "passed": bool(excess <= excess_max and (margin > 0 or not require_adjacent))}


def gate_of(result, excess_max=None, require_adjacent=True):
    """:func:`gate` of a stored run (a :class:`rgflow.experiments.Result`), judged on its gate
    batch (``result.gate``: GATE_SIZE fresh sequences) when it has one, else on its
    measurement batch (records from before the gate batch). Adds ``excess_se`` and
    ``margin_se`` (None without a gate batch) and ``sequences``, the batch size."""
    g = result.gate or {}
    source = g if g else {"masked_ce": result.masked_ce, "bayes_floor": result.bayes_floor,
                          "adjacent_ce": result.adjacent_ce}
    out = gate(source["masked_ce"], source["bayes_floor"], source["adjacent_ce"], excess_max,
               require_adjacent)
    out.update(excess_se=g.get("excess_se"), margin_se=g.get("margin_se"),
               sequences=g.get("size", result.config.eval_size))
    return out


def _confidence(confidence):
    """``confidence`` (None: CONFIDENCE) checked to be a level strictly between 0 and 1."""
    if confidence is None:
        return CONFIDENCE
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)) \
            or not 0.0 < float(confidence) < 1.0:
        raise ValueError("confidence must be a number strictly between 0 and 1, got %r"
                         % (confidence,))
    return float(confidence)


def _t_quantile(df, confidence):
    from scipy import stats
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _binary_exponent(*arrays):
    """The power of two of the largest magnitude in ``arrays`` (0 when all are 0): dividing by
    2**e is exact, so statistics computed on the scaled values and scaled back are those of the
    values themselves, bit for bit in the normal range, without squares that overflow (huge
    values) or underflow to 0 (tiny ones)."""
    top = max(float(np.max(np.abs(a))) for a in arrays)
    return int(np.frexp(top)[1]) if top > 0 else 0


def interval(values, confidence=None):
    """Mean of ``values`` with its t-based confidence interval.

    Returns a dict ``n``, ``mean``, ``sd`` (sample SD), ``lo``, ``hi`` (``lo = hi = mean`` for
    one value: no interval can be given, and ``sd`` is NaN).

    >>> r = interval([1.0, 2.0, 3.0]); r["mean"], round(r["lo"], 4), round(r["hi"], 4)
    (2.0, -0.4841, 4.4841)
    """
    confidence = _confidence(confidence)
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("values must be a non-empty 1-D sequence of finite numbers")
    e = _binary_exponent(v)
    u = np.ldexp(v, -e)  # the same numbers in units near 1: exact, no overflow or underflow
    mean = float(np.ldexp(u.mean(), e))
    if v.size == 1:
        return {"n": 1, "mean": mean, "sd": float("nan"), "lo": mean, "hi": mean}
    sd = u.std(ddof=1)
    half = _t_quantile(v.size - 1, confidence) * sd / np.sqrt(v.size)
    return {"n": int(v.size), "mean": mean, "sd": float(np.ldexp(sd, e)),
            "lo": float(np.ldexp(u.mean() - half, e)), "hi": float(np.ldexp(u.mean() + half, e))}


def compare(a, b, confidence=None):
    """Difference of means ``mean(b) - mean(a)`` with a Welch confidence interval and Hedges'
    g (the standardised difference with its small-sample correction).

    Returns a dict ``diff``, ``lo``, ``hi``, ``df`` (Welch-Satterthwaite), ``hedges_g``,
    ``n_a``, ``n_b``. Needs at least 2 values on each side.

    >>> r = compare([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]); r["diff"], round(r["hedges_g"], 4)
    (1.0, 0.8)
    """
    confidence = _confidence(confidence)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or y.ndim != 1 or x.size < 2 or y.size < 2 or \
            not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("compare needs two 1-D sequences of >= 2 finite values each")
    e = _binary_exponent(x, y)  # computed in units near 1 (exact), scaled back
    x, y = np.ldexp(x, -e), np.ldexp(y, -e)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    diff = float(y.mean() - x.mean())
    se = float(np.sqrt(va + vb))
    df = float((va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))) \
        if se > 0 else float("inf")
    half = _t_quantile(df, confidence) * se if se > 0 else 0.0
    pooled = float(np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1))
                     / (x.size + y.size - 2)))
    n = x.size + y.size
    correction = 1.0 - 3.0 / (4.0 * n - 9.0)
    g = float(diff / pooled * correction) if pooled > 0 else float("nan")
    return {"diff": float(np.ldexp(diff, e)), "lo": float(np.ldexp(diff - half, e)),
            "hi": float(np.ldexp(diff + half, e)), "df": df, "hedges_g": g,
            "n_a": int(x.size), "n_b": int(y.size)}


def trend(x, y, confidence=None):
    """Least-squares slope of ``y`` against ``x`` with its t-based confidence interval
    (n - 2 degrees of freedom; the points are taken as independent, e.g. one per seed).

    Returns a dict ``n``, ``slope``, ``lo``, ``hi``. Needs >= 3 finite points and >= 2
    distinct ``x`` (ValueError otherwise, or when the slope or its interval overflows).

    >>> r = trend([0.0, 1.0, 2.0, 3.0], [1.0, 0.9, 0.8, 0.7]); round(r["slope"], 12)
    -0.1
    """
    confidence = _confidence(confidence)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size < 3 or \
            not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("trend needs x and y: 1-D, of one length >= 3, finite")
    if np.all(x == x[0]):
        raise ValueError("trend needs at least two distinct x")
    ex, ey = _binary_exponent(x), _binary_exponent(y)  # computed in units near 1, scaled back
    x, y = np.ldexp(x, -ex), np.ldexp(y, -ey)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * dx
    se = float(np.sqrt(resid @ resid / (x.size - 2) / sxx))
    half, e = _t_quantile(x.size - 2, confidence) * se, ey - ex
    with np.errstate(over="ignore", under="ignore"):
        out = {"n": int(x.size), "slope": float(np.ldexp(slope, e)),
               "lo": float(np.ldexp(slope - half, e)), "hi": float(np.ldexp(slope + half, e))}
    if not all(np.isfinite(out[k]) for k in ("slope", "lo", "hi")):
        raise ValueError("trend: the slope or its interval is beyond float64's range "
                         "(rescale x or y)")
    return out


# -- verdicts over seeds (gated runs, intervals, every measure) ------------------------------

MIN_SEEDS = 10             # a cell's verdict needs at least this many gated seeds


def _rank_of(result, measure, level, init=False):
    """(depth+1,) profile of one stored run: ``result.measures`` (or ``result.init``), else the
    erank ``profiles`` of records from before every measure was stored."""
    source = result.init if init else result.measures
    if source:
        return source["rank"][measure][level]
    if measure == "erank" and not init:
        return result.profiles[level]
    raise ValueError("this record stores only the centred erank of the trained network "
                     "(computed before every measure was stored)")


def run_figures(result, measure="erank", level="masked", excess_max=None, delta=None,
                tol=None, spearman_max=None, top2_share=None, rest_max=None,
                require_adjacent=True):
    """The figures and per-run verdicts of one run (a :class:`rgflow.experiments.Result`),
    ``measure`` at ``level``:

    - ``gate``: :func:`gate_of`.
    - ``R``, ``collapse``: rank[K]/rank[1] and claim (i) from layer 1
      (:func:`monotone_collapse`).
    - ``R_peak``, ``peak_layer``, ``collapse_peak``: claim (i) from the peak
      (:func:`collapse_after_peak`).
    - ``R_init``, ``R_peak_init``: the same ratios of the untrained network on the same batch
      (when stored).
    - ``plateau``, ``top2_share``: claim (iii) on the stream drift; ``plateau_masked``,
      ``top2_share_masked`` on the drift of the masked tokens' representations (when stored).

    Statuses are "holds" or "fails" whatever the gate: the caller counts only gated runs.
    Thresholds default to the module constants, but for Spearman's rho, reported and not
    judged unless ``spearman_max`` is given: with every rise held within ``tol``, the rank
    correlation only ranks the noise of a profile's flat tail. ``require_adjacent=False``
    gates on the excess alone (the sensitivity table's row)."""
    out = {"seed": result.config.seed, "gate": gate_of(result, excess_max, require_adjacent)}
    out.update(_profile_figures(
        _rank_of(result, measure, level), result.drift,
        result.measures.get("drift_masked") if result.measures else None,
        delta=delta, tol=tol, spearman_max=spearman_max, top2_share=top2_share,
        rest_max=rest_max))
    if result.init:
        init = _rank_of(result, measure, level, init=True)
        out["R_init"] = collapse_ratio(init)
        out["R_peak_init"] = collapse_after_peak(init).figures["ratio"]
    return out


def _profile_figures(rank, drift, drift_masked=None, *, delta=None, tol=None,
                     spearman_max=None, top2_share=None, rest_max=None):
    """The per-run figures and statuses of claims (i) and (iii) from a (depth+1,) rank
    profile and the (depth,) drift profiles (``drift_masked`` optional): what
    :func:`run_figures` and :func:`flow_figures` report."""
    spearman_max = 1.0 if spearman_max is None else spearman_max
    peak = collapse_after_peak(rank, delta=delta, tol=tol)
    out = {"R": collapse_ratio(rank),
           "collapse": monotone_collapse(rank, delta=delta, tol=tol,
                                         spearman_max=spearman_max).status,
           "R_peak": peak.figures["ratio"], "peak_layer": peak.figures["peak_layer"],
           "collapse_peak": peak.status}
    p = plateau(drift, top2_share=top2_share, rest_max=rest_max)
    out["plateau"], out["top2_share"] = p.status, p.figures["top2_share"]
    if drift_masked is not None:
        p = plateau(drift_masked, top2_share=top2_share, rest_max=rest_max)
        out["plateau_masked"], out["top2_share_masked"] = p.status, p.figures["top2_share"]
    return out


def _count(statuses):
    """k of n, over the runs a criterion could judge (plateau: depth >= 3)."""
    return {"holds": sum(s == HOLDS for s in statuses),
            "of": sum(s != NOT_JUDGED for s in statuses)}


# per-run figures cell_verdicts summarises: statuses counted, ratios given an interval
RUN_STATUSES = ("collapse", "collapse_peak", "plateau", "plateau_masked")
RUN_RATIOS = ("R", "R_init", "R_peak", "R_peak_init", "top2_share", "top2_share_masked")


def cell_verdicts(results, **options):
    """Claims (i) and (iii) over the seeds of one cell (one ξ, one configuration).

    ``options`` are those of :func:`run_figures`. Returns a dict: ``n_runs``; ``n_gated``;
    ``runs`` (every run's figures, gated or not); for each status of RUN_STATUSES (``holds``
    k ``of`` n gated runs that have it) and each figure of RUN_RATIOS (:func:`interval` over
    the gated runs; None when none has it); ``enough`` (n_gated >= MIN_SEEDS)."""
    runs = [run_figures(r, **options) for r in sorted(results, key=lambda r: r.config.seed)]
    gated = [f for f in runs if f["gate"]["passed"]]
    out = {"n_runs": len(runs), "n_gated": len(gated), "runs": runs,
           "enough": len(gated) >= MIN_SEEDS}
    for name in RUN_STATUSES:
        out[name] = _count([f[name] for f in gated if name in f])
    for name in RUN_RATIOS:  # over the gated runs that have the figure, finite
        values = [f[name] for f in gated if name in f and np.isfinite(f[name])]
        out[name] = interval(values) if values else None
    return out


def _selective(cells, ratio, delta, xis=(SHORT_XI, LONG_XI)):
    """Claim (ii) on one ratio ("R" or "R_peak") of the gated runs of both cells
    (:func:`cell_verdicts` of the short and the long ξ, ``xis``)."""
    # a ratio that is not finite (a zero rank[1]) cannot collapse or stay flat: it counts
    # among the runs but enters no interval
    rs = [f[ratio] for f in cells["short"]["runs"] if f["gate"]["passed"]]
    rl = [f[ratio] for f in cells["long"]["runs"] if f["gate"]["passed"]]
    fs, fl = [r for r in rs if np.isfinite(r)], [r for r in rl if np.isfinite(r)]
    diff = compare(fs, fl) if len(fs) >= 2 and len(fl) >= 2 else None
    short_ok = sum(r <= 1 - delta for r in rs)
    long_ok = sum(r >= 1 - delta / 3 for r in rl)
    holds = bool(diff is not None and cells["short"]["enough"] and cells["long"]["enough"]
                 and short_ok == len(rs) and long_ok == len(rl) and diff["lo"] > 0)
    # a verdict needs MIN_SEEDS gated seeds at each xi: short of that, none is given
    missing = [{"xi": xi, "gated": cells[name]["n_gated"]}
               for name, xi in zip(("short", "long"), xis)
               if not cells[name]["enough"]]
    return {"delta_R": diff, "short_collapses": {"holds": short_ok, "of": len(rs)},
            "long_flat": {"holds": long_ok, "of": len(rl)}, "holds": holds,
            "status": NO_VERDICT if missing else (HOLDS if holds else FAILS),
            "missing": missing}


def verdicts(results, measure="erank", level="masked", **options):
    """The three claims over seeds at short and long ξ, for one measure and level.

    Returns a dict: ``short`` and ``long`` (:func:`cell_verdicts`), and claim (ii) twice:
    ``selectivity`` on R = rank[K]/rank[1] and ``selectivity_peak`` on R_peak (from the
    peak, see :func:`collapse_after_peak`), each with ``delta_R`` (:func:`compare` of the
    gated ratios, long minus short; None with fewer than 2 gated runs on a side),
    ``short_collapses`` and ``long_flat`` (k of n gated runs with ratio <= 1 - delta and
    >= 1 - delta / 3), and ``holds`` (every gated short run collapses, no gated long run
    does, delta_R's interval above 0, enough seeds on both sides), ``status`` ("holds",
    "fails", or "no verdict" when a ξ has fewer than MIN_SEEDS gated seeds) and ``missing``
    (those ξ, each ``{"xi", "gated"}``).
    """
    delta = DELTA if options.get("delta") is None else options["delta"]
    cells = {}
    for name, xi in (("short", SHORT_XI), ("long", LONG_XI)):
        runs = [r for r in results if r.config.xi == xi]
        cells[name] = cell_verdicts(runs, measure=measure, level=level, **options)
    cells["selectivity"] = _selective(cells, "R", delta)
    cells["selectivity_peak"] = _selective(cells, "R_peak", delta)
    return cells


# -- the flow during training: verdict figures as a function of the excess -----------------

EXCESS_LEVELS = (0.2, 0.1, 0.05, 0.03, GATE_EXCESS, 0.015)  # nats above the floor


def flow_figures(result, delta=None, tol=None, top2_share=None, rest_max=None):
    """The verdict figures of a run at every point of its flow during training
    (``result.history["flow"]``, see :func:`rgflow.train.flow_point`), on its measurement
    batch: a list of dicts ``step``, ``excess`` (masked CE - Bayes floor, nats), ``R``,
    ``R_peak``, ``peak_layer``, ``collapse``, ``collapse_peak`` (masked-position centred
    erank), ``plateau``, ``top2_share`` (stream drift), ``plateau_masked``,
    ``top2_share_masked``. Empty for runs stored without a flow."""
    out = []
    for point in result.history.get("flow", []):
        row = {"step": point["step"], "excess": point["loss"] - result.bayes_floor}
        row.update(_profile_figures(point["erank_masked"], point["drift"],
                                    point["drift_masked"], delta=delta, tol=tol,
                                    top2_share=top2_share, rest_max=rest_max))
        out.append(row)
    return out


def excess_curve(results, levels=EXCESS_LEVELS, excess_max=None, gated=True, **options):
    """Each verdict as a function of how far training got: every gated run (:func:`gate_of`
    with ``excess_max``; every run if ``gated`` is False, e.g. where no run reaches the gate)
    is read at the first point of its flow whose excess over the Bayes floor is <= each level
    (as if ``train(target_excess=level)`` had stopped it there; the flow's log-spaced steps
    make the stopping point approximate) and at its end.

    Returns a list of rows, one per ξ and level (then ``"end"``): ``xi``, ``level``, ``runs``
    (runs that reached it), ``step`` (median step), ``excess`` / ``R`` / ``R_peak`` /
    ``top2_share`` (:func:`interval` over those runs, None without any), ``collapse``,
    ``collapse_peak``, ``plateau``, ``plateau_masked`` (k of n), ``shift_R_peak`` and
    ``shift_top2_share`` (mean absolute change from there to the end of training, to set
    beside the seed SD of the end figures, the ``"end"`` row's intervals' ``sd``)."""
    rows = []
    for xi in sorted({r.config.xi for r in results}):
        curves = [(flow_figures(r, **options), r) for r in results if r.config.xi == xi
                  and (not gated or gate_of(r, excess_max)["passed"])]
        curves = [(c, r) for c, r in curves if c]
        if not curves:
            continue
        for level in tuple(levels) + ("end",):
            picked = []
            for curve, _ in curves:
                if level == "end":
                    picked.append((curve[-1], curve[-1]))
                    continue
                hit = next((p for p in curve if p["excess"] <= level), None)
                if hit is not None:
                    picked.append((hit, curve[-1]))
            row = {"xi": xi, "level": level, "runs": len(picked),
                   "step": int(np.median([p["step"] for p, _ in picked])) if picked else None}
            for name in ("excess", "R", "R_peak", "top2_share"):
                values = [p[name] for p, _ in picked if np.isfinite(p[name])]
                row[name] = interval(values) if values else None
            for name in ("collapse", "collapse_peak", "plateau", "plateau_masked"):
                row[name] = _count([p[name] for p, _ in picked])
            for name in ("R_peak", "top2_share"):
                row["shift_" + name] = (float(np.mean([abs(p[name] - e[name])
                                                       for p, e in picked]))
                                        if picked else None)
            rows.append(row)
    return rows


def block_activity(results, steps=(100, 1000, 10000), excess_max=None):
    """What each block does at the end of training and when it stopped: per ξ and block
    k = 1..K over the gated runs (:func:`gate_of`), medians of the relative update
    ``||z_k - z_{k-1}|| / ||z_{k-1}||``, the gradient norm and the share of switched-off hidden
    units at the end, and the relative update at the flow checkpoints (common to every run)
    nearest to ``steps`` (a checkpoint at the end of training is the end's figure and is
    not repeated).

    Returns a list of rows ``xi``, ``block`` (1-based), ``runs``, ``update``,
    ``grad_norm``, ``inactive_units`` (None when no run stores it) and ``update_at``
    ({step: median update}, the checkpoint steps actually used)."""
    rows = []
    for xi in sorted({r.config.xi for r in results}):
        runs = [r for r in results if r.config.xi == xi and gate_of(r, excess_max)["passed"]
                and r.measures.get("update") and r.grad_norms]
        if not runs:
            continue
        flows = [r.history.get("flow") or [] for r in runs]
        marks = {}
        common = sorted(set.intersection(*({p["step"] for p in f} for f in flows))) \
            if all(flows) else []
        last = min(r.config.steps for r in runs)
        for want in steps if common else ():
            at = min(common, key=lambda h: abs(np.log(h / want)))
            if at >= last:
                continue
            marks[at] = [next(p for p in f if p["step"] == at) for f in flows]
        depths = {r.config.depth for r in runs}
        if len(depths) != 1:
            raise ValueError("block_activity: the runs at xi = %g have depths %s; pass runs of "
                             "one configuration" % (xi, sorted(depths)))
        for k in range(runs[0].config.depth):
            inactive = [r.inactive_units[k] for r in runs if r.inactive_units]
            rows.append({
                "xi": xi, "block": k + 1, "runs": len(runs),
                "update": float(np.median([r.measures["update"][k] for r in runs])),
                "grad_norm": float(np.median([r.grad_norms["blocks"][k] for r in runs])),
                "inactive_units": float(np.median(inactive)) if inactive else None,
                "update_at": {at: float(np.median([p["update"][k] for p in points]))
                              for at, points in sorted(marks.items())}})
    return rows


# Threshold values the sensitivity table tries, the module's own value among them.
SENSITIVITY = {
    "excess_max": (0.005, 0.01, GATE_EXCESS, 0.05, 0.1),
    "require_adjacent": (True, False),
    "delta": (0.02, DELTA, 0.1),
    "tol": (0.005, MONOTONE_TOL, 0.02, 0.05),
    "spearman_max": (None, SPEARMAN_MAX),
    "top2_share": (0.5, PLATEAU_TOP2_SHARE, 0.7),
    "rest_max": (0.05, PLATEAU_REST_MAX, 0.2),
}


def _statement(count):
    return "%d/%d" % (count["holds"], count["of"])


def sensitivity(results, measure="erank", level="masked"):
    """How each verdict moves with each threshold, the others at their defaults.

    Returns a list of rows ``(threshold, value, {verdict: statement})`` where the verdicts are
    ``collapse``, ``after peak`` and ``plateau`` at ``ξ=1`` and ``ξ=7`` ("k/n" gated seeds)
    and ``selective (R)``, ``selective (R_peak)`` ("holds"/"fails"/"no verdict", with the
    difference's interval when both ξ have 2 gated runs); ``value`` None for ``spearman_max``
    means "not judged".
    """
    rows = []
    for name, values in SENSITIVITY.items():
        for value in values:
            v = verdicts(results, measure, level, **{name: value})
            row = {}
            for label, key in (("collapse", "collapse"), ("after peak", "collapse_peak"),
                               ("plateau", "plateau")):
                row["%s ξ=1" % label] = _statement(v["short"][key])
                row["%s ξ=7" % label] = _statement(v["long"][key])
            for label, key in (("selective (R)", "selectivity"),
                               ("selective (R_peak)", "selectivity_peak")):
                d = v[key]["delta_R"]
                row[label] = v[key]["status"] + (
                    " (Δ %+.3f [%+.3f, %+.3f])" % (d["diff"], d["lo"], d["hi"]) if d else "")
            rows.append((name, value, row))
    return rows
