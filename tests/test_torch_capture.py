"""rgflow.torch.capture on PyTorch models of different shapes, against activations collected
by hand: rgflow's own model in PyTorch (flat (n, L*d) stream), a transformer encoder
((n, L, d)), and blocks that return tuples."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import rgflow as rg  # noqa: E402
from rgflow.torch import capture, residual_blocks  # noqa: E402
from rgflow.torch_ref import to_torch  # noqa: E402

nn = torch.nn


def no_hooks(module):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_residual_mlp_stream_equals_rgflow_own():
    model = rg.ResidualMLP(8, 6, 4, 32, 3, seed=1)
    x = rg.MarkovChain.lazy(8, 2.0).sample(50, 6, seed=0)
    masked, mask = rg.mask_tokens(x, rate=0.3, seed=1, mask_id=8)
    net = to_torch(model)
    net.train()
    stream = capture(net, masked.astype(np.int64), batch_size=16)  # 4 batches, the last short
    assert stream.shape == (4, 50, 24) and stream.dtype == np.float32
    ours = model.residual_stream(masked).reshape(4, 50, 24)
    np.testing.assert_allclose(stream, ours, rtol=1e-5, atol=1e-5)
    assert net.training and no_hooks(net)  # mode restored, hooks removed
    # rgflow's measures take it as it is
    assert rg.rank_profile(stream).shape == (4,)
    assert rg.drift_profile(stream).shape == (3,)


class Encoder(nn.Module):
    """Token + position embedding, a pre-LN transformer encoder, a shared unembedding."""

    def __init__(self, V=8, L=6, d=16, K=2):
        super().__init__()
        self.emb = nn.Embedding(V + 1, d)
        self.pos = nn.Parameter(torch.randn(L, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.1,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, K, enable_nested_tensor=False)
        self.head = nn.Linear(d, V)

    def forward(self, x):
        return self.head(self.encoder(self.emb(x) + self.pos))


def test_transformer_encoder_blocks_by_hand():
    torch.manual_seed(0)
    net = Encoder()
    x = torch.randint(0, 9, (20, 6))
    stream = capture(net, x, batch_size=7)
    assert stream.shape == (3, 20, 6, 16)
    assert [name for name, _ in residual_blocks(net)] == ["encoder.layers.0",
                                                          "encoder.layers.1"]
    net.eval()  # dropout off, as capture runs it
    with torch.no_grad():
        z = net.emb(x) + net.pos
        ref = [z]
        for block in net.encoder.layers:
            z = block(z)
            ref.append(z)
    np.testing.assert_allclose(stream, torch.stack(ref).numpy(), rtol=1e-6, atol=1e-6)
    # named layers, without the input; a callable choosing modules
    two = capture(net, x, layers=["emb", "encoder.layers.1"])
    np.testing.assert_allclose(two[1], stream[2], rtol=1e-6, atol=1e-6)
    picked = capture(net, x, layers=lambda m: [m.encoder.layers[0]], include_input=True)
    np.testing.assert_allclose(picked, stream[:2], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unequal output shapes"):
        capture(net, x, layers=["emb", "head"])
    assert no_hooks(net)
    split = rg.rank_profile(stream, "position", mask=np.zeros((20, 6), bool) | (x.numpy() == 8))
    assert split.masked.shape == (3,)
    # positions: only those kept, the same values
    for positions, ref_idx in ((2, [2]), ([0, 5], [0, 5]), (slice(1, 4), [1, 2, 3])):
        part = capture(net, x, positions=positions, batch_size=7)
        np.testing.assert_array_equal(part, stream[:, :, ref_idx])
    with pytest.raises(ValueError, match="positions"):
        capture(net, x, positions=[6])
    with pytest.raises(TypeError, match="positions"):
        capture(net, x, positions=[0.5])
    assert no_hooks(net)


class TupleBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, z):
        return z + torch.tanh(self.fc(z)), z.abs().mean()


class TupleNet(nn.Module):
    def __init__(self, d=5, K=3):
        super().__init__()
        self.blocks = nn.ModuleList(TupleBlock(d) for _ in range(K))

    def forward(self, z):
        for b in self.blocks:
            z, _ = b(z)
        return z


def test_tuple_outputs_need_an_index_and_errors_leave_no_hooks():
    torch.manual_seed(1)
    net = TupleNet()
    x = torch.randn(12, 5)
    with pytest.raises(ValueError, match=r"'blocks.0' returns a tuple of 2; pass output="):
        capture(net, x)
    assert no_hooks(net)
    stream = capture(net, x, output=0)
    z, ref = x, [x]
    with torch.no_grad():
        for b in net.blocks:
            z, _ = b(z)
            ref.append(z)
    np.testing.assert_allclose(stream, torch.stack(ref).numpy(), rtol=1e-6)
    assert no_hooks(net)


def test_bad_arguments_name_what_is_wrong():
    net = TupleNet()
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match="'blocks.7' is not a submodule"):
        capture(net, x, layers=["blocks.7"], output=0)
    with pytest.raises(ValueError, match="not a submodule"):
        capture(net, x, layers=[nn.Linear(5, 5)], output=0)
    with pytest.raises(TypeError, match="layers must hold"):
        capture(net, x, layers=[3], output=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        capture("net", x)
    with pytest.raises(ValueError, match="batch dimension"):
        capture(net, torch.randn(0, 5), output=0)
    with pytest.raises(ValueError, match="batch_size"):
        capture(net, x, output=0, batch_size=0)
    with pytest.raises(ValueError, match="layers is empty"):
        capture(nn.Sequential(nn.Linear(5, 5)), x, layers=[])
    assert no_hooks(net)


def test_a_layer_that_never_runs_and_a_model_without_blocks():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, z):
            return self.used(z)

    net = Skip()
    with pytest.raises(ValueError, match="'unused' did not run"):
        capture(net, torch.randn(2, 3), layers=["used", "unused"])
    with pytest.raises(ValueError, match="no ModuleList or Sequential"):
        capture(net, torch.randn(2, 3))
    assert no_hooks(net)


def test_every_submodule_mode_is_restored():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 4))
    net.train()
    net[1].eval()  # frozen by the user
    before = [m.training for m in net.modules()]
    capture(net, torch.randn(3, 4))
    assert [m.training for m in net.modules()] == before


def test_a_first_layer_called_with_keywords_says_what_to_do():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, z, scale=1.0):
            return z + scale * self.fc(z)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for b in self.blocks:
                x = b(z=x)
            return x

    net = Net()
    with pytest.raises(ValueError, match="include_input=False"):
        capture(net, torch.randn(2, 3))
    assert capture(net, torch.randn(2, 3), include_input=False).shape == (2, 2, 3)
    assert no_hooks(net)


def test_outputs_are_copied_before_later_in_place_updates():
    """A later in-place op (ReLU(inplace=True) after a captured layer, a residual stream
    updated with +=) must not change what was captured: the hand-collected values, exact."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 4))
    x = torch.randn(9, 4)
    stream = capture(net, x, batch_size=4)
    with torch.no_grad():
        a = net[0](x)
        ref = [x, a, torch.relu(a), net[2](torch.relu(a))]
    # 1e-6: a batch of 1 (the last of 4, 4, 1) rounds a matmul differently from one of 9
    np.testing.assert_allclose(stream, torch.stack(ref).numpy(), rtol=0, atol=1e-6)
    assert (stream[1] < -0.1).any()    # the Linear's output before the ReLU

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(3, 3)
            self.blocks = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))

        def forward(self, x):
            h = self.emb(x)
            for b in self.blocks:
                h += b(h)             # the input the pre-hook saw is changed in place
            return h

    net = InPlace()
    x = torch.randn(5, 4, 3)
    stream = capture(net, x, positions=[0, 2])
    with torch.no_grad():
        h = net.emb(x)
        ref = [h]
        for b in net.blocks:
            ref.append(b(h))
            h = h + ref[-1]
    np.testing.assert_array_equal(stream, torch.stack(ref)[:, :, [0, 2]].numpy())


class Tied(nn.Module):
    """One block applied three times (weight sharing): a ModuleList holding it thrice."""

    def __init__(self):
        super().__init__()
        block = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
        self.blocks = nn.ModuleList([block, block, block])

    def forward(self, z):
        for b in self.blocks:
            z = z + b(z)
        return z


def test_a_shared_block_gives_each_call_its_own_layer():
    """The k-th call of a module listed k times is its k-th layer (the hooks saw every call and
    kept the last: all three outputs and the input were the last call's); a module selected
    once that runs more than once is an error, not its last call."""
    torch.manual_seed(3)
    net = Tied()
    x = torch.randn(6, 3)
    stream = capture(net, x)
    with torch.no_grad():
        z, ref = x, [x]
        for b in net.blocks:
            ref.append(b(z))
            z = z + ref[-1]
    np.testing.assert_allclose(stream, torch.stack(ref).numpy(), rtol=0, atol=1e-6)
    assert np.abs(stream[1] - stream[3]).max() > 0.01
    with pytest.raises(ValueError, match=r"'blocks.0' ran 3 times in one forward pass"):
        capture(net, x, layers=["blocks.0"])
    with pytest.raises(ValueError, match=r"'blocks.0.0' ran 3 times"):
        capture(net, x, layers=[net.blocks[0][0], "blocks.0.1"])
    # a layer selected twice that runs once: its output twice
    plain = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    twice = capture(plain, x, layers=["1", "0", "1"])
    np.testing.assert_array_equal(twice[0], twice[2])
    assert no_hooks(net) and no_hooks(plain)


def test_several_inputs_and_numpy_inputs():
    """A tuple of tensors/arrays is the model's positional inputs, batched together (it was
    stacked into one array: 2 'samples'); a NumPy float array takes the model's dtype, and a
    reversed (negative-stride) array is taken as it is."""
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))

        def forward(self, x, y):
            x = x + y
            for b in self.blocks:
                x = torch.tanh(b(x))
            return x

    torch.manual_seed(4)
    net = TwoInputs()
    x, y = torch.randn(7, 3), np.random.default_rng(0).normal(size=(7, 3))   # float64 array
    stream = capture(net, (x, y), batch_size=3)
    assert stream.shape == (3, 7, 3)
    with torch.no_grad():
        z = x + torch.as_tensor(y, dtype=torch.float32)
        ref = [z]
        for b in net.blocks:
            ref.append(b(z))
            z = torch.tanh(ref[-1])
    np.testing.assert_allclose(stream, torch.stack(ref).numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="inputs"):
        capture(net, (x, y[:5]))
    seq = nn.Sequential(nn.Embedding(9, 4), nn.Linear(4, 4))
    tokens = np.random.default_rng(1).integers(0, 9, (5, 6))
    np.testing.assert_array_equal(capture(seq, tokens[::-1, ::-1], include_input=False),
                                  capture(seq, tokens[::-1, ::-1].copy(), include_input=False))
    with pytest.raises(TypeError, match="positional"):
        capture(seq, (torch.as_tensor(tokens), torch.as_tensor(tokens)))
    with pytest.raises(ValueError, match="batch dimension"):
        capture(seq, np.int64(3))


def test_dict_outputs_and_layer_selections_that_cannot_be_ordered():
    class DictBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, z):
            return {"hidden": z + torch.tanh(self.fc(z)), "norm": z.norm()}

    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(DictBlock() for _ in range(2))

        def forward(self, z):
            for b in self.blocks:
                z = b(z)["hidden"]
            return z

    torch.manual_seed(5)
    net, x = DictNet(), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"'blocks.0' returns a dict with keys \['hidden', "
                                         r"'norm'\]; pass output="):
        capture(net, x)
    stream = capture(net, x, output="hidden")
    with torch.no_grad():
        ref = [x, net.blocks[0](x)["hidden"]]
        ref.append(net.blocks[1](ref[-1])["hidden"])
    np.testing.assert_array_equal(stream, torch.stack(ref).numpy())
    with pytest.raises(ValueError, match=r"'blocks.0'.*output='h'"):
        capture(net, x, output="h")
    with pytest.raises(ValueError, match=r"'blocks.0' returns a tuple of 2.*output=5"):
        capture(TupleNet(d=3), x, output=5)
    # a set has no order (string hashes change per process): the layers' order would vary
    with pytest.raises(TypeError, match="layers"):
        capture(net, x, layers={"blocks.0", "blocks.1"}, output="hidden")
    with pytest.raises(TypeError, match="layers"):
        capture(net, x, layers=lambda m: None, output="hidden")
    assert no_hooks(net)
