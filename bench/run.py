#!/usr/bin/env python3
"""Benchmarks: helper start-up, time to a ready cluster (kit vs floor), teardown.

    .venv/bin/python bench/run.py [--sizes 2 4 8] [--runs 3]

Prints a table: medians and spread (min-max) of several runs, with the machine and
versions. Not a test: figures only. The kit's figures come from its own job output
("cluster ready in X s", "cluster stopped X s after the program ended"), measured from
the job script's first line.
"""
from __future__ import annotations

import argparse
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
PY = sys.executable
DASK = str(Path(PY).with_name("dask"))


def timed(cmd: list, runs: int) -> list:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - start)
    return out


def summary(values: list) -> str:
    return f"{statistics.median(values):7.3f} s  ({min(values):.3f}-{max(values):.3f})"


def helper_start(runs: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    sched = tmp / "scheduler.json"
    sched.write_text('{"type": "Scheduler", "address": "tcp://10.0.0.1:8786", "services": {"dashboard": 8787}}')
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PY
    floor = timed([python, "-c", "import json"], runs)
    print(f"\nhelper start ({python}, median of {runs})")
    print(f"  floor: python3 -c 'import json'          {summary(floor)}")
    for name, cmd in [
        ("dashboard_url.py scheduler.json", [python, str(KIT / "helpers/dashboard_url.py"), str(sched)]),
        ("dashboard_url.py --tunnel login", [python, str(KIT / "helpers/dashboard_url.py"), str(sched), "--tunnel", "login"]),
        ("kit.py memory 20gb 4", [python, str(KIT / "helpers/kit.py"), "memory", "20gb", "4"]),
    ]:
        values = timed(cmd, runs)
        ratio = statistics.median(values) / statistics.median(floor)
        print(f"  {name:<38} {summary(values)}  ratio {ratio:.2f}")
    shutil.rmtree(tmp)


def floor_ready(nodes: int, nworkers: int) -> float:
    """The same scheduler and workers started directly, to all registered."""
    from distributed import Client

    tmp = Path(tempfile.mkdtemp())
    sched = tmp / "s.json"
    start = time.perf_counter()
    procs = [subprocess.Popen([DASK, "scheduler", "--scheduler-file", str(sched), "--port", "0",
                               "--interface", "lo"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    for i in range(1, nodes):
        procs.append(subprocess.Popen([DASK, "worker", "--scheduler-file", str(sched), "--nworkers", str(nworkers),
                                       "--nthreads", "1", "--interface", "lo", "--local-directory", str(tmp)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    while not sched.exists():
        time.sleep(0.01)
    with Client(scheduler_file=str(sched)) as client:
        client.wait_for_workers((nodes - 1) * nworkers, timeout=300)
        elapsed = time.perf_counter() - start
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    return elapsed


def kit_run(nodes: int, nworkers: int) -> tuple:
    """One production job with PROGRAM=/bin/true on the fake PBS: (ready s, teardown s)."""
    tmp = Path(tempfile.mkdtemp())
    env = dict(os.environ, PATH=f"{KIT}/tests/fakepbs/bin:/usr/bin:/bin", FAKEPBS_HOME=str(tmp / "pbs"))
    mem = max(1, nworkers)  # GiB per chunk: enough for the division
    subprocess.run(["qsub", "-W", "block=true", "-N", "bench", "-l", f"select={nodes}:ncpus={nworkers}:mem={mem}gb",
                    "-v", f"DASK_PBS_KIT={KIT},PYTHON_PREFIX={Path(PY).parent.parent},INTERFACE=lo,"
                          f"NWORKERS={nworkers},NTHREADS=1,PROGRAM=/bin/true,READY_TIMEOUT=300",
                    str(KIT / "scripts/launch-dask-wordcount.pbs")], cwd=tmp, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    out = next(tmp.glob("bench.o*")).read_text()
    ready = float(re.search(r"cluster ready in ([0-9.]+) s", out).group(1))
    teardown = float(re.search(r"cluster stopped ([0-9.]+) s after the program ended", out).group(1))
    shutil.rmtree(tmp, ignore_errors=True)
    return ready, teardown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--nworkers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    import dask
    import distributed

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"python {platform.python_version()}, dask {dask.__version__}, distributed {distributed.__version__}")
    helper_start(max(20, opts.runs))
    print(f"\ntime to ready (all workers registered), median of {opts.runs} runs (spread)")
    print(f"{'nodes':>5} {'procs/chunk':>11} {'kit':>28} {'floor':>28} {'kit/floor':>9} {'teardown':>26}")
    for nworkers in opts.nworkers:
        for nodes in opts.sizes:
            kit, down, floor = [], [], []
            for _ in range(opts.runs):
                ready, teardown = kit_run(nodes, nworkers)
                kit.append(ready)
                down.append(teardown)
                floor.append(floor_ready(nodes, nworkers))
            ratio = statistics.median(kit) / statistics.median(floor)
            print(f"{nodes:>5} {nworkers:>11} {summary(kit):>28} {summary(floor):>28} {ratio:>9.2f} {summary(down):>26}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
