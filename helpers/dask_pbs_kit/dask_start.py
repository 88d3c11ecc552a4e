"""How a pbsdsh task starts its Dask process: the node's checks and Dask in one Python.

scripts/lib/task.sh execs `main()` in the Python of the job's `dask` command (the
interpreter its script names) where it would have run `dask scheduler|worker ARGS`:

    PYTHON -c 'import sys; sys.path.insert(0, sys.argv[1]); from dask_pbs_kit.dask_start import main; main()' \\
        KIT/helpers NAME=VALUE... -- DASK ARGS...

In that one process, in this order:
  1. its output goes to the task's log (the job's stderr is kept for a failure's message);
     its open-file limit goes up to the hard one, and, given the job's size (workers=; the
     scheduler, which starts before the plan is written, reads it from the plan: job_size),
     Dask's connect timeout and the scheduler's listen backlog follow it (size_for);
  2. a worker whose nanny starts worker processes with multiprocessing's forkserver (the kit
     sets distributed.worker.multiprocessing-method to forkserver unless the job's
     environment says otherwise): the forkserver starts at once, a fork of this process
     right after `import distributed` (start_forkserver: one import per chunk, not one for
     the nanny and one for a forkserver of its own), and imports the worker's HTTP routes
     (and, for several processes per chunk, its dashboard) while this process goes on with
     the nanny's; each worker process is then a fork of it (milliseconds), where spawn
     starts a fresh interpreter that imports them again, once per process (--nworkers N:
     N times). A worker of one process per chunk adds its dashboard once the cluster is
     ready instead (hold_back_worker_dashboard);
  3. what `kit.py interface` (INTERFACE=auto) and `kit.py host-memory` (a worker's memory
     limit) compute, without a Python start of their own: --interface and --memory-limit
     are added to the Dask arguments, the choice written to the iface file;
  4. the task's line in its log (what runs where, and when), then distributed's own
     `dask scheduler` or `dask worker` command; the scheduler's dashboard is added by the
     kit's plugin as soon as it listens (hold_back_dashboard). The dashboards' bokeh
     modules cost a process as much CPU as distributed's own, before it can serve: see
     scripts/lib/scheduler_preload.py.
Exit statuses as task.sh's: 2 usage, 3 no interface, 7 too little memory.

`kit.py task-setup` (cli below) computes step 3 in one helper call for task.sh's other
path (a `dask` command whose Python cannot be told from its first lines).
"""
from __future__ import annotations

import os
import sys
import time

from . import args
from .errors import BAD_VALUE, MISSING, NO_INTERFACE, USAGE, KitError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see job_resources)
    from typing import Optional

SETTINGS = ("role", "node", "log", "iface", "interface", "first", "scheduler_file", "timeout",
            "memory", "host_procs", "reserve_ppm", "reserve_bytes", "started", "script", "workers",
            "tls", "tls_pending", "plan", "chunk", "line")
METHOD_VARIABLE = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"
# What a worker process imports as it starts, beyond `import distributed`: its dashboard
# (bokeh: as long again as distributed itself) and its HTTP routes. A module that is not
# installed is skipped by the forkserver (ImportError).
WORKER_DASHBOARD = ["distributed.dashboard.worker"]
WORKER_ROUTES = ["distributed.http.worker.prometheus.core", "distributed.http.health",
                 "distributed.http.statics"]
STATUS = {NO_INTERFACE: 3, BAD_VALUE: 7, USAGE: 2}  # KitError code -> task.sh's exit status


def parse(argv: list) -> tuple:
    """({setting: value}, [dask args]) from NAME=VALUE... -- ARGS."""
    settings: dict = {}
    for i, word in enumerate(argv):
        if word == "--":
            return settings, argv[i + 1:]
        name, eq, value = word.partition("=")
        if not eq or name not in SETTINGS:
            raise KitError(f"dask_start: unknown setting {word!r}", USAGE)
        settings[name] = value
    raise KitError("dask_start: no -- before the Dask arguments", USAGE)


def preload_modules(dask_args: list) -> list:
    """What the worker processes' forkserver imports before it forks them."""
    modules = ["distributed"] + WORKER_ROUTES
    if "--no-dashboard" not in dask_args:
        modules += WORKER_DASHBOARD
    return modules


def uses_forkserver(role: str, dask_args: list, environ=os.environ) -> bool:
    """A worker with a nanny whose multiprocessing method is forkserver."""
    return (role == "worker" and "--no-nanny" not in dask_args
            and environ.get(METHOD_VARIABLE, "forkserver").strip().lower() == "forkserver")


SUN_PATH = 107  # the longest path of a unix socket (Linux's sun_path less its NUL)
SOCKET_NAMES = len("/pymp-xxxxxxxx/listener-xxxxxxxx")  # multiprocessing's, under the temp folder


def socket_folder() -> None:
    """The forkserver listens on a unix socket in multiprocessing's temp folder, made under
    TMPDIR (PBS's job folder on the node, removed with the job). A TMPDIR too long for a
    socket's path ("AF_UNIX path too long") raises OSError: the nanny then spawns its worker
    processes. A folder elsewhere (/tmp) would outlive every task that PBS kills at the
    job's end, and the socket must stay private (no abstract socket: anyone on the node
    could ask the forkserver for a process of this user's)."""
    import tempfile

    if len(tempfile.gettempdir()) + SOCKET_NAMES > SUN_PATH:
        raise OSError(f"TMPDIR {tempfile.gettempdir()} is too long a path for the forkserver's socket "
                      f"({SUN_PATH - SOCKET_NAMES} characters at most)")


def start_forkserver(modules: list) -> str:
    """Start multiprocessing's forkserver now, preloading modules; distributed's nanny then
    finds it running and only asks it for forks. Where this Python's forkserver is the one
    the kit knows (fork_layout_known), it is a fork of this process taken right after
    `import distributed` (fork_forkserver): one import for the nanny and its worker
    processes, where a forkserver of its own is a second interpreter importing it all
    again (about 0.45 s of CPU per chunk). Otherwise multiprocessing starts it, importing
    modules while we go on. Returns how it started ("fork" or "spawn"). Raises OSError when
    it cannot start."""
    import multiprocessing
    import multiprocessing.forkserver

    socket_folder()
    if fork_layout_known(multiprocessing.forkserver):
        try:
            import distributed  # noqa: F401  (what the nanny and every worker process import)
        except ImportError:
            pass  # the nanny's own import says what is wrong, in the task's log
        else:
            if single_threaded():
                fork_forkserver(multiprocessing.forkserver, [m for m in modules if m != "distributed"])
                return "fork"
    multiprocessing.get_context("forkserver").set_forkserver_preload(modules)
    # The forkserver is a `python -c` whose sys.path starts with its current folder, and it
    # imports its preload before it would take ours (Python 3.11 never takes it): started
    # from the submit folder, a user's tornado.py there would stand in for tornado's in
    # every worker. Its children go back to this folder and this sys.path themselves.
    here = os.getcwd()
    os.chdir("/")
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        os.chdir(here)
    return "spawn"


# What multiprocessing.forkserver holds in Python 3.4-3.13: a fork of ours must fill in
# exactly these, and serve with main(listener_fd, alive_r, preload, ...). A Python whose
# forkserver differs (3.14 adds an authentication key) gets a forkserver of its own.
FORKSERVER_STATE = {"_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid",
                    "_inherited_fds", "_lock", "_preload_modules"}
FORKSERVER_MAIN = ("listener_fd", "alive_r", "preload", "main_path", "sys_path")
FORKSERVER_NAME = "dask-forkserver"  # its name in ps and top (15 characters at most)


def fork_layout_known(module) -> bool:
    """Whether module (multiprocessing.forkserver) is the forkserver fork_forkserver can
    stand in for, none running yet."""
    server = getattr(module, "_forkserver", None)
    main = getattr(module, "main", None)
    code = getattr(main, "__code__", None)
    return (server is not None and code is not None and set(vars(server)) == FORKSERVER_STATE
            and code.co_varnames[:code.co_argcount] == FORKSERVER_MAIN
            and server._forkserver_pid is None)


def single_threaded() -> bool:
    """No Python thread besides this one: a fork keeps only the forking thread, and a lock
    another one held would stay locked in the forkserver and every worker process. (A BLAS
    pool's threads, started by numpy's import, are stopped and restarted by the library's
    own fork handlers, as for multiprocessing's own forkserver, which preloads numpy too.)"""
    import threading

    return threading.active_count() == 1


def fork_forkserver(module, modules: list) -> None:
    """A forkserver forked from this process, as multiprocessing.forkserver.ensure_running()
    would spawn one: listening on a private unix socket, ending when every process holding
    the "alive" pipe's write end (this one, and each worker process it forks) has ended. It
    imports modules after the fork, while this process goes on with the nanny's."""
    import socket
    from multiprocessing import connection

    listener = socket.socket(socket.AF_UNIX)
    try:
        address = connection.arbitrary_address("AF_UNIX")
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
    except OSError:
        listener.close()
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        serve_forks(module, listener.detach(), alive_r, modules)
    listener.close()
    os.close(alive_r)
    server = module._forkserver
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid


def serve_forks(module, listener_fd: int, alive_r: int, modules: list) -> None:
    """The forked forkserver: only its socket, its end of the alive pipe and stdin/out/err
    kept (the job's stderr and this process's write end of the pipe closed, or it would
    outlive the nanny), named in ps, then multiprocessing's own loop. Never returns."""
    code = 0
    try:
        keep = sorted({listener_fd, alive_r})
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, fd_ceiling())
        rename(FORKSERVER_NAME, back_in_children=True)
        module.main(listener_fd, alive_r, modules)
    except SystemExit:  # main()'s way out: the alive pipe closed
        pass
    except BaseException:  # noqa: BLE001  (said in the task's log; the nanny spawns then)
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def fd_ceiling() -> int:
    """One more than this process's highest open file descriptor (the open-file limit where
    /proc cannot tell: it may be large, as size_for raises it)."""
    try:
        return max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def rename(name: str, back_in_children: bool = False) -> None:
    """This process's name in ps and top (Linux's /proc/self/comm); its forks get the old
    one back. Nothing where the system has no such file."""
    try:
        with open("/proc/self/comm", "r+", encoding="utf-8") as fh:
            old = fh.read().strip()
            fh.seek(0)
            fh.write(name)
    except OSError:
        return
    if back_in_children:
        os.register_at_fork(after_in_child=lambda: rename(old))


LARGE = 200               # worker processes from which Dask's settings follow the job's size
CONNECT_PER_WORKER = 0.02  # s of connect timeout per worker process: the scheduler registers
                          # one in 6-7 ms of CPU here (bench/README.md, Scale), times 3
FDS_PER_WORKER = 2        # the scheduler's connections per worker process (measured), and
FDS_SPARE = 128           # its own files besides


def wait_for(path: str, timeout: float, clock=time.monotonic, nap=time.sleep) -> bool:
    """Whether path exists, waited for at most timeout s (every 5 ms)."""
    deadline = clock() + timeout
    while not os.path.exists(path):
        if clock() >= deadline:
            return False
        nap(0.005)
    return True


def read_plan(path: str, timeout: float, clock=time.monotonic, nap=time.sleep) -> Optional[list]:
    """The launch plan's rows (kit.py plan's lines, split at tabs) once PATH exists, waited
    for at most timeout s (tasks start while job-setup still waits for qstat; the plan
    appears in one rename); None when it does not come or cannot be read."""
    if not wait_for(path, timeout, clock, nap):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.split("\t") for line in fh.read().splitlines()]
    except OSError:
        return None


def worker_processes(rows: list) -> int:
    """The plan's worker processes: the sum of its worker and gpu-worker rows' NWORKERS."""
    return sum(int(row[4]) for row in rows
               if row[0] in ("worker", "gpu-worker") and len(row) > 4 and args.is_digits(row[4]))


def job_size(value: str, timeout: float, clock=time.monotonic, nap=time.sleep) -> int:
    """The job's worker processes from workers=: N, or plan:PATH, the job's launch plan:
    their sum (read_plan). 0 (unknown) when the plan does not come or cannot be read: the
    job script stops a task whose plan failed."""
    if args.is_digits(value):
        return int(value)
    rows = read_plan(value[len("plan:"):], timeout, clock, nap) if value.startswith("plan:") else None
    return 0 if rows is None else worker_processes(rows)


def take_plan_row(settings: dict, dask_args: list, timeout: float, clock=time.monotonic,
                  nap=time.sleep) -> Optional[tuple]:
    """A worker task started before the plan (plan=PATH chunk=C line=L: the job script
    guessed that node-file line L is chunk C's): (its settings, its Dask arguments) from
    the plan's `worker` row of chunk C at line L (the memory settings, the job's size;
    --nthreads, --name and --nworkers before the job's own arguments, so that
    EXTRA_WORKER_ARGS still come last and win); None when the plan has no such row (a GPU
    chunk's line, or the guess was wrong: the job script starts that chunk's tasks itself).
    KitError when the plan does not come within timeout s."""
    path = settings.get("plan", "")
    rows = read_plan(path, timeout, clock, nap)
    if rows is None:
        raise KitError(f"the job's launch plan {path} did not come within {timeout:g} s (the job "
                       "script stops its tasks when the plan fails: see its messages)", MISSING)
    chunk, line = settings.get("chunk", ""), settings.get("line", "")
    for row in rows:
        if row[0] == "worker" and len(row) >= 10 and row[1] == chunk and row[2] == line:
            nworkers, nthreads, memory, host_procs, ppm, reserve = row[4:10]
            settings = dict(settings, memory=memory, host_procs=host_procs, reserve_ppm=ppm,
                            reserve_bytes=reserve, workers=str(worker_processes(rows)))
            return settings, ["--nthreads", nthreads, "--name", f"chunk-{chunk}",
                              "--nworkers", nworkers] + dask_args
    return None


def await_certificates(folder: str, node: str, timeout: float, clock=time.monotonic,
                       nap=time.sleep) -> None:
    """The scheduler, started while job-setup makes the job's certificates (tls_pending):
    once Dask is imported, wait for them, at most timeout s (kit.py tls writes the client's
    configuration last, once every certificate is); a KitError (task.sh's message) when
    they do not come or cannot be read."""
    from .tls_files import CA, CLIENT_CONFIG, CLUSTER_CERT, CLUSTER_KEY

    own = (CA, CLUSTER_CERT, CLUSTER_KEY)
    if not (wait_for(os.path.join(folder, CLIENT_CONFIG), timeout, clock, nap)
            and all(os.access(os.path.join(folder, name), os.R_OK) for name in own)):
        raise KitError(f"cannot read the job's TLS certificates in {folder} on node {node} (is the "
                       "submit folder shared with the compute nodes?)")


def size_for(role: str, workers: int, environ=os.environ, limits=None,
             somaxconn: str = "/proc/sys/net/core/somaxconn") -> list:
    """Fit Dask to a job of `workers` worker processes (0: unknown), in this process's
    environment before Dask's import, and say what the node may not allow (warnings).
    Always: the soft limit of open files up to the hard one (distributed's scheduler raises
    it to half). From LARGE workers: a connect timeout that covers the scheduler registering
    them all in turn (distributed.comm.timeouts.connect, 30 s), and, on the scheduler, a
    listen backlog that holds them (distributed.comm.socket-backlog, 2048); a setting the
    job's environment already has stays."""
    import resource

    limits = limits or resource
    notes = []
    soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    if hard != limits.RLIM_INFINITY and soft < hard:
        try:
            limits.setrlimit(limits.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    if workers < LARGE:
        return notes
    connect = "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"
    environ.setdefault(connect, f"{max(30, round(CONNECT_PER_WORKER * workers))}s")
    if role != "scheduler":
        return notes
    backlog = max(2048, FDS_PER_WORKER * workers + 64)
    environ.setdefault("DASK_DISTRIBUTED__COMM__SOCKET_BACKLOG", str(backlog))
    try:
        with open(somaxconn) as fh:
            cap = int(fh.read().strip())
    except (OSError, ValueError):
        cap = None
    if cap is not None and cap < backlog:
        notes.append(f"the kernel caps a listen backlog at {cap} (net.core.somaxconn): connections of "
                     f"{workers} worker processes beyond it wait for TCP's retries (seconds); a site may "
                     f"raise it to {backlog}")
    needed = FDS_PER_WORKER * workers + FDS_SPARE
    if soft != limits.RLIM_INFINITY and soft < needed:
        notes.append(f"the scheduler may hold {needed} files open for {workers} worker processes, and this "
                     f"node lets it open {soft} (ulimit -Hn): ask the site for more, or run fewer processes")
    return notes


def hold_back_dashboard(dask_args: list, environ=os.environ) -> list:
    """A scheduler with the kit's plugin and a dashboard: start it with --no-dashboard (its
    HTTP server still listens at --dashboard-address) and let the plugin add the dashboard
    in a thread once it listens (scripts/lib/scheduler_preload.py): bokeh's pages cost the
    scheduler as much CPU as distributed itself, before it could listen; the roll waits
    for them, so the job announces a dashboard that answers. Returns the arguments to use;
    sets what the plugin reads."""
    if ("--no-dashboard" in dask_args or "--dashboard" in dask_args
            or not any(a.endswith("scheduler_preload.py") for a in dask_args)):
        return dask_args
    environ["DASK_PBS_KIT_DASHBOARD"] = "later"
    environ["DASK_PBS_KIT_DASHBOARD_PREFIX"] = dashboard_prefix(dask_args)
    return ["--no-dashboard"] + dask_args


def option_value(dask_args: list, names: tuple, default: str) -> str:
    """The last value given to one of the options names (--name VALUE or --name=VALUE) in
    the Dask arguments, default when none is."""
    value = default
    for i, word in enumerate(dask_args):
        name, eq, inline = word.partition("=")
        if name in names:
            value = inline if eq else (dask_args[i + 1] if i + 1 < len(dask_args) else value)
    return value


def nworkers(dask_args: list) -> str:
    """The --nworkers (or --nprocs) value of dask worker's arguments, "1" when absent."""
    return option_value(dask_args, ("--nworkers", "--nprocs"), "1")


def dashboard_prefix(dask_args: list) -> str:
    return option_value(dask_args, ("--dashboard-prefix",), "")


def hold_back_worker_dashboard(dask_args: list, preload: str, forkserver: bool,
                               environ=os.environ) -> list:
    """A worker's dashboard (bokeh: as much to import as distributed) comes once the cluster
    is ready: it starts with --no-dashboard and the kit's preload, which adds the pages when
    the scheduler's plugin says so (scripts/lib/scheduler_preload.py). Not when a forkserver
    imports them once for several processes of the chunk, nor when the user chose
    (--no-dashboard, --dashboard). Returns the arguments to use; sets what the preload reads."""
    if ("--no-dashboard" in dask_args or "--dashboard" in dask_args or not os.path.exists(preload)
            or (forkserver and nworkers(dask_args) != "1")):
        return dask_args
    environ["DASK_PBS_KIT_WORKER_DASHBOARD"] = "later"
    environ["DASK_PBS_KIT_DASHBOARD_PREFIX"] = dashboard_prefix(dask_args)
    return ["--no-dashboard", "--preload", preload] + dask_args


def skip_parent_preload() -> None:
    """distributed's get_mp_context() imports numpy, pandas and lz4 in the nanny process itself
    before it gives the forkserver its preload list, which comes too late here (the
    forkserver runs already): skip that, where this distributed has the flag for it."""
    import distributed.utils

    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True


def node_facts(settings: dict) -> tuple:
    """((interface name, address, how chosen) or None, (memory limit, why) or None) for the
    task's settings: INTERFACE=auto's choice, and a worker's memory limit on this host.
    A worker may wait (timeout) for the scheduler file to find the first node. Raises
    KitError (NO_INTERFACE, BAD_VALUE)."""
    chosen = limit = None
    role = settings.get("role")
    if settings.get("interface") == "auto":
        from . import netif

        wait = role == "worker"
        iface, how = netif.detect(settings.get("first", ""),
                                  settings.get("scheduler_file", "") if wait else "",
                                  args.number(settings.get("timeout", "120"), "timeout") if wait else 0.0)
        chosen = (iface.name, iface.address, how)
    if role == "worker":
        limit = memory_limit(settings)
    return chosen, limit


def setup(settings: dict, dask_args: list) -> tuple:
    """(dask args with --interface/--memory-limit added, what to say of them in the task's
    line, the iface file's line or None). Raises KitError (NO_INTERFACE, BAD_VALUE)."""
    chosen, limit = node_facts(settings)
    how = ""
    choice = None
    if chosen:
        name, address, why = chosen
        choice = f"{settings.get('node', '?')} {name} {address} {why}"
        how = f", interface {name} {address} ({why}, INTERFACE=auto)"
        dask_args = ["--interface", name] + dask_args
    if limit:
        how += f", memory limit {limit[0]} bytes per process ({limit[1]})"
        dask_args = ["--memory-limit", str(limit[0])] + dask_args
    return dask_args, how, choice


def memory_limit(settings: dict) -> tuple:
    """(bytes, why): host_memory's limit for this worker task's settings."""
    from . import host_memory

    numbers = {}
    for name in ("host_procs", "reserve_ppm", "reserve_bytes"):
        text = settings.get(name, "1" if name == "host_procs" else "0")
        if not args.is_digits(text):
            raise KitError(f"{name} must be a whole number, not {text!r}", BAD_VALUE)
        numbers[name] = int(text)
    memory = settings.get("memory", "auto")
    if memory != "auto" and not args.is_digits(memory):
        raise KitError(f"memory must be bytes or auto, not {memory!r}", BAD_VALUE)
    return host_memory.worker_limit(None if memory == "auto" else int(memory), numbers["host_procs"],
                                    numbers["reserve_ppm"], numbers["reserve_bytes"],
                                    host_memory.cgroup_limit(), host_memory.ram())


def task_line(settings: dict, how: str, now: float) -> str:
    """The first line of a task's log: what runs where, and when (to the millisecond, as
    Dask's own lines; with how long after task.sh's start)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    took = ""
    started = settings.get("started", "").replace(",", ".")
    try:
        took = f" ({max(0.0, now - float(started)):.3f} s after task.sh began)"
    except ValueError:
        pass
    return (f"dask-pbs: {settings.get('role')} on node {settings.get('node', '?')} (pid {os.getpid()}, "
            f"TMPDIR {os.environ.get('TMPDIR', '')}{how}) at {stamp}{took}")


def fix_sys_path(helpers: str, script: str) -> None:
    """Leave sys.path as the `dask` script would have it: without the helpers folder that
    task.sh's one line put first (user code must not see it; a PYTHONPATH entry stays), and
    with the script's folder where `python -c` put the current one."""
    if sys.path[:1] == [helpers]:
        del sys.path[0]
    if sys.path[:1] == [""]:
        if script:
            sys.path[0] = os.path.dirname(os.path.abspath(script))
        else:
            del sys.path[0]


def dask_command(role: str):
    """distributed's own command module (what `dask scheduler|worker` runs): the import."""
    if role == "worker":
        from distributed.cli import dask_worker as command
    else:
        from distributed.cli import dask_scheduler as command
    return command


def run_dask(command, role: str, dask_args: list) -> None:
    """command (dask_command's) in this process."""
    sys.argv = [f"dask {role}"] + dask_args
    command.main()


def say_twice(job_err: int, message: str) -> None:
    """message on the job's stderr (job_err) and in the task's log (fd 2), as task.sh's fail."""
    os.write(job_err, message.encode())
    os.write(2, message.encode())


def early_worker(settings: dict, dask_args: list, timeout: float, job_err: int) -> tuple:
    """A worker task started before the plan: distributed imported while job-setup waits
    for qstat, then its row taken (take_plan_row). Exits 0, said in the task's log, when the
    plan has no worker for it; 4, said on the job's stderr too, when the plan never comes."""
    try:
        import distributed  # noqa: F401  (the import that overlaps the job's qstat)
    except ImportError:
        pass  # the Dask command's own import says what is wrong, in the task's log
    node = settings.get("node", "?")
    try:
        taken = take_plan_row(settings, dask_args, timeout)
    except KitError as exc:
        say_twice(job_err, f"dask-pbs: node {node}: {exc}\n")
        sys.exit(4)
    if taken is None:
        print(no_row_line(settings), flush=True)
        sys.exit(0)
    return taken


def no_row_line(settings: dict) -> str:
    """The log line of an early worker whose line the plan gives no worker of its chunk
    (here, and task.sh's for task-setup's `no-worker`)."""
    return (f"dask-pbs: node {settings.get('node', '?')}: the plan has no worker of chunk "
            f"{settings.get('chunk')} on line {settings.get('line')} of $PBS_NODEFILE: this task ends "
            "(the job starts that chunk's tasks where the plan puts them)")


def config_late(before: dict, environ=os.environ) -> None:
    """The DASK_ variables set or changed in environ since before, into Dask's
    configuration, which Dask read from the environment at its import: an early worker
    imports distributed before it knows the job's size and its multiprocessing method, and
    a forkserver that cannot start makes it spawn after the import."""
    import dask.config

    added = {k: v for k, v in environ.items() if k.startswith("DASK_") and before.get(k) != v}
    if added:
        dask.config.update(dask.config.config, dask.config.collect_env(added))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    helpers, rest = argv[0], argv[1:]
    try:
        settings, dask_args = parse(rest)
        timeout = args.number(settings.get("timeout", "120"), "timeout")  # what waits here may
    except KitError as exc:
        print(f"dask-pbs: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    fix_sys_path(helpers, settings.get("script", ""))
    role = settings.get("role", "")
    # Everything from here on goes to the task's log, as `exec >>LOG 2>&1` did: the
    # forkserver and the worker processes inherit it. The job's stderr stays for failures.
    job_err = os.dup(2)
    log_fd = os.open(settings.get("log", "/dev/null"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    environ_at_start = dict(os.environ)
    if settings.get("plan"):
        settings, dask_args = early_worker(settings, dask_args, timeout, job_err)
    workers = job_size(settings.get("workers", ""), timeout)
    for note in size_for(role, workers):
        say_twice(job_err, f"dask-pbs: warning: node {settings.get('node', '?')}: {note}\n")
    forkserver = uses_forkserver(role, dask_args)
    if role == "worker":
        dask_args = hold_back_worker_dashboard(
            dask_args, os.path.join(os.path.dirname(os.path.abspath(helpers)), "scripts", "lib",
                                    "scheduler_preload.py"), forkserver)
    if forkserver:
        os.environ[METHOD_VARIABLE] = "forkserver"
        try:
            start_forkserver(preload_modules(dask_args))
        except OSError as exc:  # the nanny spawns its worker processes instead
            print(f"dask-pbs: node {settings.get('node', '?')}: the worker processes' forkserver "
                  f"did not start ({exc}): they start with spawn", flush=True)
            os.environ[METHOD_VARIABLE] = "spawn"
            forkserver = False
    try:
        dask_args, how, choice = setup(settings, dask_args)
    except Exception as exc:  # said on the job's stderr and in the task's log, as task.sh's fail
        what = str(exc) if isinstance(exc, KitError) else f"the kit's checks failed ({type(exc).__name__}: {exc})"
        say_twice(job_err, f"dask-pbs: node {settings.get('node', '?')}: {what}\n")
        sys.exit(STATUS.get(exc.code, 1) if isinstance(exc, KitError) else 1)
    if choice and settings.get("iface"):
        with open(settings["iface"], "w", encoding="utf-8") as fh:
            fh.write(choice + "\n")
    print(task_line(settings, how, time.time()), flush=True)
    if forkserver:
        skip_parent_preload()
    if role == "scheduler":
        dask_args = hold_back_dashboard(dask_args)
    command = dask_command(role)
    if settings.get("tls") and settings.get("tls_pending") == "yes":
        try:
            await_certificates(settings["tls"], settings.get("node", "?"), timeout)
        except KitError as exc:
            say_twice(job_err, f"dask-pbs: {exc}\n")
            sys.exit(4)
    os.close(job_err)
    # Dask read its configuration at the import: what was set here since (the nanny's
    # multiprocessing method, the job's size) must reach it.
    config_late(environ_at_start)
    run_dask(command, role, dask_args)


TASK_SETUP_USAGE = """usage: kit.py task-setup role=worker|scheduler [node=NODE] [interface=auto first=FIRST_NODE
                     [scheduler_file=FILE timeout=SECONDS]] [memory=BYTES|auto host_procs=P
                     reserve_ppm=N reserve_bytes=N] [plan=PLAN_FILE chunk=C line=L]

What a pbsdsh task needs to know of its node before Dask starts, in one call: with
interface=auto, a line `interface NAME ADDRESS HOW` (kit.py interface's choice; a worker
may wait up to SECONDS for FILE); for a worker, a line `memory BYTES<TAB>WHY` (kit.py
host-memory's limit). A worker started before the plan (plan=, chunk=, line=) first waits
up to SECONDS for PLAN_FILE and takes its memory settings from chunk C's row at line L,
with a line `args --nthreads N --name chunk-C --nworkers P`, or prints only `no-worker
LINE` (the line for the task's log) when the plan has no such row. exit status: 0, 2 usage, 3 no plan within SECONDS, 7 too
little memory, 11 no interface"""


def cli(argv: list) -> None:
    """kit.py task-setup: the interface and the memory limit of a task, one line each."""
    if any(a in ("-h", "--help") for a in argv):
        raise KitError(TASK_SETUP_USAGE, 0)
    try:
        settings, _ = parse(list(argv) + ["--"])
    except KitError as exc:
        raise KitError(f"{exc}\n{TASK_SETUP_USAGE}", USAGE) from None
    if settings.get("role") not in ("worker", "scheduler"):
        raise KitError(f"role must be worker or scheduler\n{TASK_SETUP_USAGE}", USAGE)
    if settings.get("plan"):
        taken = take_plan_row(settings, [], args.number(settings.get("timeout", "120"), "timeout"))
        if taken is None:
            print("no-worker " + no_row_line(settings))
            return
        settings, row_args = taken
        print("args " + " ".join(row_args))
    chosen, limit = node_facts(settings)
    if chosen:
        print("interface " + " ".join(chosen))
    if limit:
        print(f"memory {limit[0]}\t{limit[1]}")
