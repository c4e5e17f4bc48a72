"""Experiments: Config validation and stable keys, Result JSON round trip, the relevance
decomposition on synthetic data with known answers, and run() end to end on a tiny model."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rgflow as rg
from rgflow.analysis import relevance_decomposition
from rgflow import experiments
from rgflow.experiments import Config, Result, run

TINY = Config(steps=20, hidden=32, depth=3, width=8, length=8, eval_size=128, batch_size=32)


def test_config_validation():
    for bad, exc in [(dict(chain="nope"), ValueError), (dict(schedule="step"), ValueError),
                     (dict(depth=0), ValueError), (dict(steps=1.5), TypeError),
                     (dict(xi=-1.0), ValueError), (dict(lr=0.0), ValueError),
                     (dict(mask_rate=1.5), ValueError), (dict(block_ln=1), TypeError)]:
        with pytest.raises(exc):
            Config(**bad)
    with pytest.raises(ValueError, match="unknown"):
        Config.from_dict({"xi": 1.0, "bogus": 1})


def test_equal_configs_have_equal_keys():
    """Fields are normalised to their declared types, so equal configs name the same record
    (before, Config(xi=1) == Config(xi=1.0) but their keys were 61b3... and 01a0...)."""
    assert Config(xi=1).key() == Config(xi=1.0).key() == "01a00b84e6517079"
    same = Config(xi=np.float32(7.0), seed=np.int64(2), steps=3000.0, block_ln=np.bool_(True),
                  chain=np.str_("lazy"))
    assert same == Config(xi=7.0, seed=2) and same.key() == Config(xi=7.0, seed=2).key()
    assert type(same.xi) is float and type(same.seed) is int and type(same.steps) is int
    assert type(same.block_ln) is bool and type(same.chain) is str
    assert [c.key() for c in rg.grid(Config(), xi=[1, 7])] == \
        [c.key() for c in rg.grid(Config(), xi=[1.0, 7.0])]
    # what does not convert exactly is refused, naming the field
    for bad, name in [(dict(steps=1.5), "steps"), (dict(seed=float("inf")), "seed"),
                      (dict(xi=2**53 + 1), "xi"), (dict(xi=True), "xi"),
                      (dict(lr="0.1"), "lr"), (dict(block_ln=1), "block_ln"),
                      (dict(chain=None), "chain")]:
        with pytest.raises(TypeError, match="Config field %s must be" % name):
            Config(**bad)


def test_stored_records_keep_their_keys():
    """Every sweep record stored under notebooks/results is found under its file name by the
    current Config (normalising the field types did not move any of them)."""
    results = Path(__file__).resolve().parent.parent / "notebooks" / "results"
    paths = sorted(p for store in ("regime", "phase-small")
                   for p in (results / store).glob("*.json"))
    assert len(paths) >= 50
    for path in paths:
        payload = json.loads(path.read_text())["payload"]
        config = payload["result"]["config"] if payload["status"] == "ok" else payload["config"]
        assert Config.from_dict(config).key() == payload["key"] == path.stem, path


def test_config_key_is_stable_across_processes(tmp_path):
    code = "from rgflow.experiments import Config; print(Config(xi=7.0, seed=3).key())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.strip()
    assert out == Config(xi=7.0, seed=3).key()
    assert Config(xi=7.0, seed=3).key() != Config(xi=7.0, seed=4).key()
    assert Config().key(version="0.0.0") != Config().key()


def test_relevance_decomposition_known_answers():
    rng = np.random.default_rng(0)
    n, L, V, d = 400, 6, 4, 5
    logp = np.log(rng.dirichlet(np.ones(V), size=(n, L)))
    mask = rng.random((n, L)) < 0.5
    W = rng.standard_normal((V, d))
    explained = logp @ W                                   # (n, L, d), exactly linear
    noise = rng.standard_normal((n, L, d))
    stream = np.stack([np.zeros((n, L, d)), explained, noise, explained + 1e-3 * noise])
    out = relevance_decomposition(stream, logp, mask)
    share = out["relevant_share"]
    assert share[0] == 0.0                                 # no variance at all
    assert share[1] == pytest.approx(1.0, abs=1e-12)       # fully explained
    assert out["irrelevant_rank"][1] == 0.0                # residual is rounding only
    # independent noise: R^2 of V regressors on ~n/2 rows is about V / n_rows per position
    assert share[2] < 0.05 and out["irrelevant_rank"][2] > 4.5
    assert share[3] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="enough masked rows"):
        relevance_decomposition(stream, logp, np.zeros_like(mask))


def test_run_end_to_end_and_json_round_trip():
    res = run(TINY.replace(xi=7.0), progress=False)
    K = TINY.depth
    assert set(res.profiles) == {"position", "masked", "visible", "pooled", "stream"}
    assert all(len(p) == K + 1 for p in res.profiles.values())
    assert len(res.drift) == K and np.shape(res.cka_matrix) == (K + 1, K + 1)
    assert res.profiles["masked"][0] == 0.0  # every masked token has the MASK embedding
    assert res.learned == pytest.approx(rg.findings.learned_share(
        res.masked_ce, res.bayes_floor, res.unigram_entropy))
    assert res.unigram_entropy == pytest.approx(np.log(8))
    assert set(res.verdicts) == {"collapse_all", "collapse_masked", "collapse_visible",
                                 "plateau"}
    back = Result.from_json(res.to_json())
    assert back.config == res.config and back.to_json() == res.to_json()
    # determinism: same config, same numbers
    again = run(TINY.replace(xi=7.0), progress=False)
    assert again.masked_ce == res.masked_ce and again.profiles == res.profiles


def test_a_result_records_where_it_was_computed(tmp_path):
    """rgflow version, OpenBLAS version and CPU kernel, threads and CPU model travel with every
    run (bits may differ between OpenBLAS kernels); the JSON round trip keeps them, and a
    record from before they were stored loads with an empty dict."""
    with rg.num_threads(1):
        res = run(TINY, progress=False)
    where = res.computed_on
    assert where == dict(rg.where_computed(), threads=1)
    assert where["rgflow"] == rg.__version__ and where["core"] in where["openblas"]
    assert Result.from_json(res.to_json()).computed_on == where
    import json
    old = json.loads(res.to_json())
    del old["computed_on"]
    assert Result.from_json(json.dumps(old)).computed_on == {}
    from rgflow.report import computed_on_lines
    assert computed_on_lines([where, where, {}]) == [
        "rgflow %s, OpenBLAS %s kernel, 1 thread, %s" % (rg.__version__, where["core"],
                                                          where["cpu"]),
        "not recorded (older run)"]


def test_sweep_threads_do_not_leak_into_the_caller(tmp_path):
    before = rg.set_num_threads(2)
    try:
        rg.sweep([TINY.replace(steps=2)], store=tmp_path, progress=False, blas_threads=1)
        assert rg.get_num_threads() == 2
    finally:
        rg.set_num_threads(before)


def test_measure_stream_on_known_answers():
    """Layers that are scaled copies: every block doubles the stream, so the relative update is
    exactly 1, the drift 0 at both levels, and each rank measure is the same at every layer
    (the scale-invariant ones) and equals rgflow's own rank_profile."""
    from rgflow.experiments import RANK_MEASURES, measure_stream
    rng = np.random.default_rng(0)
    z0 = rng.standard_normal((200, 6, 5))
    stream = np.stack([z0 * 2.0 ** k for k in range(4)])
    mask = rng.random((200, 6)) < 0.3
    out = measure_stream(stream, mask)
    np.testing.assert_allclose(out["update"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(out["drift"], 0.0, atol=1e-12)
    np.testing.assert_allclose(out["drift_masked"], 0.0, atol=1e-12)
    assert set(out["rank"]) == set(RANK_MEASURES)
    for name in ("erank", "participation", "stable", "numerical"):
        for level, prof in out["rank"][name].items():
            np.testing.assert_allclose(prof, prof[0], rtol=1e-10)
    assert out["rank"]["stable"]["stream"][0] == pytest.approx(
        rg.rank_profile(stream, "stream", measure="stable")[0], rel=1e-12)
    uncentred = rg.rank_profile(stream, "pooled", center=False)
    assert out["rank"]["erank_uncentered"]["pooled"] == pytest.approx(uncentred.tolist())


def test_relevance_variances_add_up():
    rng = np.random.default_rng(1)
    n, length, V, width = 400, 3, 4, 6
    logp = np.log(rng.dirichlet(np.ones(V), size=(n, length)))
    mask = rng.random((n, length)) < 0.5
    stream = rng.standard_normal((2, n, length, width))
    stream[1] += logp @ rng.standard_normal((V, width))   # layer 1 carries the posterior
    out = relevance_decomposition(stream, logp, mask)
    total = []
    for layer in range(2):
        parts = [stream[layer, mask[:, p], p] for p in range(length)]
        total.append(sum(((x - x.mean(0)) ** 2).sum() for x in parts) / mask.sum())
    np.testing.assert_allclose(np.add(out["relevant_variance"], out["irrelevant_variance"]),
                               total, rtol=1e-12)
    assert out["relevant_variance"][1] > 5 * out["relevant_variance"][0]


def test_gate_evaluation_matches_the_batch_losses():
    """The gate's means are the model's, the exact posterior's and the adjacent rule's losses
    on the same fresh batch (rebuilt here from the documented seed stream); its standard
    errors reduce to std/sqrt(n) when every sequence has exactly one masked token."""
    from rgflow.experiments import _GATE_STREAM, gate_evaluation, make_chain
    cfg = TINY.replace(xi=7.0, seed=3)
    chain = make_chain(cfg)
    model = rg.ResidualMLP(8, cfg.length, cfg.width, cfg.hidden, cfg.depth, seed=1)
    g = gate_evaluation(model, chain, cfg, size=300, chunk=64)  # chunks split the batch
    s1, s2 = np.random.SeedSequence([3, _GATE_STREAM]).generate_state(2, np.uint64)
    tokens = chain.sample(300, cfg.length, seed=int(s1) >> 1)
    masked, mask = rg.mask_tokens(tokens, rate=cfg.mask_rate, seed=int(s2) >> 1, mask_id=8)
    assert g["size"] == 300 and g["masked"] == mask.sum()
    assert g["masked_ce"] == pytest.approx(model.loss(masked, tokens, mask), rel=1e-6)
    assert g["bayes_floor"] == pytest.approx(chain.bayes_loss(tokens, mask), rel=1e-12)
    assert g["adjacent_ce"] == pytest.approx(chain.adjacent_loss(tokens, mask), rel=1e-12)
    assert g["excess"] == pytest.approx(g["masked_ce"] - g["bayes_floor"], abs=1e-12)
    assert g["margin"] == pytest.approx(g["adjacent_ce"] - g["masked_ce"], abs=1e-12)
    assert 0 < g["margin_se"] < 0.1 and 0 < g["excess_se"] < 0.1

    from rgflow.experiments import _paired_mean
    rng = np.random.default_rng(0)
    d = rng.standard_normal(50)
    mean, se = _paired_mean(d, np.arange(50), 50)
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / np.sqrt(50))
    # two tokens per sequence with equal values: the cluster SE sees 50 draws, not 100
    mean2, se2 = _paired_mean(np.repeat(d, 2), np.repeat(np.arange(50), 2), 50)
    assert mean2 == pytest.approx(mean) and se2 == pytest.approx(se)
    with pytest.raises(ValueError, match="size"):
        gate_evaluation(model, chain, cfg, size=1)


def test_run_stores_the_gate_and_the_flow():
    res = run(TINY.replace(xi=1.0), progress=False)
    assert res.gate["size"] == rg.experiments.GATE_SIZE
    flow = res.history["flow"]
    assert [f["step"] for f in flow] == rg.experiments.flow_steps(TINY.steps) == [TINY.steps]
    last = flow[-1]
    assert last["step"] == TINY.steps
    np.testing.assert_allclose(last["erank_masked"], res.profiles["masked"], rtol=1e-12)
    np.testing.assert_allclose(last["drift"], res.drift, rtol=1e-12)
    np.testing.assert_allclose(last["grad_blocks"], res.grad_norms["blocks"], rtol=1e-12)
    assert last["loss"] == res.masked_ce


# -- checkpointed runs -------------------------------------------------------------------------

CKPT = Config(xi=7.0, seed=3, steps=100, hidden=16, depth=3, width=4, length=8, eval_size=64,
              batch_size=16, schedule="cosine", warmup=10)


def _same_run(a, b):
    """Two Results equal in every bit but the wall time (and the thread count they record)."""
    da, db = json.loads(a.to_json()), json.loads(b.to_json())
    for d in (da, db):
        d.pop("wall_time")
        d["computed_on"].pop("threads")
    assert da == db


def test_checkpointed_run_equals_the_plain_run_and_cleans_up(tmp_path):
    ckpt = tmp_path / "run.partial.json"
    plain = run(CKPT, progress=False)
    steps = []
    saved = run(CKPT, progress=steps.append, checkpoint=ckpt)
    _same_run(plain, saved)
    assert sum(steps) == CKPT.steps
    assert list(tmp_path.iterdir()) == []  # removed once training is complete


def test_interrupted_checkpointed_run_resumes_to_the_same_bits(tmp_path, monkeypatch):
    from rgflow.train import TrainingInterrupted, _stop_when
    # 20 flow points, some on the pieces' ends (10, 30, 70, 100), as long runs have
    monkeypatch.setattr(experiments, "FLOW_STEPS", 5)
    ckpt = tmp_path / "run.partial.json"
    plain = run(CKPT, progress=False)
    assert len(plain.history["flow"]) == 20
    checks = []
    with _stop_when(lambda: checks.append(1) or len(checks) >= 9):
        with pytest.raises(TrainingInterrupted) as info:
            run(CKPT, progress=False, checkpoint=ckpt)
    meta = json.loads(ckpt.read_text())
    # saved after every evaluation interval (10 steps) and where it stopped: nothing is lost
    stopped = int(re.search(r"after step (\d+)", str(info.value)).group(1))
    assert meta["step"] == stopped and 0 < stopped < CKPT.steps and stopped % 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run.partial-%d.npz" % meta["step"], "run.partial.json"]
    assert meta["losses"] == plain.history["losses"][:meta["step"]]
    steps = []
    resumed = run(CKPT, progress=steps.append, checkpoint=ckpt)
    _same_run(plain, resumed)
    assert steps[0] == meta["step"] and sum(steps) == CKPT.steps  # the resumed steps count
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spoil", ["other config", "other kernel", "truncated", "no model",
                                   "step mismatch"])
def test_a_checkpoint_that_does_not_fit_is_ignored(tmp_path, spoil):
    from rgflow.train import TrainingInterrupted, _stop_when
    ckpt = tmp_path / "run.partial.json"
    checks = []
    with _stop_when(lambda: checks.append(1) or len(checks) >= 9):
        with pytest.raises(TrainingInterrupted):
            run(CKPT, progress=False, checkpoint=ckpt)
    meta = json.loads(ckpt.read_text())
    model_file = tmp_path / meta["model"]
    if spoil == "other config":
        meta["key"] = CKPT.replace(seed=4).key()
    elif spoil == "other kernel":
        meta["core"] = "NotThisKernel"
    elif spoil == "step mismatch":
        meta["step"] += 1
    elif spoil == "no model":
        model_file.unlink()
    ckpt.write_text(json.dumps(meta)[:40] if spoil == "truncated" else json.dumps(meta))
    steps = []
    _same_run(run(CKPT, progress=False), run(CKPT, progress=steps.append, checkpoint=ckpt))
    assert steps[0] != meta["step"] and sum(steps) == CKPT.steps  # started over
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_argument_is_checked(tmp_path):
    with pytest.raises(ValueError, match="checkpoint must be a path ending in .json"):
        run(CKPT, progress=False, checkpoint=tmp_path / "run.npz")


def test_a_stop_from_a_progress_callback_does_not_save_a_short_history(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised by the progress callable lands after the C chunk but before
    the step's evaluation and flow point: saving there would resume to a record without them."""
    from rgflow.train import TrainingInterrupted
    monkeypatch.setattr(experiments, "FLOW_STEPS", 5)
    ckpt = tmp_path / "run.partial.json"
    plain = run(CKPT, progress=False)
    done = []

    def progress(n):
        done.append(n)
        if sum(done) >= 20:  # step 20: an evaluation and a flow point of the unbroken run
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="after step 20"):
        run(CKPT, progress=progress, checkpoint=ckpt)
    assert json.loads(ckpt.read_text())["step"] < 20  # the last complete save, not the stop
    _same_run(plain, run(CKPT, progress=False, checkpoint=ckpt))
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_in_the_working_directory_keeps_its_model_file(tmp_path, monkeypatch):
    """run(config, checkpoint="run.json") (the README's example): each save removes the
    previous model file, not the one it just wrote."""
    from rgflow.train import TrainingInterrupted, _stop_when
    monkeypatch.chdir(tmp_path)
    checks = []
    with _stop_when(lambda: checks.append(1) or len(checks) >= 3):
        with pytest.raises(TrainingInterrupted):
            run(CKPT, progress=False, checkpoint="run.json")
    meta = json.loads((tmp_path / "run.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == [meta["model"], "run.json"]
    steps = []
    _same_run(run(CKPT, progress=False), run(CKPT, progress=steps.append, checkpoint="run.json"))
    assert steps[0] == meta["step"]  # resumed, not started over
    assert list(tmp_path.iterdir()) == []
