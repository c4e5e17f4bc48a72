"""Training loop: masked-token prediction on a Markov chain, entirely in C between evaluations.

``train`` calls the fused C loop ``mlp_train_steps`` (sample -> mask -> forward -> backward ->
clip -> AdamW, k steps with the GIL released) in chunks and evaluates on a fixed held-out batch.
Batch row b of global step s is a function of (seed, s, b) alone, and the model carries its
step counter and AdamW moments, so ``train(model, chain, k)`` twice equals
``train(model, chain, 2k)`` bit for bit, also across ``save``/``load``.
"""
import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import _core
from ._util import as_count, as_mask_rate, as_real, as_seed, check_memory
from .analysis import block_updates, drift_profile, rank_profile
from .chains import HiddenMarkovTask, MarkovChain, mask_tokens
from .model import ResidualMLP

__all__ = ["train", "History", "flow_point", "log_steps", "learning_rate", "TrainingInterrupted"]

CHUNK_STEPS = 25  # steps per C call between progress updates (results do not depend on it)


@dataclass
class History:
    """What ``train`` observed.

    steps : (n,) int64, global step count after each update (model.step values).
    losses : (n,) float64, training loss (mean masked CE, nats) of each step's batch.
    lrs : (n,) float64, learning rate used at each step.
    eval_steps : (e,) int64, model.step at each evaluation.
    eval_loss : (e,) float64, model masked CE on the held-out batch.
    eval_bayes : (e,) float64, Bayes-optimal CE on the same batch (constant: one batch).
    wall_time : float, seconds spent in ``train``.
    stopped_early : bool, True when ``target_excess`` was reached before ``steps``.
    eval_batch : (tokens, masked, mask), each (eval_size, length), the held-out batch.
    flow : list of dicts, one per ``flow_at`` step reached (see :func:`flow_point`).
    """

    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lrs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eval_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    eval_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eval_bayes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wall_time: float = 0.0
    stopped_early: bool = False
    eval_batch: tuple = None
    flow: list = field(default_factory=list)


def flow_point(model, tokens, masked, mask):
    """The light snapshot of a network that ``train(..., flow_at=...)`` records: on a masked
    batch (tokens, masked, mask each (n, length)), a dict of ``step``, ``loss`` (masked CE),
    position-level centred erank profiles ``erank_masked`` and ``erank_position`` (depth+1,),
    stream-level ``drift`` and masked-token ``drift_masked`` (depth,), each block's relative
    ``update`` (:func:`rgflow.analysis.block_updates`), gradient norm ``grad_blocks`` and
    share of switched-off hidden units ``inactive_units`` (:meth:`ResidualMLP.inactive_units`)
    (depth,), as JSON-ready lists.

    >>> m = ResidualMLP(8, 8, 8, 16, 2, seed=0)
    >>> x = MarkovChain.lazy(8, 1.0).sample(64, 8, seed=0)
    >>> masked, mask = mask_tokens(x, rate=0.3, seed=1, mask_id=8)
    >>> sorted(flow_point(m, x, masked, mask))[:3]
    ['drift', 'drift_masked', 'erank_masked']
    """
    stream = model.residual_stream(masked)
    mask = np.asarray(mask, dtype=bool)
    # model.loss, not the gradient pass's loss: it sums in another order (one batch, not
    # chunks of 256 sequences), and the flow's loss is the held-out evaluation's
    return {"step": int(model.step), "loss": float(model.loss(masked, tokens, mask)),
            "erank_masked": rank_profile(stream, "position", mask=mask).masked.tolist(),
            "erank_position": rank_profile(stream, "position").tolist(),
            "drift": drift_profile(stream).tolist(),
            "drift_masked": drift_profile(stream[:, mask]).tolist(),
            "update": block_updates(stream).tolist(),
            "inactive_units": model.inactive_units(masked, stream=stream).tolist(),
            "grad_blocks": model.block_grad_norms(masked, tokens, mask)["blocks"]}


def learning_rate(step, lr, schedule="constant", warmup=0, total_steps=None):
    """Learning rate of global step ``step`` (0-based).

    Linear warmup ``lr * (step + 1) / warmup`` for ``step < warmup``; then ``lr`` (constant) or
    ``lr * (1 + cos(pi * p)) / 2`` with ``p = (step - warmup) / (total_steps - warmup)``
    clipped to [0, 1] (cosine). The rate is a function of the global step, so a run split over
    several ``train`` calls follows the same schedule when each call gets the same
    ``total_steps``.

    >>> learning_rate(0, 1e-3, "cosine", warmup=0, total_steps=100)
    0.001
    >>> learning_rate(50, 1.0, "cosine", total_steps=100)
    0.5
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        span = max(1, total_steps - warmup)
        p = min(1.0, max(0.0, (step - warmup) / span))
        return lr * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError("schedule must be 'constant' or 'cosine', got %r" % (schedule,))


def train_batch(chain, model, step, batch_size=128, mask_rate=0.15, mask_span=1, seed=0):
    """The exact training batch of global step ``step`` (0-based) of ``train(..., seed)``.

    Returns ``(tokens, masked, mask)``: (batch_size, length) int32 true tokens, int32 model
    input (MASK id = n_states at hidden positions) and bool mask.

    >>> chain = MarkovChain.lazy(8, 7.0)
    >>> model = ResidualMLP(8, 16, 8, 32, 1)
    >>> train_batch(chain, model, step=3, batch_size=4)[1].shape
    (4, 16)
    """
    _check_chain(chain, model)
    return _core.mlp_train_batch(*chain._source(), as_seed(seed),
                                 as_count(step, "step", minimum=0),
                                 as_count(batch_size, "batch_size"), model.length,
                                 as_mask_rate(mask_rate),
                                 as_count(mask_span, "mask_span"))


@contextlib.contextmanager
def _deferred_sigint():
    """Hold Ctrl-C (SIGINT) until the loop reaches a safe point: a KeyboardInterrupt raised
    right after a C chunk returns would drop its result after the parameters were updated in
    place, leaving ``model.step`` behind them. Yields a one-element list set to True when a
    SIGINT arrived; only the main thread with Python's default handler is affected."""
    pending = [False]
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield pending
        return

    def hold(signum, frame):
        pending[0] = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield pending
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_stop_check = threading.local()


@contextlib.contextmanager
def _stop_when(check):
    """Within the block, :func:`train` calls in this thread raise TrainingInterrupted at their
    next chunk boundary once ``check()`` returns True: how a sweep stops runs in worker
    processes and threads, where Ctrl-C does not reach ``train`` (``check=None``: never)."""
    previous = getattr(_stop_check, "check", None)
    _stop_check.check = check
    try:
        yield
    finally:
        _stop_check.check = previous


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`, raised between chunks: ``model.step`` counts exactly the
    updates applied to the parameters, so the model can be trained further or saved.
    ``history`` is the :class:`History` of the steps done (losses, evaluations, flow points),
    which a resumed call does not repeat."""
    history = None


def _interrupted(model, start, steps, name="train"):
    return TrainingInterrupted(
        "%s interrupted after step %d (%d of the %d requested steps done); the model is "
        "consistent: train it further or save it" % (name, model.step, model.step - start,
                                                     steps))


def _check_chain(chain, model):
    if not isinstance(chain, (MarkovChain, HiddenMarkovTask)):
        raise TypeError("chain must be a MarkovChain or a HiddenMarkovTask, got %s"
                        % type(chain).__name__)
    if not isinstance(model, ResidualMLP):
        raise TypeError("model must be a ResidualMLP, got %s" % type(model).__name__)
    if chain.n_states != model.n_states:
        raise ValueError("chain has n_states = %d but the model has n_states = %d"
                         % (chain.n_states, model.n_states))


def _held_out(chain, model, seed, eval_size, mask_rate, mask_span):
    """A new History holding the held-out batch (``eval_batch``), and that batch's Bayes
    floor; the memory it needs (tokens, masked, mask, posterior work) is checked first."""
    check_memory(eval_size * model.length * (9.0 + 16.0 * chain.n_states),
                 "eval_size = %d held-out sequences" % eval_size)
    hist = History()
    hist.eval_batch = _eval_batch(chain, model, seed, eval_size, mask_rate, mask_span)
    return hist, chain.bayes_loss(hist.eval_batch[0], hist.eval_batch[2])


def _eval_batch(chain, model, seed, size, mask_rate, mask_span):
    """Held-out batch from chain.sample / mask_tokens (domains disjoint from the training
    streams) with seeds derived from the training seed."""
    s1, s2 = np.random.SeedSequence([seed, 0xE7A1]).generate_state(2, np.uint64)
    tokens = chain.sample(size, model.length, seed=int(s1) >> 1)
    masked, mask = mask_tokens(tokens, rate=mask_rate, seed=int(s2) >> 1,
                               mask_id=model.n_states, span=mask_span)
    return tokens, masked, mask


def train(model, chain, steps, *, batch_size=128, lr=1e-3, weight_decay=0.0, mask_rate=0.15,
          mask_span=1, seed=0, schedule="constant", warmup=0, total_steps=None,
          max_grad_norm=None, eval_every=None, eval_size=512, progress=True,
          target_excess=None, betas=(0.9, 0.999), eps=1e-8, flow_at=()):
    """Train ``model`` in place for ``steps`` AdamW steps on masked-token prediction.

    Parameters
    ----------
    model : ResidualMLP (its ``step``, AdamW moments and parameters are updated).
    chain : MarkovChain or HiddenMarkovTask with ``n_states == model.n_states``.
    steps : int >= 0, number of steps to take now. Every option below is keyword-only.
    batch_size : sequences per step. lr : peak learning rate.
    weight_decay : decoupled (AdamW) decay on all parameters.
    mask_rate, mask_span : masking of the training (and evaluation) batches.
    seed : int or Generator; batch row b of global step s uses Philox streams
        (seed, TRAIN_SAMPLE / TRAIN_MASK, (s << 32) | b).
    schedule : "constant" or "cosine" (see :func:`learning_rate`); warmup : warmup steps.
    total_steps : length of the whole planned run for the cosine schedule; default
        ``model.step + steps``. Pass the same value to every call of a split run.
    max_grad_norm : global gradient-norm clipping threshold (None or <= 0: off).
    eval_every : evaluate every this many global steps (default steps // 10; 0: only at the
        end); the held-out batch (eval_size sequences) is fixed by ``seed``.
    progress : True shows a tqdm bar with the loss and the Bayes floor; a callable is called
        as ``progress(n)`` with the number of steps just done after every chunk (what a
        sweep's step bar is fed with); False shows nothing.
    target_excess : stop early, at the first evaluation whose held-out masked CE is within
        this many nats of the Bayes floor (None: train all ``steps``; ``steps`` is then the
        budget). ``History.stopped_early`` says whether it did; ``len(History.losses)`` is the
        number of steps taken.
    betas : AdamW's (beta1, beta2), each in [0, 1).
    eps : AdamW's denominator term, finite and > 0.
    flow_at : global step counts (ints) after which to record :func:`flow_point` on the
        held-out batch into ``History.flow`` (the flow during training; e.g.
        :func:`log_steps`); steps outside this call's range are ignored. Results do not depend
        on it.

    Returns
    -------
    History. Raises FloatingPointError naming the step if the loss or a parameter becomes
    NaN/Inf (``model.step`` then counts the updates that were applied). Ctrl-C is held until
    the current chunk (<= 25 steps) finishes, then raises :class:`TrainingInterrupted` (a
    KeyboardInterrupt) with ``model.step`` equal to the updates applied and the History of
    those steps as its ``history``; a run inside
    :func:`rgflow.sweep` stops the same way when the sweep is interrupted.

    >>> chain = MarkovChain.lazy(8, 7.0)
    >>> model = ResidualMLP(8, 16, 8, 64, 2, seed=0)
    >>> hist = train(model, chain, steps=20, batch_size=32, progress=False)
    >>> model.step, hist.losses.shape
    (20, (20,))
    """
    _check_chain(chain, model)
    steps = as_count(steps, "steps", minimum=0)
    batch_size = as_count(batch_size, "batch_size")
    lr = as_real(lr, "lr", low=0.0, high=float("inf"), high_open=True)
    weight_decay = as_real(weight_decay, "weight_decay", low=0.0)
    mask_rate = as_mask_rate(mask_rate)
    mask_span = as_count(mask_span, "mask_span")
    seed = as_seed(seed)
    warmup = as_count(warmup, "warmup", minimum=0)
    if schedule not in ("constant", "cosine"):
        raise ValueError("schedule must be 'constant' or 'cosine', got %r" % (schedule,))
    start = model.step
    total = model.step + steps if total_steps is None else as_count(total_steps, "total_steps")
    clip = 0.0 if max_grad_norm is None else as_real(max_grad_norm, "max_grad_norm")
    # AdamW and batch options, as the C loop takes them (one dict, checked again there)
    options = dict(betas=_betas(betas), weight_decay=weight_decay, max_grad_norm=clip,
                   eps=as_real(eps, "eps", low=0.0, high=float("inf"), low_open=True,
                               high_open=True),
                   mask_rate=mask_rate, mask_span=mask_span)
    if eval_every is None:
        eval_every = max(1, steps // 10)
    eval_every = as_count(eval_every, "eval_every", minimum=0)
    eval_size = as_count(eval_size, "eval_size")
    flow_at = _flow_steps(flow_at, start, start + steps)
    if target_excess is not None:
        target_excess = as_real(target_excess, "target_excess", low=0.0)
        if not eval_every:
            raise ValueError("target_excess needs evaluations: eval_every must be >= 1")

    t0 = time.perf_counter()
    hist, floor = _held_out(chain, model, seed, eval_size, mask_rate, mask_span)
    ev_tokens, ev_masked, ev_mask = hist.eval_batch
    losses, lrs, ev_steps, ev_loss = [], [], [], []

    def record_flow():
        hist.flow.append(flow_point(model, ev_tokens, ev_masked, ev_mask))

    def evaluate():
        ev_steps.append(model.step)
        ev_loss.append(model.loss(ev_masked, ev_tokens, ev_mask))
        evaluate.last = model.step
        if target_excess is not None and ev_loss[-1] - floor <= target_excess:
            hist.stopped_early = model.step < start + steps
            return True
        return False
    evaluate.last = None

    bar = None
    if callable(progress):
        bar = _Callback(progress)
    elif progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="train", unit="step")
    external = getattr(_stop_check, "check", None)
    try:
        with _deferred_sigint() as sigint:
            def stop():
                return sigint[0] or (external is not None and external())

            _train_loop(model, chain, steps, start, batch_size, lr, options, seed, schedule,
                        warmup, total, eval_every, losses, lrs, ev_loss, evaluate, bar, floor,
                        stop, flow_at, record_flow)
    except KeyboardInterrupt as exc:
        # hist is completed by the finally clause below, before the exception propagates
        if isinstance(exc, TrainingInterrupted):
            exc.history = hist
            raise
        stopped = _interrupted(model, start, steps)  # e.g. from a progress callback
        stopped.history = hist
        raise stopped from exc
    finally:
        if bar is not None:
            bar.close()
        _fill_history(hist, start, losses, lrs, ev_steps, ev_loss, floor, t0)
    return hist


def _fill_history(hist, start, losses, lrs, ev_steps, ev_loss, floor, t0):
    """The arrays of ``hist`` from a training loop's lists (steps counted after ``start``)."""
    hist.steps = np.arange(start + 1, start + 1 + len(losses), dtype=np.int64)
    hist.losses = np.asarray(losses, dtype=np.float64)
    hist.lrs = np.asarray(lrs, dtype=np.float64)
    hist.eval_steps = np.asarray(ev_steps, dtype=np.int64)
    hist.eval_loss = np.asarray(ev_loss, dtype=np.float64)
    hist.eval_bayes = np.full(len(ev_loss), floor)
    hist.wall_time = time.perf_counter() - t0


def _betas(betas):
    """AdamW's (beta1, beta2): a pair of reals in [0, 1)."""
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError("betas must be a pair (beta1, beta2), got %r" % (betas,))
    return tuple(as_real(b, "betas[%d]" % i, low=0.0, high=1.0, high_open=True)
                 for i, b in enumerate(betas))


class _Callback:
    """A ``progress`` callable behind the bar interface the loop uses."""

    def __init__(self, report):
        self.update = report

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _flow_steps(flow_at, lo, hi):
    """The sorted distinct flow steps in (lo, hi] as a list of ints."""
    try:
        steps = np.unique(np.asarray(list(flow_at)))
    except TypeError:
        raise TypeError("flow_at must be an iterable of step counts") from None
    if steps.size and steps.dtype.kind not in "iu":
        raise TypeError("flow_at must hold integer step counts, got dtype %s" % steps.dtype)
    return [int(s) for s in steps if lo < s <= hi]


def log_steps(steps, points=24, first=10):
    """About ``points`` distinct step counts spaced logarithmically from ``first`` to
    ``steps`` (both included when ``steps >= first`` and ``points >= 2``; one point is
    ``steps``): where to record the flow.

    >>> log_steps(1000, points=4)
    [10, 46, 215, 1000]
    """
    steps = as_count(steps, "steps")
    points = as_count(points, "points")
    first = min(as_count(first, "first"), steps)
    if points == 1:
        return [steps]
    return sorted({int(round(s)) for s in np.geomspace(first, steps, points)})


def _train_loop(model, chain, steps, start, batch_size, lr, options, seed, schedule, warmup,
                total, eval_every, losses, lrs, ev_loss, evaluate, bar, floor, stop, flow_at,
                record_flow):
    """The chunked loop of ``train``; after every chunk, when the model's step counter matches
    its parameters, ``stop()`` (a held SIGINT or a sweep's stop request) ends it."""
    flow_at = list(flow_at)
    while model.step < start + steps:
        end = min(start + steps, model.step + CHUNK_STEPS)
        if eval_every:
            end = min(end, (model.step // eval_every + 1) * eval_every)
        if flow_at:
            end = min(end, flow_at[0])
        chunk_lrs = np.array([learning_rate(s, lr, schedule, warmup, total)
                              for s in range(model.step, end)], dtype=np.float64)
        step0 = model.step
        out, n_done, bad = model.apply_steps(chain, chunk_lrs, batch_size, seed, options)
        losses.extend(out[:n_done])
        lrs.extend(chunk_lrs[:n_done])
        if bad == 1:
            raise FloatingPointError("training loss became %r at step %d (lr %.3g)"
                                     % (float(out[n_done]), step0 + n_done,
                                        chunk_lrs[n_done]))
        if bad == 2:
            raise FloatingPointError("a parameter became non-finite at step %d (lr %.3g, "
                                     "loss %.6g)" % (step0 + n_done - 1,
                                                     chunk_lrs[n_done - 1],
                                                     out[n_done - 1]))
        if bar is not None:
            bar.update(n_done)
        if flow_at and model.step == flow_at[0]:
            flow_at.pop(0)
            record_flow()
        if eval_every and model.step % eval_every == 0 and evaluate():
            break
        if bar is not None:
            post = dict(loss="%.4f" % losses[-1], floor="%.4f" % floor)
            if ev_loss:
                post["eval"] = "%.4f" % ev_loss[-1]
            bar.set_postfix(post, refresh=False)
        if stop():
            raise _interrupted(model, start, steps)
    if not ev_loss or evaluate.last != model.step:
        evaluate()
