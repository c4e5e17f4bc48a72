"""rgflow's measures on any PyTorch model: :func:`capture` collects a network's layer outputs
as a ``(layers, n, ...)`` float32 stack that :func:`rgflow.rank_profile`,
:func:`rgflow.drift_profile` and :func:`rgflow.cka_matrix` take as they are.

Needs PyTorch (the ``ref`` extra); ``import rgflow`` never imports this module.

>>> import torch, rgflow as rg                                      # doctest: +SKIP
>>> from rgflow.torch import capture                                 # doctest: +SKIP
>>> stream = capture(net, tokens)   # doctest: +SKIP
>>> rg.rank_profile(stream, "position")                              # doctest: +SKIP
"""
import pickle
from collections.abc import Mapping

import numpy as np
import torch

from ._util import (as_bool_mask, as_count, as_mask_rate, as_real, as_seed, atomic_write,
                    check_memory)

__all__ = ["capture", "residual_blocks", "TransformerMLM", "train_transformer"]


def residual_blocks(module):
    """The default layers of :func:`capture`: the children of the first ``ModuleList`` or
    ``Sequential`` found in ``module`` (in ``named_modules`` order; ``module`` itself when it
    is one). ValueError when there is none."""
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and len(m) > 0:
            return [(("%s.%d" % (name, i)) if name else str(i), child)
                    for i, child in enumerate(m)]
    raise ValueError("module has no ModuleList or Sequential of blocks: pass layers=")


def _layers(module, layers):
    """[(name, submodule)] from names, modules or a callable; ValueError naming what is not a
    submodule of ``module``."""
    if layers is None:
        return residual_blocks(module)
    if callable(layers) and not isinstance(layers, torch.nn.Module):
        layers = layers(module)
    if isinstance(layers, (str, torch.nn.Module)):
        layers = [layers]
    # a set has no order (and a set of names changes order between processes)
    if isinstance(layers, (set, frozenset)) or not hasattr(layers, "__iter__"):
        raise TypeError("layers must be a name, a module, or an ordered sequence of them (or "
                        "a callable returning one), got %s" % type(layers).__name__)
    by_name = dict(module.named_modules())
    by_id = {id(m): name for name, m in module.named_modules()}
    out = []
    for item in layers:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError("layers: %r is not a submodule of the model (its submodules: "
                                 "%s)" % (item, ", ".join(list(by_name)[1:8]) + (
                                     ", ..." if len(by_name) > 8 else "")))
            out.append((item, by_name[item]))
        elif isinstance(item, torch.nn.Module):
            if id(item) not in by_id:
                raise ValueError("layers: a %s that is not a submodule of the model"
                                 % type(item).__name__)
            out.append((by_id[id(item)], item))
        else:
            raise TypeError("layers must hold submodule names or modules, got %s"
                            % type(item).__name__)
    if not out:
        raise ValueError("layers is empty")
    return out


def _tensor_of(value, name, output):
    """The tensor a hook saw: ``value`` itself, or its element ``output`` of a tuple/list or
    dict (any Mapping)."""
    if torch.is_tensor(value):
        return value
    if isinstance(value, (tuple, list, Mapping)):
        what = ("a dict with keys %s" % list(value)[:8] if isinstance(value, Mapping) else
                "a %s of %d" % (type(value).__name__, len(value)))
        if output is None:
            raise ValueError("layer %r returns %s; pass output=<%s> to say which element to "
                             "take" % (name, what, "key" if isinstance(value, Mapping)
                                       else "index"))
        try:
            value = value[output]
        except (IndexError, KeyError, TypeError):
            raise ValueError("layer %r returns %s, which has no element output=%r"
                             % (name, what, output)) from None
    if not torch.is_tensor(value):
        raise TypeError("layer %r returns %s, not a tensor" % (name, type(value).__name__))
    return value


def capture(module, inputs, layers=None, include_input=None, output=None, batch_size=256,
            positions=None):
    """Run ``module`` on ``inputs`` once, without gradients, and return the outputs of
    ``layers`` as one float32 array.

    Parameters
    ----------
    module : torch.nn.Module on the CPU. It runs in eval mode; every submodule's mode is
        restored after.
    inputs : tensor or array, (n, ...): one batch dimension first (e.g. (n, length) tokens);
        a tuple of tensors/arrays, each (n, ...), for a model taking several positional
        inputs. A NumPy float array is converted to the model's parameter dtype.
    layers : None (default: the residual blocks, :func:`residual_blocks`), submodule names,
        submodules, or a callable ``layers(module)`` returning either.
    include_input : also take the input of the first layer as layer 0 (the embedding the
        blocks receive); default True when ``layers`` is None, else False.
    output : for layers returning a tuple or list, the index of the element to take; for
        layers returning a dict, its key.
    batch_size : sequences per forward pass (memory stays bounded by one batch).
    positions : None (all), or an int, slice or 1-D sequence of indices along the axis after
        the batch (the positions of a (n, length, width) output): only those are kept, so
        memory scales with them.

    Returns
    -------
    float32 ndarray (layers, n, ...) with each layer's output shape after the batch
    dimension: (layers, n, length, width) for token models, (layers, n, features) for flat
    ones; forward hooks are removed whatever happens.

    Example: ``capture(net, tokens)`` on a pre-LN transformer encoder gives (K+1, n, L, d);
    ``rg.rank_profile(stream, "position", mask=mask)`` then measures it.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError("module must be a torch.nn.Module, got %s" % type(module).__name__)
    devices = {p.device.type for p in module.parameters()} | \
        {b.device.type for b in module.buffers()}
    if devices - {"cpu"}:
        raise ValueError("module is on %s; capture runs on the CPU: call module.cpu() first"
                         % ", ".join(sorted(devices - {"cpu"})))
    xs = _inputs(module, inputs)
    batch_size = as_count(batch_size, "batch_size")
    pick = _positions(positions)
    chosen = _layers(module, layers)
    include_input = layers is None if include_input is None else bool(include_input)
    n = xs[0].shape[0]
    seen = []  # per batch: one tensor per captured layer, in order
    slots = len(chosen) + include_input
    # a module may be selected several times (a shared block listed k times in a ModuleList):
    # its k-th call in a forward pass fills its k-th slot
    selected = {}  # id(module) -> (first name, module, its slots in order)
    for k, (name, m) in enumerate(chosen):
        selected.setdefault(id(m), (name, m, []))[2].append(k + include_input)
    calls = {}

    def keep_input(name):
        def hook(mod, args):
            if seen[-1][0] is None:  # the first call's input
                seen[-1][0] = _copy(_tensor_of(_first_input(args), name, output), pick)
        return hook

    def keep_output(key, name, where):
        def hook(mod, args, result):
            c = calls[key] = calls.get(key, 0) + 1
            if c <= len(where):
                seen[-1][where[c - 1]] = _copy(_tensor_of(result, name, output), pick)
        return hook

    hooks, out = [], None
    modes = [(m, m.training) for m in module.modules()]  # eval() below sets every submodule
    try:
        if include_input:
            first_name, first = chosen[0]
            hooks.append(first.register_forward_pre_hook(keep_input(first_name + " (input)")))
        for key, (name, m, where) in selected.items():
            hooks.append(m.register_forward_hook(keep_output(key, name, where)))
        module.eval()
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                seen.append([None] * slots)
                calls.clear()
                module(*(x[lo:lo + batch_size] for x in xs))
                got = seen.pop()
                for key, (name, m, where) in selected.items():
                    c = calls.get(key, 0)
                    if c == 0:
                        raise ValueError("layer %r did not run in the forward pass%s" % (
                            name, " (a %s is a container that never runs: select its "
                            "children)" % type(m).__name__ if isinstance(
                                m, (torch.nn.ModuleList, torch.nn.ModuleDict)) else ""))
                    if c == 1:  # selected more than once, run once: its output each time
                        for slot in where[1:]:
                            got[slot] = got[where[0]]
                    elif c != len(where):
                        raise ValueError(
                            "layer %r ran %d times in one forward pass but is selected %d "
                            "time(s); capture takes one output per selection (a module "
                            "selected k times takes its k calls in order): select modules "
                            "that run once" % (name, c, len(where)))
                if got[0] is None:
                    raise ValueError("layer %r did not run in the forward pass"
                                     % _slot_name(chosen, include_input, 0))
                shapes = {tuple(t.shape) for t in got}
                if len(shapes) != 1:
                    raise ValueError("captured layers have unequal output shapes %s; choose "
                                     "layers of one shape" % sorted(shapes))
                shape = shapes.pop()
                if shape[0] != min(batch_size, n - lo):
                    raise ValueError("layer outputs have batch dimension %d, not the inputs' "
                                     "%d" % (shape[0], min(batch_size, n - lo)))
                if out is None:
                    full = (slots, n) + shape[1:]
                    check_memory(4.0 * float(np.prod(full, dtype=np.float64)),
                                 "captured layers of shape %s (float32)" % (full,))
                    out = np.empty(full, dtype=np.float32)
                elif shape[1:] != out.shape[2:]:
                    raise ValueError("layer outputs change shape between batches (%s, then "
                                     "%s)" % (out.shape[2:], shape[1:]))
                for k, t in enumerate(got):
                    out[k, lo:lo + shape[0]] = t.numpy()
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
    return out


def _inputs(module, inputs):
    """capture's inputs as a list of tensors with one batch dimension of the same length: a
    tuple of tensors/arrays is the model's positional inputs; a NumPy (or nested-list) float
    array takes the dtype of the model's floating parameters."""
    several = isinstance(inputs, tuple) and len(inputs) > 0 and all(
        torch.is_tensor(v) or isinstance(v, np.ndarray) for v in inputs)
    floating = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    xs = []
    for v in (inputs if several else (inputs,)):
        if not torch.is_tensor(v):
            a = np.asarray(v)
            if any(stride < 0 for stride in a.strides):  # a reversed array: torch refuses it
                a = a.copy()
            v = torch.from_numpy(a)
            if v.is_floating_point() and floating is not None:
                v = v.to(floating)
        if v.dim() < 1 or v.shape[0] == 0:
            raise ValueError("inputs must have a batch dimension of at least one sample, got "
                             "shape %s" % (tuple(v.shape),))
        xs.append(v)
    if len({v.shape[0] for v in xs}) > 1:
        raise ValueError("inputs: a tuple of inputs must share the batch dimension, got "
                         "shapes %s" % ", ".join(str(tuple(v.shape)) for v in xs))
    return xs


def _copy(t, pick):
    """A float32 copy of the positions ``pick`` of the tensor a hook saw, taken when the hook
    runs: the model may later change that tensor in place (``h += block(h)``, an in-place
    activation), which would change a stored reference."""
    t = t.detach()
    if pick is not None:
        if t.dim() < 3:
            raise ValueError("positions= needs layer outputs with a position axis "
                             "(n, length, ...), got shape %s" % (tuple(t.shape),))
        try:
            t = t[:, pick]
        except IndexError as exc:
            raise ValueError("positions: %s (the outputs have %d positions)"
                             % (exc, t.shape[1])) from None
    return t.to(torch.float32, copy=True)


def _positions(positions):
    """capture's positions= as an index for axis 1 of a (batch, length, ...) tensor."""
    if positions is None or isinstance(positions, slice):
        return positions
    if isinstance(positions, (bool, np.bool_)):
        raise TypeError("positions must be an int, a slice or a sequence of ints, got a bool")
    idx = np.asarray(positions)
    if idx.dtype.kind not in "iu" or idx.ndim > 1:
        raise TypeError("positions must be an int, a slice or a 1-D sequence of ints, got %r"
                        % (positions,))
    return torch.as_tensor(np.atleast_1d(idx).astype(np.int64))


def _first_input(args):
    """The tensor the first layer receives: its one positional argument."""
    if len(args) != 1:
        raise ValueError("the first layer receives %d positional arguments, not one tensor: "
                         "pass include_input=False (and its input's producer in layers=)"
                         % len(args))
    return args[0]


def _slot_name(chosen, include_input, slot):
    if include_input and slot == 0:
        return chosen[0][0] + " (input)"
    return chosen[slot - include_input][0]


# -- an attention baseline on the same task ------------------------------------------------------

CHECKPOINT_FORMAT = 1  # TransformerMLM.save's payload


def _check_adam_state(adam, shapes):
    """Raise ValueError unless ``adam`` is torch.optim.AdamW's per-parameter state for
    parameters of ``shapes``: {index: {"step", "exp_avg", "exp_avg_sq"}}, every one a tensor,
    the moments of the parameter's shape (so a crafted or foreign file cannot load moments
    into the wrong tensors or drop the step counts)."""
    fits = (isinstance(adam, dict) and set(adam) == set(range(len(shapes)))
            and all(isinstance(adam[i], dict)
                    and set(adam[i]) == {"step", "exp_avg", "exp_avg_sq"}
                    and all(isinstance(v, torch.Tensor) for v in adam[i].values())
                    and adam[i]["step"].numel() == 1
                    and adam[i]["exp_avg"].shape == adam[i]["exp_avg_sq"].shape == shapes[i]
                    for i in range(len(shapes))))
    if not fits:
        raise ValueError("its AdamW state does not fit the parameters")


class TransformerMLM(torch.nn.Module):
    """A small pre-LayerNorm transformer encoder for the masked-token task: the comparison
    rgflow's residual MLP is measured against (is the collapse a property of residual MLPs or
    of residual networks trained on this task?).

    Token embedding (``n_states + 1`` ids, the last the mask) plus a learned position
    embedding, ``depth`` blocks of ``torch.nn.TransformerEncoderLayer`` (``heads`` heads,
    feed-forward width ``hidden``, GELU, no dropout, LayerNorm first), a final LayerNorm and
    the token embedding's first ``n_states`` rows as the unembedding (shared). Its residual
    stream (:meth:`residual_stream`, :func:`capture`) has the residual MLP's shape
    ``(depth + 1, n, length, width)``. Like a ResidualMLP it counts the updates applied
    (``step``) and keeps its AdamW state between :func:`train_transformer` calls, so training
    continues where it stopped; :meth:`save` and :meth:`load` write and read all of it.

    >>> net = TransformerMLM(n_states=8, length=16, width=16, depth=2)   # doctest: +SKIP
    >>> net.logits(np.full((3, 16), 8)).shape                             # doctest: +SKIP
    (3, 16, 8)
    """

    def __init__(self, n_states, length, width, depth, heads=2, hidden=None, seed=0):
        super().__init__()
        self.n_states = as_count(n_states, "n_states", minimum=2)
        self.length = as_count(length, "length")
        self.width = as_count(width, "width")
        self.depth = as_count(depth, "depth")
        self.heads = heads = as_count(heads, "heads")
        if self.width % heads:
            raise ValueError("width (%d) must be a multiple of heads (%d)" % (width, heads))
        self.hidden = hidden = 4 * self.width if hidden is None else as_count(hidden, "hidden")
        self.step = 0              # AdamW updates applied by train_transformer
        self._adam_state = None    # torch.optim.AdamW's per-parameter state after them
        gen = torch.Generator().manual_seed(as_seed(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            self.embed = torch.nn.Embedding(self.n_states + 1, self.width)
            self.position = torch.nn.Parameter(0.02 * torch.randn(self.length, self.width))
            self.blocks = torch.nn.ModuleList(
                torch.nn.TransformerEncoderLayer(self.width, heads, hidden, dropout=0.0,
                                                 activation="gelu", batch_first=True,
                                                 norm_first=True)
                for _ in range(self.depth))
            self.final_norm = torch.nn.LayerNorm(self.width)

    @property
    def config(self):
        """The sizes this network was built with (constructor arguments but the seed)."""
        return dict(n_states=self.n_states, length=self.length, width=self.width,
                    depth=self.depth, heads=self.heads, hidden=self.hidden)

    def save(self, path):
        """Write sizes, parameters, step and AdamW state to ``path`` (``torch.save``),
        atomically: an interrupted save leaves any previous file intact."""
        payload = dict(format=CHECKPOINT_FORMAT, config=self.config, step=self.step,
                       params=self.state_dict(), adam=self._adam_state)
        with atomic_write(path, binary=True) as f:
            torch.save(payload, f)

    @classmethod
    def load(cls, path):
        """A network written by :meth:`save`: the same parameters, step and AdamW state.
        Raises ValueError for a file that is not such a checkpoint."""
        with open(path, "rb") as f:  # a missing or unreadable file: its OSError
            try:
                payload = torch.load(f, weights_only=True)
                if payload.get("format") != CHECKPOINT_FORMAT:
                    raise ValueError("unsupported format %r" % payload.get("format"))
                model = cls(**payload["config"])
                model.load_state_dict(payload["params"])
                model.step = as_count(payload["step"], "step", minimum=0)
                adam = payload["adam"]
                if adam is not None:  # None: saved before any update
                    _check_adam_state(adam, [p.shape for p in model.parameters()])
                model._adam_state = adam
            # damaged bytes: the weights-only unpickler also raises KeyError, IndexError, ...
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, LookupError,
                    TypeError, AttributeError, ValueError) as exc:
                raise ValueError("%s is not a TransformerMLM checkpoint: %s" % (path, exc)) \
                    from exc
        return model

    def forward(self, tokens):
        """(batch, length) int64 ids in [0, n_states] -> (batch, length, n_states) logits."""
        h = self.embed(tokens) + self.position
        for block in self.blocks:
            h = block(h)
        return self.final_norm(h) @ self.embed.weight[:self.n_states].T

    def _tokens(self, tokens):
        a = tokens.numpy() if torch.is_tensor(tokens) else np.asarray(tokens)
        if a.dtype.kind not in "iu":  # a float id would be truncated, a bool taken as 0/1
            raise TypeError("tokens must be an integer array, got dtype %s" % a.dtype)
        t = torch.as_tensor(a, dtype=torch.int64)
        if t.dim() != 2 or t.shape[1] != self.length or t.shape[0] == 0:
            raise ValueError("tokens must have shape (n >= 1, %d), got %s"
                             % (self.length, tuple(t.shape)))
        if t.numel() and (t.min() < 0 or t.max() > self.n_states):
            raise ValueError("tokens must lie in [0, %d] (%d = MASK)" % (self.n_states,
                                                                        self.n_states))
        return t

    def logits(self, tokens, batch_size=1024):
        """(n, length) ids -> (n, length, n_states) float32 logits, without gradients, in
        eval mode (restored after)."""
        t = self._tokens(tokens)
        batch_size = as_count(batch_size, "batch_size")
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                return torch.cat([self(t[lo:lo + batch_size])
                                  for lo in range(0, t.shape[0], batch_size)]).numpy()
        finally:
            self.train(was)

    def residual_stream(self, tokens):
        """(depth + 1, n, length, width) float32: the blocks' input and each block's output."""
        return capture(self, self._tokens(tokens))

    def loss(self, masked_tokens, tokens, mask):
        """Mean masked cross-entropy (nats) of a batch, without gradients."""
        z = torch.as_tensor(self.logits(masked_tokens), dtype=torch.float64)
        m = torch.as_tensor(as_bool_mask(mask, z.shape[:2]))
        y = self._tokens(tokens)
        return float(torch.nn.functional.cross_entropy(z[m], y[m]))


def train_transformer(model, chain, steps, *, batch_size=128, lr=1e-3, weight_decay=0.0,
                      mask_rate=0.15, mask_span=1, seed=0, schedule="constant", warmup=0,
                      total_steps=None, max_grad_norm=None, eval_every=None, eval_size=512,
                      progress=False):
    """Train a :class:`TransformerMLM` with ``torch.optim.AdamW`` on exactly the batches
    :func:`rgflow.train` gives a residual MLP with the same seed (the same Philox streams and
    masks, :func:`rgflow.train.train_batch`), the same learning-rate schedule and the same
    held-out evaluation. Training continues from ``model.step`` with the AdamW state the model
    kept, as :func:`rgflow.train` continues a ResidualMLP: batches, learning rate
    (``total_steps``: the whole planned run, default ``model.step + steps``) and evaluations
    (every ``eval_every`` global steps) follow the global step, so ``k`` steps twice give the
    bits of ``2k`` steps once (with the same PyTorch thread count). Returns an
    :class:`rgflow.History` (no ``flow``). ``progress``: a tqdm bar if true, or a callable
    called with the steps done every 25 steps (as :func:`rgflow.train` does). Ctrl-C, or a
    sweep's stop request, ends training at the next 25-step boundary with
    :class:`rgflow.TrainingInterrupted` (the model is left in eval mode with ``step`` and its
    AdamW state counting exactly the updates applied; the exception's ``history`` holds the
    steps done). The arguments are checked as :func:`rgflow.train` checks them (``steps`` >=
    1); ``eval_every=0`` evaluates only at the end, and a non-finite training loss raises
    FloatingPointError naming the step.
    """
    import time
    from .chains import HiddenMarkovTask, MarkovChain
    from .train import (CHUNK_STEPS, TrainingInterrupted, _deferred_sigint, _fill_history,
                        _held_out, _interrupted, _stop_check)

    if not isinstance(model, TransformerMLM):
        raise TypeError("model must be a TransformerMLM, got %s" % type(model).__name__)
    if not isinstance(chain, (MarkovChain, HiddenMarkovTask)):
        raise TypeError("chain must be a MarkovChain or a HiddenMarkovTask, got %s"
                        % type(chain).__name__)
    if chain.n_states != model.n_states:
        raise ValueError("chain has n_states = %d but the model has n_states = %d"
                         % (chain.n_states, model.n_states))
    # every argument checked as train() checks it, before any work
    steps = as_count(steps, "steps")
    batch_size = as_count(batch_size, "batch_size")
    lr = as_real(lr, "lr", low=0.0, high=float("inf"), high_open=True)
    weight_decay = as_real(weight_decay, "weight_decay", low=0.0)
    mask_rate = as_mask_rate(mask_rate)
    mask_span = as_count(mask_span, "mask_span")
    seed = as_seed(seed)
    if schedule not in ("constant", "cosine"):
        raise ValueError("schedule must be 'constant' or 'cosine', got %r" % (schedule,))
    warmup = as_count(warmup, "warmup", minimum=0)
    start = model.step
    total = start + steps if total_steps is None else as_count(total_steps, "total_steps")
    # None or <= 0: no clipping, as in train()
    clip = 0.0 if max_grad_norm is None else as_real(max_grad_norm, "max_grad_norm")
    # 0: evaluate only at the end, as in train()
    eval_every = as_count(max(1, steps // 10) if eval_every is None else eval_every,
                          "eval_every", minimum=0)
    eval_size = as_count(eval_size, "eval_size")
    t0 = time.perf_counter()
    hist, floor = _held_out(chain, model, seed, eval_size, mask_rate, mask_span)
    ev_tokens, ev_masked, ev_mask = hist.eval_batch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if model._adam_state is not None:  # continue: the moments and step counts of earlier calls
        state = opt.state_dict()
        state["state"] = model._adam_state
        opt.load_state_dict(state)
    losses, lrs, ev_steps, ev_loss = [], [], [], []
    source = chain._source()
    bar = None
    if progress and not callable(progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="train (transformer)", unit="step")
    report = progress if callable(progress) else (bar.update if bar is not None else None)
    external = getattr(_stop_check, "check", None)
    model.train()
    with _deferred_sigint() as sigint:
        try:
            _transformer_loop(model, opt, source, steps, seed, batch_size, mask_rate, mask_span,
                              lr, schedule, warmup, total, clip, eval_every, losses, lrs,
                              ev_steps, ev_loss, (ev_tokens, ev_masked, ev_mask), report,
                              lambda: sigint[0] or (external is not None and external()),
                              CHUNK_STEPS, _interrupted)
        except KeyboardInterrupt as exc:  # e.g. from a progress callback, as train() does
            # hist is completed by the finally clause, before the exception propagates
            if not isinstance(exc, TrainingInterrupted):
                stopped = _interrupted(model, start, steps, "train_transformer")
                stopped.history = hist
                raise stopped from exc
            exc.history = hist
            raise
        finally:
            model.eval()
            # {} when no update was applied to a fresh network: no state, as before the call
            model._adam_state = opt.state_dict()["state"] or None
            if bar is not None:
                bar.close()
            _fill_history(hist, start, losses, lrs, ev_steps, ev_loss, floor, t0)
    return hist


def _transformer_loop(model, opt, source, steps, seed, batch_size, mask_rate, mask_span, lr,
                      schedule, warmup, total, clip, eval_every, losses, lrs, ev_steps,
                      ev_loss, held_out, report, stop, chunk, interrupted):
    from . import _core
    from .train import learning_rate
    ev_tokens, ev_masked, ev_mask = held_out
    for i in range(steps):
        step = model.step  # global: batches, the schedule and evaluations follow it
        tokens, masked, mask = _core.mlp_train_batch(*source, seed, step, batch_size,
                                                     model.length, mask_rate, mask_span)
        rate = learning_rate(step, lr, schedule, warmup, total)
        for group in opt.param_groups:
            group["lr"] = rate
        m = torch.as_tensor(mask)
        z = model(torch.as_tensor(masked, dtype=torch.int64))
        loss = torch.nn.functional.cross_entropy(z[m], torch.as_tensor(tokens,
                                                                      dtype=torch.int64)[m])
        if not torch.isfinite(loss):  # as train(): not an update on a NaN gradient
            raise FloatingPointError("training loss became %r at step %d (lr %.3g)"
                                     % (float(loss.detach()), step, rate))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        model.step += 1
        losses.append(float(loss.detach()))
        lrs.append(rate)
        if (eval_every and model.step % eval_every == 0) or i + 1 == steps:
            ev_steps.append(model.step)
            ev_loss.append(model.loss(ev_masked, ev_tokens, ev_mask))
            model.train()
        if (i + 1) % chunk == 0 or i + 1 == steps:
            if report is not None:
                report((i + 1) % chunk or chunk)
            if stop():  # also after the last chunk, as train() does
                raise interrupted(model, model.step - i - 1, steps, "train_transformer")
