"""Sweeps: many experiment configs, in-process, on any concurrent.futures Executor, or on a
Dask cluster; results persist per config so an interrupted sweep resumes where it stopped.

>>> from rgflow.experiments import Config
>>> configs = grid(Config(steps=10, hidden=32, depth=3, width=8, length=8, eval_size=64),
...                xi=[1.0, 7.0], seed=[0, 1])
>>> len(configs), configs[3].xi, configs[3].seed
(4, 7.0, 1)
"""
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import threading
import traceback
from concurrent.futures import as_completed
from pathlib import Path

from .experiments import Config, Result, run

__all__ = ["grid", "sweep", "load_record"]

RECORD_FORMAT = 1


def grid(base=None, **axes):
    """Configs for every combination of axis values, varying the last axis fastest.

    Parameters
    ----------
    base : Config, the values of every field not given as an axis (default ``Config()``).
    **axes : field name -> sequence of values.

    Returns
    -------
    list of Config, ``prod(len(values))`` long.
    """
    base = Config() if base is None else base
    names = list(axes)
    for name in names:
        if name not in Config.__dataclass_fields__:
            raise ValueError("unknown Config field %r" % name)
        if isinstance(axes[name], (str, bytes)) or not hasattr(axes[name], "__iter__"):
            raise TypeError("axis %r must be a sequence of values" % name)
    return [base.replace(**dict(zip(names, values)))
            for values in itertools.product(*(list(axes[n]) for n in names))]


def _checksum(payload):
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _write_atomic(path, text):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".%s." % path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_record(path, key=None):
    """A stored record, or None if it is missing, truncated, corrupted or for another key."""
    try:
        record = json.loads(Path(path).read_text())
        payload = record["payload"]
        if record.get("format") != RECORD_FORMAT or record["sha256"] != _checksum(payload):
            return None
        if key is not None and payload["key"] != key:
            return None
        return payload
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _StepFile:
    """Worker side of the sweep's step bar: a ``train`` progress callable that writes the
    run's steps done so far to ``path``, atomically.  Best effort: a worker that cannot write
    there (e.g. on another machine of a Dask cluster) stops reporting, and its run counts
    when it finishes."""

    def __init__(self, path):
        self.path, self.done = path, 0

    def __call__(self, n):
        self.done += n
        if self.path is None:
            return
        try:
            with open(self.path + ".tmp", "w") as f:
                f.write(str(self.done))
            os.replace(self.path + ".tmp", self.path)
        except OSError:
            self.path = None


class _StepBar:
    """Main side: one tqdm bar over the training steps of the runs to do, so a sweep shows
    progress from its first seconds, not only when a run ends.  A thread re-reads the
    workers' step files (one per run, in a temporary folder) every ``POLL`` seconds; a
    finished run counts all its steps (also one that failed early); the postfix counts runs.
    """
    POLL = 0.5

    def __init__(self, todo):
        from tqdm.auto import tqdm

        self.steps = {key: config.steps for key, config in todo}
        self.finished = set()
        self.folder = tempfile.mkdtemp(prefix="rgflow-sweep-")
        self.bar = tqdm(total=sum(self.steps.values()), desc="sweep", unit="step")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def path(self, key):
        """The step file of run ``key`` (what :func:`_run_one` gets as ``steps_file``)."""
        return os.path.join(self.folder, key)

    def done(self, key):
        self.finished.add(key)

    def _steps(self, key):
        if key in self.finished:
            return self.steps[key]
        try:
            with open(self.path(key)) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def refresh(self):
        self.bar.n = sum(self._steps(key) for key in self.steps)
        self.bar.set_postfix_str("%d/%d runs" % (len(self.finished), len(self.steps)))

    def _poll(self):
        while not self._stop.wait(self.POLL):
            self.refresh()

    def close(self):
        self._stop.set()
        self._thread.join()
        self.refresh()
        self.bar.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _run_one(config_dict, blas_threads, steps_file=None):
    """Worker side: run one config, never raise (errors become records); with
    ``steps_file``, report the steps done there (see :class:`_StepFile`)."""
    from . import _core

    config = Config.from_dict(config_dict)
    if blas_threads:
        _core.blas_set_num_threads(blas_threads)
    try:
        result = run(config, progress=_StepFile(steps_file) if steps_file else False)
        return {"key": config.key(), "status": "ok", "result": json.loads(result.to_json())}
    except Exception as exc:  # a failing run is a record, not the end of the sweep
        return {"key": config.key(), "status": "error", "config": config.to_dict(),
                "error": "%s: %s" % (type(exc).__name__, exc),
                "traceback": traceback.format_exc()}


def _flat(payload):
    """One table row: config fields, then the measured figures."""
    if payload["status"] != "ok":
        row = dict(payload["config"])
        row.update(key=payload["key"], status="error", error=payload["error"])
        return row
    res = Result.from_json(json.dumps(payload["result"]))
    row = res.config.to_dict()
    row.update(key=payload["key"], status="ok", masked_ce=res.masked_ce,
               bayes_floor=res.bayes_floor, unigram_entropy=res.unigram_entropy,
               learned=res.learned, drift=res.drift)
    for level, profile in res.profiles.items():
        row["rank_" + level] = profile
        if len(profile) >= 3:
            row["ratio_" + level] = profile[-1] / profile[1] if profile[1] else float("nan")
    for name, verdict in res.verdicts.items():
        row["verdict_" + name] = verdict["status"]
    return row


def sweep(configs, executor=None, store=None, progress=True, retry_failed=False,
          blas_threads=None):
    """Run every config and return one table row per config, in the order given.

    Parameters
    ----------
    configs : iterable of Config.
    executor : None (run in this process), any ``concurrent.futures.Executor`` (e.g. a
        ``ProcessPoolExecutor``), or a ``dask.distributed.Client``.
    store : directory; each finished run is written there atomically as ``<key>.json`` (key =
        hash of config + rgflow version). Existing valid records are reused; missing, truncated
        or corrupted ones are recomputed.
    progress : show a tqdm bar over the training steps of the runs to do (the workers report
        their steps as they go; the postfix counts finished runs).
    retry_failed : recompute stored runs that ended in an error.
    blas_threads : OpenBLAS threads per run; default 1 when an executor runs several runs at
        once (so they do not oversubscribe cores), OpenBLAS's default in-process.

    Returns
    -------
    list of dict (a pandas DataFrame if pandas is installed): config fields, ``key``,
    ``status`` ("ok"/"error"), ``masked_ce``, ``bayes_floor``, ``learned``, ``rank_<level>``
    profiles, ``ratio_<level>`` (rank_K / rank_1), ``drift`` and ``verdict_<name>``.
    """
    configs = list(configs)
    for c in configs:
        if not isinstance(c, Config):
            raise TypeError("configs must be Config instances, got %s" % type(c).__name__)
    store = Path(store) if store is not None else None
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
    keys = [c.key() for c in configs]
    payloads = {}
    todo, queued = [], set()
    for config, key in zip(configs, keys):
        if key in payloads or key in queued:
            continue
        queued.add(key)
        found = load_record(store / (key + ".json"), key) if store is not None else None
        if found is not None and not (retry_failed and found["status"] == "error"):
            payloads[key] = found
        else:
            todo.append((key, config))

    def finish(payload):
        payloads[payload["key"]] = payload
        if store is not None:
            record = {"format": RECORD_FORMAT, "sha256": _checksum(payload), "payload": payload}
            _write_atomic(store / (payload["key"] + ".json"), json.dumps(record))

    bar = _StepBar(todo) if progress and todo else None
    try:
        if executor is None:
            for key, config in todo:
                finish(_run_one(config.to_dict(), blas_threads, bar and bar.path(key)))
                if bar:
                    bar.done(key)
        else:
            if hasattr(executor, "get_executor"):  # a dask.distributed.Client
                executor = executor.get_executor()
            threads = 1 if blas_threads is None else blas_threads
            futures = [executor.submit(_run_one, config.to_dict(), threads,
                                       bar and bar.path(key))
                       for key, config in todo]
            for fut in as_completed(futures):
                payload = fut.result()
                finish(payload)
                if bar:
                    bar.done(payload["key"])
    finally:
        if bar:
            bar.close()

    table = [_flat(payloads[key]) for key in keys]
    try:
        import pandas as pd
    except ImportError:
        return table
    return pd.DataFrame(table)
