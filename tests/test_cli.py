"""The `rgflow` command line: help texts with defaults, --version, bad values as one-line usage
errors (exit code 2, no traceback), the sweep table's columns and its undertrained flag."""
import argparse
import importlib.util
import json

import pytest

import rgflow as rg
from rgflow.__main__ import main, make_parser, sweep_table


def run(argv, capsys):
    """(exit code, stdout, stderr) of ``rgflow argv`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def subparsers():
    action = next(a for a in make_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_says_its_default():
    commands = subparsers()
    assert sorted(commands) == ["demo", "reproduce", "sweep"]
    for name, parser in commands.items():
        options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        assert options
        for action in options:
            text = (action.help or "") % vars(action)  # as --help shows it
            assert "(default: " in text or "(required)" in text, (name, action.dest, text)
    for name, n, more in (("reproduce", 10, "; every other seed of the same configuration "
                           "already in the store is judged too"), ("sweep", 3, "")):
        seeds = next(a for a in commands[name]._actions if a.dest == "seeds")
        assert seeds.help % vars(seeds) == "train seeds 0..N-1 at each xi%s (default: %d)" % (
            more, n)
    assert "without --quick it is paper size" in commands["sweep"].description


def test_help_and_version(capsys):
    code, out, err = run(["--version"], capsys)
    assert (code, out, err) == (0, "rgflow %s\n" % rg.__version__, "")
    code, out, _ = run(["sweep", "--help"], capsys)
    assert code == 0
    assert "--seeds N            train seeds 0..N-1 at each xi (default: 3)" in out
    assert "--steps N            training steps (default: 10000, or 30000 with --quick)" in out
    assert "--depth N            residual blocks K (default: 12, or 8 with --quick)" in out


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a directory")
    return path


BAD = [
    (["sweep", "--xi", "-1"], "argument --xi: must lie in (0, inf), got -1"),
    (["sweep", "--xi", "1", "nan"], "argument --xi: must lie in (0, inf), got nan"),
    (["sweep", "--xi", "0"], "argument --xi: must lie in (0, inf), got 0"),
    (["sweep", "--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["sweep", "--depth", "2.5"], "argument --depth: '2.5' is not an integer"),
    (["sweep", "--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
    (["sweep", "--workers", "0"], "argument --workers: must be an integer >= 1, got 0"),
    (["reproduce", "--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
    (["reproduce", "--workers", "-2"], "argument --workers: must be an integer >= 1, got -2"),
    (["demo", "--xi", "-1"], "argument --xi: must lie in [0, inf), got -1"),
    (["demo", "--xi", "1e300"], "argument --xi: xi must be at most 1e+11, got 1e+300: a "
                                "float64 chain cannot represent a longer correlation length "
                                "(|lambda_2| within 1e-12 of 1 reads as xi = inf)"),
    (["demo", "--states", "1"], "argument --states: must be an integer >= 2 and <= 65535, "
                                "got 1"),
    (["demo", "--mask-rate", "1.5"], "argument --mask-rate: must lie in (0, 1], got 1.5"),
    (["demo", "--n", "ten"], "argument --n: 'ten' is not an integer"),
    # a seed past the generator's range was a ValueError traceback after the config print
    (["demo", "--seed", str(2**64 - 1)], "argument --seed: must be an integer >= 0 and <= "
                                          "18446744073709551614, got 18446744073709551615"),
    (["sweep", "--noise", "0.3"], "argument --noise: needs --task hmm or hmm-random"),
    # noise 0 made the plain chain under another name (and another store key)
    (["sweep", "--task", "hmm"], "argument --noise: --task hmm needs a noise > 0 "
                                 "(with 0 it is --task chain)"),
    # an empty name was taken as the current directory
    (["reproduce", "--store", ""], "argument --store: a directory name is needed, got ''"),
    (["reproduce", "--out", ""], "argument --out: a directory name is needed, got ''"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_usage_errors(argv, message, tmp_path, capsys):
    store = tmp_path / "store"
    if argv[0] == "sweep":
        argv = argv + ["--store", str(store)]
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: rgflow %s " % argv[0]) and "Traceback" not in err
    assert err.splitlines()[-1] == "rgflow %s: error: %s" % (argv[0], message)
    assert not store.exists()  # nothing ran


def test_scheduler_without_dask_is_a_usage_error(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "distributed" else real(name, *a))
    store = tmp_path / "store"
    code, out, err = run(["sweep", "--store", str(store), "--scheduler", "tcp://host:8786"],
                         capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == ('rgflow sweep: error: argument --scheduler: needs Dask '
                                    '(pip install ".[dask]" in rgflow\'s source folder)')
    assert not store.exists()  # nothing ran


def test_store_and_out_must_be_directories(a_file, capsys):
    for argv, option in ((["sweep", "--store", str(a_file)], "--store"),
                         (["reproduce", "--out", str(a_file)], "--out")):
        code, _, err = run(argv, capsys)
        assert code == 2
        assert err.splitlines()[-1] == "rgflow %s: error: argument %s: %s exists and is not a " \
            "directory" % (argv[0], option, a_file)
    code, _, err = run(["sweep", "--store", str(a_file / "runs")], capsys)
    assert code == 2
    assert err.splitlines()[-1] == ("rgflow sweep: error: argument --store: %s cannot be "
                                    "created: %s is a file" % (a_file / "runs", a_file))


def test_sweep_table_names_its_level_and_flags_runs_that_fail_the_gate():
    rows = [dict(status="ok", xi=1.0, seed=0, masked_ce=1.61, bayes_floor=1.6, excess=0.01,
                 adjacent_margin=0.0012, gated=True, ratio_masked=0.8876,
                 ratio_position=1.2012),
            dict(status="ok", xi=0.5, seed=1, masked_ce=2.0, bayes_floor=1.9,  # no gate batch
                 adjacent_margin=-0.05, gated=False, ratio_masked=0.95, ratio_position=1.13),
            dict(status="error", xi=1e9, seed=2, error="FloatingPointError: loss is nan")]
    lines = sweep_table(rows)
    assert lines[0].split() == ["xi", "seed", "CE", "floor", "excess", "margin", "R(masked)",
                                "R(all)", "note"]
    assert lines[1].split() == ["1", "0", "1.6100", "1.6000", "0.0100", "+0.0012", "0.888",
                                "1.201"]
    assert lines[2].split() == ["0.5", "1", "2.0000", "1.9000", "0.1000", "-0.0500", "0.950",
                                "1.130", "not", "gated"]
    assert lines[3].split() == ["1e+09", "2", "error:", "FloatingPointError:", "loss", "is",
                                "nan"]
    assert lines[4].startswith("excess: masked CE above the Bayes floor (nats); margin: the "
                               "adjacent-token rule's CE minus the network's")
    assert "gated (evidence) when excess <= 0.02 and margin > 0" in lines[4]
    assert lines[5].startswith("R = rank[K]/rank[1], the position-level effective rank")
    assert "R <= 0.95 is a collapse" in lines[5]


def test_sweep_command_end_to_end(tmp_path, capsys):
    store = tmp_path / "runs"
    code, out, err = run(["sweep", "--quick", "--steps", "30", "--depth", "2", "--hidden", "16",
                          "--width", "4", "--length", "8", "--xi", "1", "--seeds", "2",
                          "--store", str(store), "--no-progress"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[6:8] == ["R(masked)", "R(all)"]
    rows = json.loads((store / "table.json").read_text())
    assert [(r["xi"], r["seed"]) for r in rows] == [(1.0, 0), (1.0, 1)]
    for line, row in zip(lines[1:3], rows):
        assert not row["gated"]  # 30 steps: far from trained
        assert line.split()[4:] == ["%.4f" % row["excess"], "%+.4f" % row["adjacent_margin"],
                                    "%.3f" % row["ratio_masked"], "%.3f" % row["ratio_position"],
                                    "not", "gated"]


def test_too_large_for_this_machine_is_one_line(capsys):
    code, _, err = run(["demo", "--xi", "1", "--n", str(10**12), "--length", str(10**6)], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [
        err.strip()] and err.startswith("rgflow demo: sample: n * length = 1000000000000 x "
                                        "1000000 int32 tokens needs 4e+09 GB but only ")


def test_a_store_that_cannot_be_written_is_one_line(monkeypatch, tmp_path, capsys):
    """An OSError (a store that cannot be made or written, a Dask scheduler that does not
    answer) was a traceback."""
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "runs/abc.json")

    monkeypatch.setattr(rg, "sweep", full)
    code, out, err = run(["sweep", "--xi", "1", "--seeds", "1", "--store", str(tmp_path),
                          "--no-progress"], capsys)
    assert code == 1 and out == ""
    assert err == "rgflow sweep: [Errno 28] No space left on device: 'runs/abc.json'\n"


def test_sweep_of_one_block_has_no_ratio_and_no_phase_diagram(tmp_path, capsys):
    """With --depth 1 the rank profile has two points and no collapse ratio: the command
    printed its table, then failed drawing the phase diagram with a traceback."""
    code, out, err = run(["sweep", "--quick", "--steps", "5", "--depth", "1", "--hidden", "8",
                          "--width", "4", "--length", "8", "--xi", "1", "--seeds", "1",
                          "--store", str(tmp_path), "--no-progress"], capsys)
    assert code == 0, err
    assert out.splitlines()[1].split()[6:8] == ["nan", "nan"]
    assert (tmp_path / "table.json").exists() and not (tmp_path / "phase_diagram.png").exists()
