"""Residual MLP: layout, initialisation, gradients (finite differences, a float64 NumPy
backprop reference, PyTorch), AdamW, training, determinism, checkpoints and input validation."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.special import erf

import rgflow as rg
from rgflow import _core
from rgflow.train import learning_rate, train_batch



def tiny(block_ln=True, seed=1):
    return rg.ResidualMLP(n_states=5, length=4, width=3, hidden=7, depth=2, seed=seed,
                          block_ln=block_ln)


def batch_for(model, n=6, seed=0, rate=0.4):
    chain = rg.MarkovChain.lazy(model.n_states, 2.0)
    tokens = chain.sample(n, model.length, seed=seed)
    masked, mask = rg.mask_tokens(tokens, rate=rate, seed=seed + 1, mask_id=model.n_states)
    return masked, tokens, mask


def perturb(model, scale=0.3, seed=0):
    """Move LN weights/biases away from 1/0 so their gradients are generic."""
    rng = np.random.default_rng(seed)
    model.params += (scale * rng.standard_normal(model.n_params)).astype(np.float32)


# -- float64 NumPy reference of the model (forward and hand-written backward) -----------------

def ln_fwd(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    rs = 1.0 / np.sqrt(var + 1e-5)
    xhat = (x - mu) * rs
    return xhat * w + b, (xhat, rs)


def ln_bwd(g, w, cache):
    xhat, rs = cache
    gw = g * w
    dx = rs * (gw - gw.mean(-1, keepdims=True) - xhat * (gw * xhat).mean(-1, keepdims=True))
    return dx, (g * xhat).sum(0), g.sum(0)


def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def dgelu(x):
    return 0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


def ref_forward_backward(model, x, tokens, mask):
    """Returns (logits (n, L, V), stream (K+1, n, L, d), loss, grads dict) in float64."""
    P = {k: v.astype(np.float64) for k, v in model.named_params().items()}
    n, L = x.shape
    V, d, K, D = model.n_states, model.width, model.depth, model.length * model.width
    z = (P["tok_emb"][x] + P["pos_emb"][None]).reshape(n, D)
    stream, caches = [z], []
    for k in range(K):
        pre = "blocks.%d." % k
        if model.block_ln:
            xn, lc = ln_fwd(z, P[pre + "ln.weight"], P[pre + "ln.bias"])
        else:
            xn, lc = z, None
        a = xn @ P[pre + "fc1.weight"].T + P[pre + "fc1.bias"]
        h = gelu(a)
        caches.append((xn, lc, a, h))
        z = z + h @ P[pre + "fc2.weight"].T + P[pre + "fc2.bias"]
        stream.append(z)
    y, lcf = ln_fwd(z, P["ln_f.weight"], P["ln_f.bias"])
    y2 = y.reshape(n * L, d)
    logits = y2 @ P["unembed.weight"].T + P["unembed.bias"]
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    t, m = tokens.reshape(-1), mask.reshape(-1)
    nll = lse - logits[np.arange(n * L), t]
    loss = nll[m].mean()
    G = {}
    dlog = np.exp(logits - lse[:, None])
    dlog[np.arange(n * L), t] -= 1
    dlog *= m[:, None] / m.sum()
    G["unembed.weight"], G["unembed.bias"] = dlog.T @ y2, dlog.sum(0)
    dz, G["ln_f.weight"], G["ln_f.bias"] = ln_bwd((dlog @ P["unembed.weight"]).reshape(n, D),
                                                  P["ln_f.weight"], lcf)
    for k in reversed(range(K)):
        pre = "blocks.%d." % k
        xn, lc, a, h = caches[k]
        G[pre + "fc2.weight"], G[pre + "fc2.bias"] = dz.T @ h, dz.sum(0)
        da = (dz @ P[pre + "fc2.weight"]) * dgelu(a)
        G[pre + "fc1.weight"], G[pre + "fc1.bias"] = da.T @ xn, da.sum(0)
        dxn = da @ P[pre + "fc1.weight"]
        if model.block_ln:
            dxz, G[pre + "ln.weight"], G[pre + "ln.bias"] = ln_bwd(dxn, P[pre + "ln.weight"], lc)
            dz = dz + dxz
        else:
            dz = dz + dxn
    dz3 = dz.reshape(n, L, d)
    G["pos_emb"] = dz3.sum(0)
    G["tok_emb"] = np.zeros_like(P["tok_emb"])
    np.add.at(G["tok_emb"], x.reshape(-1), dz3.reshape(n * L, d))
    return (logits.reshape(n, L, V), np.stack(stream).reshape(K + 1, n, L, d), loss, G)


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


# -- layout and initialisation -----------------------------------------------------------------

def test_state_dict_names_shapes_and_arena():
    m = rg.ResidualMLP(8, 6, 4, 16, 2)
    D = 24
    expect = [("tok_emb", (9, 4)), ("pos_emb", (6, 4))]
    for k in range(2):
        expect += [("blocks.%d.ln.weight" % k, (D,)), ("blocks.%d.ln.bias" % k, (D,)),
                   ("blocks.%d.fc1.weight" % k, (16, D)), ("blocks.%d.fc1.bias" % k, (16,)),
                   ("blocks.%d.fc2.weight" % k, (D, 16)), ("blocks.%d.fc2.bias" % k, (D,))]
    expect += [("ln_f.weight", (D,)), ("ln_f.bias", (D,)), ("unembed.weight", (8, 4)),
               ("unembed.bias", (8,))]
    sd = m.state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == expect
    assert m.n_params == sum(int(np.prod(s)) for _, s in expect) == m.params.size
    # views tile the arena in order, without gaps
    views = m.named_params()
    assert np.shares_memory(views["unembed.bias"], m.params)
    assert np.array_equal(np.concatenate([v.ravel() for v in views.values()]), m.params)
    no_ln = rg.ResidualMLP(8, 6, 4, 16, 2, block_ln=False)
    assert not any(".ln." in k for k in no_ln.state_dict())
    assert no_ln.n_params == m.n_params - 4 * D


def test_init_reproducible_and_torch_default_distributions():
    a, b, c = (rg.ResidualMLP(8, 16, 8, 256, 2, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.params, b.params) and not np.array_equal(a.params, c.params)
    sd = a.state_dict()
    assert np.all(sd["blocks.0.ln.weight"] == 1) and np.all(sd["blocks.1.ln.bias"] == 0)
    assert np.all(sd["ln_f.weight"] == 1) and np.all(sd["ln_f.bias"] == 0)
    emb = np.concatenate([sd["tok_emb"].ravel(), sd["pos_emb"].ravel()])
    assert abs(emb.mean()) < 0.15 and abs(emb.std() - 1) < 0.1           # N(0, 1), n = 200
    w1 = sd["blocks.0.fc1.weight"]                                      # U(+-1/sqrt(128))
    bound = 1 / np.sqrt(128)
    assert np.abs(w1).max() <= bound and abs(w1.std() - bound / np.sqrt(3)) < 0.01 * bound
    w2 = sd["blocks.1.fc2.weight"]                                      # U(+-1/sqrt(256))
    assert np.abs(w2).max() <= 1 / 16 and np.abs(w2).max() > 0.99 / 16
    # tensors draw from distinct streams: no two blocks share weights
    assert not np.array_equal(w1, sd["blocks.1.fc1.weight"])


# -- gradients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("block_ln", [True, False])
def test_every_gradient_matches_central_differences(block_ln):
    """Central differences of the float32 loss with h = 1e-2: rounding noise is about
    eps32 * |loss| / h ~ 3e-5 and truncation h^2 |f'''| ~ 1e-5, so |fd - grad| <= 2e-4 is a
    defensible bound; measured worst case ~ 6e-6. Each tensor is checked along a random
    direction (covers every entry) and at 4 random coordinates."""
    model = tiny(block_ln)
    perturb(model)
    x, t, mask = batch_for(model)
    loss, grads = model.gradients(x, t, mask)
    assert loss == pytest.approx(model.loss(x, t, mask), abs=0)
    rng = np.random.default_rng(0)
    h = 1e-2
    views = model.named_params()
    assert set(grads) == set(views)
    for name, g in grads.items():
        view = views[name]
        assert np.abs(g).max() > 1e-3, name               # the check below is not vacuous
        u = rng.standard_normal(view.shape).astype(np.float32)
        u /= np.linalg.norm(u)
        old = view.copy()
        view[...] = old + h * u
        lp = model.loss(x, t, mask)
        view[...] = old - h * u
        lm = model.loss(x, t, mask)
        view[...] = old
        assert abs((lp - lm) / (2 * h) - float((g * u).sum())) < 2e-4, name
        flat = view.reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            o = flat[i]
            flat[i] = o + h
            lp = model.loss(x, t, mask)
            flat[i] = o - h
            lm = model.loss(x, t, mask)
            flat[i] = o
            assert abs((lp - lm) / (2 * h) - g.reshape(-1)[i]) < 2e-4, (name, i)


@pytest.mark.parametrize("block_ln", [True, False])
def test_forward_backward_match_float64_numpy_reference(block_ln):
    """Each layer pair (embedding, LN, matmul, GELU, residual, masked CE) against a float64
    NumPy implementation with hand-written backprop: float32 kernels agree to ~1e-6 relative;
    asserted 1e-5 (logits, stream) and 1e-4 (every gradient tensor)."""
    model = rg.ResidualMLP(6, 5, 4, 24, 3, seed=2, block_ln=block_ln)
    perturb(model, 0.2)
    x, t, mask = batch_for(model, n=9)
    logits, stream, loss, G = ref_forward_backward(model, x, t, mask)
    assert rel_err(model.logits(x), logits) < 1e-5
    assert rel_err(model.residual_stream(x), stream) < 1e-5
    got_loss, grads = model.gradients(x, t, mask)
    assert got_loss == pytest.approx(loss, rel=1e-5)
    for name, g in grads.items():
        assert rel_err(g, G[name]) < 1e-4, name


def test_residual_stream_layers_and_chunking():
    model = rg.ResidualMLP(8, 8, 4, 16, 2, seed=0)
    chain = rg.MarkovChain.lazy(8, 3.0)
    x = chain.sample(600, 8, seed=5)  # > one 256-row chunk
    s = model.residual_stream(x)
    assert s.shape == (3, 600, 8, 4) and s.dtype == np.float32
    sd = model.state_dict()
    np.testing.assert_array_equal(s[0], sd["tok_emb"][x] + sd["pos_emb"])
    lg = model.logits(x)
    part = model.logits(x[300:303])
    np.testing.assert_allclose(lg[300:303], part, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.residual_stream(x[555:560]), s[:, 555:560], rtol=1e-6,
                               atol=1e-6)


# -- PyTorch reference -------------------------------------------------------------------------

def torch_module(model):
    torch = pytest.importorskip("torch")
    # one thread: torch's OpenMP workers otherwise keep spinning after each op and starve
    # OpenBLAS's threads in the rest of this process (a 10x slowdown on 2 cores)
    torch.set_num_threads(1)
    from rgflow.torch_ref import to_torch
    return torch, to_torch(model)


def torch_loss(torch, net, x, t, mask):
    logits = net(torch.from_numpy(x.astype(np.int64)))
    m = torch.from_numpy(mask)
    return torch.nn.functional.cross_entropy(logits[m], torch.from_numpy(t.astype(np.int64))[m])


@pytest.mark.parametrize("block_ln", [True, False])
def test_matches_torch_logits_loss_gradients(block_ln):
    model = rg.ResidualMLP(8, 8, 4, 32, 3, seed=5, block_ln=block_ln)
    perturb(model, 0.1)
    torch, net = torch_module(model)
    x, t, mask = batch_for(model, n=16)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.astype(np.int64))).numpy()
    assert rel_err(model.logits(x), ref) <= 1e-5
    loss_t = torch_loss(torch, net, x, t, mask)
    loss_t.backward()
    loss, grads = model.gradients(x, t, mask)
    assert abs(loss - loss_t.item()) <= 1e-5 * loss
    tg = dict(net.named_parameters())
    for name, g in grads.items():
        assert rel_err(g, tg[name].grad.numpy().astype(np.float64)) <= 1e-4, name


def test_adamw_steps_match_torch():
    """10 fused train steps (weight decay, clipping) vs torch.optim.AdamW +
    clip_grad_norm_ on the same batches: losses agree to 1e-4 relative, parameters to 1e-3."""
    model = rg.ResidualMLP(8, 8, 4, 32, 2, seed=7)
    torch, net = torch_module(model)
    chain = rg.MarkovChain.lazy(8, 7.0)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.1)
    ref = []
    for s in range(10):
        t, x, mask = train_batch(chain, model, s, batch_size=16, seed=11)
        opt.zero_grad()
        loss = torch_loss(torch, net, x, t, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
        ref.append(loss.item())
    hist = rg.train(model, chain, 10, batch_size=16, lr=3e-3, weight_decay=0.1,
                    max_grad_norm=0.5, seed=11, progress=False, eval_size=8)
    np.testing.assert_allclose(hist.losses, ref, rtol=1e-4)
    assert not np.allclose(ref[0], ref[-1], rtol=1e-3)        # the parameters did move
    for name, v in model.named_params().items():
        p = dict(net.named_parameters())[name].detach().numpy()
        assert rel_err(v, p) < 1e-3, name


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


def new_small():
    return rg.ResidualMLP(8, 8, 4, 32, 2, seed=3)


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


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    model = new_small()
    model.save(path)
    before, saved = path.read_bytes(), model.params.copy()
    model.params += 1

    def broken_savez(f, **arrays):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
    assert np.array_equal(rg.ResidualMLP.load(path).params, saved)


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


# -- validation --------------------------------------------------------------------------------

def test_bad_inputs_raise_naming_the_argument():
    model = new_small()
    x = np.zeros((2, 8), dtype=np.int32)
    mask = np.ones((2, 8), dtype=bool)
    with pytest.raises(ValueError, match="tokens"):
        model.logits(np.full((2, 8), 9))                 # ids must be <= V = 8
    with pytest.raises(ValueError, match="tokens"):
        model.logits(np.full((2, 8), -1))
    with pytest.raises(TypeError, match="tokens"):
        model.logits(x.astype(np.float32))
    with pytest.raises(ValueError, match="tokens"):
        model.logits(np.zeros((2, 7), dtype=np.int32))  # wrong length
    with pytest.raises(ValueError, match="tokens"):
        model.logits(np.zeros(8, dtype=np.int32))
    with pytest.raises(ValueError, match="targets"):
        model.loss(x, np.full((2, 8), 8), mask)          # true tokens must be < V
    with pytest.raises(ValueError, match="mask"):
        model.loss(x, x, np.ones((2, 7), dtype=bool))
    with pytest.raises(TypeError, match="mask"):
        model.loss(x, x, np.ones((2, 8)))
    with pytest.raises(ValueError, match="mask hides no token"):
        model.gradients(x, x, ~mask)
    for kw, name in [(dict(n_states=1), "n_states"), (dict(length=-3), "length"),
                     (dict(width=0), "width"), (dict(hidden=-1), "hidden"),
                     (dict(depth=-1), "depth")]:
        args = dict(n_states=8, length=4, width=2, hidden=8, depth=1)
        args.update(kw)
        with pytest.raises(ValueError, match=name):
            rg.ResidualMLP(**args)
    with pytest.raises(TypeError, match="width"):
        rg.ResidualMLP(8, 4, 2.5, 8, 1)
    with pytest.raises(ValueError, match="too large|overflow"):
        rg.ResidualMLP(8, 2**31, 2**31, 8, 1)
    chain = rg.MarkovChain.lazy(6, 2.0)
    with pytest.raises(ValueError, match="n_states"):
        rg.train(model, chain, 1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        rg.train(model, rg.MarkovChain.lazy(8, 2.0), 1, batch_size=-1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        rg.train(model, rg.MarkovChain.lazy(8, 2.0), -1, progress=False)
    with pytest.raises(ValueError, match="unembed.weight"):
        sd = model.state_dict()
        sd["unembed.weight"] = sd["unembed.weight"].T
        model.load_state_dict(sd)


def test_core_rejects_bad_arenas_and_workspaces():
    model = new_small()
    cfg, ws = model._cfg, model._workspace(2)
    x = np.zeros((2, 8), dtype=np.int32)
    with pytest.raises(TypeError, match="params"):
        _core.mlp_forward(cfg, model.params.astype(np.float64), ws, 2, x, True, False)
    with pytest.raises(ValueError, match="params"):
        _core.mlp_forward(cfg, model.params[:-1], ws, 2, x, True, False)
    with pytest.raises(ValueError, match="params"):
        _core.mlp_forward(cfg, np.repeat(model.params, 2)[::2], ws, 2, x, True, False)
    with pytest.raises(ValueError, match="workspace"):
        _core.mlp_forward(cfg, model.params, ws[:100], 2, x, True, False)
    ro = model.params.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        _core.mlp_init(cfg, ro, 0)
    with pytest.raises(TypeError, match="config"):
        _core.mlp_layout((8, 8, 4))
    chain = rg.MarkovChain.lazy(8, 2.0)
    g = np.zeros_like(model.params)
    options = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=0.0,
                   mask_rate=0.15, mask_span=1)
    args = [cfg, (model.params, g, g.copy(), g.copy()), model._workspace(4), 4,
            chain.transition, chain.stationary, 0, 0, np.full(2, 1e-3), options]
    bad = list(args)
    bad[8] = np.array([1e-3, -1.0])
    with pytest.raises(ValueError, match="lrs"):
        _core.mlp_train_steps(*bad)
    bad = list(args)
    bad[1] = (model.params, g, g, g.copy())
    with pytest.raises(ValueError, match="distinct"):
        _core.mlp_train_steps(*bad)
    bad = list(args)
    bad[3] = 5                                              # workspace holds 4 rows
    with pytest.raises(ValueError, match="workspace"):
        _core.mlp_train_steps(*bad)
    losses, done, status = _core.mlp_train_steps(*args)
    assert done == 2 and status == 0 and np.all(np.isfinite(losses))


def test_non_contiguous_and_other_int_dtypes_give_the_same_results():
    model = new_small()
    x, t, mask = batch_for(model, n=6)
    ref = model.logits(x)
    wide = np.zeros((6, 16), dtype=np.int64)
    wide[:, ::2] = x
    np.testing.assert_array_equal(model.logits(wide[:, ::2]), ref)
    np.testing.assert_array_equal(model.logits(np.asfortranarray(x.astype(np.uint8))), ref)
    m2 = np.zeros((6, 16), dtype=bool)
    m2[:, 1::2] = mask
    assert model.loss(x, t, m2[:, 1::2]) == model.loss(x, t, mask)


@pytest.mark.parametrize("shape", [(8, 16, 8, 256, 2, True), (8, 32, 16, 512, 2, True),
                                   (5, 12, 4, 48, 3, False)])
def test_results_independent_of_thread_count(shape):
    """rgflow cuts every layer by its shapes, never by the thread count, and runs OpenBLAS
    single-threaded inside each piece: logits, the residual stream, the loss, the gradients
    and a training trajectory are bit-identical for 1, 2 and 3 threads on any OpenBLAS kernel
    (.ci/run repeats this file under OPENBLAS_CORETYPE=Haswell).  The second shape is cut into
    4 GEMM pieces and 8 row chunks, the third has no block LayerNorm."""
    V, L, d, m, K, ln = shape
    chain = rg.MarkovChain.lazy(V, 7.0)
    out = []
    for threads in (1, 2, 3):
        with rg.num_threads(threads):
            model = rg.ResidualMLP(V, L, d, m, K, seed=0, block_ln=ln)
            x, t, mask = batch_for(model, n=64)
            loss, grads = model.gradients(x, t, mask)
            h = rg.train(model, chain, 3, batch_size=64, progress=False, eval_every=0,
                         eval_size=8)
            out.append([loss, model.logits(x), model.residual_stream(x), h.losses,
                        model.params.copy()] + [grads[k] for k in sorted(grads)])
    for other in out[1:]:
        for a, b in zip(out[0], other):
            np.testing.assert_array_equal(a, b)


def test_openblas_stays_single_threaded_inside_rgflow():
    """threadpoolctl (or anything else) may raise the thread count of rgflow's OpenBLAS; the
    kernels set it back to 1 before computing, so results keep their bits."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    model = rg.ResidualMLP(8, 32, 16, 512, 2, seed=0)
    x, t, mask = batch_for(model, n=64)
    ref = model.logits(x)
    with threadpoolctl.threadpool_limits(limits=2):
        np.testing.assert_array_equal(model.logits(x), ref)
    info = [i for i in threadpoolctl.threadpool_info() if "rgflow" in i["filepath"]]
    assert all(i["num_threads"] == 1 for i in info)


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


def test_cross_entropy_is_finite_far_below_the_maximum():
    """-log p = log Σ exp(z - max) - (z_t - max) straight from the logits: when the true
    token's logit is 120 below the largest, exp(z_t - max) underflows float32 (and double), yet
    the loss is 120 and the gradient (p - onehot) finite."""
    model = rg.ResidualMLP(2, 4, 2, 8, 1, seed=0)
    p = model.named_params()
    p["unembed.weight"][:] = 0.0
    p["unembed.bias"][:] = [0.0, -120.0]   # every logit row is (0, -120)
    x = np.full((3, 4), 2, dtype=np.int32)
    t = np.ones((3, 4), dtype=np.int32)    # true token 1: 120 below the maximum
    mask = np.ones((3, 4), dtype=bool)
    assert model.loss(x, t, mask) == pytest.approx(120.0, rel=1e-6)
    loss, grads = model.gradients(x, t, mask)
    assert loss == pytest.approx(120.0, rel=1e-6)
    assert all(np.isfinite(g).all() for g in grads.values())
    # dL/db = mean over rows of p - onehot(1) = (1, -1) to float rounding
    np.testing.assert_allclose(grads["unembed.bias"], [1.0, -1.0], rtol=1e-6)
    # training from there: about half the masked targets are token 1, so the loss is ~60
    hist = rg.train(model, rg.MarkovChain.lazy(2, 3.0), 2, batch_size=16, lr=1e-4,
                    progress=False, eval_every=0, eval_size=8)
    assert np.isfinite(hist.losses).all() and 20.0 < hist.losses[0] < 100.0
