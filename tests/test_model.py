"""Residual MLP (rgflow/model.py; csrc/mlp.c, layers.c, tasks.c): layout, initialisation,
gradients (finite differences, a float64 NumPy backprop reference, PyTorch), thread-count
independence, checkpoints on disk and input validation."""
import os

import numpy as np
import pytest
from scipy.special import erf

import rgflow as rg
from rgflow import _core
from conftest import new_small, rel_err, torch_loss, torch_module


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


# -- PyTorch reference -------------------------------------------------------------------------

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


# -- threads ----------------------------------------------------------------------------------

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


# -- checkpoints on disk -------------------------------------------------------------------------

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
    cfg, ws = model.shape, model._workspace(2)
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
            chain.transition, chain.stationary, None, 0, 0, np.full(2, 1e-3), options]
    bad = list(args)
    bad[9] = np.array([1e-3, -1.0])
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


@pytest.mark.parametrize("block_ln", [True, False])
def test_inactive_units_against_torch_hidden_activations(block_ln):
    """The share of switched-off units from PyTorch's own fc1 outputs (forward hooks on the
    equivalent module), on a model whose blocks have units pushed off by hand."""
    torch = pytest.importorskip("torch")
    from rgflow.torch_ref import to_torch
    m = rg.ResidualMLP(8, 6, 4, 32, 3, seed=2, block_ln=block_ln)
    sd = m.state_dict()
    sd["blocks.1.fc1.bias"][:20] = -50.0   # 20 of 32 units off in block 2
    sd["blocks.2.fc1.bias"][:5] = -2.5     # near the threshold: data decide
    m.load_state_dict(sd)
    x = rg.MarkovChain.lazy(8, 2.0).sample(400, 6, seed=0)
    masked, _ = rg.mask_tokens(x, rate=0.3, seed=1, mask_id=8)
    net = to_torch(m).double()
    pre = []
    hooks = [b.fc1.register_forward_hook(lambda mod, i, o: pre.append(o.detach().numpy()))
             for b in net.blocks]
    net(torch.from_numpy(masked.astype(np.int64)))
    for h in hooks:
        h.remove()
    for below, share in ((-3.0, 0.99), (-1.0, 0.9), (0.0, 0.5)):
        ref = [np.mean(np.mean(p < below, axis=0) >= share) for p in pre]
        np.testing.assert_array_equal(m.inactive_units(masked, below, share), ref)
    got = m.inactive_units(masked)
    assert got[1] >= 20 / 32 and got[0] < 20 / 32
    stream = m.residual_stream(masked)
    np.testing.assert_array_equal(m.inactive_units(masked, stream=stream), got)
    with pytest.raises(ValueError, match="share"):
        m.inactive_units(masked, share=0.0)
    with pytest.raises(ValueError, match="stream"):
        m.inactive_units(masked, stream=stream[1:])
