"""The job's scheduler plugin: a roll of the registered workers, and a fast shutdown.

Loaded by the job's scheduler (dask scheduler --preload scheduler_preload.py), with
DASK_PBS_KIT_ROLL (the roll file), DASK_PBS_KIT_CLOSED (the closed marker) and
DASK_PBS_KIT_STOP_WAIT (seconds, default 0.5) in its environment.

- Roll call: the names of the registered workers, in FILE, rewritten at every change. The
  job script waits for it to list every expected worker: the scheduler itself says when
  the cluster is whole, and the job needs no Dask client (and no second `import
  distributed` competing with the workers for the node's cores) to know it.
- Shutdown: however the scheduler closes (SIGTERM from the job, client.shutdown(), qdel),
  it first tells every worker to close, and closes once every worker has unregistered
  (or stop_wait has passed); then it creates the closed marker. One signal stops the
  cluster: no pbsdsh per node, and no worker waiting seconds on the broken connection of
  a scheduler that went first.
"""
from __future__ import annotations

import asyncio
import os
import time

from distributed.diagnostics.plugin import SchedulerPlugin

REASON = "dask-pbs-kit: job ending"  # in every worker's log: "Stopping worker ... Reason: ..."


class JobPlugin(SchedulerPlugin):
    """Rewrites the roll (one worker name per line) whenever a worker comes or goes, and
    closes the workers before the scheduler closes."""

    name = "dask-pbs-kit"

    def __init__(self, path: str, closed: str = "", stop_wait: float = 0.5) -> None:
        self.path = path
        self.closed = closed
        self.stop_wait = stop_wait
        self.scheduler = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        self.write()

    def add_worker(self, scheduler, worker: str) -> None:
        self.write()

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        self.write()

    async def before_close(self) -> None:
        """Tell every worker to close, on the stream it already has open to the scheduler
        (the message the scheduler itself sends as it closes, sent early), and wait (up
        to stop_wait) until every worker has unregistered: a fraction of a second on nodes
        of their own. No new connection is made: a TLS handshake per nanny costs the
        scheduler's event loop more than the whole wait when many workers share few cores.
        A worker told to close first tells its nanny not to restart it. The rest of the
        processes' exit (Python finalizing many processes) is not waited for: PBS ends
        the job's tasks on every node when the job ends."""
        sched = self.scheduler
        for address in list(sched.workers):
            comm = sched.stream_comms.get(address)
            if comm is not None and not comm.closed():
                comm.send({"op": "close", "reason": REASON})
        deadline = time.monotonic() + self.stop_wait
        while sched.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Say that the scheduler has closed: what is left of its process is Python exiting,
        which may take seconds on a node busy with the workers' own exits."""
        if self.closed:
            with open(self.closed, "w", encoding="utf-8") as fh:
                fh.write("closed\n")

    def write(self) -> None:
        names = sorted(str(ws.name) for ws in self.scheduler.workers.values())
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{name}\n" for name in names))
        os.replace(tmp, self.path)  # readers never see half a roll


def dask_setup(scheduler) -> None:
    """Read where to keep the roll and the closed marker from the environment (the job's
    env.sh), not from preload options: a preload of the user's own, added with
    EXTRA_SCHEDULER_ARGS, would be handed those options too."""
    scheduler.add_plugin(JobPlugin(os.environ["DASK_PBS_KIT_ROLL"],
                                   os.environ.get("DASK_PBS_KIT_CLOSED", ""),
                                   float(os.environ.get("DASK_PBS_KIT_STOP_WAIT", "0.5"))))
