#!/usr/bin/env python3
"""Benchmarks: helper start-up, time to a ready cluster and teardown (kit vs floor vs
dask-jobqueue), the start's phases, its CPU by kind of process, teardown after qdel, the cost per worker (bench/scale.py),
and the wordcount's scale-out against one process.

    .venv/bin/python bench/run.py [--sizes 2 4 8 16 32] [--nworkers 1 4] [--runs 3]
                                  [--skip helpers ready peer cpu qdel scale wordcount] [--corpus-mb 512]
                                  [--cpu-sizes 2 32] [--scale-procs 8 16 32 64 128]

Prints tables: medians and spread (min-max) of several runs, with the machine and
versions. Not a test: figures only. The kit's figures come from its own job output
("cluster ready in X s", "cluster stopped X s after the program ended", "cluster stopped
in X s"), measured from the job script's first line. `make bench` runs it with the defaults.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PY = sys.executable
DASK = str(Path(PY).with_name("dask"))
FAKE_PATH = f"{KIT}/tests/fakepbs/bin:/usr/bin:/bin"
sys.path.insert(0, str(KIT / "tests" / "fakepbs"))
sys.path.insert(0, str(KIT / "bench"))
from fakepbs import job_processes  # noqa: E402


def timed(cmd: list, runs: int) -> list:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - start)
    return out


def summary(values: list, digits: int = 2) -> str:
    return f"{statistics.median(values):6.{digits}f} s ({min(values):.{digits}f}-{max(values):.{digits}f})"


def helper_start(runs: int) -> None:
    """Each helper command against the floor, interleaved run by run (drift hits all alike)."""
    tmp = Path(tempfile.mkdtemp())
    sched = tmp / "scheduler.json"
    sched.write_text('{"type": "Scheduler", "address": "tcp://10.0.0.1:8786", "services": {"dashboard": 8787}}')
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PY
    commands = {
        "floor: python3 -c 'import json'": [python, "-c", "import json"],
        "dashboard_url.py scheduler.json": [python, str(KIT / "helpers/dashboard_url.py"), str(sched)],
        "dashboard_url.py --tunnel login": [python, str(KIT / "helpers/dashboard_url.py"), str(sched), "--tunnel", "login"],
        "kit.py memory 20gb 4": [python, str(KIT / "helpers/kit.py"), "memory", "20gb", "4"],
        "kit.py interface (auto)": [python, str(KIT / "helpers/kit.py"), "interface", "--first-node", "localhost"],
        "kit.py host-memory": [python, str(KIT / "helpers/kit.py"), "host-memory", "--memory", "1073741824",
                               "--host-procs", "4"],
        "kit.py task-setup (both, one call)": [python, str(KIT / "helpers/kit.py"), "task-setup", "role=worker",
                                             "interface=auto", "first=localhost", "memory=1073741824",
                                             "host_procs=4"],
    }
    times: dict = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            times[name] += timed(cmd, 1)
    floor = statistics.median(times["floor: python3 -c 'import json'"])
    print(f"\nhelper start ({python}, median of {runs}, interleaved)")
    for name, values in times.items():
        ratio = "" if name.startswith("floor") else f"  ratio {statistics.median(values) / floor:.2f}"
        print(f"  {name:<38} {summary(values, 3)}{ratio}")
    print("  (a task runs interface and host-memory's work in the Python of its Dask process, with no helper start;"
          " task-setup is its one call where that Python is unknown)")
    shutil.rmtree(tmp)


def tls_env(tls: Path) -> dict:
    """What task.sh gives the kit's Dask processes: the same for the floor's."""
    return {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{tls}/ca.pem",
        "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": f"{tls}/cluster.pem",
        "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": f"{tls}/cluster.key",
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": f"{tls}/cluster.pem",
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": f"{tls}/cluster.key",
    }


def stop_all(procs: list) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


PRELOAD = KIT / "scripts" / "lib" / "scheduler_preload.py"
# What scripts/lib/task.sh execs on a node: the Dask process in the Python of `dask`.
LAUNCH = [PY, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from dask_pbs_kit.dask_start import main; main()",
          str(KIT / "helpers")]
WORKER_MEMORY = 966367642  # the kit's share for one process of a chunk with 1 GiB per process


def task_command(settings: dict, dask_args: list) -> list:
    return LAUNCH + [f"{k}={v}" for k, v in dict(settings, script=DASK).items()] + ["--"] + dask_args


def worker_env(omp: int = 1) -> dict:
    """What task.sh exports for a worker before it execs the Dask process."""
    return {"OMP_NUM_THREADS": str(omp), "MKL_NUM_THREADS": str(omp), "OPENBLAS_NUM_THREADS": str(omp),
            "MALLOC_TRIM_THRESHOLD_": "65536",
            "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": f"{{'MALLOC_TRIM_THRESHOLD_': 65536, 'OMP_NUM_THREADS': "
                                                          f"{omp}, 'MKL_NUM_THREADS': {omp}, 'OPENBLAS_NUM_THREADS': {omp}}}"}


def roll_count(path: Path) -> int:
    try:
        return len(path.read_text().split())
    except OSError:
        return 0


def floor_run(nodes: int, nworkers: int, sampler=None) -> tuple:
    """The same scheduler and workers, started directly as task.sh execs them on a node
    (helpers/dask_pbs_kit/dask_start.py: the same TLS, threads, memory limit, forkserver,
    dashboards, the kit's plugin), with no PBS, pbsdsh, job script or helper run; to every
    worker on the scheduler's roll (what the kit's job waits for); then stopped directly,
    workers first: (ready s, teardown s). sampler (cpu_split.Sampler): its processes
    sampled to ready, in a cgroup of their own (sampler.cgroup_cpu: its CPU s at ready)."""
    tmp = Path(tempfile.mkdtemp())
    cgroup = cpu_cgroup() if sampler is not None else None
    subprocess.run([PY, str(KIT / "helpers/kit.py"), "tls", str(tmp / "tls")], check=True)
    env = dict(os.environ, **tls_env(tmp / "tls"), DASK_PBS_KIT_ROLL=str(tmp / "workers.txt"),
               DASK_PBS_KIT_CLOSED=str(tmp / "scheduler.closed"), TMPDIR=str(tmp))
    sched = tmp / "scheduler.json"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp,
                 preexec_fn=enter_cgroup(cgroup))
    if sampler is not None:
        sampler.start(tmp)
    start = time.perf_counter()
    scheduler = subprocess.Popen(task_command(
        {"role": "scheduler", "node": "node00", "log": tmp / "scheduler-0.log"},
        ["--scheduler-file", str(sched), "--port", "0", "--interface", "lo", "--protocol", "tls",
         "--preload", str(PRELOAD), "--dashboard-address", ":0"]), env=env, **quiet)
    workers = [subprocess.Popen(task_command(
        {"role": "worker", "node": f"node{i:02d}", "log": tmp / f"worker-{i}.log", "memory": WORKER_MEMORY,
         "host_procs": nworkers},
        ["--scheduler-file", str(sched), "--name", f"chunk-{i}", "--nworkers", str(nworkers), "--nthreads", "1",
         "--interface", "lo", "--protocol", "tls", "--local-directory", str(tmp)]),
        env=dict(env, **worker_env()), **quiet) for i in range(1, nodes)]
    try:
        deadline = time.monotonic() + 600
        while roll_count(tmp / "workers.txt") < (nodes - 1) * nworkers:
            if time.monotonic() > deadline:
                sys.exit(f"bench: the floor's workers did not all register in 600 s (logs in {tmp})")
            time.sleep(0.005)
        ready = time.perf_counter() - start
        if sampler is not None:
            sampler.stop()
            sampler.cgroup_cpu = cgroup_cpu(cgroup)
        (tmp / "cluster-info.txt").write_text("ready\n")  # as the job's: the workers' dashboards follow
        start = time.perf_counter()
        stop_all(workers)
        stop_all([scheduler])
        teardown = time.perf_counter() - start
    finally:
        stop_all(workers + [scheduler])
        drop_cgroup(cgroup)
        shutil.rmtree(tmp, ignore_errors=True)
    return ready, teardown


def end_job(qsub: subprocess.Popen, home: Path) -> None:
    """Whatever happened: no blocking qsub waiting, no process of the fake PBS's jobs left."""
    if qsub.poll() is None:
        qsub.kill()
        qsub.wait()
    for pid in job_processes(home):
        os.kill(pid, signal.SIGKILL)


def floor_pbs_run(nodes: int, nworkers: int) -> float:
    """The floor's Dask processes started through the fake PBS as the least a pbsdsh
    launcher does: a job whose script asks qstat once, then runs one pbsdsh per chunk
    whose task is the floor's own command (its environment given on the command line by
    env: a task gets PBS's stripped one). No helper, no env file, no check, no task.sh.
    Ready: the job script's first line to every worker on the scheduler's roll (s)."""
    import shlex

    tmp = Path(tempfile.mkdtemp())
    home = tmp / "pbs"
    subprocess.run([PY, str(KIT / "helpers/kit.py"), "tls", str(tmp / "tls")], check=True)
    common = dict(tls_env(tmp / "tls"), DASK_PBS_KIT_ROLL=str(tmp / "workers.txt"),
                  DASK_PBS_KIT_CLOSED=str(tmp / "scheduler.closed"), TMPDIR=str(tmp), PATH=os.environ["PATH"])
    sched = tmp / "scheduler.json"

    def task(line: int, env: dict, command: list) -> str:
        words = ["/usr/bin/env", *[f"{k}={v}" for k, v in env.items()], *map(str, command)]
        return f"pbsdsh -n {line} -- {shlex.join(words)} >/dev/null 2>&1 &"

    lines = ["start=$EPOCHREALTIME", 'qstat -f -F json "$PBS_JOBID" >/dev/null', task(0, common, task_command(
        {"role": "scheduler", "node": "node00", "log": tmp / "scheduler-0.log"},
        ["--scheduler-file", sched, "--port", "0", "--interface", "lo", "--protocol", "tls",
         "--preload", PRELOAD, "--dashboard-address", ":0"]))]
    lines += [task(i, dict(common, **worker_env()), task_command(
        {"role": "worker", "node": f"node{i:02d}", "log": tmp / f"worker-{i}.log", "memory": WORKER_MEMORY,
         "host_procs": nworkers},
        ["--scheduler-file", sched, "--name", f"chunk-{i}", "--nworkers", nworkers, "--nthreads", "1",
         "--interface", "lo", "--protocol", "tls", "--local-directory", tmp])) for i in range(1, nodes)]
    lines += [f'echo "$start" > {shlex.quote(str(tmp / "start"))}', "wait"]
    (tmp / "floor.pbs").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PATH=FAKE_PATH, FAKEPBS_HOME=str(home), FAKEPBS_KILL_DELAY="5")
    qsub = subprocess.Popen(["qsub", "-W", "block=true", "-N", "floor", "-l",
                             f"select={nodes}:ncpus={nworkers}:mem={max(1, nworkers)}gb", "floor.pbs"],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        jobid = qsub.stdout.readline().strip()
        deadline = time.monotonic() + 600
        while roll_count(tmp / "workers.txt") < (nodes - 1) * nworkers:
            if time.monotonic() > deadline or qsub.poll() is not None:
                sys.exit(f"bench: the floor+PBS job's workers did not all register (logs in {tmp})")
            time.sleep(0.005)
        ready_at = time.time()
        while not (tmp / "start").exists():  # written once every pbsdsh has started
            time.sleep(0.005)
        ready = ready_at - float((tmp / "start").read_text().replace(",", "."))
        subprocess.run(["qdel", jobid], env=env, check=False)
        qsub.wait(timeout=60)
    finally:
        end_job(qsub, home)
        shutil.rmtree(tmp, ignore_errors=True)
    return ready


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def cpu_cgroup():
    """A fresh cpuacct cgroup (v1) for one job, or None where one cannot be made (no root,
    cgroup v2 only): the job's CPU seconds are then not measured."""
    folder = CPUACCT / f"dask-pbs-bench.{os.getpid()}.{time.monotonic_ns()}"
    try:
        folder.mkdir()
    except OSError:
        return None
    return folder


def enter_cgroup(folder):
    """A preexec_fn that puts the child (qsub, hence the whole fake job) in folder."""
    def enter():
        if folder is not None:
            with open(folder / "cgroup.procs", "w") as fh:
                fh.write("0")
    return enter


def cgroup_cpu(folder):
    """The CPU seconds a cgroup's processes have used, or None without one."""
    try:
        return int((folder / "cpuacct.usage").read_text()) / 1e9 if folder is not None else None
    except (OSError, ValueError):
        return None


def drop_cgroup(folder) -> None:
    """Remove the job's cgroup: a process still in it (left by the job) is killed first."""
    if folder is None:
        return
    for _ in range(50):
        try:
            folder.rmdir()
            return
        except OSError:
            for pid in (folder / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)


def kit_run(nodes: int, nworkers: int, extra_vars: str = "", sampler=None) -> tuple:
    """One production job on the fake PBS with the kit's defaults (TLS), whose PROGRAM only
    notes when it ends: (ready s, teardown s, program end to qsub -W block=true
    returning s, processes left after the job, its start's phases: phases.job_phases).
    sampler (cpu_split.Sampler): the job's processes sampled to ready (the PROGRAM's start)."""
    import phases

    tmp = Path(tempfile.mkdtemp())
    home = tmp / "pbs"
    env = dict(os.environ, PATH=FAKE_PATH, FAKEPBS_HOME=str(home))
    mem = max(1, nworkers)  # GiB per chunk: 0.9 GiB per worker process
    cgroup = cpu_cgroup()
    if sampler is not None:
        sampler.start(tmp, until=tmp / "end.json")
    try:
        subprocess.run(["qsub", "-W", "block=true", "-N", "bench", "-l", f"select={nodes}:ncpus={nworkers}:mem={mem}gb",
                        "-v", f"DASK_PBS_KIT={KIT},PYTHON_PREFIX={Path(PY).parent.parent},"
                              f"NWORKERS={nworkers},NTHREADS=1,READY_TIMEOUT=600,WORKER_ON_SCHEDULER_CHUNK=no"
                              f"{extra_vars},"
                              f"PROGRAM=python3 {BENCH}/stamp.py {tmp}/end {tmp}/dask-logs",
                        str(KIT / "scripts/launch-dask-wordcount.pbs")], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL, preexec_fn=enter_cgroup(cgroup))
        job_end = time.time()
        left = len(job_processes(home))
    finally:
        if sampler is not None:
            sampler.stop()
        drop_cgroup(cgroup)
    out = next(tmp.glob("bench.o*")).read_text()
    try:
        ready = float(re.search(r"cluster ready in ([0-9.]+) s", out).group(1))
        teardown = float(re.search(r"cluster stopped ([0-9.]+) s after the program ended", out).group(1))
        until_end = job_end - float((tmp / "end").read_text())
        noted = json.loads((tmp / "end.json").read_text())
        start = phases.job_phases(next((tmp / "dask-logs").iterdir()), next((home / "jobs").iterdir()), noted)
    except (AttributeError, OSError, StopIteration, ValueError):
        sys.exit(f"bench: the kit's job failed:\n{out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return ready, teardown, until_end, left, start


def peer_run(nodes: int, nworkers: int, timeout: float = 300) -> float | str:
    """dask_jobqueue.PBSCluster submitting nodes-1 worker jobs to the same fake PBS, to the
    same number of registered workers (its scheduler runs in this process, on tcp), or
    what went wrong."""
    from dask_jobqueue import PBSCluster
    from distributed import Client

    tmp = Path(tempfile.mkdtemp())
    home = tmp / "pbs"
    saved = {k: os.environ.get(k) for k in ("PATH", "FAKEPBS_HOME")}
    os.environ.update(PATH=FAKE_PATH, FAKEPBS_HOME=str(home))
    result: float | str = "failed: did not start"
    # Its scheduler runs here and logs to stderr, between the table's rows: the table says
    # how it ended instead.
    dask_log = logging.getLogger("distributed")
    saved_level = dask_log.level
    dask_log.setLevel(logging.CRITICAL)
    try:
        start = time.perf_counter()
        with PBSCluster(cores=nworkers, processes=nworkers, memory=f"{nworkers}GB", walltime="00:30:00",
                        interface="lo", scheduler_options={"interface": "lo", "dashboard_address": ":0"},
                        log_directory=str(tmp / "logs")) as cluster:
            cluster.scale(jobs=nodes - 1)
            with Client(cluster) as client:
                try:
                    client.wait_for_workers((nodes - 1) * nworkers, timeout=timeout)
                    result = time.perf_counter() - start
                except Exception:  # reported in the table: its workers gave up
                    got = len(client.scheduler_info(n_workers=-1)["workers"])
                    result = f"failed: {got}/{(nodes - 1) * nworkers} in {timeout:g} s"
    except Exception as exc:  # its own close can fail too (seen: a KeyError in SpecCluster)
        print(f"bench: the peer's PBSCluster failed ({type(exc).__name__}: {exc}); its figure: {result}",
              file=sys.stderr)
    finally:
        dask_log.setLevel(saved_level)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        deadline = time.monotonic() + 30
        while job_processes(home) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in job_processes(home):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def ready_table(sizes: list, nworkers_list: list, runs: int, peer: bool) -> list:
    """The time-to-ready and teardown table; returns each row's start phases (breakdown_table)."""
    import phases

    print(f"\ntime to ready (all workers registered) and teardown, median of {runs} runs (min-max);"
          " the kinds in rounds, each round in another order")
    print("  kit: production job on the fake PBS, PROGRAM=bench/stamp.py, the kit's defaults (TLS on,"
          " INTERFACE=auto), WORKER_ON_SCHEDULER_CHUNK=no")
    print("  floor: the same Dask processes as task.sh execs them (same TLS, forkserver, dashboards), started"
          " directly")
    print("  floor+PBS: the floor's processes through the fake PBS as the least a pbsdsh launcher does (a job: qstat"
          " once, one pbsdsh per chunk running the floor's command; no kit)")
    print("  peer: dask_jobqueue.PBSCluster, one worker job per chunk, same fake PBS (tcp)")
    print("  teardown kit: the job's own figure, program end to the job script's end;"
          " job end: to qsub -W block=true returning")
    print(f"{'nodes':>5} {'procs':>5} {'kit':>22} {'floor':>22} {'kit/floor':>9} {'floor+PBS':>22} {'kit/f+PBS':>9} "
          f"{'peer':>22} {'kit/peer':>8} {'teardown kit':>22} {'job end':>22} {'teardown floor':>22} {'left':>4}")
    rows = []
    for nworkers in nworkers_list:
        for nodes in sizes:
            kit, down, ends, floor, floor_down, peers, left, starts = [], [], [], [], [], [], 0, []
            floor_pbs = []

            def one_kit() -> None:
                nonlocal left
                ready, teardown, until_end, stray, start = kit_run(nodes, nworkers)
                kit.append(ready)
                down.append(teardown)
                ends.append(until_end)
                left += stray
                starts.append(start)

            def one_floor() -> None:
                f_ready, f_down = floor_run(nodes, nworkers)
                floor.append(f_ready)
                floor_down.append(f_down)

            def one_peer() -> None:
                if not any(isinstance(p, str) for p in peers):
                    peers.append(peer_run(nodes, nworkers))

            kinds = [one_kit, one_floor, lambda: floor_pbs.append(floor_pbs_run(nodes, nworkers))]
            kinds += [one_peer] if peer else []
            for round_ in range(runs):
                # Each round in another order: whatever a run leaves behind (processes
                # still ending, a page cache, a warm CPU) falls on each kind alike.
                for run in kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]:
                    run()
            ratio = statistics.median(kit) / statistics.median(floor)
            failed = [p for p in peers if isinstance(p, str)]
            peer_text = failed[0] if failed else summary(peers) if peers else "-"
            versus = f"{statistics.median(kit) / statistics.median(peers):.2f}" if peers and not failed else "-"
            own = statistics.median(kit) / statistics.median(floor_pbs)
            print(f"{nodes:>5} {nworkers:>5} {summary(kit):>22} {summary(floor):>22} {ratio:>9.2f} "
                  f"{summary(floor_pbs):>22} {own:>9.2f} {peer_text:>22} {versus:>8} {summary(down):>22} {summary(ends):>22} {summary(floor_down):>22} "
                  f"{left:>4}", flush=True)
            rows.append((nodes, nworkers, statistics.median(kit), phases.breakdown_row(starts)))
    return rows


def breakdown_table(rows: list, runs: int) -> None:
    """Where the kit's start goes: the phases of bench/phases.py, from the ready table's runs."""
    print(f"\nthe kit's start, phase by phase (s; each the median over every worker chunk of {runs} runs;"
          " bench/phases.py)")
    print("  to pbsdsh: job start -> the chunk's pbsdsh; pbsdsh: -> task.sh starts; task.sh: -> the Dask command"
          " starts (task.sh, the kit's checks on the node); nanny: -> the chunk's nannies listen;")
    print("  worker proc: -> its worker processes listen; register: -> all on the scheduler; fan-out: the job's first"
          " pbsdsh to its last; scheduler: job start -> the scheduler listens;")
    print("  registered: job start -> the last worker registered; ready: the job's figure")
    print("  CPU s at ready: chunk (a worker task's processes), scheduler, job (every process of the job)")
    cols = ["to pbsdsh", "pbsdsh", "task.sh", "nanny", "worker proc", "register", "fan-out", "scheduler",
            "registered"]
    print(f"{'nodes':>5} {'procs':>5} " + " ".join(f"{c:>11}" for c in cols) + f" {'ready':>7} "
          f"{'cpu chunk':>9} {'cpu sched':>9} {'cpu job':>8}")

    def cell(value, width, digits=2):
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    for nodes, nworkers, ready, row in rows:
        print(f"{nodes:>5} {nworkers:>5} " + " ".join(cell(row[c], 11) for c in cols) + f" {ready:>7.2f} "
              f"{cell(row['chunk cpu'], 9)} {cell(row['scheduler cpu'], 9)} {cell(row['job cpu'], 8)}", flush=True)


def cpu_table(sizes: list, nworkers_list: list) -> None:
    """CPU seconds to ready by kind of process, kit against floor, one run of each size
    (bench/cpu_split.py)."""
    import cpu_split

    print("\nCPU s to ready by kind of process, one kit job and one floor run of each size (bench/cpu_split.py:"
          " /proc sampled every 10 ms)")
    for nworkers in nworkers_list:
        for nodes in sizes:
            kit_sampler, floor_sampler = cpu_split.Sampler(), cpu_split.Sampler()
            kit_ready, _, _, _, start = kit_run(nodes, nworkers, sampler=kit_sampler)
            floor_ready, _ = floor_run(nodes, nworkers, sampler=floor_sampler)
            cpu_split.table(nodes, nworkers, kit_sampler.totals(), floor_sampler.totals(), start.get("job cpu"),
                            floor_sampler.cgroup_cpu, kit_ready, floor_ready)


def qdel_run(nodes: int, nworkers: int, start: str) -> tuple:
    """One interactive job (the path template, the kit's defaults), held until qdel once its
    cluster is ready and its dashboards have loaded: (qdel to qsub -W block=true returning s,
    the kit's own "cluster stopped in X s", the job output's warning lines, processes left).
    start: the fake MoM's FAKEPBS_START (direct, or login as a real MoM starts jobs)."""
    tmp = Path(tempfile.mkdtemp())
    home = tmp / "pbs"
    env = dict(os.environ, PATH=FAKE_PATH, FAKEPBS_HOME=str(home), FAKEPBS_START=start, FAKEPBS_KILL_DELAY="10")
    mem = max(1, nworkers)
    qsub = subprocess.Popen(["qsub", "-W", "block=true", "-N", "qdel", "-l", f"select={nodes}:ncpus={nworkers}:mem={mem}gb",
                             "-l", "walltime=00:30:00",
                             "-v", f"DASK_PBS_KIT={KIT},PYTHON_PREFIX={Path(PY).parent.parent},NWORKERS={nworkers},"
                                   f"NTHREADS=1,READY_TIMEOUT=600,WORKER_ON_SCHEDULER_CHUNK=no",
                             str(KIT / "scripts/launch-dask-cluster-path.pbs")], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        jobid = qsub.stdout.readline().strip()
        deadline = time.monotonic() + 900
        while not (tmp / "scheduler.json").exists():
            if qsub.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"bench: the interactive job did not start:\n"
                         f"{''.join(p.read_text() for p in tmp.glob('qdel.o*'))}")
            time.sleep(0.05)
        time.sleep(3)  # the workers' dashboards load once the cluster is ready
        begin = time.perf_counter()
        subprocess.run(["qdel", jobid], env=env, check=True)
        qsub.wait(timeout=120)
        until_end = time.perf_counter() - begin
        left = len(job_processes(home))
    finally:
        end_job(qsub, home)
    out = next(tmp.glob("qdel.o*")).read_text()
    shutil.rmtree(tmp, ignore_errors=True)
    stopped = re.search(r"cluster stopped in ([0-9.]+) s", out)
    if not stopped:
        sys.exit(f"bench: the interactive job did not say how it stopped:\n{out}")
    return until_end, float(stopped.group(1)), [line for line in out.splitlines() if "warning" in line], left


def qdel_table(sizes: list, nworkers_list: list, runs: int) -> None:
    print(f"\nteardown after qdel: an interactive job, median of {runs} runs (min-max)")
    print("  job end: qdel to qsub -W block=true returning; kit: the job's own figure (\"cluster stopped in X s\","
          " from the signal to the job script's end)")
    print("  FAKEPBS_START=direct: the fake's default (bash runs the script); login: as a real MoM (a login shell"
          " runs it and dies of the SIGTERM at once)")
    print(f"{'nodes':>5} {'procs':>5} {'start':>6} {'job end':>22} {'kit':>22} {'warnings':>8} {'left':>4}")
    for nworkers in nworkers_list:
        for nodes in sizes:
            for start in ("direct", "login"):
                ends, kits, warnings, left = [], [], [], 0
                for _ in range(runs):
                    until_end, kit, warned, stray = qdel_run(nodes, nworkers, start)
                    ends.append(until_end)
                    kits.append(kit)
                    warnings += warned
                    left += stray
                print(f"{nodes:>5} {nworkers:>5} {start:>6} {summary(ends):>22} {summary(kits):>22} {len(warnings):>8} "
                      f"{left:>4}", flush=True)
                for line in warnings:  # what they were: a count alone cannot be looked into
                    print(f"      {line}", flush=True)


def wordcount_table(runs: int, megabytes: int) -> None:
    """The example wordcount on a 3-chunk kit job against one process with Counter, with
    the first chunk idle (WORKER_ON_SCHEDULER_CHUNK=no: 2 workers) and working beside the
    scheduler (auto, the default: chunk 0's 2 cores hold the scheduler and a third worker)."""
    import corpus

    folder = os.environ.get("BENCH_CORPUS", f"/tmp/dask-pbs-kit-corpus-{megabytes}mb")
    files = corpus.ensure(folder, megabytes)
    dask_s: dict = {"no": [], "auto": []}
    serial_s, workers = [], {}
    for _ in range(runs):
        for mode in dask_s:  # interleaved: drift hits both alike
            tmp = Path(tempfile.mkdtemp())
            result = tmp / "result.json"
            env = dict(os.environ, PATH=FAKE_PATH, FAKEPBS_HOME=str(tmp / "pbs"))
            done = subprocess.run(
                ["qsub", "-W", "block=true", "-N", "wc", "-l", "select=3:ncpus=2:mem=4gb",
                 "-v", f"DASK_PBS_KIT={KIT},PYTHON_PREFIX={Path(PY).parent.parent},INTERFACE=lo,NTHREADS=1,"
                       f"WORKER_ON_SCHEDULER_CHUNK={mode},"
                       f"PROGRAM=python3 {KIT}/bench/wordcount_vs_counter.py {folder} {result}",
                 str(KIT / "scripts/launch-dask-wordcount.pbs")], cwd=tmp, env=env, stdout=subprocess.DEVNULL)
            if done.returncode != 0 or not result.exists():
                sys.exit(f"bench: the wordcount job failed:\n{''.join(p.read_text() for p in tmp.glob('wc.o*'))}")
            figures = json.loads(result.read_text())
            if not figures["same"]:
                sys.exit("bench: the cluster's word counts differ from collections.Counter's")
            dask_s[mode].append(figures["dask_s"])
            serial_s.append(figures["serial_s"])
            workers[mode] = figures["workers"]
            shutil.rmtree(tmp, ignore_errors=True)
    serial = statistics.median(serial_s)
    print(f"\nwordcount scale-out: {figures['bytes'] / 2**20:.0f} MiB in {len(files)} files, "
          f"{figures['words']} words ({figures['distinct']} distinct); median of {runs} runs, "
          "select=3:ncpus=2:mem=4gb, NTHREADS=1")
    print(f"  one process, collections.Counter                       {summary(serial_s)}")
    for mode, label in (("no", "chunk 0 idle (WORKER_ON_SCHEDULER_CHUNK=no)"),
                        ("auto", "chunk 0 works (auto, the default)")):
        speedup = serial / statistics.median(dask_s[mode])
        print(f"  {label:<46} {workers[mode]} workers  {summary(dask_s[mode])}  speed-up {speedup:.2f}x")
    print(f"  on {os.cpu_count()} cores; same answer: yes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--nworkers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["helpers", "ready", "peer", "cpu", "qdel", "scale", "wordcount"])
    parser.add_argument("--corpus-mb", type=int, default=512)
    parser.add_argument("--cpu-sizes", type=int, nargs="+", default=[2, 32],
                        help="chunks of the CPU-by-kind rows (each size with every --nworkers)")
    parser.add_argument("--scale-procs", type=int, nargs="+", default=[8, 16, 32, 64, 128],
                        help="worker processes of bench/scale.py's rows")
    opts = parser.parse_args()
    # As `make bytecode`: the kit's and the fake's modules compiled, as a first run leaves
    # them where PYTHONDONTWRITEBYTECODE is not set (every task then reads them).
    import compileall
    for folder in ("helpers", "scripts/lib", "tests/fakepbs"):
        compileall.compile_dir(str(KIT / folder), quiet=1)
    import dask
    import distributed

    versions = f"python {platform.python_version()}, dask {dask.__version__}, distributed {distributed.__version__}"
    try:
        import dask_jobqueue
        versions += f", dask-jobqueue {dask_jobqueue.__version__}"
    except ImportError:
        opts.skip.append("peer")
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {platform.platform()}")
    print(f"{versions}; {openssl}")
    if "helpers" not in opts.skip:
        helper_start(max(50, opts.runs))
    if "ready" not in opts.skip:
        rows = ready_table(opts.sizes, opts.nworkers, opts.runs, "peer" not in opts.skip)
        breakdown_table(rows, opts.runs)
    if "cpu" not in opts.skip:
        cpu_table(opts.cpu_sizes, opts.nworkers)
    if "qdel" not in opts.skip:
        qdel_table(opts.sizes, opts.nworkers, opts.runs)
    if "scale" not in opts.skip:
        import scale

        scale.main(["--procs", *map(str, opts.scale_procs)])
    if "wordcount" not in opts.skip:
        wordcount_table(opts.runs, opts.corpus_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
