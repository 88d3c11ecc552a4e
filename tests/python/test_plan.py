"""The launch plan (a pure function of the job and the knobs) and `kit.py plan`."""
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from conftest import KIT
from dask_pbs_kit import kit_cli
from dask_pbs_kit.errors import BAD_VALUE, USAGE, KitError
from dask_pbs_kit.job_resources import Chunk, Job, Walltime
from dask_pbs_kit.pbs_sizes import memory_per_process
from dask_pbs_kit.plan import Settings, make_plan
from test_job_resources import attr_names, garbage, job_of

GiB = 1024**3
MiB = 1024**2


def chunk(index, ncpus, mem_gb, line, node, ngpus=0):
    c = Chunk(index, ncpus, None if mem_gb is None else int(mem_gb * GiB), ngpus=ngpus)
    c.first_line, c.node, c.host = line, node, node
    return c


def gpu_rows(chunk_index, line, node, threads, memory, host_procs, gpus, host_start=0,
             host_gpus=None, reserve=("100000", "0")):
    """The gpu-worker lines of one GPU chunk, split."""
    return [["gpu-worker", str(chunk_index), str(line), node, "1", str(threads), str(memory),
             str(host_procs), *reserve, str(g), str(gpus), str(host_start + g),
             str(host_gpus or host_start + gpus)] for g in range(gpus)]


def job(*chunks, walltime=Walltime(3600, 3000, "pbs")):
    return Job(list(chunks), "test", walltime)


def per(gb, processes):
    """--memory-limit of each of processes sharing gb GiB, less the default 10%."""
    return memory_per_process(gb * GiB, processes, "10%")


def rows(plan):
    return [line.split("\t") for line in plan.lines()]


def test_workers_on_every_chunk_but_the_schedulers_by_default():
    plan = make_plan(job(chunk(0, 2, 4, 0, "n0"), chunk(1, 4, 8, 1, "n1"), chunk(2, 4, 8, 2, "n2")),
                     Settings(nworkers=2))
    assert plan.lines() == [
        "job\ttest",
        "walltime\t3600\t3000\tpbs",
        "scheduler\t0\t0\tn0\t1",
        f"worker\t1\t1\tn1\t2\t2\t{per(8, 2)}\t2\t100000\t0",
        f"worker\t2\t2\tn2\t2\t2\t{per(8, 2)}\t2\t100000\t0",
    ]


def test_yes_puts_workers_beside_the_scheduler_which_counts_as_one_more_process():
    plan = make_plan(job(chunk(0, 4, 4, 0, "n0"), chunk(1, 4, 4, 1, "n1")),
                     Settings(nworkers=2, worker_on_scheduler_chunk="yes"))
    assert rows(plan)[2] == ["scheduler", "0", "0", "n0", "3"]
    assert rows(plan)[3] == ["worker", "0", "0", "n0", "2", "2", str(per(4, 3)), "3", "100000", "0"]
    assert rows(plan)[4][6:8] == [str(per(4, 2)), "2"]


def test_auto_keeps_a_core_for_the_scheduler_when_chunk_0_has_two_or_more():
    plan = make_plan(job(chunk(0, 4, 4, 0, "n0"), chunk(1, 4, 4, 1, "n1")),
                     Settings(nworkers=1, worker_on_scheduler_chunk="auto"))
    assert [r[:6] for r in rows(plan)[3:]] == [["worker", "0", "0", "n0", "1", "3"],
                                              ["worker", "1", "1", "n1", "1", "4"]]
    assert rows(plan)[3][6] == str(per(4, 2))  # the scheduler's share too
    # One core on chunk 0: like no.
    plan = make_plan(job(chunk(0, 1, 4, 0, "n0"), chunk(1, 4, 4, 1, "n1")),
                     Settings(worker_on_scheduler_chunk="auto"))
    assert [r[1] for r in rows(plan)[3:]] == ["1"]
    # An explicit NTHREADS is kept.
    plan = make_plan(job(chunk(0, 8, 4, 0, "n0")), Settings(nthreads=8, worker_on_scheduler_chunk="auto"))
    assert rows(plan)[3][5] == "8"


def test_a_single_chunk_job_with_no_is_refused_and_auto_runs_it():
    single = job(chunk(0, 8, 16, 0, "n0"))
    with pytest.raises(KitError, match="no chunk for workers") as err:
        make_plan(single, Settings())
    assert err.value.code == BAD_VALUE
    assert rows(make_plan(single, Settings(nworkers=2, worker_on_scheduler_chunk="auto")))[3][:6] == [
        "worker", "0", "0", "n0", "2", "3"]


def test_unknown_mem_is_auto_and_each_host_divides_its_own_limit():
    plan = make_plan(job(chunk(0, 2, None, 0, "n0"), chunk(1, 4, None, 1, "n1"), chunk(2, 4, None, 2, "n1")),
                     Settings(nworkers=2, reserve="2gb"))
    assert rows(plan)[2] == ["scheduler", "0", "0", "n0", "1"]
    # n1 holds two chunks: 4 worker processes, and the absolute reserve twice.
    assert rows(plan)[3] == ["worker", "1", "1", "n1", "2", "2", "auto", "4", "0", str(4 * GiB)]
    assert rows(plan)[4] == ["worker", "2", "2", "n1", "2", "2", "auto", "4", "0", str(4 * GiB)]


def test_place_pack_counts_every_process_on_the_one_host():
    plan = make_plan(job(chunk(0, 2, 2, 0, "n0"), chunk(1, 2, 2, 1, "n0"), chunk(2, 2, 2, 2, "n0")),
                     Settings(nworkers=1, reserve="12.5%"))
    assert rows(plan)[2] == ["scheduler", "0", "0", "n0", "3"]
    assert [r[7:] for r in rows(plan)[3:]] == [["3", "125000", "0"], ["3", "125000", "0"]]


def test_the_plan_never_prints_a_fraction_of_the_node():
    plan = make_plan(job(chunk(0, 1, None, 0, "a"), chunk(1, 1, None, 1, "b")), Settings())
    for line in plan.lines():
        assert "0." not in line


def test_a_share_below_256_mib_is_still_refused():
    with pytest.raises(KitError, match="below the 256mb") as err:
        make_plan(job(chunk(0, 1, 1, 0, "a"), chunk(1, 8, 1, 1, "b")), Settings(nworkers=8))
    assert err.value.code == BAD_VALUE


@pytest.mark.parametrize("settings, message", [
    (Settings(reserve="1.5gb"), "MEMORY_RESERVE='1.5gb'"),
    (Settings(reserve="100%"), "percentage must be in"),
    (Settings(worker_on_scheduler_chunk="maybe"), "yes, no or auto"),
    (Settings(nworkers=0), "NWORKERS"),
])
def test_bad_knobs_are_bad_values(settings, message):
    with pytest.raises(KitError, match=message) as err:
        make_plan(job(chunk(0, 1, 1, 0, "a"), chunk(1, 1, 1, 1, "b")), settings)
    assert err.value.code == BAD_VALUE


def test_a_chunk_without_a_line_gets_no_workers_with_a_warning():
    lineless = chunk(2, 4, 4, -1, "")
    plan = make_plan(job(chunk(0, 1, 1, 0, "a"), chunk(1, 4, 4, 1, "b"), lineless), Settings())
    assert [r[1] for r in rows(plan)[3:]] == ["1"]
    assert "chunk 2 has no line" in plan.warnings[0]


# ------------------------------------------------------------------ GPU chunks


def test_two_gpu_chunks_under_auto_give_one_worker_per_gpu_eight_in_all():
    # select=2:ncpus=8:ngpus=4:mem=16gb: chunk 0 keeps a core for the scheduler (7 left for
    # 4 GPU workers: 1 thread each) and shares its mem with it; chunk 1: 2 threads each.
    plan = make_plan(job(chunk(0, 8, 16, 0, "n0", ngpus=4), chunk(1, 8, 16, 1, "n1", ngpus=4)),
                     Settings(nworkers=3, worker_on_scheduler_chunk="auto"))
    assert rows(plan)[2] == ["scheduler", "0", "0", "n0", "5"]
    assert rows(plan)[3:] == (gpu_rows(0, 0, "n0", 1, per(16, 5), 5, 4)
                              + gpu_rows(1, 1, "n1", 2, per(16, 4), 4, 4))
    assert plan.warnings == []
    # Each worker gets its own entry of its own host's device list.
    assert {(r[3], r[12]) for r in rows(plan)[3:]} == {(n, str(g)) for n in ("n0", "n1") for g in range(4)}


def test_a_mixed_select_keeps_cpu_chunks_cpu_workers_with_nworkers():
    # select=1:ncpus=2+2:ncpus=8:ngpus=4, no mem anywhere.
    chunks = [chunk(0, 2, None, 0, "n0"), chunk(1, 8, None, 1, "g1", ngpus=4),
              chunk(2, 8, None, 2, "g2", ngpus=4)]
    plan = make_plan(job(*chunks), Settings(nworkers=2))
    assert rows(plan)[2] == ["scheduler", "0", "0", "n0", "1"]
    assert rows(plan)[3:] == gpu_rows(1, 1, "g1", 2, "auto", 4, 4) + gpu_rows(2, 2, "g2", 2, "auto", 4, 4)
    # auto: chunk 0 (2 cores) runs NWORKERS CPU workers on the core the scheduler leaves.
    plan = make_plan(job(*chunks), Settings(nworkers=2, worker_on_scheduler_chunk="auto"))
    assert rows(plan)[2] == ["scheduler", "0", "0", "n0", "3"]
    assert rows(plan)[3] == ["worker", "0", "0", "n0", "2", "1", "auto", "3", "100000", "0"]
    assert rows(plan)[4:] == gpu_rows(1, 1, "g1", 2, "auto", 4, 4) + gpu_rows(2, 2, "g2", 2, "auto", 4, 4)
    assert sum(int(r[4]) for r in rows(plan)[3:]) == 10  # worker processes in all


def test_chunk_0s_gpus_under_auto_need_two_cores_and_a_warning_says_when_they_idle():
    chunks = [chunk(0, 1, 8, 0, "g0", ngpus=2), chunk(1, 4, 8, 1, "n1")]
    plan = make_plan(job(*chunks), Settings(worker_on_scheduler_chunk="auto"))
    assert [r[:2] for r in rows(plan)[3:]] == [["worker", "1"]]
    assert plan.warnings == [
        "chunk 0's 2 GPUs run no worker: it has 1 core, kept for the scheduler "
        "(WORKER_ON_SCHEDULER_CHUNK=auto needs 2 or more); WORKER_ON_SCHEDULER_CHUNK=yes runs "
        "one per GPU there"]
    plan = make_plan(job(*chunks), Settings(worker_on_scheduler_chunk="no"))
    assert plan.warnings[0].startswith("chunk 0's 2 GPUs run no worker: WORKER_ON_SCHEDULER_CHUNK=no;")
    # yes: one GPU worker per GPU beside the scheduler, on its one core.
    plan = make_plan(job(*chunks), Settings(worker_on_scheduler_chunk="yes"))
    assert rows(plan)[3:5] == gpu_rows(0, 0, "g0", 1, per(8, 3), 3, 2)
    assert plan.warnings == []


def test_a_one_core_chunk_0_without_gpus_under_auto_runs_no_worker_and_no_warning():
    plan = make_plan(job(chunk(0, 1, 4, 0, "n0"), chunk(1, 8, 16, 1, "g1", ngpus=2)),
                     Settings(worker_on_scheduler_chunk="auto"))
    assert rows(plan)[2] == ["scheduler", "0", "0", "n0", "1"]
    assert rows(plan)[3:] == gpu_rows(1, 1, "g1", 4, per(16, 2), 2, 2)
    assert plan.warnings == []


def test_chunks_sharing_a_host_share_its_device_list_in_chunk_order():
    # place=pack: every chunk on g0, whose CUDA_VISIBLE_DEVICES lists the job's 5 GPUs there.
    # Chunk 0's 2 GPUs (no worker: WORKER_ON_SCHEDULER_CHUNK=no) still come first.
    chunks = [chunk(0, 2, 4, 0, "g0", ngpus=2), chunk(1, 4, 8, 1, "g0", ngpus=2),
              chunk(2, 2, 4, 2, "g0", ngpus=1), chunk(3, 2, 4, 3, "g0")]
    plan = make_plan(job(*chunks), Settings(nworkers=2, reserve="12.5%"))
    host = ("125000", "0")
    assert rows(plan)[2] == ["scheduler", "0", "0", "g0", "6"]  # 1 + 2 + 1 + 2
    assert rows(plan)[3:] == (
        gpu_rows(1, 1, "g0", 2, memory_per_process(8 * GiB, 2, "12.5%"), 6, 2, 2, 5, host)
        + gpu_rows(2, 2, "g0", 2, memory_per_process(4 * GiB, 1, "12.5%"), 6, 1, 4, 5, host)
        + [["worker", "3", "3", "g0", "2", "1", str(memory_per_process(4 * GiB, 2, "12.5%")), "6",
            *host]])


def test_gpu_workers_keep_an_explicit_nthreads_and_need_256_mib_each():
    plan = make_plan(job(chunk(0, 1, 1, 0, "n0"), chunk(1, 8, 16, 1, "g1", ngpus=4)),
                     Settings(nthreads=3))
    assert {r[5] for r in rows(plan)[3:]} == {"3"}
    with pytest.raises(KitError, match="below the 256mb") as err:
        make_plan(job(chunk(0, 1, 1, 0, "n0"), chunk(1, 8, 1, 1, "g1", ngpus=8)), Settings())
    assert err.value.code == BAD_VALUE


def test_gpu_worker_lines_have_14_fields_and_worker_lines_10():
    plan = make_plan(job(chunk(0, 4, 4, 0, "n0"), chunk(1, 8, 16, 1, "g1", ngpus=1)),
                     Settings(worker_on_scheduler_chunk="yes"))
    assert [(r[0], len(r)) for r in rows(plan)[2:]] == [("scheduler", 5), ("worker", 10),
                                                        ("gpu-worker", 14)]


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 16), st.integers(0, 4), st.sampled_from([None, 2, 64]),
                          st.sampled_from(["a", "b", "c"])), min_size=1, max_size=6),
       st.sampled_from(["yes", "no", "auto"]), st.integers(1, 3))
def test_any_gpu_job_gives_each_gpu_one_worker_with_a_distinct_device_of_its_host(spec, mode, nworkers):
    chunks = [chunk(i, ncpus, mem, i, host, ngpus) for i, (ncpus, ngpus, mem, host) in enumerate(spec)]
    try:
        plan = make_plan(job(*chunks), Settings(nworkers=nworkers, worker_on_scheduler_chunk=mode))
    except KitError as err:
        assert err.code == BAD_VALUE
        return
    lines = rows(plan)[3:]
    on_first = mode == "yes" or (mode == "auto" and chunks[0].ncpus >= 2)
    per_host: dict = {}
    procs: dict = {chunks[0].node: 1}
    for c in chunks if on_first else chunks[1:]:
        mine = [r for r in lines if r[1] == str(c.index)]
        if c.ngpus:
            assert [(r[0], r[4], r[10], r[11]) for r in mine] == [
                ("gpu-worker", "1", str(g), str(c.ngpus)) for g in range(c.ngpus)]
            per_host.setdefault(c.node, []).extend((int(r[12]), int(r[13])) for r in mine)
        else:
            assert [(r[0], r[4]) for r in mine] == [("worker", str(nworkers))]
        procs[c.node] = procs.get(c.node, 0) + (c.ngpus or nworkers)
        assert all(int(r[5]) >= 1 for r in mine)
    for host, entries in per_host.items():
        devices = [e[0] for e in entries]
        assert len(set(devices)) == len(devices)  # never two workers on one device
        assert {e[1] for e in entries} == {sum(c.ngpus for c in chunks if c.node == host)}
        assert all(d < e[1] for d, e in zip(devices, entries))
    assert all(r[7] == str(procs[r[3]]) for r in lines)
    assert rows(plan)[2][4] == str(procs[chunks[0].node])


# ------------------------------------------------------------------ kit.py plan

# The brief's example: select=1:ncpus=2:mem=4gb+2:ncpus=4 with default_chunk mem=8gb,
# as OpenPBS 23.06's qstat writes it for a manager (schedselect shows) ... Written out
# whole, though its exec_host, exec_vnode and Resource_List lines are those of
# test_qstat_reader's RELEASED_23: a qstat answer reads best as qstat printed it, and the
# two jobs differ (select, schedselect, what each test needs in it).
EXAMPLE_JSON = r'''{
    "timestamp":1700000000,
    "pbs_version":"23.06.06",
    "pbs_server":"pbs01",
    "Jobs":{
        "42.pbs01":{
            "Job_Name":"dask",
            "resources_used":{
                "walltime":"00:00:00"
            },
            "exec_host":"n0/0*2+n1/0*4+n2/0*4",
            "exec_vnode":"(n0:ncpus=2:mem=4194304kb)+(n1:ncpus=4:mem=8388608kb)+(n2:ncpus=4:mem=8388608kb)",
            "Resource_List":{
                "mem":"20gb",
                "ncpus":10,
                "nodect":3,
                "place":"free",
                "select":"1:ncpus=2:mem=4gb+2:ncpus=4",
                "walltime":"01:00:00"
            },
            "schedselect":"1:ncpus=2:mem=4gb+2:ncpus=4:mem=8gb",
            "Variable_List":{
                "PS1":"\u@\h:\w\$ ",
                "HALF":.5
            }
        }
    }
}
'''
EXAMPLE_PLAN = (
    "job\tqstat -f -F json (invalid JSON from an OpenPBS <= 23.06 qstat, read leniently): chunks from "
    "schedselect, what each got from exec_vnode, node-file lines by mpiprocs\n"
    "walltime\t3600\t3600\tpbs\n"
    "scheduler\t0\t0\tn0\t1\n"
    "worker\t1\t1\tn1\t1\t4\t7730941133\t1\t100000\t0\n"
    "worker\t2\t2\tn2\t1\t4\t7730941133\t1\t100000\t0\n"
)

# ... and as PBS Pro 14's `qstat -f` prints it to the job's owner (no -F json, no schedselect).
EXAMPLE_TEXT = (
    "Job Id: 42.pbs01\n"
    "    Job_Name = dask\n"
    "    exec_host = n0/0*2+n1/0*4+n2/0*4\n"
    "    exec_vnode = (n0:ncpus=2:mem=4194304kb)+(n1:ncpus=4:mem=8388608kb)+(n2:ncpu\n"
    "\ts=4:mem=8388608kb)\n"
    "    Resource_List.select = 1:ncpus=2:mem=4gb+2:ncpus=4\n"
    "\n"
)


@pytest.fixture
def fake_qstat(tmp_path, monkeypatch):
    """A `qstat` first on PATH that prints $QSTAT_JSON for -F json (or, unset, refuses -F
    as PBS Pro before 18 does) and $QSTAT_TEXT otherwise; a node file n0 n1 n2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qstat = bin_dir / "qstat"
    qstat.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = "-F" ]; then\n'
        '  [ -n "$QSTAT_JSON" ] && exec cat "$QSTAT_JSON"\n'
        "  echo \"qstat: invalid option -- 'F'\" >&2; echo 'usage: ...' >&2; exit 2\n"
        "fi\n"
        'exec cat "$QSTAT_TEXT"\n')
    qstat.chmod(0o755)
    (tmp_path / "job.json").write_text(EXAMPLE_JSON)
    (tmp_path / "job.txt").write_text(EXAMPLE_TEXT)
    (tmp_path / "nodes").write_text("n0\nn1\nn2\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("QSTAT_JSON", str(tmp_path / "job.json"))
    monkeypatch.setenv("QSTAT_TEXT", str(tmp_path / "job.txt"))
    monkeypatch.setenv("PBS_JOBID", "42.pbs01")
    monkeypatch.setenv("PBS_NODEFILE", str(tmp_path / "nodes"))
    monkeypatch.delenv("NCPUS", raising=False)
    return tmp_path


def test_the_briefs_example_through_main(fake_qstat, capsys):
    # A start a minute ahead: no second has gone by yet (elapsed counts as 0, never less).
    assert kit_cli.main(["plan", "--started", str(time.time() + 60)]) == 0
    out = capsys.readouterr()
    assert out.out == EXAMPLE_PLAN
    assert out.err == ""


def test_pbs_pro_before_18_gives_the_same_chunks_from_the_text(fake_qstat, monkeypatch, capsys):
    monkeypatch.delenv("QSTAT_JSON")
    assert kit_cli.main(["plan", "--walltime", "2:00:00", "--started", "0"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0] == ("job\tqstat -f: chunks from Resource_List.select, what each got from exec_vnode, "
                        "node-file lines by mpiprocs")
    assert lines[1] == "walltime\t7200\t0\tWALLTIME"
    assert lines[3:] == EXAMPLE_PLAN.splitlines()[3:]


def test_no_walltime_anywhere_warns_on_stderr(fake_qstat, monkeypatch, capsys):
    monkeypatch.delenv("QSTAT_JSON")
    assert kit_cli.main(["plan"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[1] == "walltime\t-1\t-1\tnone"
    assert out.err.startswith("dask-pbs: warning: PBS does not tell this job's walltime")


def test_no_qstat_at_all_falls_back_to_the_node_file(fake_qstat, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("NCPUS", "4")
    assert kit_cli.main(["plan", "--walltime", "10", "--started", "0", "--worker-on-scheduler-chunk", "auto"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "job\t$PBS_NODEFILE and $NCPUS", "walltime\t10\t0\tWALLTIME", "scheduler\t0\t0\tn0\t2",
        "worker\t0\t0\tn0\t1\t3\tauto\t2\t100000\t0", "worker\t1\t1\tn1\t1\t4\tauto\t1\t100000\t0",
        "worker\t2\t2\tn2\t1\t4\tauto\t1\t100000\t0"]
    assert "dask-pbs: warning: qstat cannot tell (no qstat on PATH): one chunk per run" in out.err


@pytest.mark.parametrize("argv, code, message", [
    (["--nworkers", "two"], BAD_VALUE, "NWORKERS must be an integer >= 1, not 'two'"),
    (["--nthreads", "-1"], BAD_VALUE, "NTHREADS must be an integer >= 0"),
    (["--reserve", "1.5gb"], BAD_VALUE, "MEMORY_RESERVE='1.5gb'"),
    (["--walltime", "1h"], BAD_VALUE, "walltime '1h' is not [[HH:]MM:]SS"),
    (["--worker-on-scheduler-chunk", "maybe"], BAD_VALUE, "WORKER_ON_SCHEDULER_CHUNK must be yes, no or auto"),
    (["--started", "soon"], BAD_VALUE, "--started must be a number of seconds"),
    (["--started", "nan"], BAD_VALUE, "--started must be a number of seconds"),
    (["--bogus", "1"], USAGE, "unknown option --bogus"),
    (["--nworkers"], USAGE, "option --nworkers needs a value"),
    (["extra"], USAGE, "unexpected 'extra'"),
])
def test_exit_codes(fake_qstat, capsys, argv, code, message):
    assert kit_cli.main(["plan", *argv]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"dask-pbs: {message}")
    assert "Traceback" not in err


def test_outside_a_job_says_to_use_qsub(capsys, monkeypatch):
    monkeypatch.delenv("PBS_JOBID", raising=False)
    assert kit_cli.main(["plan"]) == 1
    assert "submit with qsub" in capsys.readouterr().err


def test_a_real_kit_py_plan_with_a_fake_qstat_first_on_path(fake_qstat):
    done = subprocess.run([sys.executable, str(KIT / "helpers" / "kit.py"), "plan", "--nworkers", "2",
                           "--worker-on-scheduler-chunk", "auto", "--started", "0"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[2:] == [
        "scheduler\t0\t0\tn0\t3",
        f"worker\t0\t0\tn0\t2\t1\t{per(4, 3)}\t3\t100000\t0",
        f"worker\t1\t1\tn1\t2\t2\t{per(8, 2)}\t2\t100000\t0",
        f"worker\t2\t2\tn2\t2\t2\t{per(8, 2)}\t2\t100000\t0",
    ]


def run_job(tmp_path, script: str) -> None:
    """Run script as a job on the fake PBS (tmp_path/job.pbs) and wait until it has ended well."""
    (tmp_path / "job.pbs").write_text(script)
    done = subprocess.run(["qsub", "-W", "block=true", "job.pbs"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_plan_inside_a_fake_pbs_job_reads_qstat(fakepbs, tmp_path):
    run_job(tmp_path, (
        f"#PBS -l select=3:ncpus=2:mem=4gb\n#PBS -l walltime=00:05:00\n"
        f"{sys.executable} {KIT}/helpers/kit.py plan --nworkers 2 > {tmp_path}/plan.out\n"))
    rows = {}
    for line in (tmp_path / "plan.out").read_text().splitlines():
        kind, *rest = line.split("\t")
        rows.setdefault(kind, []).append(rest)
    assert rows["walltime"][0][0] == "300" and 290 <= int(rows["walltime"][0][1]) <= 300
    assert rows["walltime"][0][2] == "pbs"
    assert rows["scheduler"] == [["0", "0", "node00", "1"]]
    assert [r[:7] for r in rows["worker"]] == [["1", "1", "node01", "2", "1", "1932735283", "2"],
                                               ["2", "2", "node02", "2", "1", "1932735283", "2"]]



# ------------------------------------------------------------------ kit.py job-setup

def test_job_setup_does_plan_env_file_and_tls_in_one_call_inside_a_fake_pbs_job(fakepbs, tmp_path):
    """What the job script runs: the same plan as `kit.py plan`, the task environment with
    the script's own variable, and the job's certificates."""
    run_job(tmp_path, (
        "#PBS -l select=3:ncpus=2:mem=4gb\n#PBS -l walltime=00:05:00\n"
        "export FROM_THE_SCRIPT=kept\n"
        f"{sys.executable} {KIT}/helpers/kit.py job-setup --env-file {tmp_path}/env.sh "
        f"--plan-file {tmp_path}/plan.tsv --tls {tmp_path}/tls --name $PBS_JOBID -- --nworkers 2 "
        f"2> {tmp_path}/setup.err; echo $? > {tmp_path}/status\n"
        f"{sys.executable} {KIT}/helpers/kit.py plan --nworkers 2 > {tmp_path}/plan.out\n"))
    assert (tmp_path / "status").read_text() == "0\n"
    assert (tmp_path / "setup.err").read_text() == ""
    walltime_free = lambda text: [l for l in text.splitlines() if not l.startswith("walltime")]  # noqa: E731
    assert walltime_free((tmp_path / "plan.tsv").read_text()) == walltime_free((tmp_path / "plan.out").read_text())
    assert "FROM_THE_SCRIPT=kept" in (tmp_path / "env.sh").read_text()
    made = {p.name for p in (tmp_path / "tls").iterdir()}
    assert {"ca.pem", "cluster.pem", "cluster.key", "client.pem", "client.key", "client-config.json"} <= made
    assert "ca.key" not in made


def test_job_setup_tells_every_failure_and_returns_the_first(fake_qstat, capsys):
    """A bad NWORKERS and a TLS folder that cannot be made: both said, the plan's status."""
    blocker = fake_qstat / "file"
    blocker.write_text("")
    code = kit_cli.main(["job-setup", "--env-file", str(fake_qstat / "env.sh"), "--plan-file",
                         str(fake_qstat / "plan.tsv"), "--tls", str(blocker / "tls"), "--", "--nworkers", "0"])
    err = capsys.readouterr().err
    assert code == BAD_VALUE
    assert "NWORKERS must be an integer >= 1" in err and "cannot create the TLS folder" in err
    assert not (fake_qstat / "plan.tsv").exists()
    assert (fake_qstat / "env.sh").exists()  # what could be done was done


def test_job_setup_never_loses_an_unexpected_error_in_its_tls_thread(fake_qstat, capsys, monkeypatch):
    from dask_pbs_kit import tls_files

    def broken(*_args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tls_files, "create", broken)
    code = kit_cli.main(["job-setup", "--env-file", str(fake_qstat / "env.sh"), "--plan-file",
                         str(fake_qstat / "plan.tsv"), "--tls", str(fake_qstat / "tls")])
    assert code == 1
    assert "dask-pbs: tls failed: RuntimeError('disk on fire')" in capsys.readouterr().err
    assert (fake_qstat / "plan.tsv").read_text().startswith("job\t")


def test_job_setup_says_the_scheduler_may_start_before_qstat_has_answered(fake_qstat):
    """The early line comes once env.sh exists, while qstat still runs (here: until the
    test lets it answer); then the plan, and status 0."""
    go = fake_qstat / "go"
    (fake_qstat / "bin" / "qstat").write_text(
        f'#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.02; done\nexec cat "$QSTAT_JSON"\n')
    setup = subprocess.Popen(
        [sys.executable, str(KIT / "helpers" / "kit.py"), "job-setup", "--env-file", str(fake_qstat / "env.sh"),
         "--plan-file", str(fake_qstat / "plan.tsv"), "--initial-from", str(os.getpid()),
         "--say-scheduler-may-start", "--say-workers-may-start", "--", "--nworkers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert [setup.stdout.readline() for _ in range(3)] == [
            "scheduler-may-start\t0\tn0\n", "worker-may-start\t1\tn1\n", "worker-may-start\t2\tn2\n"]
        assert (fake_qstat / "env.sh").exists() and not (fake_qstat / "plan.tsv").exists()
    finally:
        go.write_text("")
        out, err = setup.communicate(timeout=60)
    assert (setup.returncode, out, err) == (0, "", "")
    assert "scheduler\t0\t0\tn0\t" in (fake_qstat / "plan.tsv").read_text()
    assert not (fake_qstat / "plan.tsv.tmp").exists()


def test_job_setup_says_nothing_early_when_env_sh_cannot_be_written_or_the_node_file_read(fake_qstat, capsys,
                                                                                         monkeypatch):
    argv = ["job-setup", "--plan-file", str(fake_qstat / "plan.tsv"), "--say-scheduler-may-start"]
    assert kit_cli.main(argv + ["--env-file", str(fake_qstat / "no" / "env.sh")]) != 0
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"dask-pbs: cannot write the task environment {fake_qstat}/no/env.sh (No such file")
    monkeypatch.setenv("PBS_NODEFILE", str(fake_qstat / "no-nodes"))
    assert kit_cli.main(argv + ["--env-file", str(fake_qstat / "env.sh")]) != 0
    out = capsys.readouterr()
    assert out.out == "" and "cannot read $PBS_NODEFILE" in out.err


def test_workers_start_early_only_where_each_node_file_line_is_a_chunk():
    assert kit_cli.early_worker_lines(["n0", "n1", "n2", "n1"]) == [1, 2, 3]
    assert kit_cli.early_worker_lines(["n0"]) == []
    # A chunk of several lines (mpiprocs, NASA NAS builds), or two chunks on one host
    # (place=pack): only the plan tells which line starts which chunk.
    assert kit_cli.early_worker_lines(["n0", "n1", "n1", "n2"]) == []
    assert kit_cli.early_worker_lines(["n0", "n0", "n1"]) == []


def test_job_setup_says_no_worker_may_start_unless_asked_or_where_lines_repeat(fake_qstat, capsys):
    argv = ["job-setup", "--env-file", str(fake_qstat / "env.sh"), "--plan-file", str(fake_qstat / "plan.tsv"),
            "--say-scheduler-may-start"]
    assert kit_cli.main(argv) == 0
    assert capsys.readouterr().out == "scheduler-may-start\t0\tn0\n"
    (fake_qstat / "nodes").write_text("n0\nn1\nn1\n")
    assert kit_cli.main(argv + ["--say-workers-may-start"]) == 0
    assert capsys.readouterr().out == "scheduler-may-start\t0\tn0\n"


def test_job_setup_needs_both_files(capsys):
    assert kit_cli.main(["job-setup", "--plan-file", "p"]) == USAGE
    assert "missing --env-file" in capsys.readouterr().err

GPU_JSON = r'''{"Jobs":{"43.pbs01":{
    "exec_host":"n0/0*2+g1/0*8+g2/0*8",
    "exec_vnode":"(n0:ncpus=2:mem=4194304kb)+(g1[0]:ncpus=4:ngpus=2:mem=16777216kb+g1[1]:ncpus=4:ngpus=2:mem=16777216kb)+(g2:ncpus=8:ngpus=4:mem=33554432kb)",
    "Resource_List":{"select":"1:ncpus=2:mem=4gb+2:ncpus=8:ngpus=4:mem=32gb","ngpus":8,"walltime":"01:00:00"}}}}
'''


def test_a_mixed_gpu_job_through_main(fake_qstat, monkeypatch, capsys):
    (fake_qstat / "job.json").write_text(GPU_JSON)
    (fake_qstat / "nodes").write_text("n0\ng1\ng2\n")
    monkeypatch.setenv("PBS_JOBID", "43.pbs01")
    assert kit_cli.main(["plan", "--nworkers", "2", "--worker-on-scheduler-chunk", "auto",
                         "--started", str(time.time() + 60)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert [line.split("\t") for line in out.out.splitlines()[2:]] == [
        ["scheduler", "0", "0", "n0", "3"],
        ["worker", "0", "0", "n0", "2", "1", str(per(4, 3)), "3", "100000", "0"],
        *gpu_rows(1, 1, "g1", 2, per(32, 4), 4, 4),
        *gpu_rows(2, 2, "g2", 2, per(32, 4), 4, 4)]


def test_the_usage_names_the_gpu_worker_line(capsys):
    assert kit_cli.main(["plan", "--help"]) == 0
    assert ("gpu-worker CHUNK  LINE  NODE  1  NTHREADS  MEMORY  HOST_PROCS  HOST_RESERVE_PPM  "
            "HOST_RESERVE_BYTES  GPU  CHUNK_GPUS  HOST_GPU  HOST_GPUS") in capsys.readouterr().out


def test_plan_of_a_gpu_job_inside_the_fake_pbs(fakepbs, tmp_path):
    run_job(tmp_path, (
        f"#PBS -l select=2:ncpus=8:ngpus=4:mem=8gb\n#PBS -l walltime=00:05:00\n"
        f"{sys.executable} {KIT}/helpers/kit.py plan --worker-on-scheduler-chunk auto "
        f"> {tmp_path}/plan.out 2> {tmp_path}/plan.err\n"))
    assert (tmp_path / "plan.err").read_text() == ""
    lines = [line.split("\t") for line in (tmp_path / "plan.out").read_text().splitlines()]
    assert lines[2] == ["scheduler", "0", "0", "node00", "5"]
    assert lines[3:] == (gpu_rows(0, 0, "node00", 1, per(8, 5), 5, 4)
                         + gpu_rows(1, 1, "node01", 2, per(8, 4), 4, 4))


def test_when_no_chunk_can_run_workers_the_error_says_why():
    with pytest.raises(KitError, match="no chunk can run workers: chunk 1 has no line"):
        make_plan(job(chunk(0, 1, 1, 0, "a"), chunk(1, 4, 4, -1, "")), Settings())


@pytest.mark.parametrize("doc", [
    '{"Jobs":{"42.pbs01":{"Resource_List":[1,2],"exec_vnode":5,"schedselect":{"a":1}}}}',
    '{"Jobs":{"42.pbs01":{"Resource_List":{"select":"3:ncpus=2","walltime":[1]},"exec_vnode":"(n0:ncpus=x"}}}',
    '{"Jobs":{"42.pbs01":"not a job"}}',
    '{"Jobs":[]}',
    '[1, 2, 3]',
    '{"Jobs":{"42.pbs01":{"Resource_List":{"select":"2:ncpus=0"},"exec_host":"n9/0"}}}',
])
def test_garbage_from_qstat_is_warned_about_never_a_traceback(fake_qstat, capsys, doc):
    (fake_qstat / "job.json").write_text(doc)
    (fake_qstat / "job.txt").write_text("garbage\n")
    code = kit_cli.main(["plan", "--walltime", "1:00", "--started", "0"])
    out = capsys.readouterr()
    assert code in (0, BAD_VALUE), out.err
    assert "Traceback" not in out.err
    if code == 0:
        assert out.out.splitlines()[2].startswith("scheduler\t0\t0\tn0\t")


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(attr_names, garbage, max_size=6),
       st.sampled_from(["yes", "no", "auto"]), st.sampled_from(["10%", "1gb"]))
def test_any_job_from_garbage_gives_a_plan_or_a_kit_error(tmp_path_factory, attrs, mode, reserve):
    job = job_of(tmp_path_factory.mktemp("p"), ["n0", "n0", "n1"], attrs, ncpus="2")
    try:
        plan = make_plan(job, Settings(nworkers=2, worker_on_scheduler_chunk=mode, reserve=reserve))
    except KitError:
        return
    for line in plan.lines():
        fields = line.split("\t")
        assert "\n" not in line and fields[0] in ("job", "walltime", "scheduler", "worker", "gpu-worker")
        if fields[0] == "gpu-worker":
            assert len(fields) == 14 and fields[4] == "1"
            assert int(fields[10]) < int(fields[11]) and int(fields[12]) < int(fields[13])


def test_a_worker_only_job_runs_workers_on_every_chunk_and_no_scheduler_shares_chunk_0():
    from dask_pbs_kit.job_resources import Chunk, Job, Walltime

    chunks = [Chunk(i, 2, 2 * 1024**3) for i in range(2)]
    for i, chunk in enumerate(chunks):
        chunk.first_line, chunk.node, chunk.host = i, f"n{i}", f"n{i}"
    job = Job(chunks, Walltime(3600, 3600, "pbs"), "test")
    plan = make_plan(job, Settings(nworkers=2, scheduler=False))
    assert [(w.chunk, w.nworkers, w.nthreads, w.memory, w.host_procs) for w in plan.workers] == [
        (0, 2, 1, 966367642, 2), (1, 2, 1, 966367642, 2)]
