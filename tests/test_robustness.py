"""Leaks, thread safety, Ctrl-C and memory bounds (issue 7)."""
import gc
import os
import sys
import threading
import time
import _thread
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import rgflow as rg
import rgflow.sweep  # noqa: F401  (rg.sweep is the function; the module is below)
from rgflow import _core
from rgflow.experiments import Config
from rgflow.train import TrainingInterrupted

rsweep = sys.modules["rgflow.sweep"]

PAGE = os.sysconf("SC_PAGE_SIZE")
LEAK_CALLS = 10**4
LEAK_BOUND = 2 * 1024 * 1024  # bytes of RSS growth allowed over 10^4 calls after a warm-up
# ASan's quarantine keeps freed memory resident, so RSS says nothing under `make sanitize`
ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def huge(dtype, shape):
    return as_strided(np.zeros(1, dtype=dtype), shape=shape, strides=(0,) * len(shape))


# -- shared small inputs ----------------------------------------------------------------------

CHAIN = rg.MarkovChain.random(4, 3.0, seed=1)
T, PI = np.array(CHAIN.transition), np.array(CHAIN.stationary)
TOK = CHAIN.sample(6, 7, seed=2)
MASKED, MASK = rg.mask_tokens(TOK, rate=0.4, seed=3, mask_id=4)
MODEL = rg.ResidualMLP(4, 7, 3, 8, 2, seed=4)
CFG = MODEL.shape
WS = MODEL._workspace(6)
E = np.random.default_rng(7).dirichlet(np.ones(5), size=4)   # emission: 4 states, 5 tokens
X = np.random.default_rng(5).standard_normal((9, 5))
Y = np.random.default_rng(6).standard_normal((9, 4))
OPTIONS = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=0.0, mask_rate=0.2,
               mask_span=1)


def core_calls():
    """name -> (valid call, error-path call) for every _core wrapper, on shared inputs."""
    p, g = MODEL.params.copy(), np.zeros(MODEL.n_params, np.float32)
    m, v = np.zeros_like(g), np.zeros_like(g)
    ws = MODEL._workspace(2)
    bad = np.array([[0.5, 0.6], [0.5, 0.5]])
    return {
        "chain_check": (lambda: _core.chain_check(T, 1e-9), lambda: _core.chain_check(bad, 1e-9)),
        "chain_stationary": (lambda: _core.chain_stationary(T),
                             lambda: _core.chain_stationary(np.eye(3))),
        "chain_eigenvalues": (lambda: _core.chain_eigenvalues(T, 1e-12),
                              lambda: _core.chain_eigenvalues(bad, 1e-12)),
        "chain_sample": (lambda: _core.chain_sample(T, PI, 3, 5, 7),
                         lambda: _core.chain_sample(T, PI[:2], 3, 5, 7)),
        "chain_sample[emission]": (
            lambda: _core.chain_sample(T, PI, 3, 5, 7, emission=E, hidden_states=True),
            lambda: _core.chain_sample(T, PI, 3, 5, 7, emission=E[:, :1])),
        "chain_posterior[emission]": (
            lambda: _core.chain_posterior(T, PI, E, MASKED, MASK),
            lambda: _core.chain_posterior(T, PI, E[:3], MASKED, MASK)),
        "chain_bayes_nll[emission]": (
            lambda: _core.chain_bayes_nll(T, PI, E, TOK, MASK),
            lambda: _core.chain_bayes_nll(T, PI, E, TOK + 5, MASK)),
        "mlp_train_batch[emission]": (
            lambda: _core.mlp_train_batch(T, PI, E, 1, 2, 3, 7, 0.2, 1),
            lambda: _core.mlp_train_batch(T, PI, -E, 1, 2, 3, 7, 0.2, 1)),
        "mask_tokens": (lambda: _core.mask_tokens(TOK, 0.3, 1, 8, 4),
                        lambda: _core.mask_tokens(TOK, 0.3, 1, 8, 2)),
        "chain_posterior": (lambda: _core.chain_posterior(T, PI, None, MASKED, MASK),
                            lambda: _core.chain_posterior(T, PI, None, MASKED, MASK[:, :2])),
        "chain_bayes_nll": (lambda: _core.chain_bayes_nll(T, PI, None, TOK, MASK),
                            lambda: _core.chain_bayes_nll(T, PI, None, TOK + 9, MASK)),
        "mlp_layout": (lambda: _core.mlp_layout(CFG), lambda: _core.mlp_layout((1,) * 6)),
        "mlp_workspace_bytes": (lambda: _core.mlp_workspace_bytes(CFG, 4),
                                lambda: _core.mlp_workspace_bytes(CFG, 0)),
        "mlp_init": (lambda: _core.mlp_init(CFG, p, 3), lambda: _core.mlp_init(CFG, g[:3], 3)),
        "mlp_forward": (lambda: _core.mlp_forward(CFG, MODEL.params, WS, 6, MASKED, True, True,
                                                  TOK, MASK),
                        lambda: _core.mlp_forward(CFG, MODEL.params, WS, 6, MASKED + 9, True,
                                                  True)),
        "mlp_gradients": (lambda: _core.mlp_gradients(CFG, MODEL.params, g, WS, MASKED, TOK,
                                                      MASK),
                          lambda: _core.mlp_gradients(CFG, MODEL.params, g, WS, MASKED, TOK,
                                                      np.zeros_like(MASK))),
        "mlp_train_batch": (lambda: _core.mlp_train_batch(T, PI, None, 1, 2, 3, 7, 0.2, 1),
                            lambda: _core.mlp_train_batch(T, PI, None, 1, 2, 3, 7, 2.0, 1)),
        "mlp_train_steps": (lambda: _core.mlp_train_steps(CFG, (p, g, m, v), ws, 2, T, PI, None, 1,
                                                          0, np.array([1e-6]), OPTIONS),
                            lambda: _core.mlp_train_steps(CFG, (p, g, m, v), ws, 2, T, PI, None, 1,
                                                          0, np.array([-1.0]), OPTIONS)),
        "rank": (lambda: _core.rank(X), lambda: _core.rank(np.full((3, 3), np.nan))),
        "cka": (lambda: _core.cka((X, Y), False, True, ("X", "Y")),
                lambda: _core.cka((X, Y[:4]), False, False)),
        "check_memory": (lambda: _core.check_memory(10.0, "x"),
                         lambda: _core.check_memory(1e30, "x")),
        "philox4x32_10": (lambda: _core.philox4x32_10((1, 2, 3, 4), (5, 6)),
                          lambda: _core.philox4x32_10((1, 2, 3), (5, 6))),
    }


ERRORS = (TypeError, ValueError, MemoryError)


@pytest.mark.parametrize("name", sorted(core_calls()))
def test_no_leak_refcount_or_mutation(name):
    ok, fail = core_calls()[name]
    inputs = [T, PI, E, TOK, MASKED, MASK, X, Y, MODEL.params, WS]
    copies = [a.copy() for a in inputs[:-1]]
    gc.collect()  # e.g. an earlier failure's traceback still referencing the inputs
    refs = [sys.getrefcount(a) for a in inputs]

    def run(n):
        for _ in range(n):
            ok()
            try:
                fail()
            except ERRORS:
                pass
            else:
                raise AssertionError("the error path of %s did not raise" % name)

    run(500)  # warm-up: pymalloc arenas, OpenBLAS buffers
    # two rounds: a leak grows RSS in both, while a one-off growth (another thread's arena, an
    # allocator's high-water mark on a loaded machine: 3.9 MB once seen here) shows in one
    growth = []
    for _ in range(2):
        gc.collect()
        before = rss()
        run(LEAK_CALLS)
        gc.collect()
        growth.append(rss() - before)
    assert ASAN or min(growth) < LEAK_BOUND, "%s: RSS grew by %s bytes over %d calls" % (
        name, growth, LEAK_CALLS)
    assert [sys.getrefcount(a) for a in inputs] == refs
    for a, c in zip(inputs, copies):
        np.testing.assert_array_equal(a, c)


# -- concurrency ------------------------------------------------------------------------------

KERNELS = {
    "sample": lambda: CHAIN.sample(64, 32, seed=9),
    "posterior": lambda: CHAIN.posterior(MASKED, MASK),
    "bayes_loss": lambda: CHAIN.bayes_loss(TOK, MASK),
    "mask_tokens": lambda: rg.mask_tokens(TOK, rate=0.5, seed=1, mask_id=4)[0],
    "logits": lambda: MODEL.logits(MASKED),
    "stream": lambda: MODEL.residual_stream(MASKED),
    "gradients": lambda: MODEL.gradients(MASKED, TOK, MASK)[1]["tok_emb"],
    "effective_rank": lambda: rg.effective_rank(np.stack([X] * 8), n_threads=1),
    "singular_values": lambda: rg.singular_values(X),
    "cka_matrix": lambda: rg.cka_matrix(np.stack([X, 2 * X + 1, X ** 2])),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_eight_threads_match_serial(name):
    f = KERNELS[name]
    serial = f()
    barrier = threading.Barrier(8)

    def worker(_):
        barrier.wait()
        return [f() for _ in range(20)]

    with ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(worker, range(8)) for r in rs]
    assert len(results) == 160
    for r in results:
        np.testing.assert_array_equal(r, serial)


def train_fresh(seed, steps):
    model = rg.ResidualMLP(4, 7, 3, 8, 2, seed=seed)
    rg.train(model, CHAIN, steps, batch_size=8, seed=seed, eval_size=8, progress=False)
    return model


def test_two_models_training_in_two_threads_do_not_interfere():
    serial = [train_fresh(s, 60).params for s in (1, 2)]
    barrier = threading.Barrier(2)

    def worker(seed):
        barrier.wait()
        return train_fresh(seed, 60).params

    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(worker, (1, 2)))
    for a, b in zip(parallel, serial):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(serial[0], serial[1])


# -- interruption -----------------------------------------------------------------------------

def assert_consistent(model, seed):
    """The model equals a fresh one trained uninterrupted for model.step steps."""
    assert np.isfinite(model.params).all()
    ref = train_fresh(seed, model.step)
    np.testing.assert_array_equal(model.params, ref.params)
    np.testing.assert_array_equal(model._adam_v, ref._adam_v)


def test_interrupt_from_progress_callback(monkeypatch, tmp_path):
    import tqdm.auto

    class Bar:
        calls = 0

        def __init__(self, *a, **k):
            pass

        def update(self, n):
            Bar.calls += 1
            if Bar.calls == 2:
                raise KeyboardInterrupt

        def set_postfix(self, *a, **k):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    model = rg.ResidualMLP(4, 7, 3, 8, 2, seed=1)
    with pytest.raises(TrainingInterrupted, match=r"interrupted after step 50 \(50 of the 200"):
        rg.train(model, CHAIN, 200, batch_size=8, seed=1, eval_size=8, eval_every=0)
    assert model.step == 50
    assert_consistent(model, 1)
    path = tmp_path / "m.npz"
    model.save(path)
    rg.train(model, CHAIN, 10, batch_size=8, seed=1, eval_size=8, progress=False)
    assert model.step == 60 and rg.ResidualMLP.load(path).step == 50


def test_interrupt_main_between_chunks():
    import signal
    model = rg.ResidualMLP(4, 7, 3, 8, 2, seed=1)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(TrainingInterrupted) as info:
        rg.train(model, CHAIN, 10**7, batch_size=8, seed=1, eval_size=8, eval_every=0,
                 progress=False)
    assert time.perf_counter() - t0 < 30
    assert 0 < model.step < 10**7 and model.step % 25 == 0  # stopped at a chunk boundary
    assert "after step %d" % model.step in str(info.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert_consistent(model, 1)


def test_interrupted_training_keeps_its_history():
    """The History of the steps done rides on the exception, equal to an uninterrupted run's
    history of those steps (losses, evaluations and flow points)."""
    kwargs = dict(batch_size=8, seed=1, eval_size=8, eval_every=10, flow_at=[10, 40, 70])

    def stop_at_50(_):
        if model.step >= 50:
            raise KeyboardInterrupt

    model = rg.ResidualMLP(4, 7, 3, 8, 2, seed=1)
    with pytest.raises(TrainingInterrupted) as info:
        rg.train(model, CHAIN, 100, progress=stop_at_50, **kwargs)
    hist = info.value.history
    assert model.step == 50
    ref = rg.ResidualMLP(4, 7, 3, 8, 2, seed=1)
    full = rg.train(ref, CHAIN, 50, total_steps=100, progress=False, **kwargs)
    np.testing.assert_array_equal(hist.steps, np.arange(1, 51))
    np.testing.assert_array_equal(hist.losses, full.losses)
    # the interruption came before step 50's evaluation
    np.testing.assert_array_equal(hist.eval_steps, [10, 20, 30, 40])
    np.testing.assert_array_equal(hist.eval_loss, full.eval_loss[:4])
    assert [p["step"] for p in hist.flow] == [10, 40]
    assert [p["loss"] for p in hist.flow] == [p["loss"] for p in full.flow]


def tiny_configs(n):
    base = Config(steps=2, hidden=8, depth=2, width=2, length=6, eval_size=32, batch_size=8,
                  n_states=3)
    return rg.grid(base, seed=list(range(n)))


def test_sweep_interrupt_keeps_complete_records_and_resumes(monkeypatch, tmp_path):
    real_run, calls = rsweep.run, []

    def flaky(config, progress=True, checkpoint=None):
        calls.append(config.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(config, progress=progress, checkpoint=checkpoint)

    monkeypatch.setattr(rsweep, "run", flaky)
    configs = tiny_configs(3)
    with pytest.raises(rg.SweepInterrupted) as info:  # a KeyboardInterrupt
        rg.sweep(configs, store=tmp_path, progress=False)
    assert (info.value.done, info.value.total) == (1, 3)
    files = sorted(os.listdir(tmp_path))
    assert files == [configs[0].key() + ".json"]  # one complete record, no temporary file
    assert rsweep.load_record(tmp_path / files[0], configs[0].key())["status"] == "ok"
    calls.clear()
    monkeypatch.setattr(rsweep, "run", lambda c, progress=True, checkpoint=None: (
        calls.append(c.seed), real_run(c, progress, checkpoint))[1])
    table = rg.sweep(configs, store=tmp_path, progress=False)
    status = list(table["status"]) if hasattr(table, "columns") else [r["status"] for r in table]
    assert calls == [1, 2] and status == ["ok"] * 3


def test_sweep_interrupt_during_write_leaves_no_partial_file(monkeypatch, tmp_path):
    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)  # inside the atomic write of the first record
    with pytest.raises(rg.SweepInterrupted) as info:
        rg.sweep(tiny_configs(1), store=tmp_path, progress=False)
    assert info.value.done == 0  # the run finished, but its record was not kept
    assert os.listdir(tmp_path) == []


# -- memory bounds ----------------------------------------------------------------------------

MODEL_SMALL = rg.ResidualMLP(3, 5, 2, 4, 1)
HUGE_CALLS = {
    "residual_stream": (lambda: MODEL_SMALL.residual_stream(huge(np.int32, (2**36, 5))),
                        "residual stream of tokens"),
    "logits": (lambda: MODEL_SMALL.logits(huge(np.int32, (2**36, 5))), "logits of tokens"),
    "posterior": (lambda: CHAIN.posterior(huge(np.int32, (2**30, 2**30)),
                                          huge(np.bool_, (2**30, 2**30))),
                  "posterior of masked_tokens"),
    "bayes_loss": (lambda: CHAIN.bayes_loss(huge(np.int16, (2**30, 2**30)),
                                            huge(np.bool_, (2**30, 2**30))), "tokens"),
    "sample": (lambda: CHAIN.sample(10**12, 10**6), "n * length"),
    "mask_tokens": (lambda: rg.mask_tokens(huge(np.int16, (2**30, 2**30)), mask_id=4),
                    "tokens"),
    "effective_rank": (lambda: rg.effective_rank(huge(np.float64, (2**28, 2**28))), "X"),
    "effective_rank_batch": (lambda: rg.effective_rank(huge(np.float32, (2**22, 2**22, 9, 9))),
                             "X"),
    "linear_cka": (lambda: rg.linear_cka(huge(np.float64, (2**28, 2**28)),
                                         huge(np.float64, (2**28, 2))), "X"),
    "cka_matrix": (lambda: rg.cka_matrix(huge(np.float32, (2**10, 2**20, 2**20))), "stream"),
    "rank_profile": (lambda: rg.rank_profile(huge(np.float32, (4, 2**30, 2**20, 16)),
                                             "pooled"), "stream"),
    "chain": (lambda: rg.MarkovChain(huge(np.float64, (2**28, 2**28))), "transition"),
    "model": (lambda: rg.ResidualMLP(8, 10**4, 10**4, 10**6, 100), "ResidualMLP parameters"),
    "train_batch": (lambda: rg.train(MODEL_SMALL, rg.MarkovChain.lazy(3, 1.0), 1,
                                     batch_size=10**12, progress=False), "batch_size"),
    "train_eval": (lambda: rg.train(MODEL_SMALL, rg.MarkovChain.lazy(3, 1.0), 1,
                                    eval_size=10**12, progress=False), "eval_size"),
}


@pytest.mark.parametrize("name", sorted(HUGE_CALLS))
def test_memory_bound_raises_before_allocating(name):
    f, what = HUGE_CALLS[name]
    before = rss()
    with pytest.raises(rg.MemoryLimitError) as info:
        f()
    assert isinstance(info.value, MemoryError)
    msg = str(info.value)
    assert what in msg and "GB of memory is available" in msg, msg
    assert rss() - before < 64 * 1024 * 1024  # nothing large was touched


def test_check_memory_helper():
    avail = _core.available_memory()
    assert avail > 0
    _core.check_memory(avail / 2, "half")  # fits
    _core.check_memory(32 * 1024.0 ** 2, "small")  # below the threshold: never checked
    with pytest.raises(rg.MemoryLimitError, match=r"^twice needs [0-9.e+]+ GB but only"):
        _core.check_memory(2 * avail + 1e9, "twice")


def test_interrupt_right_after_a_chunk_returns_is_held(monkeypatch):
    """SIGINT pending when the C chunk returns (its parameter updates are done) must not drop
    the chunk's result: before the fix model.step lagged the parameters by a chunk."""
    real, calls = _core.mlp_train_steps, []

    def chunk(*args):
        out = real(*args)
        calls.append(1)
        if len(calls) == 2:
            _thread.interrupt_main()  # delivered at the caller's next bytecode
        return out

    monkeypatch.setattr(_core, "mlp_train_steps", chunk)
    model = rg.ResidualMLP(4, 7, 3, 8, 2, seed=1)
    with pytest.raises(TrainingInterrupted, match="after step 50"):
        rg.train(model, CHAIN, 200, batch_size=8, seed=1, eval_size=8, eval_every=0,
                 progress=False)
    assert model.step == 50 and len(calls) == 2
    monkeypatch.undo()
    assert_consistent(model, 1)
