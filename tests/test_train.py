"""Training (rgflow/train.py; csrc/train.c): AdamW against PyTorch, the fused loop's batches,
determinism, split and resumed runs, learning-rate schedules and failure reporting."""
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rgflow as rg
from rgflow import _core
from rgflow.train import flow_point, learning_rate, log_steps, train_batch
from conftest import new_small, rel_err, torch_loss, torch_module


# -- AdamW ------------------------------------------------------------------------------------

def torch_adamw_losses(torch, net, opt, chain, model, steps, clip=None):
    """Losses of `steps` torch optimizer steps on the batches train(..., batch_size=16,
    seed=11) takes, with clip_grad_norm_(clip) if given."""
    ref = []
    for s in range(steps):
        t, x, mask = train_batch(chain, model, s, batch_size=16, seed=11)
        opt.zero_grad()
        loss = torch_loss(torch, net, x, t, mask)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        ref.append(loss.item())
    return ref


def test_adamw_steps_match_torch():
    """10 fused train steps (weight decay, clipping) vs torch.optim.AdamW +
    clip_grad_norm_ on the same batches: losses agree to 1e-4 relative, parameters to 1e-3."""
    model = rg.ResidualMLP(8, 8, 4, 32, 2, seed=7)
    torch, net = torch_module(model)
    chain = rg.MarkovChain.lazy(8, 7.0)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.1)
    ref = torch_adamw_losses(torch, net, opt, chain, model, 10, clip=0.5)
    hist = rg.train(model, chain, 10, batch_size=16, lr=3e-3, weight_decay=0.1,
                    max_grad_norm=0.5, seed=11, progress=False, eval_size=8)
    np.testing.assert_allclose(hist.losses, ref, rtol=1e-4)
    assert not np.allclose(ref[0], ref[-1], rtol=1e-3)        # the parameters did move
    for name, v in model.named_params().items():
        p = dict(net.named_parameters())[name].detach().numpy()
        assert rel_err(v, p) < 1e-3, name


def test_betas_and_eps_reach_the_optimizer():
    """betas and eps are rg.train's options, not constants of the C core: 5 fused steps with
    betas (0.8, 0.99) and eps 1e-3 follow torch.optim.AdamW given the same, and differ from
    the defaults' steps."""
    chain = rg.MarkovChain.lazy(8, 7.0)
    model = rg.ResidualMLP(8, 8, 4, 32, 2, seed=7)
    torch, net = torch_module(model)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-3,
                            weight_decay=0.0)
    ref = torch_adamw_losses(torch, net, opt, chain, model, 5)
    hist = rg.train(model, chain, 5, batch_size=16, lr=3e-3, seed=11, progress=False,
                    eval_size=8, betas=(0.8, 0.99), eps=1e-3)
    np.testing.assert_allclose(hist.losses, ref, rtol=1e-4)
    for name, v in model.named_params().items():
        p = dict(net.named_parameters())[name].detach().numpy()
        assert rel_err(v, p) < 1e-3, name
    default = rg.ResidualMLP(8, 8, 4, 32, 2, seed=7)
    rg.train(default, chain, 5, batch_size=16, lr=3e-3, seed=11, progress=False, eval_size=8)
    assert not np.array_equal(default.params, model.params)


@pytest.mark.parametrize("kw, exc, name", [
    (dict(betas=(1.0, 0.999)), ValueError, "betas[0]"),
    (dict(betas=(0.9, -0.1)), ValueError, "betas[1]"),
    (dict(betas=(0.9, float("nan"))), ValueError, "betas[1]"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(betas=(0.9,)), TypeError, "betas"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=float("inf")), ValueError, "eps"),
    (dict(eps="1e-8"), TypeError, "eps"),
])
def test_betas_and_eps_are_validated_naming_them(kw, exc, name):
    model = new_small()
    with pytest.raises(exc, match=re.escape(name)):
        rg.train(model, rg.MarkovChain.lazy(8, 2.0), 1, progress=False, eval_size=8, **kw)
    assert model.step == 0


def test_core_checks_the_options_it_is_given():
    """_core.mlp_train_steps takes the AdamW and batch options as one dict with exactly its
    keys, each checked against its domain by the binding."""
    model = new_small()
    chain = rg.MarkovChain.lazy(8, 2.0)
    options = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=0.0,
                   mask_rate=0.15, mask_span=1)

    def steps(**change):
        return _core.mlp_train_steps(
            model.shape, (model.params, model._grads, model._adam_m, model._adam_v),
            model._workspace(4), 4, chain.transition, chain.stationary, None, 0, 0,
            np.full(1, 1e-3),
            dict(options, **change))
    for change, exc, name in [(dict(betas=(0.9, 1.0)), ValueError, "betas[1]"),
                              (dict(eps=-1.0), ValueError, "eps"),
                              (dict(weight_decay=float("inf")), ValueError, "weight_decay"),
                              (dict(mask_rate=1.5), ValueError, "mask_rate"),
                              (dict(mask_span=0), ValueError, "mask_span"),
                              (dict(beta1=0.9), TypeError, "beta1")]:
        with pytest.raises(exc, match=re.escape(name)):
            steps(**change)
    with pytest.raises(TypeError, match="eps"):
        _core.mlp_train_steps(model.shape, (model.params, model._grads, model._adam_m,
                                           model._adam_v), model._workspace(4), 4,
                              chain.transition, chain.stationary, None, 0, 0, np.full(1, 1e-3),
                              {k: v for k, v in options.items() if k != "eps"})
    losses, done, bad = steps()
    assert done == 1 and bad == 0 and np.isfinite(losses).all()

# -- training ----------------------------------------------------------------------------------

@pytest.fixture
def one_blas_thread():
    """Small GEMMs gain nothing from a second thread, and on a loaded 2-core machine OpenBLAS
    workers waiting for a core turn each of the ~50k sgemm calls of a run into a scheduler
    round trip (measured: 35 s instead of 2 s)."""
    before = rg.set_num_threads(1)
    yield
    rg.set_num_threads(before)


def test_training_approaches_bayes_floor(one_blas_thread):
    """xi = 7 chain, V = 8: unigram entropy ln 8 = 2.079, Bayes floor on the eval batch 0.309.
    Measured eval CE after 200/400/600 steps: 0.572, 0.501, 0.456 (~2 s). Asserted: below 0.6
    and within 0.3 of the floor at 600 steps, decreasing."""
    chain = rg.MarkovChain.lazy(8, 7.0)
    model = rg.ResidualMLP(8, 16, 8, 128, 4, seed=0)
    hist = rg.train(model, chain, 600, batch_size=128, lr=2e-3, seed=0, progress=False,
                    eval_every=200, eval_size=1024)
    assert list(hist.eval_steps) == [200, 400, 600]
    floor = hist.eval_bayes[-1]
    assert floor == pytest.approx(0.33, abs=0.05)
    assert hist.eval_loss[0] > hist.eval_loss[-1]
    assert hist.eval_loss[-1] < 0.6 < 0.3 * chain.unigram_entropy
    assert hist.eval_loss[-1] - floor < 0.3
    assert hist.losses[:20].mean() > 1.9


def test_history_loss_is_loss_of_the_reproducible_batch():
    chain = rg.MarkovChain.lazy(8, 2.0)
    model = rg.ResidualMLP(8, 8, 4, 16, 2, seed=0)
    before = rg.ResidualMLP(8, 8, 4, 16, 2, seed=0)
    hist = rg.train(model, chain, 3, batch_size=32, seed=9, progress=False)
    t, x, mask = train_batch(chain, before, 0, batch_size=32, seed=9)
    assert np.array_equal(x[mask], np.full(mask.sum(), 8)) and np.array_equal(x[~mask], t[~mask])
    assert hist.losses[0] == pytest.approx(before.loss(x, t, mask), rel=1e-12)


def run_kwargs(**kw):
    base = dict(batch_size=16, lr=3e-3, weight_decay=0.01, schedule="cosine", warmup=3,
                total_steps=20, max_grad_norm=1.0, seed=4, progress=False, eval_every=0,
                eval_size=8)
    base.update(kw)
    return base


def test_determinism_and_split_training_is_bit_exact():
    chain = rg.MarkovChain.lazy(8, 7.0)
    a, b, c = new_small(), new_small(), new_small()
    ha = rg.train(a, chain, 20, **run_kwargs())
    hb1 = rg.train(b, chain, 7, **run_kwargs())
    hb2 = rg.train(b, chain, 13, **run_kwargs())
    assert a.step == b.step == 20
    assert np.array_equal(ha.losses, np.concatenate([hb1.losses, hb2.losses]))
    assert np.array_equal(ha.lrs, np.concatenate([hb1.lrs, hb2.lrs]))
    assert np.array_equal(a.params, b.params) and np.array_equal(a._adam_v, b._adam_v)
    hc = rg.train(c, chain, 20, **run_kwargs(seed=5))
    assert not np.array_equal(ha.losses, hc.losses)
    assert ha.lrs[2] == pytest.approx(3e-3) and ha.lrs[-1] < 1e-4   # warmup then cosine


def test_learning_rate_schedule():
    assert learning_rate(0, 1.0, warmup=4) == 0.25
    assert learning_rate(10, 1.0, "cosine", warmup=0, total_steps=20) == pytest.approx(0.5)
    assert learning_rate(30, 1.0, "cosine", warmup=0, total_steps=20) == 0.0
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, 1.0, "linear")


def test_checkpoint_in_new_process_continues_bit_exact(tmp_path):
    chain = rg.MarkovChain.lazy(8, 7.0)
    full, half = new_small(), new_small()
    rg.train(full, chain, 20, **run_kwargs())
    rg.train(half, chain, 10, **run_kwargs())
    ck, out = tmp_path / "half.npz", tmp_path / "done.npz"
    half.save(ck)
    script = textwrap.dedent("""
        import json, sys, rgflow as rg
        m = rg.ResidualMLP.load(sys.argv[1])
        assert m.step == 10, m.step
        rg.train(m, rg.MarkovChain.lazy(8, 7.0), 10, **json.loads(sys.argv[3]))
        m.save(sys.argv[2])
    """)
    # cwd elsewhere: from the repo root `python -c` would import the uncompiled source tree
    subprocess.run([sys.executable, "-c", script, str(ck), str(out), json.dumps(run_kwargs())],
                   check=True, cwd=tmp_path)
    done = rg.ResidualMLP.load(out)
    assert done.step == 20 and done.train_seed == 4
    assert np.array_equal(done.params, full.params)
    assert np.array_equal(done._adam_m, full._adam_m)
    assert np.array_equal(done._adam_v, full._adam_v)


def test_nonfinite_loss_and_parameters_name_the_step():
    chain = rg.MarkovChain.lazy(8, 7.0)
    model = new_small()
    rg.train(model, chain, 3, batch_size=8, progress=False, eval_size=8)
    model.named_params()["blocks.1.fc1.bias"][0] = np.nan
    with pytest.raises(FloatingPointError, match="step 3"):
        rg.train(model, chain, 5, batch_size=8, progress=False, eval_size=8, eval_every=0)
    assert model.step == 3
    model = new_small()
    with pytest.raises(FloatingPointError, match=r"step \d+"):
        rg.train(model, chain, 5, batch_size=8, lr=1e38, progress=False, eval_size=8)


def test_progress_bar_and_depth_zero(capsys):
    chain = rg.MarkovChain.lazy(8, 7.0)
    model = rg.ResidualMLP(8, 8, 4, 16, 0)
    hist = rg.train(model, chain, 4, batch_size=8, progress=True, eval_size=8)
    assert "floor" in capsys.readouterr().err
    assert hist.eval_steps[-1] == 4 and np.isfinite(hist.eval_loss).all()
    assert model.residual_stream(np.zeros((2, 8), dtype=np.int32)).shape == (1, 2, 8, 4)


@pytest.mark.parametrize("block_ln", [True, False])
def test_training_with_mask_spans_uses_the_documented_batches(block_ln):
    """The fused C loop trains on exactly train_batch(step): its first loss is the model's loss
    on that batch before any update, whatever the span; spans are contiguous runs."""
    from rgflow.train import train_batch
    chain = rg.MarkovChain.lazy(8, 3.0)
    model = rg.ResidualMLP(8, 24, 8, 32, 2, seed=1, block_ln=block_ln)
    tokens, masked, mask = train_batch(chain, model, step=0, batch_size=16, mask_rate=0.3,
                                       mask_span=4, seed=9)
    assert mask.any(axis=1).all() and (masked[mask] == 8).all()
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    for row in range(16):
        starts, ends = np.flatnonzero(edges[row] == 1), np.flatnonzero(edges[row] == -1)
        assert all(e - s >= 4 or e == 24 for s, e in zip(starts, ends))
    before = model.loss(masked, tokens, mask)
    hist = rg.train(model, chain, steps=3, batch_size=16, mask_rate=0.3, mask_span=4, seed=9,
                    progress=False, eval_every=0)
    assert hist.losses[0] == pytest.approx(before, rel=1e-6)
    # the second step's batch is step 1's, and differs from step 0's
    t1, m1, k1 = train_batch(chain, model, step=1, batch_size=16, mask_rate=0.3, mask_span=4,
                             seed=9)
    assert not np.array_equal(k1, mask)


def test_training_stops_at_the_target_excess():
    """target_excess stops at the first evaluation within that many nats of the floor; the
    steps are a budget.  A target every evaluation meets stops at the first one; one none meets
    runs the whole budget."""
    chain = rg.MarkovChain.lazy(8, 7.0)
    model = rg.ResidualMLP(8, 16, 8, 64, 2, seed=0)
    hist = rg.train(model, chain, 100, batch_size=32, eval_every=20, eval_size=64,
                    progress=False, target_excess=10.0)
    assert hist.stopped_early and model.step == 20 and len(hist.losses) == 20
    assert hist.eval_steps.tolist() == [20]
    assert hist.eval_loss[-1] - hist.eval_bayes[-1] <= 10.0
    hist = rg.train(model, chain, 40, batch_size=32, eval_every=20, eval_size=64,
                    progress=False, target_excess=0.0)
    assert not hist.stopped_early and model.step == 60 and hist.eval_steps.tolist() == [40, 60]
    with pytest.raises(ValueError, match="eval_every"):
        rg.train(model, chain, 10, eval_every=0, progress=False, target_excess=0.1)
    with pytest.raises(ValueError, match="target_excess"):
        rg.train(model, chain, 10, progress=False, target_excess=-1.0)


def test_progress_counts_the_steps_of_an_early_stop():
    """The chunk that reaches the target is reported to the progress callable before the stop
    (a sweep's step bar would otherwise miss it)."""
    done = []
    model = rg.ResidualMLP(8, 16, 8, 64, 2, seed=0)
    rg.train(model, rg.MarkovChain.lazy(8, 7.0), 100, batch_size=32, eval_every=20,
             eval_size=64, progress=done.append, target_excess=10.0)
    assert model.step == 20 and sum(done) == 20


def test_flow_is_recorded_without_changing_the_run():
    """Recording the flow cuts the chunks elsewhere: the parameters and evaluations stay the
    same bits; each flow point is the documented snapshot of the model at its step."""
    chain = rg.MarkovChain.lazy(8, 7.0)
    a = rg.ResidualMLP(8, 8, 8, 32, 3, seed=1)
    b = rg.ResidualMLP(8, 8, 8, 32, 3, seed=1)
    ha = rg.train(a, chain, 120, progress=False, schedule="cosine", warmup=10, eval_size=64)
    at = [1, 7, 60, 60, 119, 500]  # duplicates and steps beyond the run are ignored
    hb = rg.train(b, chain, 120, progress=False, schedule="cosine", warmup=10, eval_size=64,
                  flow_at=at)
    assert np.array_equal(a.params, b.params) and np.array_equal(ha.eval_loss, hb.eval_loss)
    assert ha.flow == [] and [f["step"] for f in hb.flow] == [1, 7, 60, 119]
    tokens, masked, mask = hb.eval_batch
    last = flow_point(b, tokens, masked, mask)
    assert last["step"] == 120
    stream = b.residual_stream(masked)
    np.testing.assert_allclose(last["erank_masked"],
                               rg.rank_profile(stream, "position", mask=mask).masked)
    assert last["loss"] == b.loss(masked, tokens, mask)
    # a resumed run records the points of its own range
    hc = rg.train(b, chain, 10, progress=False, flow_at=at + [125])
    assert [f["step"] for f in hc.flow] == [125]
    for bad, err in (([1.5], TypeError), (3, TypeError), ([True], TypeError)):
        with pytest.raises(err, match="flow_at"):
            rg.train(b, chain, 1, progress=False, flow_at=bad)


def test_log_steps():
    assert log_steps(1000, points=4) == [10, 46, 215, 1000]
    assert log_steps(5, points=24) == [5] and log_steps(300, points=1) == [300]
    steps = log_steps(30000, points=24)
    assert steps[0] == 10 and steps[-1] == 30000 and len(steps) == 24
    with pytest.raises(ValueError, match="points"):
        log_steps(100, points=0)


def test_flow_loss_is_the_evaluation_loss_beyond_one_chunk():
    """More than 256 held-out sequences: model.loss sums per chunk of 256, the gradient pass in
    one batch; the flow records the former, as the evaluations do."""
    chain = rg.MarkovChain.lazy(8, 2.0)
    m = rg.ResidualMLP(8, 8, 8, 32, 2, seed=0)
    hist = rg.train(m, chain, 30, progress=False, eval_size=700, flow_at=[30])
    assert hist.flow[0]["loss"] == hist.eval_loss[-1]


def test_subnormals_flushed_inside_kernels_only():
    """The model's kernels run with subnormals flushed to zero (pool.h: switched-off units
    made a paper-size step 3-4 s instead of ~70 ms); a network whose hidden units are all
    switched off (fc1 biases -30, GELU outputs and derivatives underflow) trains to the same
    bits on 1 and 2 threads, and the caller's floating-point mode is restored: NumPy in this
    thread still produces subnormals afterwards."""
    import rgflow as rg
    chain = rg.MarkovChain.lazy(4, 2.0)
    runs = []
    for threads in (1, 2):
        m = rg.ResidualMLP(4, 8, 8, 32, 2, seed=1)
        sd = {k: np.array(v) for k, v in m.state_dict().items()}
        for k in sd:
            if k.endswith("fc1.bias"):
                sd[k][:] = -30.0
        m.load_state_dict(sd)
        with rg.num_threads(threads):
            h = rg.train(m, chain, 30, batch_size=16, lr=1e-3, progress=False, eval_every=0)
        runs.append((h.losses, m.params.copy()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    tiny32, tiny64 = np.float32(1e-40), np.float64(5e-320)
    assert tiny32 * np.float32(1.0) > 0 and tiny64 * 1.0 > 0      # not flushed here
    assert np.float32(1e-38) / np.float32(10) > 0                   # not flushed to zero
