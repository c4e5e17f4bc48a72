"""rgflow's measures on any PyTorch model: :func:`capture` collects a network's layer outputs
as a ``(layers, n, ...)`` float32 stack that :func:`rgflow.rank_profile`,
:func:`rgflow.drift_profile` and :func:`rgflow.cka_matrix` take as they are.

Needs PyTorch (the ``ref`` extra); ``import rgflow`` never imports this module.

>>> import torch, rgflow as rg                                      # doctest: +SKIP
>>> from rgflow.torch import capture                                 # doctest: +SKIP
>>> stream = capture(net, tokens)   # doctest: +SKIP
>>> rg.rank_profile(stream, "position")                              # doctest: +SKIP
"""
import numpy as np
import torch

from ._util import as_count, check_memory

__all__ = ["capture", "residual_blocks"]


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
    """The tensor a hook saw: ``value`` itself, or its element ``output`` of a tuple/list."""
    if isinstance(value, (tuple, list)):
        if output is None:
            raise ValueError("layer %r returns a %s of %d; pass output=<index> to say which "
                             "element to take" % (name, type(value).__name__, len(value)))
        value = value[output]
    if not torch.is_tensor(value):
        raise TypeError("layer %r returns %s, not a tensor" % (name, type(value).__name__))
    return value


def capture(module, inputs, layers=None, include_input=None, output=None, batch_size=256):
    """Run ``module`` on ``inputs`` once, without gradients, and return the outputs of
    ``layers`` as one float32 array.

    Parameters
    ----------
    module : torch.nn.Module on the CPU. It runs in eval mode; every submodule's mode is
        restored after.
    inputs : tensor or array, (n, ...): one batch dimension first (e.g. (n, length) tokens).
    layers : None (default: the residual blocks, :func:`residual_blocks`), submodule names,
        submodules, or a callable ``layers(module)`` returning either.
    include_input : also take the input of the first layer as layer 0 (the embedding the
        blocks receive); default True when ``layers`` is None, else False.
    output : for layers returning a tuple or list, the index of the element to take.
    batch_size : sequences per forward pass (memory stays bounded by one batch).

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
    x = inputs if torch.is_tensor(inputs) else torch.as_tensor(np.asarray(inputs))
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError("inputs must have a batch dimension of at least one sample, got "
                         "shape %s" % (tuple(x.shape),))
    batch_size = as_count(batch_size, "batch_size")
    chosen = _layers(module, layers)
    include_input = layers is None if include_input is None else bool(include_input)
    n = x.shape[0]
    seen = []  # per batch: one tensor per captured layer, in order

    def keep(slot, name, pick):
        def hook(mod, args, result=None):
            value = pick(args, result)
            seen[-1][slot] = _tensor_of(value, name, output).detach()
        return hook

    hooks, out = [], None
    modes = [(m, m.training) for m in module.modules()]  # eval() below sets every submodule
    try:
        slots = len(chosen) + include_input
        if include_input:
            first_name, first = chosen[0]
            hooks.append(first.register_forward_pre_hook(
                keep(0, first_name + " (input)", _first_input)))
        for k, (name, m) in enumerate(chosen):
            hooks.append(m.register_forward_hook(keep(k + include_input, name,
                                                      lambda args, result: result)))
        module.eval()
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                seen.append([None] * slots)
                module(x[lo:lo + batch_size])
                got = seen.pop()
                missing = [i for i, t in enumerate(got) if t is None]
                if missing:
                    raise ValueError("layer %r did not run in the forward pass"
                                     % _slot_name(chosen, include_input, missing[0]))
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
                    out[k, lo:lo + shape[0]] = t.to(torch.float32).numpy()
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
    return out


def _first_input(args, _):
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
