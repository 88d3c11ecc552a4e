"""Wait until the job's scheduler is up and every expected worker has connected.

Run by the job script with the job's Python (it needs distributed). It watches the
pbsdsh process of each chunk: a Dask process that exits before the cluster is ready
fails the wait at once, naming its chunk, node and log, instead of waiting for the
timeout. Exit status: 0 ready, 1 timeout, 2 a process exited, 3 usage.

usage: wait_ready.py --scheduler-file PATH --workers N --timeout SECONDS
                     --watch ROLE:CHUNK:NODE:PID:LOG [--watch ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

POLL = 0.1


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler-file", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--watch", action="append", default=[], type=Watched)
    opts = parser.parse_args(argv)
    deadline = time.monotonic() + opts.timeout

    # 1. The scheduler file: written once, maybe not atomically, when the scheduler listens.
    while not os.path.exists(opts.scheduler_file):
        fail_if_exited(opts.watch)
        if time.monotonic() > deadline:
            sched = [w for w in opts.watch if w.role == "scheduler"]
            where = sched[0].log if sched else "the scheduler log"
            sys.stderr.write(
                f"dask-pbs: no scheduler file after {opts.timeout:g} s (see {where}); "
                "raise READY_TIMEOUT if the nodes are slow to start Python\n")
            return 1
        time.sleep(POLL)

    from distributed import Client  # imported while the scheduler starts, not before

    client = Client(scheduler_file=opts.scheduler_file, timeout=max(5, opts.timeout))
    try:
        while True:
            names = [w.get("name") for w in client.scheduler_info(n_workers=-1)["workers"].values()]
            if len(names) >= opts.workers:
                return 0
            fail_if_exited(opts.watch)
            if time.monotonic() > deadline:
                missing = missing_chunks(opts.watch, names)
                sys.stderr.write(
                    f"dask-pbs: only {len(names)} of {opts.workers} workers connected after "
                    f"{opts.timeout:g} s\n")
                for w in missing:
                    sys.stderr.write(f"dask-pbs:   missing: {w.describe()}, log {w.log}\n")
                return 1
            time.sleep(POLL)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
