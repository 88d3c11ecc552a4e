"""python helpers/kit.py COMMAND: what the templates ask of the helpers (users may too).

  plan      read this job (qstat, $PBS_NODEFILE) and print its launch plan: where its
            chunks came from, walltime left, scheduler chunk, worker chunks with their
            processes, threads and memory limit (tab-separated lines)
  env-file  write the job script's environment to a file a pbsdsh task can source
            (per-host variables stay each task's own)
  memory    the per-process --memory-limit for a PBS chunk size
  tls       make a job's TLS credentials (CA, cluster and client certificates)
  job-setup plan, env-file and tls at once, in one Python start (the job script's call)
  wait-ready       wait until the scheduler and every launched worker have registered
  banner           the lines that say where the cluster is and how to reach it
  jupyter-prepare  JUPYTER=yes: the job's private JupyterLab folder and token
  jupyter-wait     until JupyterLab answers; its banner lines (URL, tunnel)
  join-check       a worker job: may its workers join the cluster of that scheduler file?
  retire           a worker job's workers leave the cluster, their data handed over
On each node, for its Dask process (task.sh):
  interface        INTERFACE=auto: this node's interface for Dask
  host-memory      a worker's --memory-limit: never more than its host's share
  task-setup       both of the above in one call
  gpu              a GPU worker's device on its host, and its worker command
Each command says more with --help.
"""
from __future__ import annotations

import os
import sys
import time

from . import args, pbs_sizes
from .errors import BAD_VALUE, USAGE, KitError

# envfile, job_resources, qstat_reader and plan (subprocess, shlex, json) load only for the
# commands that use them: `memory` starts as fast as reading a JSON file.

PLAN_USAGE = """usage: kit.py plan [--nworkers N] [--nthreads T] [--reserve R]
                   [--worker-on-scheduler-chunk yes|no|auto] [--walltime [[HH:]MM:]SS] [--started EPOCH]
                   [--no-scheduler]

Inside a PBS job: read the job (qstat, $PBS_NODEFILE, $NCPUS) and print the launch plan,
one tab-separated line each:
  job        SOURCE
  walltime   LIMIT_S  LEFT_S  SOURCE       (-1 -1 none when unknown; pbs, WALLTIME or none)
  scheduler  CHUNK  LINE  NODE  HOST_PROCS
  worker     CHUNK  LINE  NODE  NWORKERS  NTHREADS  MEMORY  HOST_PROCS  HOST_RESERVE_PPM  HOST_RESERVE_BYTES
  gpu-worker CHUNK  LINE  NODE  1  NTHREADS  MEMORY  HOST_PROCS  HOST_RESERVE_PPM  HOST_RESERVE_BYTES  GPU  CHUNK_GPUS  HOST_GPU  HOST_GPUS
A CPU chunk has one worker line (NWORKERS processes); a chunk with ngpus=G has G
gpu-worker lines, GPU 0..G-1, each one process that must see only entry HOST_GPU
(0-based) of its host's HOST_GPUS devices (kit.py gpu tells which on the host).
NTHREADS divides the chunk's ncpus among its processes unless --nthreads is given.
MEMORY is each worker's --memory-limit in bytes, or auto when no source tells the chunk's
mem (the task then divides its host's memory limit by HOST_PROCS, less the reserve).
--walltime (WALLTIME) stands in when PBS does not tell the walltime; --started is the job
script's start (seconds since the epoch); --no-scheduler: a worker-only job (every chunk
runs workers, no scheduler shares chunk 0). Warnings go to stderr."""

MEMORY_USAGE = """usage: kit.py memory CHUNK_MEM PROCESSES [RESERVE]

Print the --memory-limit (bytes) for each of PROCESSES workers in a chunk of CHUNK_MEM
(a PBS size such as 20gb), keeping RESERVE back (default 10%; or a size such as 2gb)."""

ENV_USAGE = """usage: kit.py env-file [--initial-from PID] PATH

Write the current environment, less per-node and per-task variables, to PATH (mode 0600)
as bash that a pbsdsh task sources to get the job script's environment back. A variable
the job script set or changed is exported on every task; one it has as it started (from
PBS, the login profile or a hook: its shell's /proc/PID/environ) only where the task
lacks it, so that per-host values (CUDA_VISIBLE_DEVICES, TMPDIR...) stay the task's own.
PID is the job script's shell: by default this helper's parent (run it from the script)."""

TLS_USAGE = """usage: kit.py tls FOLDER [--name LABEL] [--walltime SECONDS] [--backend auto|openssl|cryptography]

Make a fresh CA and certificate/key pairs for one job in FOLDER (mode 0700, files 0600):
ca.pem, cluster.pem/.key (scheduler and workers), client.pem/.key (your Client), and
client-config.json (the Dask configuration that names them). The CA key is deleted
once both certificates are signed. They are valid for the walltime plus a day, or a
year without --walltime (the job starts this before it knows its walltime, and deletes
the keys when it ends). Uses openssl, else the cryptography package."""

JOB_SETUP_USAGE = """usage: kit.py job-setup --env-file PATH --plan-file PATH [--tls FOLDER [--name LABEL]]
                        [--initial-from PID] [--say-scheduler-may-start [--say-workers-may-start]]
                        [-- PLAN OPTIONS...]

What the job script needs before it starts a task, in one Python start: the launch plan
(as `plan` with PLAN OPTIONS, written to --plan-file in one rename), the task environment
(as `env-file`: the job script's shell is PID, by default this helper's parent) and, with
--tls, the job's certificates (as `tls`). They run at once: qstat and openssl are
processes of their own. --say-scheduler-may-start: as soon as the environment file
exists, while the certificates and the plan are still in the making, print
`scheduler-may-start<TAB>0<TAB>NODE` on stdout (NODE: the first line of $PBS_NODEFILE,
where PBS puts chunk 0 and the plan the scheduler; the job starts it there at once, and
it waits for the certificates and the plan's size: task.sh's tls_pending and workers).
--say-workers-may-start: right after it, when no two consecutive lines of $PBS_NODEFILE
are the same host (each line then one chunk, as PBS Pro writes one line per chunk of
mpiprocs=1, its default), `worker-may-start<TAB>LINE<TAB>NODE` for each line from 1 on:
the job starts a worker task there at once, which takes chunk LINE's row of the plan once
Dask is imported, or ends if the plan has none (task.sh's plan, chunk and line).
Each one's error goes to stderr; the status is the first failure's, 0 if none."""


def _count(text: str, what: str, minimum: int) -> int:
    if not args.is_digits(text) or int(text) < minimum:
        raise KitError(f"{what} must be an integer >= {minimum}, not {text!r}", BAD_VALUE)
    return int(text)


def plan(argv: list, environ=os.environ, run=None):
    """Read the job this process runs in and make its plan (a plan.Plan)."""
    from . import job_resources
    from .plan import Settings, check_settings, make_plan

    opts, operands = args.parse(argv, {
        "--nworkers": "value", "--nthreads": "value", "--reserve": "value",
        "--worker-on-scheduler-chunk": "value", "--walltime": "value", "--started": "value",
        "--no-scheduler": "flag",
    }, PLAN_USAGE)
    if operands:
        raise KitError(f"unexpected {operands[0]!r}\n{PLAN_USAGE}", USAGE)
    settings = Settings(
        nworkers=_count(opts.get("--nworkers", "1"), "NWORKERS", 1),
        nthreads=_count(opts.get("--nthreads", "0"), "NTHREADS", 0),
        reserve=opts.get("--reserve", "10%"),
        worker_on_scheduler_chunk=opts.get("--worker-on-scheduler-chunk", "no"),
        scheduler="--no-scheduler" not in opts,
    )
    check_settings(settings)  # before qstat runs
    walltime = opts.get("--walltime") or None
    if walltime is not None:
        job_resources.parse_walltime(walltime)  # a bad WALLTIME is refused even when PBS tells
    started = args.number(opts.get("--started", str(time.time())), "--started", BAD_VALUE)
    job = job_resources.load_job(environ, walltime, started, run)
    for warning in job.warnings:
        print(f"dask-pbs: warning: {warning}", file=sys.stderr)
    result = make_plan(job, settings)
    for warning in result.warnings:
        print(f"dask-pbs: warning: {warning}", file=sys.stderr)
    return result


def memory(argv: list) -> int:
    opts, operands = args.parse(argv, {}, MEMORY_USAGE)
    if len(operands) not in (2, 3):
        raise KitError(MEMORY_USAGE, USAGE)
    size = pbs_sizes.parse_size(operands[0])
    processes = _count(operands[1], "PROCESSES", 1)
    reserve = operands[2] if len(operands) == 3 else "10%"
    return pbs_sizes.memory_per_process(size, processes, reserve)


def tls(argv: list) -> None:
    from . import tls_files

    opts, operands = args.parse(argv, {"--name": "value", "--walltime": "value",
                                       "--backend": "value"}, TLS_USAGE)
    if len(operands) != 1:
        raise KitError(TLS_USAGE, USAGE)
    walltime = opts.get("--walltime", "-1")
    days = 366 if walltime == "-1" else -(-int(args.number(walltime, "--walltime")) // 86400) + 1
    tls_files.create(operands[0], opts.get("--name", "job"), days, opts.get("--backend", "auto"))


def env_file(argv: list) -> None:
    from . import envfile

    opts, operands = args.parse(argv, {"--initial-from": "value"}, ENV_USAGE)
    if len(operands) != 1:
        raise KitError(ENV_USAGE, USAGE)
    pid = opts.get("--initial-from")
    envfile.write_env_file(operands[0], os.environ,
                           None if pid is None else _count(pid, "--initial-from PID", 1))


def job_setup(argv: list) -> int:
    """kit.py job-setup: the certificates and the plan (qstat, a process) in threads (openssl
    runs as processes), the environment file here; every failure told, in that order
    (plan, env-file, tls), and the first one's status returned."""
    import threading
    from collections.abc import Callable

    opts, plan_argv = args.parse(argv, {"--env-file": "value", "--plan-file": "value",
                                        "--tls": "value", "--name": "value",
                                        "--initial-from": "value",
                                        "--say-scheduler-may-start": "flag",
                                        "--say-workers-may-start": "flag"}, JOB_SETUP_USAGE)
    absent = [name for name in ("--env-file", "--plan-file") if name not in opts]
    if absent:
        raise KitError(f"missing {', '.join(absent)}\n{JOB_SETUP_USAGE}", USAGE)
    failures: dict = {}

    def attempt(part: str, work: Callable[[], None]) -> None:
        try:
            work()
        except KitError as exc:
            failures[part] = exc
        except Exception as exc:  # noqa: BLE001 - in a thread: never lost, never a silent pass
            failures[part] = KitError(f"{part} failed: {exc!r}")

    def write_plan() -> None:
        lines = plan(plan_argv).lines()
        path = opts["--plan-file"]
        # One rename: a scheduler started before the plan reads it as soon as it exists.
        with open(f"{path}.tmp", "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(f"{path}.tmp", path)

    def start(part: str, work: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=attempt, args=(part, work))
        thread.start()
        return thread

    making = None
    if "--tls" in opts:
        tls_argv = [opts["--tls"], "--name", opts.get("--name", "job")]
        making = start("tls", lambda: tls(tls_argv))
    planning = start("plan", write_plan)
    initial = ["--initial-from", opts["--initial-from"]] if "--initial-from" in opts else []
    attempt("env-file", lambda: env_file([*initial, opts["--env-file"]]))
    if opts.get("--say-scheduler-may-start") and "env-file" not in failures:
        say_may_start(bool(opts.get("--say-workers-may-start")))
    if making is not None:
        making.join()
    planning.join()
    told = [failures[part] for part in ("plan", "env-file", "tls") if part in failures]
    for failure in told:
        print(f"dask-pbs: {failure}", file=sys.stderr)
    return told[0].code if told else 0


def say_may_start(workers: bool, environ=os.environ) -> None:
    """job-setup's early lines: the scheduler's node-file line and node, where PBS runs the
    job script (chunk 0's first line); with workers, each later line's when no two
    consecutive lines are the same host (early_worker_lines). Nothing when the node file
    cannot be read (the plan then says why)."""
    from . import job_resources

    try:
        lines = job_resources.read_nodefile(environ.get("PBS_NODEFILE", ""))
    except KitError:
        return
    if not lines:
        return
    said = [f"scheduler-may-start\t0\t{lines[0]}"]
    if workers:
        said += [f"worker-may-start\t{i}\t{lines[i]}" for i in early_worker_lines(lines)]
    print("\n".join(said), flush=True)


def early_worker_lines(lines: list) -> list:
    """The node-file lines where a worker task may start before the plan, each guessed to
    be the chunk of its number: every line from 1 on, when no two consecutive lines are the
    same host (PBS Pro writes mpiprocs lines per chunk, 1 by default); none otherwise (a
    chunk of several lines, or chunks sharing a host: only the plan tells them apart)."""
    if any(a == b for a, b in zip(lines, lines[1:])):
        return []
    return list(range(1, len(lines)))


# Commands whose code lives in a module of their own: the module loads only when its
# command runs. "module" calls module.cli(argv), "module:name" module.name(argv); each
# prints its output and raises KitError.
MODULE_COMMANDS = {
    "wait-ready": "ready",      # wait for the scheduler and every worker (the job runs it)
    "banner": "banner",         # the lines that say where the cluster is and how to reach it
    "interface": "netif",       # INTERFACE=auto: this node's interface for Dask
    "host-memory": "host_memory",  # a worker's --memory-limit on its own host (cgroup, RAM)
    "task-setup": "dask_start",  # both of the above in one call (task.sh, when dask's Python is unknown)
    "gpu": "gpus",              # a GPU worker's device on its host, and its worker command
    "jupyter-prepare": "jupyter:prepare_cli",  # JUPYTER=yes: the job's private Jupyter folder
    "jupyter-wait": "jupyter:wait_cli",        # ... until JupyterLab answers; its banner lines
    "join-check": "grow:join_check_cli",  # a worker job: may it join that cluster? (NAME VALUE lines)
    "retire": "grow:retire_cli",          # a worker job's workers leave, their data moved
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] in ("-h", "--help"):
            raise KitError(__doc__.strip(), 0 if argv else USAGE)
        command, rest = argv[0], argv[1:]
        if command == "plan":
            print("\n".join(plan(rest).lines()))
        elif command == "memory":
            print(memory(rest))
        elif command == "env-file":
            env_file(rest)
        elif command == "tls":
            tls(rest)
        elif command == "job-setup":
            return job_setup(rest)
        elif command in MODULE_COMMANDS:
            import importlib

            module, _, function = MODULE_COMMANDS[command].partition(":")
            getattr(importlib.import_module(f".{module}", __package__), function or "cli")(rest)
        else:
            raise KitError(f"unknown command {command!r}\n{__doc__.strip()}", USAGE)
        return 0
    except KitError as exc:
        if exc.code == 0:
            print(exc)
        else:
            print(f"dask-pbs: {exc}", file=sys.stderr)
        return exc.code
