"""The launch plan: where the scheduler runs and, for each worker chunk, how many worker
processes, threads and bytes of memory each. A pure function of the job (see
job_resources) and the knobs: make_plan(job, settings) -> Plan; Plan.lines() is what
`kit.py plan` prints, one tab-separated line per item:

  job        SOURCE          where the chunks came from
  walltime   LIMIT_S  LEFT_S  SOURCE       (-1 -1 none when unknown; SOURCE pbs, WALLTIME, none)
  scheduler  CHUNK  LINE  NODE  HOST_PROCS
  worker     CHUNK  LINE  NODE  NWORKERS  NTHREADS  MEMORY  HOST_PROCS  HOST_RESERVE_PPM  HOST_RESERVE_BYTES
  gpu-worker CHUNK  LINE  NODE  1  NTHREADS  MEMORY  HOST_PROCS  HOST_RESERVE_PPM  HOST_RESERVE_BYTES  GPU  CHUNK_GPUS  HOST_GPU  HOST_GPUS

A CPU chunk (no ngpus) has one `worker` line: NWORKERS processes (`dask worker
--nworkers`). A GPU chunk (ngpus=G) has G `gpu-worker` lines, one per GPU, GPU = 0..G-1 in
order: each is one process (the 1), a task of its own that sees only its own device, entry
HOST_GPU (0-based) of its host's device list (CUDA_VISIBLE_DEVICES as PBS's cgroup hook
sets it, else `nvidia-smi -L`; see gpus.py), which holds the HOST_GPUS GPUs of every chunk
of the job on that host, earlier chunks' first. Its first ten fields mean what a `worker`
line's do. CHUNK_GPUS is G.

LINE is the chunk's 0-based line of $PBS_NODEFILE (pbsdsh -n LINE), NODE that line.
NTHREADS is NTHREADS, else the chunk's ncpus divided among its worker processes (NWORKERS,
or its G GPU workers), at least 1; less the core kept for the scheduler under
WORKER_ON_SCHEDULER_CHUNK=auto. MEMORY is each worker process's --memory-limit in bytes,
from the chunk's mem less the reserve, divided among the chunk's worker processes (plus
the scheduler on its chunk); `auto` when no source tells the chunk's mem: the task then
divides its host's memory limit (its cgroup) by HOST_PROCS, the Dask processes the job
starts on that host (the scheduler, NWORKERS per CPU chunk, one per GPU of a GPU chunk),
after taking off HOST_RESERVE_PPM parts per million of it (a percentage reserve) or
HOST_RESERVE_BYTES (an absolute reserve, once per chunk on the host).
"""
from __future__ import annotations

from . import pbs_sizes
from .errors import BAD_VALUE, KitError
from .job_resources import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see job_resources)
    from typing import List, Optional

    from .job_resources import Chunk, Job, Walltime

ON_SCHEDULER_CHUNK = ("yes", "no", "auto")


class Settings(Record):
    """The knobs: NWORKERS (processes per CPU chunk; a GPU chunk has one per GPU), NTHREADS
    (0: the chunk's ncpus // its worker processes), MEMORY_RESERVE,
    WORKER_ON_SCHEDULER_CHUNK (yes, no, or auto: yes when chunk 0 has 2 ncpus or more,
    keeping one for the scheduler)."""

    __slots__ = ("nworkers", "nthreads", "reserve", "worker_on_scheduler_chunk", "scheduler")

    def __init__(self, nworkers: int = 1, nthreads: int = 0, reserve: str = "10%",
                 worker_on_scheduler_chunk: str = "no", scheduler: bool = True) -> None:
        self.nworkers, self.nthreads = nworkers, nthreads
        self.reserve, self.worker_on_scheduler_chunk = reserve, worker_on_scheduler_chunk
        # False: a worker-only job (scripts/launch-dask-workers.pbs), whose workers join a
        # cluster another job runs: every chunk runs workers and no scheduler takes a share.
        self.scheduler = scheduler


class SchedulerLine(Record):
    __slots__ = ("chunk", "line", "node", "host_procs")

    def __init__(self, chunk: int, line: int, node: str, host_procs: int) -> None:
        self.chunk, self.line, self.node, self.host_procs = chunk, line, node, host_procs


class WorkerLine(Record):
    """memory: bytes per worker process, None for auto. gpu: None for a CPU chunk's line
    (nworkers processes); for one GPU worker of a GPU chunk (nworkers 1), its GPU in the
    chunk (0..chunk_gpus-1), and host_gpu, its entry in its host's list of the job's
    host_gpus devices."""

    __slots__ = ("chunk", "line", "node", "nworkers", "nthreads", "memory", "host_procs",
                 "host_reserve_ppm", "host_reserve_bytes", "gpu", "chunk_gpus", "host_gpu",
                 "host_gpus")

    def __init__(self, chunk: int, line: int, node: str, nworkers: int, nthreads: int,
                 memory: Optional[int], host_procs: int, host_reserve_ppm: int,
                 host_reserve_bytes: int, gpu: Optional[int] = None, chunk_gpus: int = 0,
                 host_gpu: int = 0, host_gpus: int = 0) -> None:
        self.chunk, self.line, self.node = chunk, line, node
        self.nworkers, self.nthreads, self.memory = nworkers, nthreads, memory
        self.host_procs, self.host_reserve_ppm = host_procs, host_reserve_ppm
        self.host_reserve_bytes = host_reserve_bytes
        self.gpu, self.chunk_gpus = gpu, chunk_gpus
        self.host_gpu, self.host_gpus = host_gpu, host_gpus


class Plan(Record):
    __slots__ = ("source", "walltime", "scheduler", "workers", "warnings")

    def __init__(self, source: str, walltime: Walltime, scheduler: SchedulerLine,
                 workers: List[WorkerLine], warnings: Optional[List[str]] = None) -> None:
        self.source, self.walltime, self.scheduler = source, walltime, scheduler
        self.workers = workers
        self.warnings = warnings if warnings is not None else []

    def lines(self) -> List[str]:
        """What `kit.py plan` prints: one tab-separated line per item."""
        wall, sched = self.walltime, self.scheduler
        rows = [
            ("job", _clean(self.source)),
            ("walltime", wall.limit, wall.left, wall.source),
            ("scheduler", sched.chunk, sched.line, sched.node, sched.host_procs),
        ]
        for w in self.workers:
            row = ("worker" if w.gpu is None else "gpu-worker", w.chunk, w.line, w.node,
                   w.nworkers, w.nthreads, "auto" if w.memory is None else w.memory,
                   w.host_procs, w.host_reserve_ppm, w.host_reserve_bytes)
            if w.gpu is not None:
                row += (w.gpu, w.chunk_gpus, w.host_gpu, w.host_gpus)
            rows.append(row)
        return ["\t".join(str(item) for item in row) for row in rows]


def _clean(text: str) -> str:
    """One field: no tabs or newlines."""
    return " ".join(str(text).split())


def check_settings(settings: Settings) -> None:
    if settings.nworkers < 1:
        raise KitError(f"NWORKERS must be at least 1, not {settings.nworkers}", BAD_VALUE)
    if settings.nthreads < 0:
        raise KitError(f"NTHREADS must be 0 (automatic) or more, not {settings.nthreads}", BAD_VALUE)
    if settings.worker_on_scheduler_chunk not in ON_SCHEDULER_CHUNK:
        raise KitError(f"WORKER_ON_SCHEDULER_CHUNK must be yes, no or auto, not "
                       f"{settings.worker_on_scheduler_chunk!r}", BAD_VALUE)
    pbs_sizes.check_reserve(settings.reserve)


def make_plan(job: Job, settings: Settings) -> Plan:
    """The plan for this job and these knobs (raises KitError when none fits)."""
    check_settings(settings)
    chunks = job.chunks
    if not chunks:
        raise KitError("the job has no chunks", BAD_VALUE)
    first = chunks[0]
    if first.first_line < 0:
        raise KitError("chunk 0 has no line in $PBS_NODEFILE (it asks for ncpus=0 or "
                       "mpiprocs=0): the scheduler runs there; give it ncpus=1 or more", BAD_VALUE)
    warnings: List[str] = []
    mode = settings.worker_on_scheduler_chunk
    on_first = mode == "yes" or (mode == "auto" and first.ncpus >= 2) or not settings.scheduler
    keep_core = mode == "auto" and on_first and settings.scheduler
    if first.ngpus and not on_first:
        why = ("WORKER_ON_SCHEDULER_CHUNK=no" if mode == "no" else
               f"it has {first.ncpus} core{'s' if first.ncpus != 1 else ''}, kept for the "
               "scheduler (WORKER_ON_SCHEDULER_CHUNK=auto needs 2 or more)")
        warnings.append(f"chunk 0's {first.ngpus} GPU{'s' if first.ngpus != 1 else ''} run no "
                        f"worker: {why}; WORKER_ON_SCHEDULER_CHUNK=yes runs one per GPU there")
    worker_chunks: List[Chunk] = []
    for chunk in chunks if on_first else chunks[1:]:
        if chunk.first_line < 0:
            warnings.append(f"chunk {chunk.index} has no line in $PBS_NODEFILE (mpiprocs=0) "
                            "and no host the node file names: no workers there")
            continue
        worker_chunks.append(chunk)
    if not worker_chunks:
        raise KitError(
            "the job has one chunk, for the scheduler, and no chunk for workers (ask for "
            "select=2 or more, or set WORKER_ON_SCHEDULER_CHUNK=yes or auto)"
            if len(chunks) == 1 and not on_first else
            "no chunk can run workers: " + "; ".join(warnings), BAD_VALUE)

    # Dask processes and chunks per host (NODE, as the node file names the host).
    procs: dict = {first.node: 1 if settings.scheduler else 0}
    chunk_count: dict = {}
    for chunk in chunks:
        if chunk.first_line >= 0:
            chunk_count[chunk.node] = chunk_count.get(chunk.node, 0) + 1
    for chunk in worker_chunks:
        procs[chunk.node] = procs.get(chunk.node, 0) + (chunk.ngpus or settings.nworkers)
    # Each host's device list holds the GPUs of every chunk of the job there, in chunk
    # order: a chunk's GPUs start after those of the chunks before it on that host.
    gpu_start: dict = {}
    host_gpus: dict = {}
    for chunk in chunks:
        host = _host_key(chunk)
        if chunk.ngpus and host:
            gpu_start[chunk.index] = host_gpus.get(host, 0)
            host_gpus[host] = host_gpus.get(host, 0) + chunk.ngpus

    workers = []
    for chunk in worker_chunks:
        on_scheduler = chunk.index == first.index and settings.scheduler
        cpus = chunk.ncpus - 1 if (on_scheduler and keep_core) else chunk.ncpus
        processes = chunk.ngpus or settings.nworkers
        threads = settings.nthreads or max(1, cpus // processes)
        # On the scheduler's chunk the scheduler counts as one more process.
        share = processes + (1 if on_scheduler else 0)
        memory = None
        if chunk.mem is not None:
            memory = pbs_sizes.memory_per_process(chunk.mem, share, settings.reserve)
        ppm, nbytes = pbs_sizes.reserve_on_host(settings.reserve, chunk_count.get(chunk.node, 1))
        if not chunk.ngpus:
            workers.append(WorkerLine(chunk.index, chunk.first_line, chunk.node, processes,
                                      threads, memory, procs[chunk.node], ppm, nbytes))
            continue
        start, total = gpu_start[chunk.index], host_gpus[_host_key(chunk)]
        for gpu in range(chunk.ngpus):
            workers.append(WorkerLine(chunk.index, chunk.first_line, chunk.node, 1, threads,
                                      memory, procs[chunk.node], ppm, nbytes, gpu,
                                      chunk.ngpus, start + gpu, total))
    scheduler = SchedulerLine(first.index, first.first_line, first.node, procs[first.node])
    return Plan(job.source, job.walltime, scheduler, workers, warnings)


def _host_key(chunk: Chunk) -> str:
    """The chunk's host, as one name whatever the source wrote (short, lower case)."""
    return (chunk.node or chunk.host or "").split(".", 1)[0].lower()
