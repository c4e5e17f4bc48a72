"""The residual MLP (docs/architecture.md), its parameters held in one float32 arena.

The C core (csrc/mlp.c) is stateless: this class owns the arenas (parameters, gradients, AdamW
moments, all of the same layout) and passes them to the kernels. ``named_params()`` gives
NumPy views into the arena with PyTorch ``state_dict`` names and shapes, so weights move to an
equivalent ``torch.nn.Module`` and back.

Initialisation is reproducible from ``seed`` (Philox stream ``(seed, INIT, tensor number)``):
embeddings ~ N(0, 1) (``nn.Embedding``), Linear weights and biases ~
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``nn.Linear``), LayerNorm weight 1 and bias 0.
"""
import json
import os
from collections import namedtuple

import numpy as np

from . import _core
from ._util import as_count, as_flag, as_seed, atomic_write, check_memory, shape2

__all__ = ["ResidualMLP", "ModelShape"]

ModelShape = namedtuple("ModelShape", "n_states length width hidden depth block_ln")
ModelShape.__doc__ = """A model's shape: V, L, d, m, K (ints) and block_ln (bool), as the C
core takes it (a tuple)."""

# Rows per forward chunk in logits / residual_stream / loss: bounds the workspace.
CHUNK = 256
CHECKPOINT_VERSION = 1


class ResidualMLP:
    """Residual MLP on the concatenated stream z in R^(length*width).

    ``z_0[p] = tok_emb[x_p] + pos_emb[p]``; block k: ``z <- z + fc2(gelu(fc1(LN_k(z))))``
    (``LN_k`` omitted when ``block_ln=False``); ``LN_f(z_K)`` reshaped to (length, width), then a
    shared unembedding width -> n_states per position. Token ids lie in [0, n_states]; the id
    ``n_states`` is MASK.

    Parameters
    ----------
    n_states, length, width, hidden, depth : int
        V, L, d, m, K (V >= 2, depth >= 0, the others >= 1).
    seed : int or numpy.random.Generator, initialisation seed.
    block_ln : bool, pre-LayerNorm blocks (default) or blocks without LayerNorm (their
        ``ln`` parameters are then absent). The final LayerNorm is always present.

    Attributes
    ----------
    params : (n_params,) float32 arena; ``step``: optimizer steps taken (AdamW's t);
    train_seed : seed of the training streams used so far (None before training).

    >>> model = ResidualMLP(n_states=8, length=16, width=8, hidden=32, depth=2, seed=0)
    >>> model.logits(np.zeros((3, 16), dtype=np.int32)).shape
    (3, 16, 8)
    """

    def __init__(self, n_states, length, width, hidden, depth, seed=0, block_ln=True):
        V = as_count(n_states, "n_states", minimum=2)
        L = as_count(length, "length")
        d = as_count(width, "width")
        m = as_count(hidden, "hidden")
        K = as_count(depth, "depth", minimum=0)
        self.shape = ModelShape(V, L, d, m, K, as_flag(block_ln, "block_ln"))
        # (state_dict name, shape, offset, size) of every tensor, from the C layout table
        n_params, self._layout = _core.mlp_layout(self.shape)
        self.n_params = int(n_params)
        check_memory(16.0 * self.n_params, "ResidualMLP parameters, gradients and AdamW moments "
                     "(4 x %d float32)" % self.n_params)
        self.params = np.empty(self.n_params, dtype=np.float32)
        self._grads = np.zeros(self.n_params, dtype=np.float32)
        self._adam_m = np.zeros(self.n_params, dtype=np.float32)
        self._adam_v = np.zeros(self.n_params, dtype=np.float32)
        self.step = 0
        self.train_seed = None
        self.init_seed = as_seed(seed)
        self._train_workspace = None  # (batch size, workspace) of the last training call
        _core.mlp_init(self.shape, self.params, self.init_seed)

    # -- configuration ------------------------------------------------------------------------

    n_states = property(lambda self: self.shape.n_states, doc="V (the MASK id is V).")
    length = property(lambda self: self.shape.length, doc="L, sequence length.")
    width = property(lambda self: self.shape.width, doc="d, per-position width.")
    hidden = property(lambda self: self.shape.hidden, doc="m, hidden width of each block.")
    depth = property(lambda self: self.shape.depth, doc="K, number of blocks.")
    block_ln = property(lambda self: self.shape.block_ln, doc="Whether blocks have a LayerNorm.")

    @property
    def config(self):
        """Constructor arguments (without seed) as a dict."""
        return self.shape._asdict()

    def __repr__(self):
        return ("ResidualMLP(n_states=%d, length=%d, width=%d, hidden=%d, depth=%d, "
                "block_ln=%s; %d params, step %d)" % (tuple(self.shape) + (self.n_params,
                                                                           self.step)))

    def _views(self, arena):
        return {name: arena[off:off + size].reshape(shape)
                for name, shape, off, size in self._layout}

    # -- parameters ---------------------------------------------------------------------------

    def named_params(self):
        """Dict name -> float32 view into ``params`` with its state_dict shape (writes go to
        the model).

        >>> m = ResidualMLP(8, 4, 2, 8, 1)
        >>> m.named_params()["blocks.0.fc1.weight"].shape
        (8, 8)
        """
        return self._views(self.params)

    def state_dict(self):
        """Dict name -> float32 copy, PyTorch names and shapes.

        >>> list(ResidualMLP(8, 4, 2, 8, 1).state_dict())[:3]
        ['tok_emb', 'pos_emb', 'blocks.0.ln.weight']
        """
        return {k: v.copy() for k, v in self.named_params().items()}

    def load_state_dict(self, state):
        """Copy parameters from a dict of arrays (NumPy or anything ``np.asarray`` takes, e.g.
        CPU torch tensors) with exactly the names and shapes of ``state_dict()``.
        Optimizer state and step are left unchanged.

        >>> a, b = ResidualMLP(8, 4, 2, 8, 1, seed=0), ResidualMLP(8, 4, 2, 8, 1, seed=1)
        >>> b.load_state_dict(a.state_dict()); bool((a.params == b.params).all())
        True
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError("state must be a mapping name -> array (like state_dict()), got %s"
                            % type(state).__name__)
        views = self.named_params()
        missing = sorted(set(views) - set(state))
        extra = sorted(set(state) - set(views))
        if missing or extra:
            raise KeyError("state_dict mismatch: missing %s, unexpected %s" % (missing, extra))
        new = {}
        for name, view in views.items():
            value = np.asarray(state[name])
            if value.shape != view.shape:
                raise ValueError("%s has shape %s, expected %s" % (name, value.shape, view.shape))
            if value.dtype.kind not in "fiu":
                raise TypeError("%s must be a real array, got dtype %s" % (name, value.dtype))
            with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf
                value = value.astype(np.float32)
            if not np.all(np.isfinite(value)):
                raise ValueError("%s contains non-finite values" % name)
            new[name] = value
        for name, value in new.items():
            views[name][...] = value

    # -- evaluation ---------------------------------------------------------------------------

    def _workspace(self, batch, name="batch"):
        nbytes = _core.mlp_workspace_bytes(self.shape, batch)
        check_memory(nbytes, "the workspace for %s = %d" % (name, batch))
        return np.empty(nbytes, dtype=np.uint8)

    def _forward(self, tokens, want_logits, want_stream, targets=None, mask=None):
        shape = shape2(tokens)
        n = shape[0] if shape is not None else 1
        # outputs and the int32 copy of tokens, checked before the C core copies the input
        per_row = 4.0 * self.length * (1 + (self.n_states if want_logits else 0)
                                       + ((self.depth + 1) * self.width if want_stream else 0))
        check_memory(per_row * n, "%s of tokens with n = %d sequences"
                     % ("logits" if want_logits else "residual stream" if want_stream
                        else "loss", n))
        batch = max(1, min(n, CHUNK))
        return _core.mlp_forward(self.shape, self.params, self._workspace(batch), batch, tokens,
                                 want_logits, want_stream, targets, mask)

    def logits(self, tokens):
        """Logits of every position.

        tokens : (n, length) integer array with ids in [0, n_states] (n_states = MASK).
        Returns (n, length, n_states) float32. Processed in chunks of 256 sequences.

        >>> m = ResidualMLP(8, 4, 2, 8, 1)
        >>> m.logits(np.full((2, 4), 8)).shape
        (2, 4, 8)
        """
        return self._forward(tokens, True, False)[0]

    def residual_stream(self, tokens):
        """The residual stream z_0..z_K (z_0 = embeddings, z_k after block k).

        tokens : (n, length) integer array with ids in [0, n_states].
        Returns (depth + 1, n, length, width) float32.

        >>> m = ResidualMLP(8, 4, 2, 8, 3)
        >>> m.residual_stream(np.zeros((5, 4), dtype=np.int32)).shape
        (4, 5, 4, 2)
        """
        return self._forward(tokens, False, True)[1]

    def loss(self, masked_tokens, tokens, mask):
        """Mean cross-entropy (nats) of the true tokens at masked positions.

        masked_tokens : (n, length) ids in [0, n_states], the model input.
        tokens : (n, length) true ids in [0, n_states).  mask : (n, length) bool, >= 1 True.

        >>> m = ResidualMLP(8, 4, 2, 8, 1)
        >>> x = np.zeros((2, 4), dtype=np.int32); mask = np.ones((2, 4), dtype=bool)
        >>> m.loss(np.full((2, 4), 8), x, mask) > 0
        True
        """
        _, _, nll, count = self._forward(masked_tokens, False, False, tokens, mask)
        if count == 0:
            raise ValueError("mask hides no token: the loss over masked positions is undefined")
        return nll / count

    def gradients(self, masked_tokens, tokens, mask):
        """Loss and its gradient with respect to every parameter (one batch, no update).

        Arguments as for :meth:`loss`. Returns ``(loss, {state_dict name: float32 grad})``.

        >>> m = ResidualMLP(8, 4, 2, 8, 1)
        >>> x = np.zeros((2, 4), dtype=np.int32); mask = np.ones((2, 4), dtype=bool)
        >>> loss, g = m.gradients(np.full((2, 4), 8), x, mask); g["tok_emb"].shape
        (9, 2)
        """
        shape = shape2(masked_tokens)
        n = shape[0] if shape is not None else 1
        grads = np.empty(self.n_params, dtype=np.float32)
        loss = _core.mlp_gradients(self.shape, self.params, grads,
                                   self._workspace(max(int(n), 1), "masked_tokens with n"),
                                   masked_tokens, tokens, mask)
        return loss, self._views(grads)

    def inactive_units(self, tokens, below=-3.0, share=0.99, stream=None):
        """Share of each block's hidden units that are switched off on a batch: units whose
        pre-activation ``fc1(LN(z_k))`` is below ``below`` (GELU(-3) = -0.004) for at least
        ``share`` of the sequences, so the block's output barely depends on them.

        tokens : (n, length) ids in [0, n_states]. stream : this model's
        ``residual_stream(tokens)`` when already at hand. Returns float64 (depth,), each in
        [0, 1]. Computed in float64 NumPy from the parameters (LayerNorm eps 1e-5).

        >>> m = ResidualMLP(8, 4, 2, 8, 3)
        >>> m.inactive_units(np.zeros((5, 4), dtype=np.int32)).shape
        (3,)
        """
        below = float(below)
        if not (0.0 < share <= 1.0):
            raise ValueError("share must lie in (0, 1], got %r" % (share,))
        z = self.residual_stream(tokens) if stream is None else np.asarray(stream)
        if z.shape[0] != self.depth + 1 or z.shape[2:] != (self.length, self.width):
            raise ValueError("stream must be this model's residual stream, shape (%d, n, %d, "
                             "%d), got %s" % (self.depth + 1, self.length, self.width, z.shape))
        sd = self.state_dict()
        out = np.empty(self.depth)
        for k in range(self.depth):
            x = z[k].reshape(z.shape[1], -1).astype(np.float64)
            if self.block_ln:
                x = x - x.mean(axis=1, keepdims=True)
                x = x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + 1e-5)
                x = x * sd["blocks.%d.ln.weight" % k] + sd["blocks.%d.ln.bias" % k]
            h = x @ sd["blocks.%d.fc1.weight" % k].T.astype(np.float64) + \
                sd["blocks.%d.fc1.bias" % k]
            out[k] = np.mean(np.mean(h < below, axis=0) >= share)
        return out

    def block_grad_norms(self, masked_tokens, tokens, mask):
        """Gradient norm of the loss per block and of everything else (embeddings, final
        LayerNorm, head). Arguments as for :meth:`loss`. Returns a dict ``blocks`` (depth,)
        list, ``other`` and ``loss`` (floats; the loss of the whole batch in one pass, equal to
        :meth:`loss` up to the order of summation).

        >>> m = ResidualMLP(8, 4, 2, 8, 3)
        >>> x = np.zeros((2, 4), dtype=np.int32); mask = np.ones((2, 4), dtype=bool)
        >>> len(m.block_grad_norms(np.full((2, 4), 8), x, mask)["blocks"])
        3
        """
        loss, grads = self.gradients(masked_tokens, tokens, mask)
        blocks = np.zeros(self.depth)
        other = 0.0
        for name, g in grads.items():
            sq = float(np.sum(g.astype(np.float64) ** 2))
            if name.startswith("blocks."):
                blocks[int(name.split(".")[1])] += sq
            else:
                other += sq
        return {"blocks": np.sqrt(blocks).tolist(), "other": float(np.sqrt(other)),
                "loss": float(loss)}

    # -- training ---------------------------------------------------------------------------

    def apply_steps(self, chain, lrs, batch_size, seed, options):
        """The fused C training loop for ``len(lrs)`` steps from ``self.step`` (what
        :func:`rgflow.train` calls between evaluations; use that).

        chain : MarkovChain or HiddenMarkovTask; lrs : (k,) float64 learning rates; options : dict of AdamW and
        batch options (``betas``, ``eps``, ``weight_decay``, ``max_grad_norm``, ``mask_rate``,
        ``mask_span``), checked by the C core. Returns ``(losses (k,), n_done, bad)`` (see
        ``_core.mlp_train_steps``) and advances ``step`` by ``n_done``.
        """
        if self._train_workspace is None or self._train_workspace[0] != batch_size:
            self._train_workspace = (batch_size, self._workspace(batch_size, "batch_size"))
        out, n_done, bad = _core.mlp_train_steps(
            self.shape, (self.params, self._grads, self._adam_m, self._adam_v),
            self._train_workspace[1], batch_size, *chain._source(), seed, self.step, lrs,
            options)
        self.step += n_done
        self.train_seed = seed
        return out, n_done, bad

    # -- checkpoints --------------------------------------------------------------------------

    def save(self, path):
        """Write config, parameters, AdamW moments, step and training seed to ``path`` (.npz).

        Atomic: written to a temporary file in the same directory, fsynced, then renamed over
        ``path``; an interrupted or failed save leaves any previous file intact.

        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "m.npz")
        >>> ResidualMLP(8, 4, 2, 8, 1).save(p); ResidualMLP.load(p).step
        0
        """
        meta = dict(version=CHECKPOINT_VERSION, config=self.config, step=self.step,
                    train_seed=self.train_seed, init_seed=self.init_seed)
        with atomic_write(path, binary=True) as f:
            np.savez(f, meta=np.array(json.dumps(meta)), params=self.params,
                     adam_m=self._adam_m, adam_v=self._adam_v)

    @classmethod
    def load(cls, path):
        """Restore a model written by :meth:`save` (same parameters, optimizer state, step).

        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "m.npz")
        >>> ResidualMLP(8, 4, 2, 8, 1).save(p); ResidualMLP.load(p).depth
        1
        """
        with np.load(os.fspath(path), allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta.get("version") != CHECKPOINT_VERSION:
                raise ValueError("unsupported checkpoint version %r" % meta.get("version"))
            model = cls(seed=meta["init_seed"], **meta["config"])
            for name, arr in (("params", model.params), ("adam_m", model._adam_m),
                              ("adam_v", model._adam_v)):
                data = f[name]
                if data.dtype != np.float32 or data.shape != arr.shape:
                    raise ValueError("checkpoint %s has %s %s, expected float32 %s"
                                     % (name, data.dtype, data.shape, arr.shape))
                arr[...] = data
        model.step = int(meta["step"])
        model.train_seed = meta["train_seed"]
        return model
