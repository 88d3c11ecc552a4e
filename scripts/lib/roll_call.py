"""Scheduler preload: the names of the registered workers, in a file, at every change.

Loaded by the job's scheduler (dask scheduler --preload roll_call.py --dpk-roll FILE). The
job script waits for that file to list every expected worker: the scheduler itself says
when the cluster is whole, and the job needs no Dask client (and no second `import
distributed` competing with the workers for the node's cores) to know it.
"""
from __future__ import annotations

import os

import click
from distributed.diagnostics.plugin import SchedulerPlugin


class RollCall(SchedulerPlugin):
    """Rewrites the roll (one worker name per line) whenever a worker comes or goes."""

    name = "dask-pbs-kit-roll-call"

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

    def write(self) -> None:
        names = sorted(str(ws.name) for ws in self.scheduler.workers.values())
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{name}\n" for name in names))
        os.replace(tmp, self.path)  # readers never see half a roll


@click.command()
@click.option("--dpk-roll", required=True, help="file to keep the registered workers' names in")
def dask_setup(scheduler, dpk_roll: str) -> None:
    scheduler.add_plugin(RollCall(dpk_roll))
