"""The findings as the README states them, reproduced: at the documented quick configuration,
3 seeds per correlation length, every verdict in the README's findings table is asserted, so
the README and the measurements cannot drift apart. The paper-size variant is marked slow."""
import re
from pathlib import Path

import pytest

from rgflow.report import CONFIGS, reproduce

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_verdicts(name):
    """{key: (verdict at xi=1, verdict at xi=7)} from the README table marked `name`."""
    text = README.read_text()
    block = re.search(r"<!-- findings:%s -->(.*?)<!-- /findings:%s -->" % (name, name), text,
                      re.S)
    assert block, "README.md has no findings table for %r" % name
    table = {}
    for line in block.group(1).splitlines():
        m = re.match(r"\|\s*`(\w+)`[^|]*\|[^|]*\|\s*(\w+)\s*\|\s*(\w+)\s*\|", line)
        if m:
            table[m.group(1)] = (m.group(2), m.group(3))
    assert table, "no rows parsed from the README findings table %r" % name
    return table


def check(name, config, tmp_path):
    expected = readme_verdicts(name)
    summary = reproduce(out=tmp_path, config=config, seeds=3, workers=2, progress=False)
    assert (tmp_path / "report.md").exists() and (tmp_path / "rank_masked.png").exists()
    report = []
    for key, (v1, v7) in expected.items():
        if key.startswith("selectivity"):
            got = (summary[key]["status"],) * 2
            report.append("%s: %s %s" % (key, summary[key]["status"], summary[key]["figures"]))
        else:
            got = (summary["per_xi"]["1"][key]["status"], summary["per_xi"]["7"][key]["status"])
            report.append("%s: %s" % (key, got))
        assert got == (v1, v7), "%s: README says %s, measured %s\n%s" % (
            key, (v1, v7), got, "\n".join(report))
    print("\n".join(report))
    return summary


def test_findings_quick_configuration(tmp_path):
    summary = check("quick", CONFIGS["quick"], tmp_path)
    # every run learned: the verdicts are about trained networks
    for xi in ("1", "7"):
        assert min(summary["per_xi"][xi]["learned"]) >= 0.8


@pytest.mark.slow
def test_findings_paper_configuration(tmp_path):
    check("paper", CONFIGS["paper"], tmp_path)
