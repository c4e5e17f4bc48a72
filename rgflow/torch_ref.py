"""The PyTorch module equivalent to a :class:`ResidualMLP` (PyTorch is optional: imported here
only). Used as the gradient reference in the tests and the peer in the training benchmark; also
a way to take a model trained by rgflow into PyTorch.

>>> import rgflow as rg                                        # doctest: +SKIP
>>> net = to_torch(rg.ResidualMLP(8, 16, 8, 32, 2))             # doctest: +SKIP
>>> net(torch.zeros(3, 16, dtype=torch.long)).shape            # doctest: +SKIP
torch.Size([3, 16, 8])
"""

__all__ = ["to_torch"]


def to_torch(model):
    """An ``torch.nn.Module`` computing exactly ``model.logits`` (same names, same weights).

    Token + position embeddings, blocks ``z + fc2(gelu(fc1(ln(z))))`` on the (length * width)
    stream (``ln`` absent when ``model.block_ln`` is False), final LayerNorm, and a shared
    unembedding applied per position. Input: (n, length) int64 tokens; output (n, length, V).
    """
    import torch
    nn = torch.nn
    V, L, d, m, K, ln = (model.n_states, model.length, model.width, model.hidden, model.depth,
                         model.block_ln)
    D = L * d

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            if ln:
                self.ln = nn.LayerNorm(D)
            self.fc1, self.fc2 = nn.Linear(D, m), nn.Linear(m, D)

        def forward(self, z):
            return z + self.fc2(nn.functional.gelu(self.fc1(self.ln(z) if ln else z)))

    class ResidualMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = nn.Parameter(torch.zeros(V + 1, d))
            self.pos_emb = nn.Parameter(torch.zeros(L, d))
            self.blocks = nn.ModuleList(Block() for _ in range(K))
            self.ln_f = nn.LayerNorm(D)
            self.unembed = nn.Linear(d, V)

        def forward(self, x):
            z = (self.tok_emb[x] + self.pos_emb).reshape(x.shape[0], D)
            for b in self.blocks:
                z = b(z)
            return self.unembed(self.ln_f(z).reshape(x.shape[0], L, d))

    net = ResidualMLP()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return net
