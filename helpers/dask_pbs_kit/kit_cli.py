"""python helpers/kit.py COMMAND: what the templates ask of the helpers (users may too).

  plan      the launch plan of this job: scheduler chunk, worker chunks with their
            processes, threads and memory limit, walltime left (tab-separated lines)
  env-file  write the job script's environment to a file a pbsdsh task can source
  memory    the per-process --memory-limit for a PBS chunk size
  tls       make a job's TLS credentials (CA, cluster and client certificates)
"""
from __future__ import annotations

import os
import sys
import time

from . import args, pbs_sizes
from .errors import USAGE, KitError

# envfile and job_resources (subprocess, shlex) load only for the commands that use them:
# `memory` starts as fast as reading a JSON file.

PLAN_USAGE = """usage: kit.py plan [--nworkers N] [--nthreads T] [--reserve R] [--worker-on-scheduler-chunk yes|no] [--started EPOCH]

Inside a PBS job: print the launch plan, one tab-separated line each:
  walltime  LIMIT_S  LEFT_S                (-1 when unknown)
  scheduler CHUNK  NODEFILE_LINE  NODE
  worker    CHUNK  NODEFILE_LINE  NODE  NWORKERS  NTHREADS  MEMORY_LIMIT
MEMORY_LIMIT is bytes, or a fraction of the node's memory when the chunk has no mem=."""

MEMORY_USAGE = """usage: kit.py memory CHUNK_MEM PROCESSES [RESERVE]

Print the --memory-limit (bytes) for each of PROCESSES workers in a chunk of CHUNK_MEM
(a PBS size such as 20gb), keeping RESERVE back (default 10%; or a size such as 2gb)."""

ENV_USAGE = """usage: kit.py env-file PATH

Write the current environment, less per-node and per-task variables, to PATH (mode 0600)
as bash that a pbsdsh task sources to get the job script's environment back."""

TLS_USAGE = """usage: kit.py tls FOLDER [--name LABEL] [--walltime SECONDS] [--backend auto|openssl|cryptography]

Make a fresh CA and certificate/key pairs for one job in FOLDER (mode 0700, files 0600):
ca.pem, cluster.pem/.key (scheduler and workers), client.pem/.key (your Client), and
client-config.json (the Dask configuration that names them). The CA key is deleted
once both certificates are signed. They are valid for the walltime plus a day, or a
year without --walltime (the job starts this before it knows its walltime, and deletes
the keys when it ends). Uses openssl, else the cryptography package."""


def _count(text: str, what: str, minimum: int) -> int:
    if not text.isdigit() or int(text) < minimum:
        raise KitError(f"{what} must be an integer >= {minimum}, not {text!r}", USAGE)
    return int(text)


def plan(argv: list, environ=os.environ, attrs_of=None) -> list:
    from . import job_resources

    opts, operands = args.parse(argv, {
        "--nworkers": "value", "--nthreads": "value", "--reserve": "value",
        "--worker-on-scheduler-chunk": "value", "--started": "value",
    }, PLAN_USAGE)
    if operands:
        raise KitError(f"unexpected {operands[0]!r}\n{PLAN_USAGE}", USAGE)
    nworkers = _count(opts.get("--nworkers", "1"), "NWORKERS", 1)
    nthreads = _count(opts.get("--nthreads", "0"), "NTHREADS", 0)
    reserve = opts.get("--reserve", "10%")
    on_first = opts.get("--worker-on-scheduler-chunk", "no")
    if on_first not in ("yes", "no"):
        raise KitError(f"WORKER_ON_SCHEDULER_CHUNK must be yes or no, not {on_first!r}", USAGE)
    started = args.number(opts.get("--started", str(time.time())), "--started")
    attrs = (attrs_of or job_resources.qstat_attributes)(job_resources.job_id(environ))
    chunks = job_resources.job_chunks(environ, attrs)
    worker_chunks = chunks if on_first == "yes" else chunks[1:]
    if not worker_chunks:
        raise KitError(
            "the job has one chunk, for the scheduler, and no chunk for workers (ask for "
            "select=2 or more, or set WORKER_ON_SCHEDULER_CHUNK=yes)", USAGE)
    limit = job_resources.walltime_limit(attrs)
    left = job_resources.time_left(attrs, started)
    lines = [("walltime", -1 if limit is None else limit, -1 if left is None else left)]
    first = chunks[0]
    lines.append(("scheduler", first.index, first.first_line, first.node))
    for chunk in worker_chunks:
        # On the scheduler's chunk the scheduler counts as one more process.
        share = nworkers + (1 if chunk.index == 0 else 0)
        threads = nthreads or max(1, chunk.ncpus // nworkers)
        if chunk.mem is None:
            memory = f"{pbs_sizes.fraction_per_process(share, reserve):.4f}"
        else:
            memory = str(pbs_sizes.memory_per_process(chunk.mem, share, reserve))
        lines.append(("worker", chunk.index, chunk.first_line, chunk.node, nworkers, threads, memory))
    return lines


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


# Commands whose code lives in a module of their own: the module loads only when its
# command runs (each has `cli(argv: list) -> None`, printing its output and raising KitError).
MODULE_COMMANDS = {
    "wait-ready": "ready",      # wait for the scheduler and every worker (the job runs it)
    "banner": "banner",         # the lines that say where the cluster is and how to reach it
    "interface": "netif",       # INTERFACE=auto: this node's interface for Dask
    "host-memory": "host_memory",  # a worker's --memory-limit on its own host (cgroup, RAM)
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] in ("-h", "--help"):
            raise KitError(__doc__.strip(), 0 if argv else USAGE)
        command, rest = argv[0], argv[1:]
        if command == "plan":
            for line in plan(rest):
                print("\t".join(str(item) for item in line))
        elif command == "memory":
            print(memory(rest))
        elif command == "env-file":
            from . import envfile

            _, operands = args.parse(rest, {}, ENV_USAGE)
            if len(operands) != 1:
                raise KitError(ENV_USAGE, USAGE)
            envfile.write_env_file(operands[0], os.environ)
        elif command == "tls":
            tls(rest)
        elif command in MODULE_COMMANDS:
            import importlib

            importlib.import_module(f".{MODULE_COMMANDS[command]}", __package__).cli(rest)
        else:
            raise KitError(f"unknown command {command!r}\n{__doc__.strip()}", USAGE)
        return 0
    except KitError as exc:
        if exc.code == 0:
            print(exc)
        else:
            print(f"dask-pbs: {exc}", file=sys.stderr)
        return exc.code
