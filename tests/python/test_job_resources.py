"""Chunks, node-file lines, walltime and the launch plan."""
import pytest

from dask_pbs_kit import job_resources as jr
from dask_pbs_kit import kit_cli
from dask_pbs_kit.errors import KitError

GiB = 1024**3


def chunks_of(select, lines):
    chunks = jr.parse_select(select)
    jr.place_chunks(chunks, lines)
    return [(c.index, c.ncpus, c.mem, c.mpiprocs, c.first_line, c.node) for c in chunks]


def test_select_with_repeats_and_groups():
    assert chunks_of("1:ncpus=1:mem=4gb+2:ncpus=4:mem=20G", ["a", "b", "c"]) == [
        (0, 1, 4 * GiB, 1, 0, "a"), (1, 4, 20 * GiB, 1, 1, "b"), (2, 4, 20 * GiB, 1, 2, "c")]


def test_mpiprocs_repeat_node_file_lines_but_not_chunks():
    lines = ["n0", "n0", "n1", "n1"]
    assert chunks_of("2:ncpus=4:mem=2gb:mpiprocs=2", lines) == [
        (0, 4, 2 * GiB, 2, 0, "n0"), (1, 4, 2 * GiB, 2, 2, "n1")]


def test_a_chunk_without_a_count_or_mem():
    assert chunks_of("ncpus=2", ["x"]) == [(0, 2, None, 1, 0, "x")]


@pytest.mark.parametrize("select", ["2:ncpus", "2:ncpus=two", "1:mem=1.5gb"])
def test_bad_select_is_refused(select):
    with pytest.raises(KitError):
        jr.parse_select(select)


def test_walltime_forms():
    assert jr.parse_walltime("01:00:00") == 3600
    assert jr.parse_walltime("90:00") == 5400
    assert jr.parse_walltime("45") == 45
    with pytest.raises(KitError):
        jr.parse_walltime("1h")


def test_time_left_counts_from_the_script_start_or_pbs_usage():
    attrs = {"Resource_List": {"walltime": "00:10:00"}, "resources_used": {"walltime": "00:00:30"}}
    assert jr.time_left(attrs, started=1000, now=1010) == 570
    assert jr.time_left(attrs, started=1000, now=1100) == 500
    assert jr.time_left({}, started=0) is None


def test_node_file_fallback_groups_runs_of_a_host(tmp_path, capsys):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n0\nn0\nn1\nn2\n")
    chunks = jr.job_chunks({"PBS_NODEFILE": str(nodefile), "NCPUS": "8"}, None)
    assert [(c.node, c.mpiprocs, c.first_line, c.ncpus, c.mem) for c in chunks] == [
        ("n0", 2, 0, 8, None), ("n1", 1, 2, 8, None), ("n2", 1, 3, 8, None)]
    assert "cannot read the select statement" in capsys.readouterr().err


def test_a_select_that_does_not_match_the_node_file_is_not_trusted(tmp_path, capsys):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n0\nn1\n")
    chunks = jr.job_chunks({"PBS_NODEFILE": str(nodefile)}, {"Resource_List": {"select": "3:ncpus=1"}})
    assert len(chunks) == 2
    assert "does not match the 2 lines" in capsys.readouterr().err


def test_plan_divides_each_chunk(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n0\nn1\nn1\nn2\nn2\n")
    attrs = {"Resource_List": {"select": "1:ncpus=1:mem=2gb+2:ncpus=8:mem=20gb:mpiprocs=2",
                               "walltime": "01:00:00"}}
    env = {"PBS_JOBID": "7.srv", "PBS_NODEFILE": str(nodefile)}
    lines = kit_cli.plan(["--nworkers", "4", "--started", "0"], env, lambda jobid: attrs)
    assert lines[0][0] == "walltime" and lines[0][1] == 3600
    assert lines[1] == ("scheduler", 0, 0, "n0")
    assert lines[2:] == [("worker", 1, 1, "n1", 4, 2, "4831838208"), ("worker", 2, 3, "n2", 4, 2, "4831838208")]


def test_plan_refuses_a_job_without_worker_chunks(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n0\n")
    with pytest.raises(KitError, match="no chunk for workers"):
        kit_cli.plan([], {"PBS_JOBID": "1.s", "PBS_NODEFILE": str(nodefile)},
                     lambda jobid: {"Resource_List": {"select": "1:ncpus=2"}})


def test_plan_outside_a_job_says_to_use_qsub(capsys, monkeypatch):
    monkeypatch.delenv("PBS_JOBID", raising=False)
    assert kit_cli.main(["plan"]) == 1
    assert "submit with qsub" in capsys.readouterr().err


def test_plan_inside_a_fake_pbs_job_reads_qstat(fakepbs, tmp_path):
    import subprocess
    import sys
    from conftest import KIT

    (tmp_path / "plan.pbs").write_text(
        f"#PBS -l select=3:ncpus=2:mem=4gb\n#PBS -l walltime=00:05:00\n"
        f"{sys.executable} {KIT}/helpers/kit.py plan --nworkers 2 > {tmp_path}/plan.out\n")
    done = subprocess.run(["qsub", "-W", "block=true", "plan.pbs"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in (tmp_path / "plan.out").read_text().splitlines()]
    assert rows[0][:2] == ["walltime", "300"] and 290 <= int(rows[0][2]) <= 300
    assert rows[1] == ["scheduler", "0", "0", "node00"]
    assert rows[2:] == [["worker", "1", "1", "node01", "2", "1", "1932735283"],
                        ["worker", "2", "2", "node02", "2", "1", "1932735283"]]
