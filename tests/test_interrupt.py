"""Ctrl-C on parallel work (issue 16): a real SIGINT to the process group of `rgflow
reproduce`, `rgflow sweep` and scripts calling `rg.sweep` on a process pool and on a Dask
LocalCluster stops every worker within seconds, keeps every finished record, prints one line
saying what was kept and how to resume, exits with code 130 and leaves no process behind."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import rgflow as rg
from rgflow.experiments import Config
from rgflow.report import CONFIGS
from rgflow.sweep import _write_record, load_record

STOP_WITHIN = 5.0  # seconds from SIGINT to the exit of the whole process group
CLI = [sys.executable, "-c", "import sys; from rgflow.__main__ import main; sys.exit(main())"]
# runs of about a second each: a sweep of 8 is mid-run when its second record appears
TINY_ARGS = ["--quick", "--steps", "2000", "--depth", "3", "--hidden", "32", "--width", "8",
             "--length", "8"]
RESULTS = Path(__file__).resolve().parent.parent / "notebooks" / "results"


@pytest.fixture(autouse=True)
def sigint_as_a_terminal_has_it():
    """Ctrl-C as an interactive Python has it. A shell starts background jobs (``pytest &``)
    with SIGINT ignored, and Python then keeps it ignored, as do the processes it starts: these
    tests would see no Ctrl-C at all."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def group_members(pgid):
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def interrupt(args, ready, cwd, whole_group=True, sig=signal.SIGINT):
    """Run ``args`` in a new session, wait until ``ready(process group id)``, send SIGINT (to the process group
    as a terminal's Ctrl-C does, or to the parent alone); return (exit code, seconds until
    the parent exited, stdout, stderr, processes of the group still alive)."""
    proc = subprocess.Popen(args, cwd=cwd, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready(proc.pid):
            assert proc.poll() is None, "finished before the interrupt: %s" % (
                proc.communicate(),)
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.02)
        t0 = time.monotonic()
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
        time.sleep(0.2)  # let exiting children finish exiting
        return proc.returncode, elapsed, out, err, group_members(proc.pid)
    finally:
        if proc.poll() is None or group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def records(store):
    return sorted(p for p in Path(store).iterdir()
                  if p.suffix == ".json" and not p.name.endswith(".partial.json"))


def assert_clean_stop(code, elapsed, out, err, alive):
    assert code == 130, (out, err)
    assert elapsed < STOP_WITHIN, elapsed
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err  # one line, nothing else
    assert alive == []


def seed_quick_records(store, wanted):
    """Copy stored runs of the quick configuration into ``store`` under the current version's
    keys (what an earlier, interrupted `rgflow reproduce --quick` would have left)."""
    store.mkdir(parents=True)
    for path in sorted(RESULTS.glob("gated-small/*.json")):
        payload = json.loads(path.read_text())["payload"]
        config = Config.from_dict(payload["result"]["config"])
        if (config.xi, config.seed) in wanted and \
                config == CONFIGS["quick"].replace(xi=config.xi, seed=config.seed):
            payload["key"] = config.key()
            _write_record(store, payload)
            wanted.remove((config.xi, config.seed))
    assert not wanted, "no stored quick runs for %s" % wanted


def assert_stopped_checkpoints(store, names, runs):
    """``names`` (files of ``store`` besides its records) are the checkpoints of ``runs``
    stopped runs (a range: of those that had started): each a .json naming its one model
    file, with the History of every step done (saved where the run stopped), and no
    temporary file."""
    stopped = {name for name in names if name.endswith(".partial.json")}
    assert len(stopped) in runs and len(names) == 2 * len(stopped), names
    for name in stopped:
        meta = json.loads((store / name).read_text())
        assert meta["model"] in names and len(meta["losses"]) == meta["step"] > 0


def test_reproduce_with_two_workers_stops_on_ctrl_c(tmp_path):
    out_dir = tmp_path / "report"
    seed_quick_records(out_dir / "runs", {(1.0, 0), (7.0, 0)})
    kept = {p: p.read_bytes() for p in records(out_dir / "runs")}
    started = []

    def ready(pgid):  # both workers are up, then a second and a half of training
        if not started and len(group_members(pgid)) >= 3:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 1.5

    code, elapsed, out, err, alive = interrupt(
        CLI + ["reproduce", "--quick", "--workers", "2", "--out", "report", "--no-progress"],
        ready, tmp_path)
    assert_clean_stop(code, elapsed, out, err, alive)
    assert err.strip() == (
        "rgflow reproduce: interrupted; 2 of 20 runs finished and are kept in report/runs; run "
        "the same command again to compute only the other 18")
    assert {p: p.read_bytes() for p in records(out_dir / "runs")} == kept
    # no temp files: besides the records, the checkpoints of the two stopped runs, each a
    # .json naming its one model file, saved where the run stopped (nothing is lost)
    assert_stopped_checkpoints(out_dir / "runs",
                               set(os.listdir(out_dir / "runs")) - {p.name for p in kept}, (2,))
    print("reproduce --quick, 2 workers: stopped %.2f s after SIGINT" % elapsed)


@pytest.mark.parametrize("whole_group", [True, False], ids=["process-group", "parent-only"])
def test_sweep_with_two_workers_stops_on_ctrl_c(tmp_path, whole_group):
    """Ctrl-C in a terminal reaches every process of the job; a notebook's interrupt (or
    kill -INT) reaches the parent alone, which then stops the workers itself."""
    store = tmp_path / "runs"
    code, elapsed, out, err, alive = interrupt(
        CLI + ["sweep"] + TINY_ARGS + ["--xi", "1", "7", "--seeds", "4", "--workers", "2",
                                       "--store", "runs", "--no-progress"],
        lambda pgid: store.is_dir() and len(records(store)) >= 2, tmp_path, whole_group)
    assert_clean_stop(code, elapsed, out, err, alive)
    m = re.fullmatch(r"rgflow sweep: interrupted; (\d) of 8 runs finished and are kept in runs; "
                     r"run the same command again to compute only the other (\d)", err.strip())
    assert m, err
    done = int(m.group(1))
    assert 2 <= done < 8 and int(m.group(2)) == 8 - done
    stored = records(store)
    assert len(stored) == done and all(load_record(p, p.stem)["status"] == "ok"
                                       for p in stored)
    # besides the records, only the checkpoints of runs that were stopped
    others = set(os.listdir(store)) - {p.name for p in stored}
    assert all(re.fullmatch(r"[0-9a-f]{16}\.partial(\.json|-\d+\.npz)", name)
               and name[:16] + ".json" not in os.listdir(store) for name in others), others
    print("sweep, 2 workers, SIGINT to the %s: stopped %.2f s after SIGINT"
          % ("process group" if whole_group else "parent", elapsed))


SCRIPT = """
import sys
import rgflow as rg
from rgflow.experiments import Config


def main(store, where):
    configs = rg.grid(Config(steps=2000, hidden=32, depth=3, width=8, length=8, eval_size=256,
                             batch_size=32), xi=[1.0, 7.0], seed=[0, 1, 2, 3])
    try:
        if where == "dask":
            import distributed
            with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                          dashboard_address=None) as cluster, \\
                    distributed.Client(cluster) as client:
                rg.sweep(configs, executor=client, store=store, progress=False)
        else:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(2) as pool:  # a plain pool, as a user would make it
                rg.sweep(configs, executor=pool, store=store, progress=False)
    except rg.SweepInterrupted as exc:
        print(exc, file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":  # Dask and spawned workers import this file
    main(*sys.argv[1:])
"""


@pytest.mark.parametrize("where", ["pool", "dask"])
def test_rg_sweep_stops_on_ctrl_c(tmp_path, where):
    if where == "dask":
        pytest.importorskip("distributed")
    script = tmp_path / "run_sweep.py"
    script.write_text(SCRIPT)
    store = tmp_path / "runs"
    code, elapsed, out, err, alive = interrupt(
        [sys.executable, str(script), "runs", where],
        lambda pgid: store.is_dir() and len(records(store)) >= 2, tmp_path)
    assert_clean_stop(code, elapsed, out, err, alive)
    m = re.fullmatch(r"sweep interrupted: (\d) of 8 runs are stored in runs; run the same sweep "
                     r"with this store again to compute only the other (\d) \(runs on this "
                     r"machine resume from their last checkpoint\)", err.strip())
    assert m, err
    done = int(m.group(1))
    assert 2 <= done < 8 and len(records(store)) == done
    assert all(load_record(p, p.stem)["status"] == "ok" for p in records(store))
    print("rg.sweep on %s: stopped %.2f s after SIGINT" % (where, elapsed))


def test_sweep_on_threads_stops_on_ctrl_c(tmp_path):
    """Runs on threads of this process stop at their next chunk boundary too."""
    configs = rg.grid(Config(steps=10**6, hidden=8, depth=2, width=2, length=6, eval_size=32,
                             batch_size=8, n_states=3), seed=[0, 1, 2])
    # a real SIGINT to the main thread: it wakes the wait in as_completed (interrupt_main would
    # only be seen once a run ended)
    timer = threading.Timer(0.5, signal.pthread_kill, [threading.main_thread().ident,
                                                       signal.SIGINT])
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        timer.start()
        with pytest.raises(rg.SweepInterrupted) as info:
            rg.sweep(configs, executor=pool, store=tmp_path, progress=False)
    assert time.monotonic() - t0 < STOP_WITHIN  # the pool's shutdown did not wait for 10**6 steps
    assert (info.value.done, info.value.total, info.value.store) == (0, 3, tmp_path)
    assert str(info.value) == ("sweep interrupted: 0 of 3 runs are stored in %s; run the same "
                               "sweep with this store again to compute only the other 3 "
                               "(runs on this machine resume from their last checkpoint)"
                               % tmp_path)
    # the two running runs' (a run a loaded machine had not started yet has none)
    assert_stopped_checkpoints(tmp_path, os.listdir(tmp_path), (1, 2))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def workers_up(seconds):
    """``ready`` for :func:`interrupt`: the parent and two workers, then ``seconds`` more."""
    started = []

    def ready(pgid):
        if not started and len(group_members(pgid)) >= 3:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > seconds
    return ready


def test_sigterm_stops_the_sweep_command_as_ctrl_c_does(tmp_path):
    """`kill PID` (a job scheduler's stop) used to end `rgflow sweep --workers 2` at once, with
    no message, and leave both workers behind for good."""
    code, elapsed, out, err, alive = interrupt(
        CLI + ["sweep"] + TINY_ARGS + ["--xi", "1", "7", "--seeds", "4", "--workers", "2",
                                       "--store", "runs", "--no-progress"],
        workers_up(1.0), tmp_path, whole_group=False, sig=signal.SIGTERM)
    assert code == 143, (out, err)
    assert elapsed < STOP_WITHIN and "Traceback" not in out + err and alive == []
    assert re.fullmatch(r"rgflow sweep: terminated; (\d) of 8 runs finished and are kept in "
                        r"runs; run the same command again to compute only the other \d",
                        err.strip()), err
    assert all(load_record(p, p.stem)["status"] == "ok" for p in records(tmp_path / "runs"))


def test_pool_workers_exit_when_their_sweep_is_killed(tmp_path):
    """SIGKILL to the parent alone (no clean-up possible there): the workers notice that it is
    gone and exit instead of finishing runs for nobody and then waiting forever."""
    proc = subprocess.Popen(
        CLI + ["sweep"] + TINY_ARGS + ["--xi", "1", "7", "--seeds", "4", "--workers", "2",
                                       "--store", "runs", "--no-progress"],
        cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        ready = workers_up(0.5)
        deadline = time.monotonic() + 60
        while not ready(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + STOP_WITHIN
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group_members(proc.pid) == []
    finally:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
