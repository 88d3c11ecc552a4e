#!/usr/bin/env python3
"""What each added worker costs: measured here at 8-128 worker processes, for the
extrapolation to 1,000 nodes x 4 processes in bench/README.md ("Scale").

    .venv/bin/python bench/scale.py [--procs 8 16 32 64 128] [--per-task 4] [--idle 20]
                                    [--no-strace]

One TLS scheduler and N worker processes (N / per-task worker tasks of --per-task
processes each), all started as scripts/lib/task.sh execs them (bench/run.py's floor:
helpers/dask_pbs_kit/dask_start.py, the kit's plugin), on this machine. For each N:
  registration  the scheduler's CPU seconds from the workers' start to the last one on its
                roll, less what it spends idle in as long (per worker: the TLS handshakes,
                add_worker, the plugin's roll);
  heartbeats    its CPU seconds over --idle seconds of an idle cluster, per worker and per
                heartbeat (distributed's interval: 0.5 s up to 10 workers, 1 s to 49, 2 s
                to 199, then N/200 + 1 s);
  fds, memory   the scheduler's open files and resident memory, added per worker;
  start         seconds to the last worker on the roll (2 cores shared by everything here);
and, with strace (unless --no-strace), one worker task of --per-task processes traced
from its start to its registration: the files its processes open or look up, by where
they are (the Python environment's imports, the kit, the job's files: env.sh is bash's,
not traced here; the certificates), and how many bytes of the certificates are read.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the floor's way of starting the kit's Dask processes)

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def heartbeat_interval(n: int) -> float:
    """distributed.scheduler.heartbeat_interval (2026.8), the seconds between a worker's
    heartbeats when n workers are connected."""
    if n <= 10:
        return 0.5
    if n < 50:
        return 1.0
    if n < 200:
        return 2.0
    return n / 200 + 1


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class Cluster:
    """A TLS scheduler started as the kit's task starts it, and worker tasks added to it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        subprocess.run([run.PY, str(run.KIT / "helpers/kit.py"), "tls", str(tmp / "tls")], check=True)
        self.env = dict(os.environ, **run.tls_env(tmp / "tls"), DASK_PBS_KIT_ROLL=str(tmp / "workers.txt"),
                        DASK_PBS_KIT_CLOSED=str(tmp / "scheduler.closed"), TMPDIR=str(tmp))
        self.sched_file = tmp / "scheduler.json"
        self.workers: list = []
        self.scheduler = subprocess.Popen(run.task_command(
            {"role": "scheduler", "node": "node00", "log": tmp / "scheduler-0.log"},
            ["--scheduler-file", str(self.sched_file), "--port", "0", "--interface", "lo", "--protocol", "tls",
             "--preload", str(run.PRELOAD), "--dashboard-address", ":0"]),
            env=self.env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not (tmp / "workers.txt").exists():
            if time.monotonic() > deadline:
                sys.exit(f"bench: the scheduler did not start (log: {tmp}/scheduler-0.log)")
            time.sleep(0.05)

    def worker_command(self, index: int, per_task: int) -> list:
        return run.task_command(
            {"role": "worker", "node": f"node{index:03d}", "log": self.tmp / f"worker-{index}.log",
             "memory": run.WORKER_MEMORY, "host_procs": per_task},
            ["--scheduler-file", str(self.sched_file), "--name", f"chunk-{index}", "--nworkers", str(per_task),
             "--nthreads", "1", "--interface", "lo", "--protocol", "tls", "--local-directory", str(self.tmp)])

    def add(self, tasks: int, per_task: int) -> None:
        for i in range(len(self.workers) + 1, len(self.workers) + tasks + 1):
            self.workers.append(subprocess.Popen(
                self.worker_command(i, per_task), env=dict(self.env, **run.worker_env()), cwd=self.tmp,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    def on_roll(self) -> int:
        return run.roll_count(self.tmp / "workers.txt")

    def stop(self) -> None:
        run.stop_all(self.workers)
        run.stop_all([self.scheduler])


def idle_rate(pid: int, seconds: float) -> float:
    begin = cpu(pid)
    time.sleep(seconds)
    return (cpu(pid) - begin) / seconds


def measure(n: int, per_task: int, idle: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="dpk-scale."))
    cluster = Cluster(tmp)
    try:
        pid = cluster.scheduler.pid
        time.sleep(2)  # its dashboard, imported in a thread once it listens
        base_rate = idle_rate(pid, 2)
        base_cpu, base_fds, base_rss = cpu(pid), fds(pid), rss(pid)
        start = time.monotonic()
        cluster.add(n // per_task, per_task)
        deadline = start + 900
        while cluster.on_roll() < n:
            if time.monotonic() > deadline:
                sys.exit(f"bench: {cluster.on_roll()} of {n} workers after 900 s (logs in {tmp})")
            time.sleep(0.02)
        took = time.monotonic() - start
        registration = cpu(pid) - base_cpu - base_rate * took
        (tmp / "cluster-info.txt").write_text("ready\n")  # the workers' dashboards, as in a job
        time.sleep(5)
        busy = idle_rate(pid, idle)
        return {"n": n, "start": took, "registration": registration,
                "heartbeats": busy - base_rate, "fds": fds(pid) - base_fds, "rss": rss(pid) - base_rss,
                "base_rate": base_rate}
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def traced_task(per_task: int, method: str = "") -> dict:
    """One worker task of per_task processes under strace -f, from its start to its last
    process on the roll: its file lookups and opens by where they are. method: the job's
    own multiprocessing method (spawn: as before the forkserver), else the kit's."""
    tmp = Path(tempfile.mkdtemp(prefix="dpk-strace."))
    cluster = Cluster(tmp)
    if method:
        cluster.env["DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"] = method
    trace = tmp / "strace.out"
    try:
        time.sleep(2)
        cluster.workers.append(subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=openat,open,stat,lstat,newfstatat,statx,access,readlink,execve",
             "-e", "signal=none", "-o", str(trace)] + cluster.worker_command(1, per_task),
            env=dict(cluster.env, **run.worker_env()), cwd=tmp, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 600
        while cluster.on_roll() < per_task and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        lines = trace.read_text(errors="replace").splitlines()
    finally:
        cluster.stop()
    prefix = str(Path(sys.prefix).resolve())
    base = str(Path(sys.base_prefix).resolve())
    kit = str(run.KIT)
    counts: dict = {}
    samples: list = []
    cert_reads = 0
    for line in lines:
        match = re.search(r'^\d+ +(\w+)\((?:AT_FDCWD|\d+)?,? ?"([^"]*)"', line)
        if not match:
            continue
        path = match.group(2)
        if not path:  # fstat through a descriptor (AT_EMPTY_PATH): no lookup
            continue
        if path.startswith(str(tmp / "tls")):
            where = "the job's certificates"
            if match.group(1) in ("openat", "open") and "= -1" not in line:
                cert_reads += 1
        elif path.startswith(str(tmp)):
            where = "the job's other files (logs, scheduler file, TMPDIR)"
        elif path.startswith((prefix, sys.prefix)):
            where = "the Python environment (imports: site-packages)"
        elif path.startswith(kit):
            where = "the kit (helpers, preload)"
        elif path.startswith((base, sys.base_prefix)):
            where = "the Python installation (imports: standard library)"
        elif path.startswith(("/proc", "/sys", "/dev")):
            where = "/proc, /sys, /dev"
        else:
            where = "elsewhere (/etc, locales, dask's config, PATH)"
        failed = "= -1" in line
        if where.startswith("elsewhere"):
            samples.append(path)
        key = (where, "missing" if failed else "found")
        counts[key] = counts.get(key, 0) + 1
    cert_bytes = sum(f.stat().st_size for f in (tmp / "tls").iterdir()
                     if f.name in ("ca.pem", "cluster.pem", "cluster.key")) if (tmp / "tls").exists() else 0
    shutil.rmtree(tmp, ignore_errors=True)
    return {"counts": counts, "cert_opens": cert_reads, "cert_bytes": cert_bytes, "per_task": per_task,
            "elsewhere": samples}


def fit(points: list) -> tuple:
    """Least-squares slope and intercept of (x, y) points."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return slope, my - slope * mx


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--idle", type=float, default=20)
    parser.add_argument("--no-strace", action="store_true")
    opts = parser.parse_args(argv)
    print(f"\nscale: one TLS scheduler, N worker processes in tasks of {opts.per_task} (as task.sh starts them),"
          f" on this machine; scheduler CPU s, idle window {opts.idle:g} s")
    print(f"{'workers':>7} {'start s':>8} {'reg cpu':>8} {'ms/worker':>9} {'hb interval':>11} {'hb cpu/s':>8} "
          f"{'ms/heartbeat':>12} {'fds':>5} {'MiB':>6}")
    results = []
    for n in opts.procs:
        r = measure(n, min(opts.per_task, n), opts.idle)
        interval = heartbeat_interval(n)
        per_beat = r["heartbeats"] / (n / interval) if n else 0.0
        r["per_beat"] = per_beat
        results.append(r)
        print(f"{n:>7} {r['start']:>8.2f} {r['registration']:>8.2f} {1000 * r['registration'] / n:>9.2f} "
              f"{interval:>11.1f} {r['heartbeats']:>8.3f} {1000 * per_beat:>12.3f} {r['fds']:>5} "
              f"{r['rss'] / 2**20:>6.0f}", flush=True)
    reg_slope, _ = fit([(r["n"], r["registration"]) for r in results])
    beat = statistics.median(r["per_beat"] for r in results if r["n"] >= 16) if any(
        r["n"] >= 16 for r in results) else results[-1]["per_beat"]
    fd_slope, fd_base = fit([(r["n"], r["fds"]) for r in results])
    rss_slope, _ = fit([(r["n"], r["rss"]) for r in results])
    big = 4000
    print(f"\nper added worker (fitted over {', '.join(str(r['n']) for r in results)}): registration "
          f"{1000 * reg_slope:.2f} ms of scheduler CPU, {fd_slope:.2f} file descriptors, "
          f"{rss_slope / 2**20:.2f} MiB; a heartbeat {1000 * beat:.3f} ms")
    print(f"at {big} worker processes (1,000 nodes x 4): registration {reg_slope * big:.1f} s of scheduler CPU "
          f"(one core, in turn); heartbeats every {heartbeat_interval(big):.0f} s each, "
          f"{big / heartbeat_interval(big):.0f}/s, {100 * beat * big / heartbeat_interval(big):.1f}% of a core; "
          f"{fd_base + fd_slope * big:.0f} file descriptors; {rss_slope * big / 2**30:.1f} GiB more resident")
    if not opts.no_strace and shutil.which("strace"):
        traced = traced_task(opts.per_task)
        print(f"\none worker task of {traced['per_task']} processes, from its start to registered (strace -f):"
              " file lookups and opens")
        for (where, outcome), count in sorted(traced["counts"].items(), key=lambda kv: -kv[1]):
            print(f"  {count:>6}  {outcome:<7} {where}")
        print(f"  the certificates: opened {traced['cert_opens']} times ({traced['cert_bytes']} bytes for ca.pem,"
              " cluster.pem and cluster.key)")
        spawned = traced_task(opts.per_task, "spawn")
        total = sum(traced["counts"].values())
        print(f"  in all {total}; with spawn instead of the forkserver (the job's own"
              f" DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=spawn): {sum(spawned['counts'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
