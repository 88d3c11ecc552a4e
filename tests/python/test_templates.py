"""The four templates are copies to edit, by design: their shared blocks must stay in step.

Each template reads as: #PBS lines and a header; USER SETTINGS (a comment, then a
NAME="${NAME:-default}" line, per knob); ENVIRONMENT; then the part not to edit. A knob
that several templates have must read the same in each (its comment and its default),
but for the differences listed here, which are the point of those templates.
"""
import re
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TEMPLATES = sorted(SCRIPTS.glob("*.pbs"))
# (template, knob): where a template differs on purpose.
ON_PURPOSE = {
    ("launch-dask-cluster-process-with-path.pbs", "NWORKERS"),  # 4 processes of 1 thread
    ("launch-dask-cluster-process-with-path.pbs", "NTHREADS"),
    ("launch-dask-workers.pbs", "WALLTIME_MARGIN"),  # it retires workers, not a cluster
    ("launch-dask-workers.pbs", "READY_TIMEOUT"),
    ("launch-dask-workers.pbs", "SCHEDULER_FILE"),  # the cluster's, to join
}
BANNERS = ("# ============================ USER SETTINGS",
           "# ============================ ENVIRONMENT",
           "# ============================ Generally, do not edit below")


def sections(path: Path) -> list:
    """[before USER SETTINGS, USER SETTINGS, ENVIRONMENT, the part not to edit]"""
    text = path.read_text()
    parts, rest = [], text
    for banner in BANNERS:
        head, sep, rest = rest.partition(banner)
        assert sep, f"{path.name}: no '{banner}' line"
        parts.append(head)
        rest = sep + rest
    parts.append(rest)
    return parts


def knobs(path: Path) -> dict:
    """{NAME: (its comment lines, its line)} of the USER SETTINGS block."""
    found, comment = {}, []
    for line in sections(path)[1].splitlines()[1:]:
        if line.startswith("# Every setting can be changed"):  # the block's own comment
            continue
        if line.startswith("#"):
            comment.append(line)
            continue
        match = re.match(r'^([A-Z_]+)="\$\{\1:?-.*\}"$', line)
        if match:
            found[match.group(1)] = ("\n".join(comment), line)
        comment = []
    return found


def test_there_are_five_templates():
    assert [t.name for t in TEMPLATES] == [
        "launch-dask-cluster-conda.pbs", "launch-dask-cluster-path.pbs",
        "launch-dask-cluster-process-with-path.pbs", "launch-dask-wordcount.pbs",
        "launch-dask-workers.pbs"]


def mode_of(name: str) -> str:
    return {"launch-dask-wordcount.pbs": "production", "launch-dask-workers.pbs": "workers"}.get(
        name, "interactive")


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_every_knob_line_is_commented_and_overridable(template):
    settings = sections(template)[1].splitlines()[2:]
    for line in settings:
        if line and not line.startswith("#"):
            assert re.match(r'^([A-Z_]+)="\$\{\1:?-.*\}"$', line), f"{template.name}: {line}"
    assert all(comment for comment, _ in knobs(template).values())


def test_a_knob_shared_by_templates_reads_the_same_in_each():
    table = {t.name: knobs(t) for t in TEMPLATES}
    names = {name for found in table.values() for name in found}
    for name in sorted(names):
        versions = {(t, table[t][name]) for t in table if name in table[t] and (t, name) not in ON_PURPOSE}
        assert len({v for _, v in versions}) <= 1, f"{name} differs: {sorted(versions)}"


def test_the_interactive_templates_have_the_same_knobs():
    interactive = [t for t in TEMPLATES if mode_of(t.name) == "interactive"]
    common = set.intersection(*(set(knobs(t)) for t in interactive))
    for template in interactive:
        extra = set(knobs(template)) - common
        assert extra <= {"PYTHON_PREFIX", "CONDA_BASE", "CONDA_ENV"}, (template.name, extra)


def test_the_part_not_to_edit_differs_only_in_the_mode():
    tails = {t.name: sections(t)[3] for t in TEMPLATES}
    for name, tail in tails.items():
        mode = mode_of(name)
        assert f"dpk::main {mode}\n" in tail
        assert tail.replace(mode, "MODE") == tails["launch-dask-cluster-path.pbs"].replace(
            "interactive", "MODE")


def test_the_path_templates_share_their_environment_block():
    blocks = {sections(t)[2] for t in TEMPLATES if "conda" not in t.name}
    assert len(blocks) == 1


def test_the_start_of_every_template_checks_the_same_way():
    starts = set()
    for template in TEMPLATES:
        head = sections(template)[0]
        assert head.startswith("#!/bin/bash\n#PBS -N ")
        starts.add(head[head.index("set -euo pipefail"):])
    assert len(starts) == 1
