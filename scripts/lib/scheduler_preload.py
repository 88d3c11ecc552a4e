"""The job's scheduler plugin: a roll of the registered workers, and a fast shutdown.

Loaded by the job's scheduler (dask scheduler --preload scheduler_preload.py), with
DASK_PBS_KIT_ROLL (the roll file), DASK_PBS_KIT_CLOSED (the closed marker) and
DASK_PBS_KIT_STOP_WAIT (seconds, default 1) in its environment.

- Roll call: the names of the registered workers, in FILE, rewritten at every change. The
  job script waits for it to list every expected worker: the scheduler itself says when
  the cluster is whole, and the job needs no Dask client (and no second `import
  distributed` competing with the workers for the node's cores) to know it.
- Shutdown: however the scheduler closes (SIGTERM from the job, client.shutdown(), qdel),
  it first tells every nanny to terminate its worker, and closes once every worker has
  unregistered; then it creates the closed marker. One signal stops the cluster: no pbsdsh per node, and no worker waiting
  seconds on the broken connection of a scheduler that went first.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time

from distributed.diagnostics.plugin import SchedulerPlugin


class JobPlugin(SchedulerPlugin):
    """Rewrites the roll (one worker name per line) whenever a worker comes or goes, and
    terminates the nannies before the scheduler closes."""

    name = "dask-pbs-kit"

    def __init__(self, path: str, closed: str = "", stop_wait: float = 1.0) -> None:
        self.path = path
        self.closed = closed
        self.stop_wait = stop_wait
        self.scheduler = None
        self._sent = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        self.write()

    def add_worker(self, scheduler, worker: str) -> None:
        self.write()

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        self.write()

    async def before_close(self) -> None:
        """Tell every nanny to terminate, and wait (up to stop_wait) until every worker has
        unregistered: a second is plenty on nodes of their own. The rest of the processes'
        exit (seconds of CPU for Python to finalize many processes on few cores) is not
        waited for: PBS ends the job's tasks on every node when the job ends."""
        if not self.scheduler.workers:
            return
        nannies = {ws.nanny for ws in self.scheduler.workers.values() if ws.nanny}
        self._sent = asyncio.gather(*(self._terminate(addr) for addr in nannies))
        deadline = time.monotonic() + self.stop_wait
        while self.scheduler.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _terminate(self, nanny: str) -> None:
        # A nanny drops the connection as it exits, and the scheduler may close before
        # every nanny has answered: neither is an error here.
        with contextlib.suppress(Exception):
            await self.scheduler.rpc(nanny).terminate(reason="dask-pbs-kit: job ending")

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
                                   float(os.environ.get("DASK_PBS_KIT_STOP_WAIT", "1"))))
