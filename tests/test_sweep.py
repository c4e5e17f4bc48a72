"""Sweeps: the same table in-process, on a process pool and on Dask; interrupted sweeps
resume without recomputing finished runs; damaged records are recomputed."""
import importlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

import rgflow as rg
sweep_mod = importlib.import_module("rgflow.sweep")  # rg.sweep is the function
from rgflow.experiments import Config

TINY = Config(steps=40, hidden=32, depth=3, width=8, length=8, eval_size=64, batch_size=32)


def records(table):
    return table.to_dict("records") if hasattr(table, "to_dict") else list(table)


def assert_same(a, b):
    """Identical rows, but for the thread count in ``computed_on`` (results do not depend on
    it: in-process runs use the caller's threads, pool workers 1)."""
    a, b = records(a), records(b)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        ra, rb = dict(ra), dict(rb)
        for r in (ra, rb):
            if r.get("computed_on"):
                r["computed_on"] = dict(r["computed_on"], threads=None)
        assert json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True)


@pytest.fixture
def counted(monkeypatch):
    """Count the runs actually computed in this process."""
    calls = []
    real = sweep_mod._run_one

    def counting(config_dict, *args):
        calls.append(config_dict["seed"])
        return real(config_dict, *args)

    monkeypatch.setattr(sweep_mod, "_run_one", counting)
    return calls


def test_grid_order_and_validation():
    cfgs = rg.grid(TINY, xi=[1.0, 7.0], seed=[0, 1, 2])
    assert [(c.xi, c.seed) for c in cfgs][:4] == [(1.0, 0), (1.0, 1), (1.0, 2), (7.0, 0)]
    with pytest.raises(ValueError, match="nonsense"):
        rg.grid(TINY, nonsense=[1])
    with pytest.raises(TypeError, match="xi"):
        rg.grid(TINY, xi=1.0)
    with pytest.raises(TypeError):
        rg.sweep([{"xi": 1.0}])
    # a single Config (a plausible first call) is named, not "object is not iterable"
    with pytest.raises(TypeError) as info:
        rg.sweep(TINY)
    assert str(info.value) == ("configs must be an iterable of Config (e.g. [config] or "
                               "rg.grid(config, ...)), got a single Config")


def test_in_process_pool_and_dask_give_identical_tables(tmp_path):
    cfgs = rg.grid(TINY, xi=[1.0, 7.0], seed=[0, 1])
    local = rg.sweep(cfgs, store=tmp_path / "a", progress=False)
    rows = records(local)
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert all(0 < r["masked_ce"] < 3 for r in rows)
    with ProcessPoolExecutor(2) as ex:
        pooled = rg.sweep(cfgs, executor=ex, store=tmp_path / "b", progress=False)
    assert_same(local, pooled)
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        # with the step bar: its file argument reaches Dask's workers, and changes nothing
        on_dask = rg.sweep(cfgs, executor=client, store=tmp_path / "c", progress=True)
    assert_same(local, on_dask)


def test_resume_failures_and_damaged_records(tmp_path, counted):
    store = tmp_path / "runs"
    bad = TINY.replace(lr=1e30, seed=5)  # diverges: recorded as an error, the sweep goes on
    cfgs = rg.grid(TINY, xi=[1.0, 7.0], seed=[0, 1]) + [bad]
    first = records(rg.sweep(cfgs, store=store, progress=False))
    assert len(counted) == 5
    assert first[-1]["status"] == "error" and "FloatingPointError" in first[-1]["error"]
    assert [r["status"] for r in first[:4]] == ["ok"] * 4
    # nothing recomputed on a re-run (failed runs neither, unless asked)
    again = rg.sweep(cfgs, store=store, progress=False)
    assert len(counted) == 5
    assert_same(first, again)
    rg.sweep(cfgs, store=store, progress=False, retry_failed=True)
    assert len(counted) == 6
    # a truncated record and a tampered one are recomputed, never read
    p1 = store / (cfgs[1].key() + ".json")
    p1.write_text(p1.read_text()[:100])
    p2 = store / (cfgs[2].key() + ".json")
    rec = json.loads(p2.read_text())
    rec["payload"]["result"]["masked_ce"] = 0.0
    p2.write_text(json.dumps(rec))
    fixed = rg.sweep(cfgs, store=store, progress=False)
    assert len(counted) == 8
    assert_same(first, fixed)
    assert not list(store.glob(".*.tmp"))  # no temp litter from atomic writes


def test_a_run_out_of_memory_is_reported_not_stored(tmp_path, monkeypatch):
    """A MemoryError depends on the machine at the time, not on the config: the table has the
    error, the store has no record, and the next sweep runs the config again."""
    store = tmp_path / "runs"
    cfgs = rg.grid(TINY, seed=[0, 1])
    real = sweep_mod.run

    def short_of_memory(config, **kw):
        if config.seed == 1:
            raise rg.MemoryLimitError("posterior needs 99 GiB, 1 GiB available")
        return real(config, **kw)

    monkeypatch.setattr(sweep_mod, "run", short_of_memory)
    first = records(rg.sweep(cfgs, store=store, progress=False))
    assert [r["status"] for r in first] == ["ok", "error"]
    assert "MemoryLimitError" in first[1]["error"]
    assert sorted(p.name for p in store.glob("*.json")) == [cfgs[0].key() + ".json"]
    monkeypatch.setattr(sweep_mod, "run", real)
    again = records(rg.sweep(cfgs, store=store, progress=False))
    assert [r["status"] for r in again] == ["ok", "ok"]
    assert len(list(store.glob("*.json"))) == 2


SCRIPT = """
import sys
import rgflow as rg
from rgflow.experiments import Config
cfgs = rg.grid(Config(steps=int(sys.argv[2]), hidden=32, depth=3, width=8, length=8,
                      eval_size=64, batch_size=32), xi=[1.0, 7.0], seed=[0, 1, 2])
rg.sweep(cfgs, store=sys.argv[1], progress=False)
"""


def stored(store):
    """The run records in ``store`` (not the checkpoints of runs in progress)."""
    return [p for p in store.glob("*.json") if not p.name.endswith(".partial.json")]


def test_killed_sweep_resumes_with_only_the_missing_runs(tmp_path, counted):
    store = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(store), "300"], cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(stored(store)) < 2:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = len(stored(store))
    assert 2 <= done < 6, "the sweep finished before it could be killed"
    cfgs = rg.grid(Config(steps=300, hidden=32, depth=3, width=8, length=8, eval_size=64,
                          batch_size=32), xi=[1.0, 7.0], seed=[0, 1, 2])
    table = records(rg.sweep(cfgs, store=store, progress=False))
    assert len(counted) == 6 - done
    assert all(r["status"] == "ok" for r in table)
    assert sorted(p.name for p in store.iterdir()) == sorted(c.key() + ".json" for c in cfgs)


def test_a_sweep_removes_the_temporaries_killed_writers_left(tmp_path):
    """SIGKILL in the middle of an atomic write leaves its temporary file (no handler runs).
    A sweep that starts removes those of dead processes of this machine, and only those: a
    live writer's, another machine's and other files stay."""
    from rgflow._util import _HOST
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = tmp_path / "runs"
    store.mkdir()
    key = TINY.key()
    orphans = [".%s.json.%s.%d-0a1b2c3d4e5f.tmp" % (key, _HOST, dead.pid),
               ".%s.partial-4.npz.%s.%d-0a1b2c3d4e5f.tmp" % (key, _HOST, dead.pid),
               ".other.json.%s.%d-0a1b2c3d4e5f.tmp" % (_HOST, dead.pid)]
    kept = [".%s.json.%s.%d-0a1b2c3d4e5f.tmp" % (key, _HOST, os.getpid()),
            ".%s.json.elsewhere-%s.%d-0a1b2c3d4e5f.tmp" % (key, _HOST, dead.pid),
            ".%s.json.0a1b2c3d4e5f.tmp" % key, "notes.tmp"]
    for name in orphans + kept:
        (store / name).write_text("half")
    rg.sweep([TINY], store=store, progress=False)
    assert sorted(p.name for p in store.iterdir()) == sorted(kept + [key + ".json"])


def test_stopped_sweep_resumes_its_run_from_the_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C in the middle of a run keeps its training up to the last evaluation interval;
    the resumed sweep continues from there and stores the record an unbroken sweep stores."""
    cfg = TINY.replace(steps=100, eval_size=64)
    whole = sweep_mod.load_record(next(iter(_one_sweep(tmp_path / "whole", cfg))), cfg.key())
    calls, real = [], rg.ResidualMLP.apply_steps

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 7:  # as Ctrl-C between two chunks
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(rg.ResidualMLP, "apply_steps", interrupted)
    store = tmp_path / "runs"
    with pytest.raises(rg.SweepInterrupted):
        rg.sweep([cfg], store=store, progress=False)
    partial = json.loads((store / (cfg.key() + ".partial.json")).read_text())
    assert 0 < partial["step"] < cfg.steps
    monkeypatch.undo()
    trained = []
    monkeypatch.setattr(rg.ResidualMLP, "apply_steps",
                        lambda self, chain, lrs, *a: trained.append(len(lrs)) or real(
                            self, chain, lrs, *a))
    rg.sweep([cfg], store=store, progress=False)
    assert sum(trained) == cfg.steps - partial["step"]  # only the steps after the checkpoint
    assert [p.name for p in store.iterdir()] == [cfg.key() + ".json"]
    again = sweep_mod.load_record(store / (cfg.key() + ".json"), cfg.key())
    for payload in (whole, again):
        payload["result"].pop("wall_time")
    assert again == whole


def _one_sweep(store, cfg):
    rg.sweep([cfg], store=store, progress=False)
    return stored(store)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_store_and_checkpoint_files_follow_the_umask(tmp_path, umask):
    """Records and checkpoints are written atomically through a temporary file; they get the
    mode a plain open() would give (0644 under umask 022), not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        rg.sweep([TINY.replace(steps=2)], store=tmp_path / "runs", progress=False)
        rg.ResidualMLP(8, 4, 2, 8, 1).save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    files = list((tmp_path / "runs").glob("*.json")) + [tmp_path / "m.npz"]
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


@pytest.mark.parametrize("workers", [0, 2])
def test_step_progress_moves_before_any_run_finishes(tmp_path, monkeypatch, workers):
    """The sweep bar counts training steps as the workers report them, in-process and on a
    pool, reaches the total and leaves no temporary folder behind."""
    seen, folders = [], []
    real_refresh, real_init = sweep_mod._StepBar.refresh, sweep_mod._StepBar.__init__

    def refresh(self):
        real_refresh(self)
        seen.append((self.bar.n, len(self.finished)))

    def init(self, todo):
        real_init(self, todo)
        folders.append(self.folder)

    monkeypatch.setattr(sweep_mod._StepBar, "refresh", refresh)
    monkeypatch.setattr(sweep_mod._StepBar, "__init__", init)
    monkeypatch.setattr(sweep_mod._StepBar, "POLL", 0.01)
    cfgs = rg.grid(TINY.replace(steps=1500), xi=[1.0, 7.0])
    if workers:
        with ProcessPoolExecutor(workers) as ex:
            rg.sweep(cfgs, executor=ex, store=tmp_path, progress=True)
    else:
        rg.sweep(cfgs, store=tmp_path, progress=True)
    assert any(0 < n < 1500 and runs == 0 for n, runs in seen), seen[:20]
    assert seen[-1] == (3000, 2)
    assert len(folders) == 1 and not sweep_mod.os.path.exists(folders[0])
    # a run that diverges at once still counts all its steps when it is recorded
    seen.clear()
    rg.sweep([TINY.replace(lr=1e9, seed=9)], store=tmp_path, progress=True)
    assert seen[-1] == (TINY.steps, 1)


def test_step_file_is_best_effort(tmp_path):
    report = sweep_mod._StepFile(str(tmp_path / "run"))
    report(25)
    report(10)
    assert (tmp_path / "run").read_text() == "35"
    lost = sweep_mod._StepFile(str(tmp_path / "no such folder" / "run"))
    lost(25)  # a worker that cannot write (another machine) stops reporting, no error
    assert lost.path is None and lost.done == 25


def test_train_reports_steps_to_a_callable():
    chain = rg.MarkovChain.lazy(8, 1.0)
    model = rg.ResidualMLP(8, 8, 8, 32, 2, seed=0)
    chunks = []
    rg.train(model, chain, steps=60, batch_size=16, eval_every=0, eval_size=32,
             progress=chunks.append)
    assert chunks == [25, 25, 10]  # one call per chunk of CHUNK_STEPS


def test_phase_diagram_from_a_table(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from rgflow.plot import plot_phase_diagram
    table = rg.sweep(rg.grid(TINY, xi=[1.0, 7.0], seed=[0, 1]), store=tmp_path,
                     progress=False)
    ax = plot_phase_diagram(table)
    assert len(ax.lines) >= 1
    with pytest.raises(ValueError):
        plot_phase_diagram([])


def test_num_threads_blocks_in_threads_restore_the_count_in_any_order():
    """The count is process-wide: two blocks open at once in two threads, ended first-in
    first-out (two sweep runs on a thread pool), used to leave the second's "before" (1) as
    the caller's count."""
    entered, leave_first = threading.Event(), threading.Event()
    seen = {}

    def first():
        with rg.num_threads(1):
            entered.set()
            leave_first.wait(5)
        seen["after first"] = rg.get_num_threads()

    before = rg.set_num_threads(3)
    try:
        t = threading.Thread(target=first)
        t.start()
        entered.wait(5)
        with rg.num_threads(1):
            leave_first.set()
            t.join(5)
            seen["inside second"] = rg.get_num_threads()
        assert seen == {"after first": 1, "inside second": 1}
        assert rg.get_num_threads() == 3
        with rg.num_threads(2), rg.num_threads(1):  # nested in one thread, as before
            assert rg.get_num_threads() == 1
        assert rg.get_num_threads() == 3
        with pytest.raises(ValueError):
            with rg.num_threads(0):
                pass
        assert rg.get_num_threads() == 3
    finally:
        rg.set_num_threads(before)


def test_checksummed_records_of_another_shape_are_missing_not_a_crash(tmp_path):
    """A record whose checksum matches but whose payload is not shaped as a sweep writes them
    (no status, an "ok" run whose result does not load, an error without its config, a
    payload that is not a dict) or whose JSON nests too deeply to parse: load_record says
    missing (so a sweep recomputes it), and load_results skips or names it, never KeyError."""
    key = TINY.key()
    path = tmp_path / (key + ".json")
    bad = [{"key": key}, {"key": key, "status": "ok"},
           {"key": key, "status": "ok", "result": {"masked_ce": 1.0}},
           {"key": key, "status": "ok", "result": {"config": {"nonsense": 1}}},
           {"key": key, "status": "error"}, {"key": key, "status": "done", "result": {}},
           [key], {"key": 7, "status": "error", "config": {}, "error": "x"}]
    for payload in bad:
        record = {"format": 1, "sha256": sweep_mod._checksum(payload), "payload": payload}
        path.write_text(json.dumps(record))
        assert sweep_mod.load_record(path, key) is None, payload
        assert sweep_mod.load_results(tmp_path) == []
        with pytest.raises(RuntimeError, match="missing"):
            sweep_mod.load_results(tmp_path, [TINY])
    path.write_text("[" * 100000 + "]" * 100000)
    assert sweep_mod.load_record(path, key) is None
    assert sweep_mod.load_results(tmp_path) == []
    # an error record as a sweep writes it still loads
    error = {"key": key, "status": "error", "config": TINY.to_dict(), "error": "E: x",
             "traceback": ""}
    sweep_mod._write_record(tmp_path, error)
    assert sweep_mod.load_record(path, key) == error


def test_a_record_that_cannot_be_written_stops_the_other_runs(tmp_path, monkeypatch):
    """An exception in the sweep itself (here: the store is full when the first run ends)
    stops the runs still going at their next chunk, as Ctrl-C does: a plain pool's shutdown
    used to wait for every run of the sweep, whose results nobody would store."""
    chain = rg.MarkovChain.lazy(3, 1.0)

    def fake_run(config, progress, checkpoint=None):
        if config.seed == 0:
            return type("Done", (), {"to_json": lambda self: "{}"})()
        model = rg.ResidualMLP(3, 6, 2, 8, 2, seed=0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:  # a long run, told to stop at a chunk boundary
            rg.train(model, chain, steps=25, batch_size=8, eval_every=0, eval_size=8,
                     progress=False)
        raise AssertionError("never told to stop")

    def full(store, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep_mod, "run", fake_run)
    monkeypatch.setattr(sweep_mod, "_write_record", full)
    t0 = time.monotonic()
    with pytest.raises(OSError, match="No space"):
        with ThreadPoolExecutor(3) as pool:
            rg.sweep(rg.grid(TINY, seed=[1, 0, 2]), executor=pool, store=tmp_path,
                     progress=False)
    assert time.monotonic() - t0 < 5
