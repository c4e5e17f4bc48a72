"""Sweeps: many experiment configs, in-process, on any concurrent.futures Executor, or on a
Dask cluster; results persist per config so an interrupted sweep resumes where it stopped.

>>> from rgflow.experiments import Config
>>> configs = grid(Config(steps=10, hidden=32, depth=3, width=8, length=8, eval_size=64),
...                xi=[1.0, 7.0], seed=[0, 1])
>>> len(configs), configs[3].xi, configs[3].seed
(4, 7.0, 1)
"""
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed, wait
from pathlib import Path

from ._util import atomic_write, remove_orphaned_temporaries
from .experiments import Config, Result, run
from .findings import collapse_ratio, gate_of
from .train import TrainingInterrupted, _stop_when

__all__ = ["grid", "sweep", "load_record", "load_results", "process_pool", "SweepInterrupted"]

RECORD_FORMAT = 1
# After Ctrl-C, how long a sweep waits for its running runs to reach a chunk boundary (or to
# finish, if they were past training) before giving up on them.
STOP_TIMEOUT = 10.0


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`sweep`. Every run that finished is in the store; running the same
    sweep again with the same store computes only the missing runs.

    Attributes
    ----------
    done : int, configs of this sweep with a stored result now (found or just computed).
    total : int, distinct configs in the sweep.
    store : Path or None (None: nothing was kept).
    """

    def __init__(self, done, total, store):
        self.done, self.total, self.store = done, total, store
        if store is None:
            msg = ("sweep interrupted after %d of %d runs; without a store nothing was kept"
                   % (done, total))
        else:
            msg = ("sweep interrupted: %d of %d runs are stored in %s; run the same sweep "
                   "with this store again to compute only the other %d (runs on this "
                   "machine resume from their last checkpoint)" % (done, total, store, total - done))
        super().__init__(msg)


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


def _write_record(store, payload):
    """Store one run's payload as ``store/<key>.json``, checksummed, all or nothing."""
    record = {"format": RECORD_FORMAT, "sha256": _checksum(payload), "payload": payload}
    with atomic_write(Path(store) / (payload["key"] + ".json")) as f:
        f.write(json.dumps(record))


def _well_formed(payload):
    """Whether a payload has what the sweep and :func:`load_results` read from it: a key and
    either a result that loads (status "ok") or a config and an error (status "error")."""
    if not isinstance(payload, dict) or not isinstance(payload.get("key"), str):
        return False
    if payload.get("status") == "ok":
        try:
            Result.from_dict(payload["result"])
        except (KeyError, ValueError, TypeError, AttributeError):
            return False
        return True
    return payload.get("status") == "error" and isinstance(payload.get("config"), dict) \
        and isinstance(payload.get("error"), str)


def load_record(path, key=None):
    """A stored record, or None if it is missing, truncated, corrupted, for another key or
    not shaped as a sweep writes them (e.g. a result this version cannot load)."""
    try:
        record = json.loads(Path(path).read_text())
        payload = record["payload"]
        if record.get("format") != RECORD_FORMAT or record["sha256"] != _checksum(payload):
            return None
        if key is not None and payload["key"] != key:
            return None
        return payload if _well_formed(payload) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def load_results(store, configs=None):
    """The stored runs of a sweep as :class:`rgflow.experiments.Result` objects.

    store : the sweep's directory. configs : iterable of Config (their results in that order;
    RuntimeError naming the first that is missing or ended in an error), or None (every valid
    record that ended well, sorted by ξ, seed and key).

    >>> load_results("no-such-directory")
    []
    """
    store = Path(store)
    if configs is not None:
        out = []
        for c in configs:
            payload = load_record(store / (c.key() + ".json"), c.key())
            if payload is None or payload["status"] != "ok":
                raise RuntimeError("run %s is %s in %s" % (
                    c.key(), "missing" if payload is None else "an error (%s)"
                    % payload.get("error"), store))
            out.append(Result.from_dict(payload["result"]))
        return out
    found = []
    for path in sorted(store.glob("*.json")):
        payload = load_record(path, path.stem)
        if payload is not None and payload["status"] == "ok":
            found.append((payload["key"], Result.from_dict(payload["result"])))
    found.sort(key=lambda kr: (kr[1].config.xi, kr[1].config.seed, kr[0]))
    return [r for _, r in found]


# -- stopping runs wherever they run ----------------------------------------------------------
# Tokens of the sweeps this process was told to stop, and the token of the run this (worker)
# process is running or ran last.
_STOPPED = set()
_current_token = [None]


class _Stop:
    """How one sweep tells its runs to stop at their next chunk boundary, wherever they run:
    threads of this process read ``_STOPPED``; process-pool workers on this machine also see a
    flag file (a Ctrl-C meant for the parent alone, e.g. a notebook's interrupt, never reaches
    them); Dask workers, on any machine, get ``_STOPPED`` set through ``Client.run``. Sent to
    every run with its config (picklable)."""

    def __init__(self):
        self.token = os.urandom(8).hex()
        self.parent = os.getpid()
        self.path = os.path.join(tempfile.gettempdir(), "rgflow-stop-%s" % self.token)

    def requested(self):
        return self.token in _STOPPED or os.path.exists(self.path)

    def request(self, client=None):
        _mark_stopped(self.token)
        with contextlib.suppress(OSError):
            open(self.path, "x").close()
        if client is not None:
            with contextlib.suppress(Exception):  # a worker gone already has nothing to stop
                client.run(_mark_stopped, self.token)

    def release(self):
        _STOPPED.discard(self.token)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _mark_stopped(token):
    _STOPPED.add(token)


def _on_worker_sigint(signum, frame):
    # Ctrl-C in a terminal reaches every worker of the process group: stop the current run at
    # its next chunk boundary and refuse the rest of its sweep; never raise (an idle worker
    # would die with a traceback and break the pool).
    if _current_token[0] is not None:
        _STOPPED.add(_current_token[0])


# How often a pool worker checks that the process that started it is still there.
PARENT_POLL = 0.5
_watching_parent = []


def _exit_with_parent():
    """In a pool worker: exit once the process that started it is gone. A sweep killed (e.g.
    SIGTERM or SIGKILL to it alone) would otherwise leave its workers behind for good: the
    running ones finish their runs for nobody, then every one waits on the pool's queue."""
    if _watching_parent:
        return
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)

    _watching_parent.append(threading.Thread(target=watch, name="rgflow-parent", daemon=True))
    _watching_parent[0].start()


def _worker_init():
    """Process-pool initializer: Ctrl-C in a worker stops its sweep's runs, never raises; the
    worker exits if its parent dies."""
    signal.signal(signal.SIGINT, _on_worker_sigint)
    _exit_with_parent()


_saved_sigint = []


def _dask_hold_sigint(host, pgrp):
    """Run on every Dask worker (``Client.run`` calls it in the worker's event loop, the main
    thread of a worker process) when a sweep starts. A worker process in the sweep's own
    terminal job (same host, same process group, e.g. a LocalCluster's) receives the Ctrl-C
    meant for the sweep, and Dask would shut it down with tracebacks: during the sweep, Ctrl-C
    there stops the runs instead. Other workers are left alone."""
    if socket.gethostname() != host or os.getpgrp() != pgrp or _saved_sigint or \
            threading.current_thread() is not threading.main_thread():
        return False
    _saved_sigint.append(signal.signal(signal.SIGINT, _on_worker_sigint))
    return True


def _dask_release_sigint():
    """Undo :func:`_dask_hold_sigint` when the sweep ends."""
    if _saved_sigint and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _saved_sigint.pop())


@contextlib.contextmanager
def process_pool(workers):
    """A ``ProcessPoolExecutor`` of ``workers`` processes for :func:`sweep` (what ``rgflow
    sweep --workers`` and ``rgflow reproduce`` use): Ctrl-C in a worker stops its run instead of
    raising, and after an exception (Ctrl-C included) the pool is shut down without waiting for
    queued runs; a worker still alive ``STOP_TIMEOUT`` seconds later is terminated."""
    ex = ProcessPoolExecutor(workers, initializer=_worker_init)
    try:
        yield ex
    except BaseException:
        procs = list((getattr(ex, "_processes", None) or {}).values())  # private: no public handle
        ex.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.join(STOP_TIMEOUT)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        raise
    ex.shutdown(wait=True)


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


def _checkpoint_path(store, key):
    return Path(store) / (key + ".partial.json")


def _checkpoint_for(store, key, config, local):
    """Where a run of the sweep checkpoints its training: beside its record, for runs on this
    machine (Dask workers may not see the store)."""
    if store is None or not local:
        return None
    return str(_checkpoint_path(store, key))


def _run_one(config_dict, blas_threads, stop=None, steps_file=None, checkpoint=None):
    """Worker side: run one config, never raise (errors become records). With ``stop`` (a
    sweep on an executor), returns None for a run the sweep stopped before it finished; with
    ``steps_file``, reports the steps done there (see :class:`_StepFile`); with
    ``checkpoint``, saves and resumes training there (:func:`rgflow.run`)."""
    from .runtime import get_num_threads, num_threads

    config = Config.from_dict(config_dict)
    if stop is not None:
        if stop.requested():
            return None
        _current_token[0] = stop.token
        if os.getpid() != stop.parent and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not _on_worker_sigint:
            _worker_init()  # a pool made without process_pool()
    try:
        # the caller's thread count is restored afterwards
        with num_threads(blas_threads or get_num_threads()), \
                _stop_when(stop.requested if stop is not None else None):
            result = run(config, progress=_StepFile(steps_file) if steps_file else False,
                         checkpoint=checkpoint)
        return {"key": config.key(), "status": "ok", "result": json.loads(result.to_json())}
    except TrainingInterrupted:
        if stop is not None and stop.requested():
            return None
        raise
    except Exception as exc:  # a failing run is a record, not the end of the sweep
        payload = {"key": config.key(), "status": "error", "config": config.to_dict(),
                   "error": "%s: %s" % (type(exc).__name__, exc),
                   "traceback": traceback.format_exc()}
        if isinstance(exc, MemoryError):  # incl. MemoryLimitError: the machine's state, not
            payload["transient"] = True   # the config's; reported, not stored, so retried
        return payload


def _wind_down(futures, stop, client, finish):
    """After the first Ctrl-C: tell every run to stop at its next chunk boundary, drop the runs
    not started, wait (at most STOP_TIMEOUT) and store the runs that finished meanwhile. A
    further Ctrl-C is ignored for that bounded wait, so it cannot break the clean-up."""
    held = None
    if threading.current_thread() is threading.main_thread():
        held = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop.request(client)
        if client is None:  # a Dask future cancelled while running would lose its result
            for fut in futures:
                fut.cancel()
        wait(futures, timeout=STOP_TIMEOUT)
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None \
                    and fut.result() is not None:
                finish(fut.result())
            else:
                fut.cancel()
    finally:
        if held is not None:
            signal.signal(signal.SIGINT, held)


def _flat(payload):
    """One table row: config fields, then the measured figures."""
    if payload["status"] != "ok":
        row = dict(payload["config"])
        row.update(key=payload["key"], status="error", error=payload["error"])
        return row
    res = Result.from_dict(payload["result"])
    row = res.config.to_dict()
    row.update(key=payload["key"], status="ok", masked_ce=res.masked_ce,
               bayes_floor=res.bayes_floor, unigram_entropy=res.unigram_entropy,
               learned=res.learned, drift=res.drift, computed_on=res.computed_on)
    for level, profile in res.profiles.items():
        row["rank_" + level] = profile
        if len(profile) >= 3:
            row["ratio_" + level] = collapse_ratio(profile)
    for name, verdict in res.verdicts.items():
        row["verdict_" + name] = verdict["status"]
    if res.adjacent_ce is not None:
        g = gate_of(res)
        row.update(excess=g["excess"], adjacent_margin=g["adjacent_margin"], gated=g["passed"])
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
        or corrupted ones are recomputed. A run on this machine (not on Dask) checkpoints its
        training there as ``<key>.partial.json`` and ``<key>.partial-<step>.npz`` (``.pt`` for
        ``arch="transformer"``) every ``steps // 10`` steps and where a stop lands, so a
        stopped sweep resumes it where it was (same bits); run() removes them when its
        training is complete. Temporary files that killed processes of this machine left
        half-written in the store are removed when a sweep starts. Two sweeps that share a
        store must not run the same config at the same time (they would share its
        checkpoint).
    progress : show a tqdm bar over the training steps of the runs to do (the workers report
        their steps as they go; the postfix counts finished runs).
    retry_failed : recompute stored runs that ended in an error. A run that ran out of memory
        (MemoryError, e.g. rgflow.MemoryLimitError) is in the table as an error but never
        stored: it depends on what else the machine was doing, so a later sweep runs it again.
    blas_threads : rgflow threads per run (:func:`rgflow.set_num_threads`; results do not
        depend on it); default 1 when an executor runs several runs at once (so they do not
        oversubscribe cores), the caller's count in-process.

    Ctrl-C (SIGINT to this process, or to the whole terminal job) stops every run at its next
    training chunk (at most 25 steps) wherever it runs: in this process, on threads, on a
    process pool (:func:`process_pool` makes one whose workers are ready for it; a plain
    ``ProcessPoolExecutor`` works too) or on Dask workers. Runs not started are dropped, runs
    that finish meanwhile are stored, and :class:`SweepInterrupted` (a KeyboardInterrupt)
    says how many runs are stored; calling ``sweep`` again with the same store resumes. Any
    other exception of the sweep itself (a record that cannot be written, a broken pool) stops
    the runs the same way before it propagates.

    Returns
    -------
    list of dict (a pandas DataFrame if pandas is installed): config fields, ``key``,
    ``status`` ("ok"/"error"), ``masked_ce``, ``bayes_floor``, ``learned``, ``rank_<level>``
    profiles, ``ratio_<level>`` (rank_K / rank_1), ``drift``, ``verdict_<name>``,
    ``computed_on`` (:func:`rgflow.where_computed` of the run; empty for older records) and,
    for runs that store the adjacent rule, the gate's ``excess``, ``adjacent_margin`` and
    ``gated`` (:func:`rgflow.findings.gate_of`).
    """
    if isinstance(configs, Config):  # not iterable: list() would say only that
        raise TypeError("configs must be an iterable of Config (e.g. [config] or "
                        "rg.grid(config, ...)), got a single Config")
    configs = list(configs)
    for c in configs:
        if not isinstance(c, Config):
            raise TypeError("configs must be Config instances, got %s" % type(c).__name__)
    store = Path(store) if store is not None else None
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temporaries(store)  # what killed sweeps left half-written
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
        if payload["key"] in payloads:
            return
        if store is not None and not payload.get("transient"):
            _write_record(store, payload)
        payloads[payload["key"]] = payload  # after the write: an interrupted write did not keep it
        if bar:
            bar.done(payload["key"])

    bar = _StepBar(todo) if progress and todo else None
    futures, stop, client = [], _Stop(), None
    try:
        if executor is None:
            for key, config in todo:
                finish(_run_one(config.to_dict(), blas_threads, None, bar and bar.path(key),
                                _checkpoint_for(store, key, config, local=True)))
        else:
            if hasattr(executor, "get_executor"):  # a dask.distributed.Client
                client, executor = executor, executor.get_executor()
                with contextlib.suppress(Exception):  # a nicety: the sweep runs without it
                    client.run(_dask_hold_sigint, socket.gethostname(), os.getpgrp())
            threads = 1 if blas_threads is None else blas_threads
            futures = [executor.submit(_run_one, config.to_dict(), threads, stop,
                                       bar and bar.path(key),
                                       _checkpoint_for(store, key, config, client is None))
                       for key, config in todo]
            for fut in as_completed(futures):
                payload = fut.result()
                if payload is None:  # a worker got Ctrl-C (the terminal's, or its own)
                    raise KeyboardInterrupt
                finish(payload)
    except KeyboardInterrupt:
        if futures:
            _wind_down(futures, stop, client, finish)
        raise SweepInterrupted(len(payloads), len(queued), store) from None
    except BaseException:
        # e.g. a record that cannot be written (disk full) or a broken pool: the other runs
        # would go on for nothing (a plain pool's shutdown waits for every queued one), so
        # stop them as Ctrl-C does and keep what finishes meanwhile if it can be stored
        if futures:
            def keep(payload):
                with contextlib.suppress(Exception):
                    finish(payload)
            _wind_down(futures, stop, client, keep)
        raise
    finally:
        stop.release()
        if client is not None:
            with contextlib.suppress(Exception):
                client.run(_dask_release_sigint)
        if bar:
            bar.close()

    table = [_flat(payloads[key]) for key in keys]
    try:
        import pandas as pd
    except ImportError:
        return table
    return pd.DataFrame(table)
