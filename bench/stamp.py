"""The benchmark's PROGRAM: write the time it ends to the file named by argv[1].

With a second argument (the submit folder's dask-logs), it first notes, in argv[1] +
".json", what only the running cluster can tell (bench/phases.py reads it):
  spawned   when each task's pbsdsh started: the mtime of LOG_DIR/*.log.pbsdsh, which the
            job script creates as it runs pbsdsh and which nothing writes until that
            pbsdsh ends;
  cpu       CPU seconds used by each task's processes so far (the Dask process the task
            execs and its children: the nanny's worker processes, a forkserver), by name;
  job_cpu   CPU seconds of every process of the job so far, when the bench runs the job
            in a cpuacct cgroup of its own (else null).
"""
import json
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def processes() -> dict:
    """{pid: (parent, CPU seconds)} of every live process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return found


def tree_cpu(pid: int, table: dict) -> float:
    total, todo = 0.0, [pid]
    while todo:
        here = todo.pop()
        total += table.get(here, (0, 0.0))[1]
        todo += [p for p, (parent, _) in table.items() if parent == here]
    return total


def job_cpu():
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpuacct" in controllers.split(",") and path != "/":
                    with open(f"/sys/fs/cgroup/cpuacct{path}/cpuacct.usage") as usage:
                        return int(usage.read()) / 1e9
    except (OSError, ValueError):
        pass
    return None


if len(sys.argv) > 2:
    folder = os.path.join(sys.argv[2], os.environ.get("PBS_JOBID", ""))
    table = processes()
    noted = {"spawned": {}, "cpu": {}, "job_cpu": job_cpu()}
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(".log.pbsdsh"):
            noted["spawned"][name] = os.stat(path).st_mtime
        elif name.endswith(".pid"):
            try:
                with open(path) as fh:
                    noted["cpu"][name[:-4]] = tree_cpu(int(fh.read().strip()), table)
            except (OSError, ValueError):
                pass
    with open(sys.argv[1] + ".json", "w") as fh:
        json.dump(noted, fh)
with open(sys.argv[1], "w") as fh:
    fh.write(repr(time.time()))
