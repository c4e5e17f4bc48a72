"""The attention baseline (issue 14): rgflow.torch.TransformerMLM trained by
train_transformer on exactly the residual MLP's batches, and run()/sweeps with
Config(arch="transformer")."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rgflow as rg  # noqa: E402
from rgflow.experiments import Config, make_model, run  # noqa: E402
from rgflow.torch import TransformerMLM, train_transformer  # noqa: E402
from rgflow.train import train_batch  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_forward_is_a_pre_ln_encoder_with_a_shared_unembedding():
    net = TransformerMLM(6, 5, 8, 3, heads=2, hidden=24, seed=1)
    x = torch.as_tensor(np.random.default_rng(0).integers(0, 7, (4, 5)))
    net.eval()
    with torch.no_grad():
        h = net.embed(x) + net.position
        stream = [h]
        for block in net.blocks:             # the reference: PyTorch's own layers, by hand
            h = block(h)
            stream.append(h)
        want = net.final_norm(h) @ net.embed.weight[:6].T
    np.testing.assert_allclose(net.logits(x.numpy()), want.numpy(), rtol=0, atol=1e-6)
    got = net.residual_stream(x.numpy())
    assert got.shape == (4, 4, 5, 8)
    np.testing.assert_allclose(got, torch.stack(stream).numpy(), rtol=0, atol=1e-6)
    assert all(b.norm_first and b.dropout.p == 0.0 for b in net.blocks)
    # seeds: equal seeds give equal weights, and the global torch RNG is left alone
    state = torch.get_rng_state()
    again = TransformerMLM(6, 5, 8, 3, heads=2, hidden=24, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(net.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_trains_on_the_residual_mlps_batches():
    """Step 0's loss is the cross-entropy of the untrained network on train_batch(step 0), the
    batch the C loop gives a ResidualMLP with the same seed; and training lowers the loss."""
    chain = rg.MarkovChain.lazy(6, 4.0)
    net = TransformerMLM(6, 8, 8, 2, seed=3)
    tokens, masked, mask = train_batch(chain, rg.ResidualMLP(6, 8, 8, 16, 1), 0, batch_size=32,
                                       seed=5)
    first = net.loss(masked, tokens, mask)
    hist = train_transformer(net, chain, 200, batch_size=32, lr=3e-3, seed=5, eval_size=256)
    assert abs(hist.losses[0] - first) < 1e-5
    assert hist.eval_loss[-1] < hist.eval_loss[0] - 0.2   # measured: 1.38 (step 20) -> 1.02 nats
    assert hist.eval_steps[-1] == 200 and len(hist.lrs) == 200


def test_progress_callable_and_stop_request():
    from rgflow.train import TrainingInterrupted, _stop_when
    chain = rg.MarkovChain.lazy(6, 4.0)
    seen = []
    train_transformer(TransformerMLM(6, 8, 8, 1), chain, 60, batch_size=8, eval_size=64,
                      progress=seen.append)
    assert seen == [25, 25, 10]
    calls = []
    with _stop_when(lambda: calls.append(1) or len(calls) >= 2):
        with pytest.raises(TrainingInterrupted, match=r"after step 50 \(50 of the 80 requested") as info:
            train_transformer(TransformerMLM(6, 8, 8, 1), chain, 80, batch_size=8,
                              eval_size=64, eval_every=20)
    # the steps done ride on the exception, as an uninterrupted run of them records them
    done = train_transformer(TransformerMLM(6, 8, 8, 1), chain, 50, batch_size=8,
                             eval_size=64, eval_every=20, total_steps=80)
    hist = info.value.history
    assert hist.steps.tolist() == list(range(1, 51))
    np.testing.assert_array_equal(hist.losses, done.losses)
    assert hist.eval_steps.tolist() == [20, 40]
    np.testing.assert_array_equal(hist.eval_loss, done.eval_loss[:2])


def test_bad_input():
    with pytest.raises(ValueError, match="heads"):
        TransformerMLM(6, 8, 10, 2, heads=4)
    net = TransformerMLM(6, 8, 8, 2)
    with pytest.raises(ValueError, match="tokens"):
        net.logits(np.zeros((2, 7), int))
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        net.logits(np.full((2, 8), 7))
    with pytest.raises(TypeError, match="TransformerMLM"):
        train_transformer(rg.ResidualMLP(6, 8, 8, 16, 1), rg.MarkovChain.lazy(6, 1.0), 1)
    with pytest.raises(ValueError, match="n_states"):
        train_transformer(net, rg.MarkovChain.lazy(5, 1.0), 1)
    with pytest.raises(ValueError, match="arch"):
        Config(arch="rnn")
    with pytest.raises(ValueError, match="heads"):
        Config(arch="transformer", width=10, heads=4)


def test_run_and_keys():
    mlp = Config(length=8, width=8, hidden=32, depth=3, steps=40, eval_size=128, xi=7.0)
    assert "arch" not in mlp.to_dict() and mlp.key() == Config(**mlp.to_dict()).key()
    c = mlp.replace(arch="transformer")
    assert c.to_dict()["arch"] == "transformer" and c.key() != mlp.key()
    assert isinstance(make_model(c), TransformerMLM)
    r = run(c, progress=False)
    assert r.config == c and np.isfinite(r.gate["excess"]) and r.gate["size"] == 65536
    assert len(r.profiles["masked"]) == 4 and len(r.init["rank"]["erank"]["masked"]) == 4
    assert r.inactive_units == [] and r.grad_norms == {}
    assert torch.get_num_threads() == 1     # restored (the fixture's count)


def test_training_arguments_are_checked_as_train_checks_them():
    """Each was passed on unchecked: lr = inf trained to NaN, a negative or fractional warmup
    changed the schedule silently, mask_rate/mask_span were named 'rate'/'span' and a bad
    lr or weight_decay by AdamW's own words; chain=None was an AttributeError."""
    chain = rg.MarkovChain.lazy(6, 2.0)
    net = TransformerMLM(6, 8, 8, 1)
    for kw, err, name in [(dict(lr=float("inf")), ValueError, "lr"),
                          (dict(lr=-1e-3), ValueError, "lr"),
                          (dict(lr="0.1"), TypeError, "lr"),
                          (dict(weight_decay=-0.1), ValueError, "weight_decay"),
                          (dict(mask_rate=1.5), ValueError, "mask_rate"),
                          (dict(mask_span=0), ValueError, "mask_span"),
                          (dict(warmup=-2), ValueError, "warmup"),
                          (dict(warmup=2.5), TypeError, "warmup"),
                          (dict(schedule="linear"), ValueError, "schedule")]:
        with pytest.raises(err, match=name):
            train_transformer(net, chain, 2, batch_size=4, eval_size=16, **kw)
    with pytest.raises(TypeError, match="chain"):
        train_transformer(net, None, 2)
    with pytest.raises(ValueError, match="steps"):
        train_transformer(net, chain, 0)
    with pytest.raises(TypeError, match="tokens must be an integer"):
        net.logits(np.full((2, 8), 2.7))         # was truncated to 2
    with pytest.raises(ValueError, match="n >= 1"):
        net.logits(np.zeros((0, 8), np.int64))
    with pytest.raises(TypeError, match="seed"):
        TransformerMLM(6, 8, 8, 1, seed=1.5)     # was truncated to 1
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    a, b = TransformerMLM(6, 8, 8, 1, seed=g1), TransformerMLM(6, 8, 8, 1, seed=g2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_eval_every_zero_divergence_and_mode_after_an_interrupt():
    """eval_every=0 evaluates only at the end, as train() does (was a ValueError); a loss that
    becomes NaN raises FloatingPointError naming the step, as train() does (training went on
    on NaN); a KeyboardInterrupt from a progress callable becomes TrainingInterrupted and the
    model is left in eval mode."""
    from rgflow.train import TrainingInterrupted
    chain = rg.MarkovChain.lazy(6, 2.0)
    hist = train_transformer(TransformerMLM(6, 8, 8, 1), chain, 5, batch_size=4,
                             eval_size=16, eval_every=0)
    mlp = rg.train(rg.ResidualMLP(6, 8, 8, 16, 1), chain, 5, batch_size=4, eval_size=16,
                   eval_every=0, progress=False)
    assert hist.eval_steps.tolist() == mlp.eval_steps.tolist() == [5]
    with pytest.raises(FloatingPointError, match="at step"):
        train_transformer(TransformerMLM(6, 8, 8, 1), chain, 10, batch_size=4, eval_size=16,
                          lr=1e30)

    def stop(k):
        raise KeyboardInterrupt

    net = TransformerMLM(6, 8, 8, 1)
    with pytest.raises(TrainingInterrupted, match=r"after step 25 \(25 of the 30 requested"):
        train_transformer(net, chain, 30, batch_size=4, eval_size=16, progress=stop)
    assert not net.training


# -- continuing training and checkpoints ----------------------------------------------------------

def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def test_training_continues_from_the_step_and_the_adam_state(tmp_path):
    """30 steps, then 30 more (also through save and load), give the bits of 60 steps at once:
    batches, the cosine schedule and evaluations follow the global step, and AdamW's moments
    and step counts carry over."""
    chain = rg.MarkovChain.lazy(6, 4.0)
    kw = dict(batch_size=8, lr=3e-3, seed=2, eval_size=32, eval_every=10, schedule="cosine",
              warmup=5, total_steps=60)
    whole = TransformerMLM(6, 8, 8, 2, seed=1)
    want = train_transformer(whole, chain, 60, **kw)
    assert whole.step == 60
    net = TransformerMLM(6, 8, 8, 2, seed=1)
    first = train_transformer(net, chain, 30, **kw)
    assert net.step == 30 and first.steps.tolist() == list(range(1, 31))
    net.save(tmp_path / "net.pt")
    loaded = TransformerMLM.load(tmp_path / "net.pt")
    assert loaded.step == 30 and loaded.config == net.config
    assert all(torch.equal(a, b) for a, b in zip(_params(loaded), _params(net)))
    for resumed in (net, loaded):
        second = train_transformer(resumed, chain, 30, **kw)
        assert second.steps.tolist() == list(range(31, 61))
        np.testing.assert_array_equal(np.concatenate([first.losses, second.losses]),
                                      want.losses)
        np.testing.assert_array_equal(np.concatenate([first.lrs, second.lrs]), want.lrs)
        assert first.eval_steps.tolist() + second.eval_steps.tolist() == want.eval_steps.tolist()
        np.testing.assert_array_equal(np.concatenate([first.eval_loss, second.eval_loss]),
                                      want.eval_loss)
        assert all(torch.equal(a, b) for a, b in zip(_params(resumed), _params(whole)))
    # without the AdamW state (a fresh optimizer) the continuation differs: the state matters
    fresh = TransformerMLM.load(tmp_path / "net.pt")
    fresh._adam_state = None
    other = train_transformer(fresh, chain, 30, **kw)
    assert not np.array_equal(other.losses, want.losses[30:])


def test_load_rejects_what_is_not_a_transformer_checkpoint(tmp_path):
    net = TransformerMLM(6, 8, 8, 2, seed=1)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    rg.ResidualMLP(6, 8, 8, 16, 1).save(tmp_path / "mlp.npz")
    net.save(tmp_path / "net.pt")
    data = (tmp_path / "net.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    payload = torch.load(tmp_path / "net.pt", weights_only=True)
    payload["config"]["width"] = 12
    torch.save(payload, tmp_path / "wide.pt")
    payload = torch.load(tmp_path / "net.pt", weights_only=True)
    payload["format"] = 99
    torch.save(payload, tmp_path / "future.pt")
    for name in ("junk.pt", "mlp.npz", "cut.pt", "wide.pt", "future.pt"):
        with pytest.raises(ValueError, match="not a TransformerMLM checkpoint"):
            TransformerMLM.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        TransformerMLM.load(tmp_path / "missing.pt")
    # AdamW state of other parameters: refused, not loaded into the wrong tensors
    train_transformer(net, rg.MarkovChain.lazy(6, 2.0), 2, batch_size=4, eval_size=16)
    payload = torch.load(_saved(net, tmp_path / "trained.pt"), weights_only=True)
    payload["adam"][0]["exp_avg"] = torch.zeros(3)
    torch.save(payload, tmp_path / "bad-adam.pt")
    with pytest.raises(ValueError, match="AdamW state"):
        TransformerMLM.load(tmp_path / "bad-adam.pt")
    # not AdamW's state: a tensor for a parameter's entry, a missing step count, not a dict
    good = torch.load(_saved(net, tmp_path / "trained.pt"), weights_only=True)
    no_step = {i: {k: v for k, v in e.items() if k != "step"} for i, e in good["adam"].items()}
    for name, adam in [("tensor", {**good["adam"], 0: torch.zeros(3)}), ("no-step", no_step),
                       ("zero", 0), ("empty", {}), ("list", [good["adam"][0]])]:
        torch.save({**good, "adam": adam}, tmp_path / ("%s-adam.pt" % name))
        with pytest.raises(ValueError, match="AdamW state does not fit"):
            TransformerMLM.load(tmp_path / ("%s-adam.pt" % name))
    assert TransformerMLM.load(tmp_path / "trained.pt").step == 2  # the file they came from


@pytest.mark.parametrize("data", [b"\x80\x02r\xeb.\xe7?\xaakJ\"\xae",     # IndexError inside
                                  b"h\x8bCR\xfa/+\x8d\xb0R\x95\xac"])     # KeyError inside
def test_load_turns_what_torch_load_raises_on_damaged_bytes_into_value_error(tmp_path, data):
    (tmp_path / "x.pt").write_bytes(data)
    with pytest.raises(ValueError, match="not a TransformerMLM checkpoint"):
        TransformerMLM.load(tmp_path / "x.pt")


def _saved(net, path):
    net.save(path)
    return path


TCKPT = Config(arch="transformer", xi=7.0, seed=3, steps=60, hidden=16, depth=2, width=8,
               length=8, eval_size=64, batch_size=8, schedule="cosine", warmup=10)


def _checkpointed(tmp_path, stop_after=None, progress=False):
    """run()'s training of TCKPT through its checkpoint (run() itself adds the gate's 65,536
    sequences, minutes through a transformer): (model, History) or the TrainingInterrupted."""
    from rgflow.experiments import _train_checkpointed, make_chain
    from rgflow.train import _stop_when
    checks = []
    stop = None if stop_after is None else (lambda: checks.append(1) or len(checks) >= stop_after)
    with _stop_when(stop):
        model, hist, _ = _train_checkpointed(TCKPT, make_model(TCKPT), make_chain(TCKPT),
                                             tmp_path / "run.partial.json", progress)
    return model, hist


def _same_training(a, b):
    (ma, ha), (mb, hb) = a, b
    assert ma.step == mb.step == TCKPT.steps
    assert all(torch.equal(p, q) for p, q in zip(_params(ma), _params(mb)))
    for name in ("steps", "losses", "lrs", "eval_steps", "eval_loss", "eval_bayes"):
        np.testing.assert_array_equal(getattr(ha, name), getattr(hb, name), err_msg=name)


def test_checkpointed_transformer_training_resumes_to_the_same_bits(tmp_path):
    """A run's transformer training saved every tenth (6 steps) and where a stop lands, then
    resumed in another model: the bits of the unbroken training (train_as, as run() calls
    it), and no file left behind."""
    import json
    from rgflow.experiments import make_chain, train_as
    from rgflow.train import TrainingInterrupted
    plain = make_model(TCKPT)
    plain = (plain, train_as(TCKPT, plain, make_chain(TCKPT), progress=False))
    _same_training(plain, _checkpointed(tmp_path))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TrainingInterrupted, match=r"after step 30 \(6 of the 6 requested"):
        _checkpointed(tmp_path, stop_after=5)   # pieces of 6 steps: the stop after the 5th
    meta = json.loads((tmp_path / "run.partial.json").read_text())
    assert meta["step"] == 30 and meta["torch_threads"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.partial-30.pt",
                                                          "run.partial.json"]
    steps = []
    _same_training(plain, _checkpointed(tmp_path, progress=steps.append))
    assert steps[0] == 30 and sum(steps) == TCKPT.steps  # the resumed steps count as done
    assert list(tmp_path.iterdir()) == []


def test_a_transformer_checkpoint_of_another_thread_count_is_ignored(tmp_path):
    import json
    from rgflow.train import TrainingInterrupted
    with pytest.raises(TrainingInterrupted):
        _checkpointed(tmp_path, stop_after=5)
    ckpt = tmp_path / "run.partial.json"
    meta = json.loads(ckpt.read_text())
    meta["torch_threads"] = 2  # PyTorch's results may depend on its thread count
    ckpt.write_text(json.dumps(meta))
    steps = []
    _checkpointed(tmp_path, progress=steps.append)
    assert steps[0] == 6 and sum(steps) == TCKPT.steps  # started over
    assert list(tmp_path.iterdir()) == []
