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
        with pytest.raises(TrainingInterrupted, match="after step 50 of 80") as info:
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
    with pytest.raises(TrainingInterrupted, match="after step 25 of 30"):
        train_transformer(net, chain, 30, batch_size=4, eval_size=16, progress=stop)
    assert not net.training
