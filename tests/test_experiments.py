"""Experiments: Config validation and stable keys, Result JSON round trip, the relevance
decomposition on synthetic data with known answers, and run() end to end on a tiny model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rgflow as rg
from rgflow.experiments import Config, Result, relevance_decomposition, run

TINY = Config(steps=20, hidden=32, depth=3, width=8, length=8, eval_size=128, batch_size=32)


def test_config_validation():
    for bad, exc in [(dict(chain="nope"), ValueError), (dict(schedule="step"), ValueError),
                     (dict(depth=0), ValueError), (dict(steps=1.5), TypeError),
                     (dict(xi=-1.0), ValueError), (dict(lr=0.0), ValueError),
                     (dict(mask_rate=0.0), ValueError), (dict(block_ln=1), TypeError)]:
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
    """Every record stored under notebooks/results is found under its file name by the
    current Config (normalising the field types did not move any of them)."""
    paths = sorted(Path(__file__).resolve().parent.parent.glob("notebooks/results/*/*.json"))
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
