"""Wait until the job's scheduler is up and every expected worker has registered.

Reads the roll that the scheduler keeps (scheduler_preload.py: one registered worker name per
line), so it needs no Dask client and starts in milliseconds. It watches the pbsdsh
process of each chunk: a Dask process that exits before the cluster is ready fails the
wait at once, naming its chunk, node and log, instead of waiting for the timeout.
Exit status: 0 ready, 1 timeout, 2 a process exited, 3 usage.

usage: wait_ready.py --scheduler-file PATH --roll PATH --workers N --timeout SECONDS
                     --watch ROLE:CHUNK:NODE:PID:LOG [--watch ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

POLL = 0.05


def alive(pid: int) -> bool:
    """True while pid runs (a zombie awaiting its parent's wait counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Watched:
    def __init__(self, spec: str) -> None:
        self.role, chunk, self.node, pid, self.log = spec.split(":", 4)
        self.chunk, self.pid = int(chunk), int(pid)

    def describe(self) -> str:
        return f"the {self.role} of chunk {self.chunk} (node {self.node})"


def tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return "(no log written)\n"


def fail_if_exited(watched: list) -> None:
    for w in watched:
        if not alive(w.pid):
            sys.stderr.write(
                f"dask-pbs: {w.describe()} exited before the cluster was ready; its log "
                f"{w.log} ends with:\n{tail(w.log)}")
            sys.exit(2)


def missing_chunks(watched: list, names: list) -> list:
    """Worker chunks with fewer connected processes than launched (names are chunk-I[-K])."""
    seen = Counter(str(n).split("-")[1] for n in names if str(n).startswith("chunk-"))
    return [w for w in watched if w.role == "worker" and seen[str(w.chunk)] == 0]


def read_roll(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().split()
    except OSError:
        return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler-file", required=True)
    parser.add_argument("--roll", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--watch", action="append", default=[], type=Watched)
    opts = parser.parse_args(argv)
    deadline = time.monotonic() + opts.timeout

    while True:
        names = read_roll(opts.roll)
        # The scheduler writes its file when it listens; workers register after that.
        if len(names) >= opts.workers and os.path.exists(opts.scheduler_file):
            return 0
        fail_if_exited(opts.watch)
        if time.monotonic() > deadline:
            if not os.path.exists(opts.scheduler_file):
                sched = [w for w in opts.watch if w.role == "scheduler"]
                where = sched[0].log if sched else "the scheduler log"
                sys.stderr.write(
                    f"dask-pbs: no scheduler file after {opts.timeout:g} s (see {where}); "
                    "raise READY_TIMEOUT if the nodes are slow to start Python\n")
                return 1
            sys.stderr.write(
                f"dask-pbs: only {len(names)} of {opts.workers} workers connected after "
                f"{opts.timeout:g} s\n")
            for w in missing_chunks(opts.watch, names):
                sys.stderr.write(f"dask-pbs:   missing: {w.describe()}, log {w.log}\n")
            return 1
        time.sleep(POLL)


if __name__ == "__main__":
    sys.exit(main())
