"""One experiment end to end: chain -> trained ResidualMLP -> residual stream -> measures ->
verdicts.

>>> cfg = Config(xi=1.0, seed=0, steps=10, hidden=32, depth=3, width=8, length=8,
...              eval_size=64)
>>> res = run(cfg, progress=False)
>>> sorted(res.profiles)
['masked', 'pooled', 'position', 'stream', 'visible']
"""
import contextlib
import hashlib
import json
import numbers
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from . import _core, findings
from ._util import (as_count, as_mask_rate, as_real, atomic_write,
                    remove_orphaned_temporaries)
from .analysis import block_updates, cka_matrix, drift_profile, rank_profile, relevance_decomposition
from .chains import XI_MAX, HiddenMarkovTask, MarkovChain, mask_tokens
from .model import ResidualMLP
from .runtime import get_num_threads, where_computed
from .train import History, TrainingInterrupted, log_steps, train

__all__ = ["Config", "Result", "run", "gate_evaluation", "measure_stream", "GATE_SIZE"]

CHAIN_FAMILIES = ("lazy", "random")
# "chain": the tokens are the chain's states; "hmm": HiddenMarkovTask.noisy (tokens replaced by
# a uniform one with probability noise); "hmm-random": HiddenMarkovTask.random (a Dirichlet
# emission from n_hidden states, mixed with noise)
TASKS = ("chain", "hmm", "hmm-random")
# Fields added with the hidden-Markov tasks, left out of to_dict (and so of the key) while the
# task is a plain chain: the records of chain runs keep the keys they had before.
_TASK_FIELDS = {"task": "chain", "noise": 0.0, "n_hidden": 0}
# The architectures run() trains: rgflow's residual MLP (C), or the attention baseline
# rgflow.torch.TransformerMLM (PyTorch; heads attention heads, FFN width `hidden` per token).
# Left out of to_dict at their defaults, like _TASK_FIELDS.
ARCHS = ("mlp", "transformer")
_ARCH_FIELDS = {"arch": "mlp", "heads": 2}
SCHEDULES = ("constant", "cosine")
# a posterior probability that is exactly 0 (impossible states of sparse chains) enters the
# relevance regression as log(1e-300)
POSTERIOR_FLOOR = 1e-300


def _as_field_type(value, name, kind):
    """``value`` as exactly the Python type ``kind`` (int, float, bool or str) of Config field
    ``name``: 2000.0 -> 2000 and 1 -> 1.0, but TypeError for what does not convert exactly
    (1.5 for an int field, 2**53 + 1 for a float field, 1 for a bool, a bool for a number)."""
    if kind is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
    elif kind is str:
        if isinstance(value, str):
            return str(value)
    elif isinstance(value, (bool, np.bool_)):
        pass  # True is an int to Python, never a count or a rate here
    elif kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(float(value))
    elif kind is float:
        if isinstance(value, numbers.Real):
            as_float = float(value)
            if as_float == value or as_float != as_float:  # exact (NaN: left to as_real)
                return as_float
    raise TypeError("Config field %s must be %s %s, got %r (%s)"
                    % (name, "an" if kind is int else "a", kind.__name__, value,
                       type(value).__name__))


@dataclass(frozen=True)
class Config:
    """Every knob of one experiment: chain, task, model, training and evaluation.

    Defaults are the paper-scale configuration (V 8, L 32, d 16, m 512, K 12, batch 128,
    AdamW lr 1e-3, 3000 steps, mask rate 0.15). ``chain="random"`` uses
    ``MarkovChain.random(n_states, xi, seed=chain_seed)``; ``"lazy"`` the lazy chain with
    uniform stationary law. ``task="hmm"`` makes that chain hidden: each token is its state,
    replaced by a uniform token with probability ``noise`` > 0 (:meth:`HiddenMarkovTask.noisy`;
    noise 0 would be ``task="chain"`` under another key, so it is refused);
    ``task="hmm-random"`` emits from ``n_hidden`` states (0: ``n_states``) through a random
    Dirichlet emission mixed with ``noise`` (:meth:`HiddenMarkovTask.random`).
    ``schedule="cosine"`` decays the learning rate to 0 over ``steps`` after a linear
    ``warmup``.

    Every field is stored as its declared type (``xi=1`` becomes 1.0, ``steps=2000.0`` becomes
    2000), so equal configs have equal keys; a value that does not convert exactly (``steps=1.5``,
    ``block_ln=1``) raises TypeError naming the field.

    >>> Config(xi=7).key() == Config(xi=7.0).key()
    True
    >>> Config(xi=7.0).key() == Config(xi=7.0).key() != Config(xi=1.0).key()
    True
    """
    # the chain
    chain: str = "lazy"
    n_states: int = 8
    xi: float = 1.0
    chain_seed: int = 0
    # the model
    length: int = 32
    width: int = 16
    hidden: int = 512
    depth: int = 12
    block_ln: bool = True
    # training
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    schedule: str = "constant"
    warmup: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0
    # the task and the evaluation
    mask_rate: float = 0.15
    mask_span: int = 1
    seed: int = 0
    eval_size: int = 2048
    # hidden-Markov tasks (see _TASK_FIELDS)
    task: str = "chain"
    noise: float = 0.0
    n_hidden: int = 0
    # the architecture (see _ARCH_FIELDS)
    arch: str = "mlp"
    heads: int = 2

    def __post_init__(self):
        # Equal configs must have equal keys: Config(xi=1) == Config(xi=1.0), so every field
        # is stored as its declared type (the key hashes the JSON of the values).
        for f in fields(self):
            object.__setattr__(self, f.name, _as_field_type(getattr(self, f.name), f.name,
                                                            f.type))
        if self.chain not in CHAIN_FAMILIES:
            raise ValueError("chain must be one of %s, got %r" % (CHAIN_FAMILIES, self.chain))
        if self.arch not in ARCHS:
            raise ValueError("arch must be one of %s, got %r" % (ARCHS, self.arch))
        as_count(self.heads, "heads")
        if self.arch == "transformer" and self.width % self.heads:
            raise ValueError("width (%d) must be a multiple of heads (%d)"
                             % (self.width, self.heads))
        if self.task not in TASKS:
            raise ValueError("task must be one of %s, got %r" % (TASKS, self.task))
        as_real(self.noise, "noise", low=0.0, high=1.0)
        as_count(self.n_hidden, "n_hidden", minimum=0)
        if self.n_hidden and not 2 <= self.n_hidden <= _core.MAX_STATES:
            raise ValueError("n_hidden must be 0 (n_states) or lie in [2, %d], got %d"
                             % (_core.MAX_STATES, self.n_hidden))
        if self.task == "chain" and self.noise != 0.0:
            raise ValueError("noise applies to the hidden-Markov tasks, not to task='chain'")
        if self.task == "hmm" and self.noise == 0.0:  # one spelling of one task, so one key
            raise ValueError("task='hmm' needs noise > 0: with noise 0 every token is its "
                             "state, which is task='chain'")
        if self.task != "hmm-random" and self.n_hidden not in (0, self.n_states):
            raise ValueError("n_hidden applies to task='hmm-random' only (task=%r has "
                             "n_states hidden states)" % self.task)
        if self.n_hidden == self.n_states:   # one spelling of one task, so one key
            object.__setattr__(self, "n_hidden", 0)
        if self.schedule not in SCHEDULES:
            raise ValueError("schedule must be one of %s, got %r" % (SCHEDULES, self.schedule))
        for name in ("n_states", "length", "width", "hidden", "depth", "steps", "batch_size",
                     "mask_span", "eval_size"):
            as_count(getattr(self, name), name)
        for name in ("chain_seed", "seed", "warmup"):
            as_count(getattr(self, name), name, minimum=0)
        as_real(self.xi, "xi", low=0.0, high=XI_MAX)  # as MarkovChain.lazy / random
        as_real(self.lr, "lr", low=0.0, low_open=True, high=float("inf"), high_open=True)
        as_real(self.weight_decay, "weight_decay", low=0.0)
        as_real(self.max_grad_norm, "max_grad_norm", low=0.0)
        as_mask_rate(self.mask_rate)
        if not isinstance(self.block_ln, bool):  # a stored field: exactly a Python bool
            raise TypeError("block_ln must be a bool, got %s" % type(self.block_ln).__name__)

    def to_dict(self):
        """The fields as a dict of JSON-ready Python values (str, int, float, bool); for a
        plain chain task without the hidden-Markov fields (``task``, ``noise``, ``n_hidden``),
        and for the residual MLP without ``arch`` and ``heads``, so that the configs of
        earlier runs keep their keys."""
        d = asdict(self)
        for defaults in (_TASK_FIELDS, _ARCH_FIELDS):
            if all(d[k] == v for k, v in defaults.items()):
                for k in defaults:
                    del d[k]
        return d

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError("unknown Config fields: %s" % sorted(unknown))
        return cls(**d)

    def key(self, version=None):
        """Stable hex digest of the config (and rgflow's version): the same on every machine
        and Python version, so it can name stored results."""
        from ._version import __version__
        payload = json.dumps({"config": self.to_dict(), "version": version or __version__},
                             sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def replace(self, **changes):
        return replace(self, **changes)


@dataclass
class Result:
    """What :func:`run` measured.

    ``history`` holds the training curve (``steps``, ``losses``), the held-out evaluations
    (``eval_steps``, ``eval_loss``, ``eval_bayes``) and ``flow``: :func:`rgflow.train.flow_point`
    at :func:`flow_steps` (the flow during training).
    Shapes (K = depth): ``profiles[level]`` (K+1,) effective rank per layer for level in
    position (all positions), masked, visible, pooled, stream; ``drift`` (K,);
    ``cka_matrix`` (K+1, K+1); ``relevance["relevant_share"]`` and
    ``relevance["irrelevant_rank"]`` (K+1,). ``verdicts`` maps "collapse_all",
    "collapse_masked", "collapse_visible", "plateau" to :class:`findings.Verdict` dicts.
    ``adjacent_ce`` is the adjacent-token rule's masked CE on the same batch; ``measures`` and
    ``init`` are :func:`measure_stream` of the trained and the untrained network on it;
    ``grad_norms`` has ``blocks`` (K,) and ``other`` (embeddings and head) gradient norms of
    the held-out loss at the end of training; ``gate`` is :func:`gate_evaluation` on
    GATE_SIZE fresh sequences (the figures the training gate judges); ``inactive_units``
    (K,) each block's share of switched-off hidden units
    (:meth:`rgflow.ResidualMLP.inactive_units`) on the measurement batch.
    """
    config: Config
    history: dict
    masked_ce: float
    bayes_floor: float
    unigram_entropy: float
    learned: float
    profiles: dict
    drift: list
    cka_matrix: list
    relevance: dict
    verdicts: dict
    wall_time: float = 0.0
    extra: dict = field(default_factory=dict)
    computed_on: dict = field(default_factory=dict)  # rgflow.where_computed(); {} if older
    adjacent_ce: float = None  # masked CE of the adjacent-token rule on the held-out batch
    measures: dict = field(default_factory=dict)  # see measure_stream(); {} if older
    init: dict = field(default_factory=dict)      # measure_stream() of the untrained network
    grad_norms: dict = field(default_factory=dict)  # per-block gradient norm at the end
    gate: dict = field(default_factory=dict)  # gate_evaluation(); {} if older
    inactive_units: list = field(default_factory=list)  # per block; [] if older

    def to_json(self):
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, d):
        """A Result from the dict of its JSON (as a sweep record stores it)."""
        return cls(**dict(d, config=Config.from_dict(d["config"])))



def flow_steps(steps):
    """Where :func:`run` records the flow: ``min(FLOW_POINTS, steps // FLOW_STEPS)``
    log-spaced steps (at least the last one).

    >>> flow_steps(30000)[:3], len(flow_steps(30000)), flow_steps(2000)
    ([10, 14, 20], 24, [10, 2000])
    """
    return log_steps(steps, max(1, min(FLOW_POINTS, steps // FLOW_STEPS)))


def train_as(config, model, chain, steps=None, progress=True):
    """Train ``model`` as :func:`run` trains it for ``config`` (the schedule over
    ``config.steps``; the flow at :func:`flow_steps` for a residual MLP;
    :func:`rgflow.torch.train_transformer` for ``arch="transformer"``), for ``steps`` more
    steps (default all): a prefix of a run, bit for bit, e.g. to check a stored record's early
    checkpoints, or its continuation from ``model.step``. Returns the History.
    """
    c = config
    steps = c.steps if steps is None else steps
    common = dict(batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                  mask_rate=c.mask_rate, mask_span=c.mask_span, seed=c.seed,
                  schedule=c.schedule, warmup=c.warmup, total_steps=c.steps,
                  max_grad_norm=c.max_grad_norm or None, eval_every=max(1, c.steps // 10),
                  eval_size=c.eval_size, progress=progress)
    if c.arch == "transformer":
        from .torch import train_transformer
        return train_transformer(model, chain, steps, **common)
    return train(model, chain, steps, flow_at=flow_steps(c.steps), **common)


CHECKPOINT_FORMAT = 1
_HISTORY_ARRAYS = (("steps", np.int64), ("losses", np.float64), ("lrs", np.float64),
                   ("eval_steps", np.int64), ("eval_loss", np.float64),
                   ("eval_bayes", np.float64))


_MODEL_FILES = (".npz", ".pt")  # ResidualMLP.save's, TransformerMLM.save's


def _checkpoint_files(checkpoint, model):
    """The file of ``model`` at its step beside the checkpoint ``checkpoint`` (its .json): a
    new name per step, so the .json names a complete model file whenever the process stops."""
    suffix = _MODEL_FILES[not isinstance(model, ResidualMLP)]
    return os.fspath(checkpoint)[:-len(".json")] + "-%d%s" % (model.step, suffix)


def _computed_by(model):
    """What a checkpoint's bits depend on beyond its config: the OpenBLAS kernel, and for the
    PyTorch baseline PyTorch's version and thread count."""
    place = {"core": where_computed()["core"]}
    if not isinstance(model, ResidualMLP):
        import torch
        place.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return place


def _resume(config, model, checkpoint):
    """(model, History so far) from ``checkpoint`` when it holds a prefix of ``config``'s run
    computed by this rgflow with this OpenBLAS kernel (and PyTorch build and thread count),
    else None (it is then ignored: the run starts over, so a record's bits never mix two
    kernels)."""
    try:
        with open(checkpoint) as f:
            meta = json.load(f)
        if (meta.get("format") != CHECKPOINT_FORMAT or meta["key"] != config.key()
                or any(meta[k] != v for k, v in _computed_by(model).items())):
            return None
        folder = os.path.dirname(os.fspath(checkpoint))
        fresh, model = model, type(model).load(os.path.join(folder, meta["model"]))
        if (model.step != meta["step"] or not 0 < model.step < config.steps
                or model.config != fresh.config):
            return None
        hist = History(wall_time=float(meta["wall_time"]), flow=meta["flow"])
        for name, dtype in _HISTORY_ARRAYS:
            setattr(hist, name, np.asarray(meta[name], dtype=dtype))
        return model, hist
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_checkpoint(config, model, hist, checkpoint, previous):
    """Write the model (a new file), then the .json naming it, then remove ``previous``."""
    model_file = _checkpoint_files(checkpoint, model)
    model.save(model_file)
    meta = dict(_computed_by(model), format=CHECKPOINT_FORMAT, key=config.key(),
                step=model.step, model=os.path.basename(model_file),
                wall_time=hist.wall_time, flow=hist.flow)
    for name, _ in _HISTORY_ARRAYS:
        meta[name] = getattr(hist, name).tolist()
    with atomic_write(checkpoint) as f:
        f.write(json.dumps(meta))  # floats as repr: they read back to the same bits
    if previous is not None and previous != model_file:
        remove_checkpoint(checkpoint, keep=model_file)
    return model_file


def remove_checkpoint(checkpoint, keep=None):
    """Delete a run's checkpoint: its model files but ``keep``, and (without ``keep``) its
    .json. Missing files are fine."""
    checkpoint = os.fspath(checkpoint)
    folder = os.path.dirname(checkpoint) or "."
    stem = os.path.basename(checkpoint[:-len(".json")])
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    doomed = [os.path.join(folder, name) for name in names
              if name.startswith(stem + "-") and name.endswith(_MODEL_FILES)
              and os.path.splitext(name)[0][len(stem) + 1:].isdigit()]
    if keep is None:
        doomed.append(checkpoint)
    keep = None if keep is None else os.path.join(folder, os.path.basename(keep))
    for path in doomed:
        if path != keep:  # both folder-joined: "run.json" has folder ".", "./run-10.npz"
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _extend(hist, part):
    """Append the History ``part`` of the next steps to ``hist``."""
    for name, _ in _HISTORY_ARRAYS:
        setattr(hist, name, np.concatenate([getattr(hist, name), getattr(part, name)]))
    hist.flow += part.flow
    hist.wall_time += part.wall_time
    hist.eval_batch = part.eval_batch


def _train_checkpointed(config, model, chain, checkpoint, progress=True):
    """The training of :func:`run` for ``config`` (``model`` untrained), saved to
    ``checkpoint`` (a path ending in .json; model files ``<stem>-<step>.npz``, or ``.pt`` for
    the PyTorch baseline, go beside it) after every evaluation interval (``config.steps //
    10`` steps) and resumed from it when it exists: the same bits as uninterrupted training,
    since training ``k`` steps twice equals ``2k`` once and the pieces end on evaluation
    steps. A checkpoint of another config, rgflow version, OpenBLAS kernel (or PyTorch build
    or thread count) is ignored. Each save is atomic; the checkpoint is removed when training
    is complete. Returns (model, History, seconds of training in earlier processes).
    """
    c = config
    every = max(1, c.steps // 10)  # train_as's evaluation interval
    # what a killed process left half-written there (the checkpoint it replaced is intact)
    remove_orphaned_temporaries(os.path.dirname(os.path.abspath(checkpoint)))
    resumed = _resume(c, model, checkpoint)
    model, hist = resumed if resumed is not None else (model, History())
    earlier = hist.wall_time
    previous = _checkpoint_files(checkpoint, model) if resumed is not None else None
    bar = None
    if progress is True:
        from tqdm.auto import tqdm
        bar = tqdm(total=c.steps, initial=model.step, desc="train", unit="step")
        report = bar.update
    else:
        report = progress if callable(progress) else None
        if report is not None and model.step:
            report(model.step)  # a sweep's bar counts the resumed steps as done
    try:
        while model.step < c.steps:
            end = min(c.steps, (model.step // every + 1) * every)
            try:
                part = train_as(c, model, chain, end - model.step, progress=report or False)
            except TrainingInterrupted as stopped:
                # the model counts exactly the updates applied, and the piece's History (no
                # evaluation at the stop unless the unbroken run has one there) holds them:
                # keep them, so a stop loses nothing. Only for a stop the training loop made
                # (no __cause__): a KeyboardInterrupt it converted (e.g. raised by a progress
                # callback, before the step's evaluation and flow point) may leave the History
                # short of what the unbroken run records at model.step
                if (stopped.history is not None and stopped.__cause__ is None
                        and 0 < model.step < c.steps):
                    _extend(hist, stopped.history)
                    # a save that fails (disk full) must not replace the stop with an error
                    with contextlib.suppress(OSError):
                        _save_checkpoint(c, model, hist, checkpoint, previous)
                raise
            _extend(hist, part)
            if model.step < c.steps:
                previous = _save_checkpoint(c, model, hist, checkpoint, previous)
    finally:
        if bar is not None:
            bar.close()
    remove_checkpoint(checkpoint)
    return model, hist, earlier


def make_model(config):
    """The untrained network a Config describes: a ResidualMLP, or for
    ``arch="transformer"`` a :class:`rgflow.torch.TransformerMLM` (per-token width ``width``,
    ``depth`` blocks, ``heads`` heads, feed-forward width ``hidden``; needs PyTorch)."""
    c = config
    if c.arch == "transformer":
        from .torch import TransformerMLM
        return TransformerMLM(c.n_states, c.length, c.width, c.depth, heads=c.heads,
                              hidden=c.hidden, seed=c.seed)
    return ResidualMLP(c.n_states, c.length, c.width, c.hidden, c.depth, seed=c.seed,
                       block_ln=c.block_ln)


def make_chain(config):
    """The task a Config describes: a MarkovChain, or a HiddenMarkovTask for
    ``task="hmm"`` / ``"hmm-random"``."""
    c = config
    if c.task == "hmm":
        return HiddenMarkovTask.noisy(c.n_states, c.xi, c.noise, chain=c.chain,
                                      seed=c.chain_seed)
    if c.task == "hmm-random":
        return HiddenMarkovTask.random(c.n_hidden or c.n_states, c.n_states, c.xi, c.noise,
                                       chain=c.chain, seed=c.chain_seed)
    if c.chain == "lazy":
        return MarkovChain.lazy(c.n_states, c.xi)
    return MarkovChain.random(c.n_states, c.xi, seed=c.chain_seed)


FLOW_POINTS = 24    # log-spaced checkpoints of the flow during training a long run stores,
FLOW_STEPS = 1000   # at most one per this many steps (a checkpoint costs ~150 small steps)
GATE_SIZE = 65536   # held-out sequences the gate is judged on: margins resolved to ~3e-4 nats
_GATE_STREAM = 0x6A7E  # seeds the gate batch apart from the training and evaluation streams


def _paired_mean(diff, rows, n_rows):
    """Mean of per-token ``diff`` and its standard error with sequences as clusters (tokens of
    one sequence are correlated; sequences are independent)."""
    count = np.bincount(rows, minlength=n_rows).astype(np.float64)
    total = np.bincount(rows, weights=diff, minlength=n_rows)
    mean = float(total.sum() / count.sum())
    resid = total - mean * count
    se = float(np.sqrt(n_rows / (n_rows - 1.0) * np.sum(resid ** 2)) / count.sum()) \
        if n_rows > 1 else float("nan")
    return mean, se


def gate_evaluation(model, chain, config, size=GATE_SIZE, chunk=4096):
    """The gate's figures on ``size`` fresh held-out sequences (disjoint seed streams from
    training and from the measurement batch), large enough that the network-versus-rule
    margin is resolved.

    Returns a dict: ``size`` (sequences), ``masked`` (masked tokens), ``masked_ce``,
    ``bayes_floor``, ``adjacent_ce`` (means over the masked tokens, nats), ``excess``
    (masked_ce - bayes_floor) and ``margin`` (adjacent_ce - masked_ce), each with its standard
    error ``excess_se``, ``margin_se`` (sequences as clusters).

    >>> cfg = Config(xi=7.0, length=8, width=8, hidden=16, depth=2)
    >>> m = ResidualMLP(8, 8, 8, 16, 2, seed=0)
    >>> g = gate_evaluation(m, make_chain(cfg), cfg, size=256)
    >>> g["size"], g["masked_ce"] > g["bayes_floor"]
    (256, True)
    """
    size = as_count(size, "size")
    if size < 2:
        raise ValueError("size must be >= 2 sequences (the standard errors need two)")
    chunk = as_count(chunk, "chunk")
    s1, s2 = np.random.SeedSequence([config.seed, _GATE_STREAM]).generate_state(2, np.uint64)
    tokens = chain.sample(size, model.length, seed=int(s1) >> 1)
    masked, mask = mask_tokens(tokens, rate=config.mask_rate, seed=int(s2) >> 1,
                               mask_id=model.n_states, span=config.mask_span)
    rows, pos = np.nonzero(mask)
    truth = tokens[rows, pos]
    net, bayes = np.empty(rows.size), np.empty(rows.size)
    for lo in range(0, size, chunk):
        hi = min(size, lo + chunk)
        # masked tokens of rows lo..hi-1 are a contiguous run of np.nonzero's row-major order
        a, b = np.searchsorted(rows, [lo, hi])
        r, p, t = rows[a:b] - lo, pos[a:b], truth[a:b]
        z = model.logits(masked[lo:hi])[r, p].astype(np.float64)
        zmax = z.max(axis=1)
        lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
        net[a:b] = lse - z[np.arange(t.size), t]
        post = chain.posterior(masked[lo:hi], mask[lo:hi])[r, p]
        bayes[a:b] = -np.log(np.maximum(post[np.arange(t.size), t], POSTERIOR_FLOOR))
    adjacent = chain.adjacent_nll(tokens, mask)
    excess, excess_se = _paired_mean(net - bayes, rows, size)
    margin, margin_se = _paired_mean(adjacent - net, rows, size)
    return {"size": size, "masked": int(rows.size), "masked_ce": float(net.mean()),
            "bayes_floor": float(bayes.mean()), "adjacent_ce": float(adjacent.mean()),
            "excess": excess, "excess_se": excess_se, "margin": margin, "margin_se": margin_se}


# Every rank measure a run stores: name -> (effective_rank measure, centred)
RANK_MEASURES = {"erank": ("erank", True), "erank_uncentered": ("erank", False),
                 "participation": ("participation", True), "stable": ("stable", True),
                 "numerical": ("numerical", True)}


def measure_stream(stream, mask):
    """Every measure of a residual stream on a masked batch.

    Parameters
    ----------
    stream : (depth+1, n, length, width) residual stream. mask : (n, length) bool.

    Returns
    -------
    dict: ``rank[measure][level]`` (depth+1,) lists for every measure of
    :data:`RANK_MEASURES` and level in position (all positions), masked, visible, pooled,
    stream; ``drift`` (depth,) stream-level and ``drift_masked`` (depth,) over the
    representations of masked tokens; ``update`` (depth,) the relative size of each block's
    update ``||z_{k+1} - z_k|| / ||z_k||`` (stream level, centred over sequences).
    """
    s = np.asarray(stream)
    rank = {}
    for name, (measure, center) in RANK_MEASURES.items():
        split = rank_profile(s, "position", mask=mask, measure=measure, center=center)
        rank[name] = {
            "position": rank_profile(s, "position", measure=measure, center=center).tolist(),
            "masked": split.masked.tolist(), "visible": split.visible.tolist(),
            "pooled": rank_profile(s, "pooled", measure=measure, center=center).tolist(),
            "stream": rank_profile(s, "stream", measure=measure, center=center).tolist()}
    return {"rank": rank, "drift": drift_profile(s).tolist(),
            "drift_masked": drift_profile(s[:, np.asarray(mask, dtype=bool)]).tolist(),
            "update": block_updates(s).tolist()}


def run(config, progress=True, checkpoint=None):
    """Train one model as ``config`` says and measure it.

    Returns a :class:`Result` with the training history, the final masked CE against the
    Bayes floor on ``eval_size`` held-out sequences, the rank profiles (position — all,
    masked and visible positions —, pooled, stream), the stream-level drift profile and CKA
    matrix, the relevance decomposition and the per-run verdicts of claims (i) and (iii).
    Claim (ii) compares runs: see :func:`findings.verdicts`.  ``progress`` is passed to
    :func:`train` (True: a tqdm bar; a callable: called with the steps done per chunk).
    ``arch="transformer"`` runs train and measure the PyTorch baseline with as many PyTorch
    threads as rgflow has (:func:`rgflow.get_num_threads`; sweep workers: 1), since PyTorch's
    threads spin when the machine is busy; unlike rgflow's, its results may depend on that
    count. ``checkpoint`` (a path ending in .json): save training there after every
    evaluation interval (``steps // 10`` steps; model files ``<stem>-<step>.npz``, or ``.pt``
    for the transformer, beside it, each save atomic) and resume from it: the same bits as
    uninterrupted training (``k`` steps twice equal ``2k`` once, and the pieces end on
    evaluation steps). A checkpoint of another config, rgflow version, OpenBLAS kernel (or
    PyTorch build or thread count) is ignored; it is removed when training is complete.
    ``wall_time`` then includes the earlier processes' training.
    """
    if not isinstance(config, Config):
        raise TypeError("config must be a Config, got %s" % type(config).__name__)
    if checkpoint is not None and not os.fspath(checkpoint).endswith(".json"):
        raise ValueError("checkpoint must be a path ending in .json, got %r" % (checkpoint,))
    if config.arch != "transformer":
        return _run(config, progress, checkpoint)
    import torch
    saved = torch.get_num_threads()
    torch.set_num_threads(get_num_threads())
    try:
        return _run(config, progress, checkpoint)
    finally:
        torch.set_num_threads(saved)


def _run(config, progress, checkpoint=None):
    t0 = time.perf_counter()
    c = config
    chain = make_chain(c)
    model = make_model(c)
    earlier = 0.0  # seconds of training in earlier processes (a resumed checkpoint)
    if checkpoint is not None:
        model, hist, earlier = _train_checkpointed(c, model, chain, checkpoint, progress)
    else:
        hist = train_as(c, model, chain, progress=progress)
    # the held-out batch train() evaluated on: disjoint from every training stream
    tokens, masked, mask = hist.eval_batch
    # train's final evaluation is on this batch at this step: its loss and floor
    masked_ce, floor = float(hist.eval_loss[-1]), float(hist.eval_bayes[-1])
    unigram = chain.unigram_entropy
    learned = findings.learned_share(masked_ce, floor, unigram)

    stream = model.residual_stream(masked)
    measures = measure_stream(stream, mask)
    # the centred erank profiles and the stream drift the verdicts use (computed once, there)
    profiles, drift = dict(measures["rank"]["erank"]), measures["drift"]
    cka = cka_matrix(stream).tolist()
    log_post = np.log(np.maximum(chain.posterior(masked, mask), POSTERIOR_FLOOR))
    relevance = relevance_decomposition(stream, log_post, mask)
    mlp = c.arch == "mlp"
    grad_norms = model.block_grad_norms(masked, tokens, mask) if mlp else {}
    inactive = model.inactive_units(masked, stream=stream).tolist() if mlp else []
    gate = gate_evaluation(model, chain, c)
    untrained = make_model(c)
    init = measure_stream(untrained.residual_stream(masked), mask)
    del stream, untrained

    verdicts = {}
    if c.depth >= 2:
        for name, level in findings.COLLAPSE_SETS:
            verdicts[name] = findings.monotone_collapse(profiles[level], learned).to_dict()
        verdicts["plateau"] = findings.plateau(drift, learned).to_dict()
    history = {"steps": hist.steps.tolist(), "losses": hist.losses.tolist(),
               "eval_steps": hist.eval_steps.tolist(), "eval_loss": hist.eval_loss.tolist(),
               "eval_bayes": hist.eval_bayes.tolist(), "flow": hist.flow}
    return Result(config=c, history=history, masked_ce=masked_ce, bayes_floor=floor,
                  unigram_entropy=unigram, learned=learned, profiles=profiles, drift=drift,
                  cka_matrix=cka, relevance=relevance, verdicts=verdicts,
                  wall_time=time.perf_counter() - t0 + earlier, computed_on=where_computed(),
                  adjacent_ce=float(chain.adjacent_loss(tokens, mask)), measures=measures,
                  init=init, grad_norms=grad_norms, gate=gate, inactive_units=inactive)
