"""kit.py wait-ready: the roll count, the watched tasks, a real scheduler and its workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import DASK, KIT
from dask_pbs_kit import kit_cli, ready
from dask_pbs_kit.errors import NOT_READY, PROCESS_EXITED, USAGE, KitError

KIT_PY = str(KIT / "helpers" / "kit.py")
PRELOAD = str(KIT / "scripts" / "lib" / "scheduler_preload.py")


def watch(role="worker", chunk=1, nprocs=1, pid=1, log="/logs/worker-1.log", node=None):
    return ready.Watch(role, chunk, node or f"node{chunk:02d}", pid, log, nprocs)


def wait_ready_run(*argv, timeout=60):
    return subprocess.run([sys.executable, KIT_PY, "wait-ready", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ pure functions

def test_a_watch_spec_keeps_colons_in_its_log_path():
    assert ready.parse_watch("worker:3:node03:4242:/a:b/worker-3.log:4") == ready.Watch(
        "worker", 3, "node03", 4242, "/a:b/worker-3.log", 4)


@pytest.mark.parametrize("spec", ["worker:3:node03:4242:/w.log", "worker:x:n:1:/w.log:1",
                                  "worker:3:n:pid:/w.log:1", "worker:3:n:1::1", "worker:3:n:1:/w.log:0"])
def test_a_bad_watch_spec_is_a_usage_error(spec):
    with pytest.raises(KitError) as err:
        ready.parse_watch(spec)
    assert err.value.code == USAGE
    assert str(err.value).startswith(f"--watch {spec!r} is not ROLE:CHUNK:NODE:PID:LOG:NPROCS")


def test_worker_names_follow_dask_worker_nworkers():
    assert ready.expected_names(watch(chunk=2, nprocs=1)) == ["chunk-2"]
    assert ready.expected_names(watch(chunk=2, nprocs=3)) == ["chunk-2-0", "chunk-2-1", "chunk-2-2"]


def test_the_roll_counts_each_chunks_processes_by_name():
    watches = [watch("scheduler", 0), watch(chunk=1, nprocs=2), watch(chunk=2), watch(chunk=3, nprocs=4),
               watch(chunk=10)]
    roll = ["chunk-1-0", "chunk-1-1", "chunk-2", "chunk-3-2", "someone-elses", "chunk-3", "chunk-10-0"]
    assert ready.connected(watches, roll) == {1: 2, 2: 1, 3: 1, 10: 0}
    assert ready.missing(watches, roll) == [(watches[3], 1), (watches[4], 0)]
    roll += ["chunk-3-0", "chunk-3-1", "chunk-3-3", "chunk-10"]
    assert ready.missing(watches, roll) == []


def test_the_timeout_message_names_each_chunk_short_of_processes():
    watches = [watch("scheduler", 0, log="/l/scheduler-0.log"), watch(chunk=1, nprocs=2, log="/l/worker-1.log"),
               watch(chunk=2, log="/l/worker-2.log"), watch(chunk=3, nprocs=4, log="/l/worker-3.log")]
    assert ready.timeout_message(watches, ["chunk-1-0", "chunk-1-1", "chunk-3-0", "chunk-3-2", "chunk-3-3"],
                                 120, True) == (
        "only 5 of 7 workers connected after 120 s\n"
        "dask-pbs:   missing: 1 of 1 worker process of chunk 2 (node node02), log /l/worker-2.log\n"
        "dask-pbs:   missing: 1 of 4 worker processes of chunk 3 (node node03), log /l/worker-3.log")
    assert ready.timeout_message(watches, [], 2.5, False) == (
        "no scheduler file after 2.5 s (see /l/scheduler-0.log); raise READY_TIMEOUT if the "
        "nodes are slow to start Python")
    assert ready.timeout_message(watches[2:3], [], 1, True) == (
        "only 0 of 1 worker connected after 1 s\n"
        "dask-pbs:   missing: 1 of 1 worker process of chunk 2 (node node02), log /l/worker-2.log")


def test_an_exited_task_quotes_pbsdsh_and_its_log(tmp_path):
    log = tmp_path / "worker-2.log"
    (tmp_path / "worker-2.log.pbsdsh").write_text("pbsdsh: spawn failed on node 2 err 15010\n")
    log.write_text("")
    w = watch(chunk=2, log=str(log))
    assert ready.exited_message(w) == (
        "the worker of chunk 2 (node node02) exited before the cluster was ready; pbsdsh said: "
        f"pbsdsh: spawn failed on node 2 err 15010; its log {log} is empty")
    log.write_text("".join(f"line {i}\n" for i in range(20)))
    (tmp_path / "worker-2.log.pbsdsh").write_text("")
    assert ready.exited_message(w) == (
        "the worker of chunk 2 (node node02) exited before the cluster was ready; pbsdsh said "
        f"nothing; its log {log} ends with:\n" + "\n".join(f"line {i}" for i in range(12, 20)))
    log.unlink()
    assert ready.exited_message(w).endswith(f"pbsdsh said nothing; it wrote no log ({log} is missing)")


def test_the_wait_ends_when_the_file_and_every_process_are_there(tmp_path):
    roll, sched = tmp_path / "workers.txt", tmp_path / "scheduler.json"
    watches = [watch(chunk=1, nprocs=2)]
    steps = iter([lambda: None, lambda: sched.write_text("{}"), lambda: roll.write_text("chunk-1-0\n"),
                  lambda: roll.write_text("chunk-1-0\nchunk-1-1\n")])
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        next(steps)()

    ready.wait_ready(str(sched), str(roll), 10, watches, clock=lambda: 0.0, sleep=sleep,
                     is_gone=lambda pid: False)
    assert naps == [ready.POLL] * 4


def test_the_roll_is_read_each_look_the_processes_every_few(tmp_path):
    # The roll is a small file: read it often, so the last worker is seen at once; the
    # watched processes cost a /proc read each, so they are looked at less often.
    roll, sched = tmp_path / "workers.txt", tmp_path / "scheduler.json"
    sched.write_text("{}")
    watches = [watch(chunk=1, nprocs=1), watch(chunk=2, nprocs=1)]
    looked, naps = [], []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 2 * ready.ALIVE_EVERY + 1:
            roll.write_text("chunk-1\nchunk-2\n")

    ready.wait_ready(str(sched), str(roll), 10, watches, clock=lambda: 0.0, sleep=sleep,
                     is_gone=lambda pid: looked.append(pid) or False)
    assert len(naps) == 2 * ready.ALIVE_EVERY + 1
    assert len(looked) == 3 * len(watches)  # at looks 0, ALIVE_EVERY and 2 * ALIVE_EVERY


def test_a_large_job_looks_less_often(tmp_path):
    roll, sched = tmp_path / "workers.txt", tmp_path / "scheduler.json"
    sched.write_text("{}")
    watches = [watch(chunk=c) for c in range(1, ready.LARGE_JOB + 2)]
    naps, looked = [], []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 2:
            roll.write_text("".join(f"chunk-{w.chunk}\n" for w in watches))

    ready.wait_ready(str(sched), str(roll), 10, watches, clock=lambda: 0.0, sleep=sleep,
                     is_gone=lambda pid: looked.append(pid) or False)
    assert naps == [ready.LARGE_POLL] * 2
    assert len(looked) == 3 * len(watches)  # every look, as it is a slower one


# ------------------------------------------------------------------ the command, with real processes

def test_a_watched_pbsdsh_that_ends_fails_the_wait_at_once(tmp_path):
    log = tmp_path / "worker-2.log"
    log.write_text("Traceback (most recent call last):\nMemoryError\n")
    (tmp_path / "worker-2.log.pbsdsh").write_text("pbsdsh: task 0x00000000 exit status 1\n")
    alive = subprocess.Popen(["sleep", "60"])
    short = subprocess.Popen(["sleep", "0.3"])
    reaper = threading.Thread(target=short.wait)  # as bash reaps its background pbsdsh
    reaper.start()
    try:
        started = time.monotonic()
        done = wait_ready_run("--scheduler-file", tmp_path / "scheduler.json", "--roll", tmp_path / "roll",
                              "--timeout", 30, "--watch", f"scheduler:0:node00:{alive.pid}:{tmp_path}/s.log:1",
                              "--watch", f"worker:2:node02:{short.pid}:{log}:4")
        assert time.monotonic() - started < 10
        assert done.returncode == PROCESS_EXITED
        assert done.stdout == ""
        assert done.stderr == (
            "dask-pbs: the worker of chunk 2 (node node02) exited before the cluster was ready; "
            f"pbsdsh said: pbsdsh: task 0x00000000 exit status 1; its log {log} ends with:\n"
            "Traceback (most recent call last):\nMemoryError\n")
    finally:
        alive.kill()
        alive.wait()
        reaper.join()


def test_a_zombie_counts_as_gone(tmp_path, capsys):
    zombie = subprocess.Popen(["true"])  # never waited for until the end: a zombie
    try:
        deadline = time.monotonic() + 10
        while ready.gone(zombie.pid) is False:
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        with open(f"/proc/{zombie.pid}/stat") as fh:
            assert fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # still there, as a zombie
        code = kit_cli.main(["wait-ready", "--scheduler-file", str(tmp_path / "s.json"), "--roll",
                             str(tmp_path / "roll"), "--timeout", "30",
                             "--watch", f"worker:1:node01:{zombie.pid}:{tmp_path}/w.log:1"])
        assert code == PROCESS_EXITED
        assert capsys.readouterr().err.startswith(
            "dask-pbs: the worker of chunk 1 (node node01) exited before the cluster was ready; pbsdsh said nothing;")
    finally:
        zombie.wait()
    assert ready.gone(zombie.pid)
    assert not ready.gone(os.getpid())


def test_live_tasks_and_no_scheduler_file_time_out(tmp_path):
    alive = subprocess.Popen(["sleep", "60"])
    try:
        common = ["--roll", tmp_path / "roll", "--timeout", "0.3",
                  "--watch", f"scheduler:0:node00:{alive.pid}:{tmp_path}/scheduler-0.log:1",
                  "--watch", f"worker:1:node01:{alive.pid}:{tmp_path}/worker-1.log:2"]
        done = wait_ready_run("--scheduler-file", tmp_path / "scheduler.json", *common)
        assert done.returncode == NOT_READY
        assert done.stderr == (
            f"dask-pbs: no scheduler file after 0.3 s (see {tmp_path}/scheduler-0.log); raise "
            "READY_TIMEOUT if the nodes are slow to start Python\n")
        (tmp_path / "scheduler.json").write_text("{}")
        (tmp_path / "roll").write_text("chunk-1-1\n")
        done = wait_ready_run("--scheduler-file", tmp_path / "scheduler.json", *common)
        assert done.returncode == NOT_READY
        assert done.stderr == (
            "dask-pbs: only 1 of 2 workers connected after 0.3 s\n"
            f"dask-pbs:   missing: 1 of 2 worker processes of chunk 1 (node node01), log {tmp_path}/worker-1.log\n")
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("argv, message", [
    ([], "missing --scheduler-file, --roll, --timeout"),
    (["--scheduler-file", "s", "--roll", "r", "--timeout", "1"], "no worker --watch: nothing to wait for"),
    (["--scheduler-file", "s", "--roll", "r", "--timeout", "soon", "--watch", "worker:1:n:1:/l:1"],
     "--timeout must be a number of seconds, not 'soon'"),
    (["--scheduler-file", "s", "--roll", "r", "--timeout", "1", "--watch"], "option --watch needs a value"),
    (["--scheduler-file", "s", "--roll", "r", "--timeout", "1", "--watch=worker:1:n:1:/l:1", "extra"],
     "unexpected 'extra'"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert kit_cli.main(["wait-ready", *argv]) == USAGE
    assert capsys.readouterr().err.startswith(f"dask-pbs: {message}")


# ------------------------------------------------------------------ a real scheduler and real workers

def start(argv, log, env=None):
    """A Dask process in a session of its own (so that its nanny's children go with it)."""
    with open(log, "w") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=os.path.dirname(log))


def stop(procs):
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the session still holds
        except ProcessLookupError:
            pass
        proc.wait()


def test_a_real_cluster_is_ready_when_the_roll_lists_every_process(tmp_path):
    sched_file, roll = tmp_path / "scheduler.json", tmp_path / "workers.txt"
    env = {**os.environ, "DASK_PBS_KIT_ROLL": str(roll), "DASK_PBS_KIT_CLOSED": ""}
    procs = []
    try:
        procs.append(start([DASK, "scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                            "--port", "0", "--no-dashboard", "--preload", PRELOAD],
                           str(tmp_path / "scheduler-0.log"), env))
        for chunk, nprocs in ((1, 2), (2, 1)):
            procs.append(start([DASK, "worker", "--scheduler-file", str(sched_file), "--name", f"chunk-{chunk}",
                                "--nworkers", str(nprocs), "--nthreads", "1", "--no-dashboard"],
                               str(tmp_path / f"worker-{chunk}.log")))
        watches = [f"scheduler:0:node00:{procs[0].pid}:{tmp_path}/scheduler-0.log:1",
                   f"worker:1:node01:{procs[1].pid}:{tmp_path}/worker-1.log:2",
                   f"worker:2:node02:{procs[2].pid}:{tmp_path}/worker-2.log:1"]
        args = ["--scheduler-file", sched_file, "--roll", roll]
        done = wait_ready_run(*args, "--timeout", 120, *[w for spec in watches for w in ("--watch", spec)],
                              timeout=150)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        assert roll.read_text() == "chunk-1-0\nchunk-1-1\nchunk-2\n"  # dask worker's own names

        # A chunk whose processes never came (its "pbsdsh" is alive: the scheduler).
        more = watches + [f"worker:3:node03:{procs[0].pid}:{tmp_path}/worker-3.log:2"]
        done = wait_ready_run(*args, "--timeout", 0.5, *[w for spec in more for w in ("--watch", spec)])
        assert done.returncode == NOT_READY
        assert done.stderr == (
            "dask-pbs: only 3 of 5 workers connected after 0.5 s\n"
            f"dask-pbs:   missing: 2 of 2 worker processes of chunk 3 (node node03), log {tmp_path}/worker-3.log\n")

        # A worker chunk that dies is named.
        stop([procs[2]])
        done = wait_ready_run(*args, "--timeout", 60, *[w for spec in watches for w in ("--watch", spec)])
        assert done.returncode == PROCESS_EXITED
        assert done.stderr.startswith(
            "dask-pbs: the worker of chunk 2 (node node02) exited before the cluster was ready; pbsdsh said "
            f"nothing; its log {tmp_path}/worker-2.log ends with:\n")
    finally:
        stop(procs)


def test_a_gpu_workers_watch_and_a_worker_jobs_prefix_name_exactly_their_processes():
    gpu = ready.parse_watch("worker:2-gpu1:node02:77:/l/worker-2-gpu1.log:1")
    assert gpu.chunk == "2-gpu1" and ready.expected_names(gpu) == ["chunk-2-gpu1"]
    assert ready.expected_names(ready.parse_watch("worker:3:n3:1:/l/w.log:2"), "job-12-") == [
        "job-12-chunk-3-0", "job-12-chunk-3-1"]
    watches = [gpu, watch(chunk=3, nprocs=2)]
    roll = ["job-12-chunk-2-gpu1", "chunk-3-0", "job-12-chunk-3-0", "job-12-chunk-3-1"]
    assert ready.missing(watches, roll, "job-12-") == []
    assert [(w.chunk, n) for w, n in ready.missing(watches, roll)] == [("2-gpu1", 0), (3, 1)]
    with pytest.raises(KitError):
        ready.parse_watch("worker:2-gpux:node02:77:/l/w.log:1")
