"""The job's scheduler plugin: a roll of the registered workers, and a fast shutdown.

Loaded by the job's scheduler (dask scheduler --preload scheduler_preload.py --dpk-roll FILE).

- Roll call: the names of the registered workers, in FILE, rewritten at every change. The
  job script waits for it to list every expected worker: the scheduler itself says when
  the cluster is whole, and the job needs no Dask client (and no second `import
  distributed` competing with the workers for the node's cores) to know it.
- Shutdown: however the scheduler closes (SIGTERM from the job, client.shutdown()), it
  first tells every nanny to terminate its worker and exit. Workers told while their
  scheduler still listens are gone within a second; workers that lose their scheduler
  first wait seconds on the broken connection, and each teardown by a signal per node
  costs one pbsdsh per node.
"""
from __future__ import annotations

import os

import click
from distributed.diagnostics.plugin import SchedulerPlugin


class JobPlugin(SchedulerPlugin):
    """Rewrites the roll (one worker name per line) whenever a worker comes or goes, and
    terminates the nannies before the scheduler closes."""

    name = "dask-pbs-kit"

    def __init__(self, path: str) -> None:
        self.path = path
        self.scheduler = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        self.write()

    def add_worker(self, scheduler, worker: str) -> None:
        self.write()

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        self.write()

    async def before_close(self) -> None:
        # A nanny closes the connection without an answer when it exits: ignore that.
        await self.scheduler.broadcast(msg={"op": "terminate", "reason": "dask-pbs-kit: job ending"},
                                       nanny=True, on_error="ignore")

    def write(self) -> None:
        names = sorted(str(ws.name) for ws in self.scheduler.workers.values())
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{name}\n" for name in names))
        os.replace(tmp, self.path)  # readers never see half a roll


@click.command()
@click.option("--dpk-roll", required=True, help="file to keep the registered workers' names in")
def dask_setup(scheduler, dpk_roll: str) -> None:
    scheduler.add_plugin(JobPlugin(dpk_roll))
