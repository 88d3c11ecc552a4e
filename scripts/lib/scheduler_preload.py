"""The job's scheduler plugin: a roll of registered workers, a fast shutdown, and dashboards
loaded off the start's path (the scheduler's, and the workers' that ask for it).

Loaded by the job's scheduler (dask scheduler --preload scheduler_preload.py), with
DASK_PBS_KIT_ROLL (the roll file), DASK_PBS_KIT_CLOSED (the closed marker) and
DASK_PBS_KIT_STOP_WAIT (seconds, default 0.5) in its environment. The task that starts a
Dask process (helpers/dask_pbs_kit/dask_start.py) may also set DASK_PBS_KIT_DASHBOARD=later
(the scheduler's dashboard held back) and, on a worker that it gives this file as its
preload, DASK_PBS_KIT_WORKER_DASHBOARD=later; with DASK_PBS_KIT_DASHBOARD_PREFIX (the
dashboard's --dashboard-prefix), DASK_PBS_KIT_READY_FILE (the file the job writes once the
cluster is ready; default: cluster-info.txt beside the roll) and DASK_PBS_KIT_DASHBOARD_AFTER
(seconds, default 30: the workers' dashboards come then at the latest).

- Roll call: the names of the registered workers, in FILE, rewritten at a change (at most
  every ROLL_EVERY seconds per name on it: when thousands of workers register at once, one
  rewrite covers many, where one each would write the whole roll once per worker, on the
  shared file system). The job script waits
  for it to list every expected worker: the scheduler itself says when the cluster is
  whole, and the job needs no Dask client (and no second `import distributed` competing
  with the workers for the node's cores) to know it.
- Shutdown: however the scheduler closes (SIGTERM from the job, client.shutdown(), qdel),
  it first tells every worker to close, and closes once every worker has unregistered
  (or stop_wait has passed); then it creates the closed marker. One signal stops the
  cluster: no pbsdsh per node, and no worker waiting seconds on the broken connection of
  a scheduler that went first.
- Dashboards without holding the start: importing bokeh's pages costs a process about as
  much CPU as `import distributed`, before it can listen or register. The scheduler starts
  with --no-dashboard (its HTTP server listens at the dashboard's address all the same,
  with its other routes) and this plugin imports the pages in a thread as soon as the
  scheduler listens, so that workers connect and register meanwhile; the roll lists them
  only once the pages are up, so that the job never announces a dashboard that does not
  answer yet. A worker of one process per chunk also starts with --no-dashboard (several
  processes of a chunk share one import instead: their forkserver's); when the job's ready
  file appears, the plugin tells every worker that asked (its startup information says so)
  to add its pages, on the stream it already has to the scheduler; a worker that joins
  later is told as it registers. The imports run in threads: the event loops keep serving
  meanwhile (a SIGTERM stops the scheduler at once).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
import time

from distributed.diagnostics.plugin import SchedulerPlugin

REASON = "dask-pbs-kit: job ending"  # in every worker's log: "Stopping worker ... Reason: ..."
ASKS = "dask-pbs-kit"                # a worker's startup information: its dashboard comes later
OP = "dask-pbs-kit-dashboard"        # the stream message that tells such a worker to add it
ROLL_EVERY = 0.00005                 # seconds between two rewrites of the roll, at least, per
ROLL_EVERY_MIN = 0.005               # name on it (10 ms for 200 names, 0.2 s for 4,000): at
                                     # most ~300 KB/s of roll written, whatever its size
logger = logging.getLogger("distributed.preloading")


def settings(environ=os.environ) -> dict:
    """The ready file, the latest time (s) and the prefix of the held-back dashboards."""
    roll = environ.get("DASK_PBS_KIT_ROLL", "")
    return {"ready_file": environ.get("DASK_PBS_KIT_READY_FILE")
            or os.path.join(os.path.dirname(roll), "cluster-info.txt"),
            "after": float(environ.get("DASK_PBS_KIT_DASHBOARD_AFTER", "30")),
            "prefix": environ.get("DASK_PBS_KIT_DASHBOARD_PREFIX", "")}


class JobPlugin(SchedulerPlugin):
    """Rewrites the roll (one worker name per line) whenever a worker comes or goes, closes
    the workers before the scheduler closes, and adds the dashboards once the job is ready."""

    name = "dask-pbs-kit"

    def __init__(self, path: str, closed: str = "", stop_wait: float = 0.5,
                 dashboard_later: bool = False, later: dict | None = None) -> None:
        self.path = path
        self.closed = closed
        self.stop_wait = stop_wait
        self.dashboard_later = dashboard_later  # the scheduler's own pages: added by this plugin
        self.later = later if later is not None else settings()
        self.ready = False
        self.scheduler = None
        self.watcher = None
        self.pages = None  # the scheduler's pages being added (a Task); the roll waits for it
        self.last_write = -1.0
        self.pending = None  # the rewrite that is due (a TimerHandle), if any

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        self.write()
        if self.dashboard_later and self.pages is None:
            self.pages = asyncio.ensure_future(self.add_own_pages())
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self.when_ready())

    async def add_own_pages(self) -> None:
        """The scheduler's dashboard, now; then the roll as it stands."""
        try:
            await add_pages(self.scheduler, "distributed.dashboard.scheduler", self.later["prefix"])
        finally:
            self.pages = None
            if self.scheduler.workers:
                self.write()

    async def when_ready(self) -> None:
        """Wait for the job's ready file (or the time limit), then tell the workers that
        asked to add their dashboards."""
        deadline = time.monotonic() + self.later["after"]
        while not os.path.exists(self.later["ready_file"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.ready = True
        for address in list(self.scheduler.workers):
            self.tell(address)

    def tell(self, address: str) -> None:
        """Tell the worker at address to add its dashboard, if it asked to be told."""
        ws = self.scheduler.workers.get(address)
        comm = self.scheduler.stream_comms.get(address)
        if ws is not None and comm is not None and ws.extra.get(ASKS) == "dashboard later":
            comm.send({"op": OP})

    def add_worker(self, scheduler, worker: str) -> None:
        self.changed()
        if self.ready:
            self.tell(worker)

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        self.changed()

    def changed(self) -> None:
        """Rewrite the roll now, or ROLL_EVERY after the last rewrite if that was sooner;
        while the scheduler's pages are being added, once they are."""
        if self.pending is not None or self.pages is not None:
            return
        every = max(ROLL_EVERY_MIN, ROLL_EVERY * len(self.scheduler.workers))
        wait = self.last_write + every - time.monotonic()
        if wait <= 0:
            self.write()
        else:
            self.pending = asyncio.get_running_loop().call_later(wait, self.write)

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
        if self.watcher is not None:
            self.watcher.cancel()
        if self.pending is not None or self.pages is not None:
            self.write()
        if self.closed:
            with open(self.closed, "w", encoding="utf-8") as fh:
                fh.write("closed\n")

    def write(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        self.last_write = time.monotonic()
        names = sorted(str(ws.name) for ws in self.scheduler.workers.values())
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{name}\n" for name in names))
        os.replace(tmp, self.path)  # readers never see half a roll


def import_in_thread(name: str) -> asyncio.Future:
    """Import module name in a daemon thread (it does not hold the process's exit); the
    future gets the module or the exception."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(method, value) -> None:
        if not future.done():
            method(value)

    def work() -> None:
        try:
            module = importlib.import_module(name)
        except BaseException as exc:  # noqa: B036 - handed to the waiting coroutine
            outcome = (future.set_exception, exc)
        else:
            outcome = (future.set_result, module)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop has closed: the server is gone
            pass

    threading.Thread(target=work, name="dask-pbs-kit: dashboard import", daemon=True).start()
    return future


def serving(server) -> bool:
    return server.status.name in ("init", "starting", "running", "paused")


async def add_pages(server, module: str, prefix: str) -> None:
    """Add the bokeh pages of module (distributed.dashboard.scheduler or .worker) to the
    server's running HTTP server, as distributed does when the server starts with them;
    without bokeh, the scheduler's page that says it is missing (and nothing on a worker,
    as distributed)."""
    try:
        pages = await import_in_thread(module)
    except ImportError:
        pages = None
    except Exception as exc:  # a broken bokeh: the cluster runs on without the pages
        logger.warning("dask-pbs-kit: the dashboard could not be added (%s: %s)", type(exc).__name__, exc)
        return
    if not serving(server):
        return
    if pages is None:
        if module.endswith(".scheduler"):
            from distributed.http.utils import get_handlers

            server.http_application.add_handlers(r".*", get_handlers(
                server=server, modules=["distributed.http.scheduler.missing_bokeh"], prefix=prefix))
        return
    try:
        pages.connect(server.http_application, server.http_server, server, prefix=prefix)
    except Exception as exc:
        logger.warning("dask-pbs-kit: the dashboard could not be added (%s: %s)", type(exc).__name__, exc)
        return
    logger.info("dask-pbs-kit: dashboard added")


class WorkerDashboard:
    """On a worker started with --no-dashboard and this file as its preload: say so in its
    startup information, add its pages when the scheduler's plugin says the cluster is
    ready (or DASK_PBS_KIT_DASHBOARD_AFTER seconds after it has registered)."""

    def __init__(self, worker, later: dict) -> None:
        self.worker = worker
        self.later = later
        self.task = None
        worker.startup_information[ASKS] = lambda _worker: "dashboard later"
        worker.stream_handlers[OP] = self.on_ready
        self.fallback = asyncio.ensure_future(self.at_the_latest())

    def on_ready(self, **_msg) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(add_pages(self.worker, "distributed.dashboard.worker",
                                                        self.later["prefix"]))

    async def at_the_latest(self) -> None:
        while self.worker.status.name in ("undefined", "created", "init", "starting"):
            await asyncio.sleep(0.05)
        await asyncio.sleep(self.later["after"])
        if serving(self.worker):
            self.on_ready()


HELD = []  # the workers' WorkerDashboard objects (their tasks need a strong reference)


def dask_setup(server) -> None:
    """On the scheduler, the job's plugin: where to keep the roll and the closed marker come
    from the environment (the job's env.sh), not from preload options: a preload of the
    user's own, added with EXTRA_SCHEDULER_ARGS, would be handed those options too. On a
    worker (this is its preload only when its dashboard is held back), its dashboard later."""
    from distributed import Scheduler

    if isinstance(server, Scheduler):
        server.add_plugin(JobPlugin(os.environ["DASK_PBS_KIT_ROLL"],
                                    os.environ.get("DASK_PBS_KIT_CLOSED", ""),
                                    float(os.environ.get("DASK_PBS_KIT_STOP_WAIT", "0.5")),
                                    os.environ.get("DASK_PBS_KIT_DASHBOARD") == "later"))
    elif os.environ.get("DASK_PBS_KIT_WORKER_DASHBOARD") == "later":
        HELD.append(WorkerDashboard(server, settings()))
