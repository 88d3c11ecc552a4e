"""The fake's pbsdsh: tasks started through PBS's task manager (tm_spawn, tm_obit).

A job script runs one pbsdsh per chunk, so this module starts on its own with only
builtin and small modules (os, sys, signal, fcntl, marshal): no json, pathlib or
subprocess, which cost more than the rest of pbsdsh together (PBS's pbsdsh is a small C
program). What a task gets on each node-file line (its environment, the words that put
it on its node) the MoM computes once as the job starts (fakepbs.launch_table) and keeps
in the job's folder as TABLE, in marshal's format; task numbers are counted in TASKSEQ.

src/cmds/pbsdsh.c (options, bailout, wait_for_task); src/resmom/mom_comm.c
(momtask_create's task numbers, TM_ERROR replies); src/resmom/start_exec.c (a task that
cannot be run exits 254).
"""
from __future__ import annotations

import fcntl
import marshal
import os
import signal
import sys

TABLE = "tm.marshal"   # written by the MoM as the job starts
TASKSEQ = "taskseq"    # per-host task counters (marshal), under an exclusive lock
TM_ESYSTEM = 17000  # src/include/tm_.h
EXEC_FAILED = 254   # start_exec.c start_process: the child's status when exec fails

PBSDSH_USAGE = (  # src/cmds/pbsdsh.c main (23.06: getopt "c:n:svo")
    "Usage: pbsdsh [-c copies][-s][-v][-o] -- program [args...]\n"
    "       pbsdsh [-n node_index][-s][-v][-o] -- program [args...]\n"
    "       pbsdsh --version\n"
    "Where -c copies =  run a copy of \"program\" on the first \"copies\" nodes,\n"
    "      -n node_index = run a copy of \"program\" on the \"node_index\"-th node,\n"
    "      -s = forces synchronous execution,\n"
    "      -v = forces verbose output.\n"
    "      -o = no obits are waited for."
)


class Refused(Exception):
    """pbsdsh gives up: str() is what it prints on stderr, then it exits 1."""


def getopt(argv: list[str], letters, with_value) -> tuple[list[tuple[str, str | None, str]], list[str]]:
    """glibc's getopt(3) over argv, POSIX style: option words up to "--" or the first
    operand, several letters to a word; a letter of with_value takes the rest of its word,
    else the next word. Returns ([(letter, value, error), ...], the operands): value None
    for a letter without one; error, else "", what getopt prints after the program's name
    ("invalid option -- 'x'", "option requires an argument -- 'x'"), in argv's order."""
    found = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        if argv[i] == "--":
            i += 1
            break
        arg, j = argv[i], 1
        while j < len(arg):
            flag = arg[j]
            if flag not in letters:
                found.append((flag, None, f"invalid option -- '{flag}'"))
            elif flag in with_value:
                value = arg[j + 1:]
                if not value:
                    i += 1
                    if i >= len(argv):
                        found.append((flag, None, f"option requires an argument -- '{flag}'"))
                        break
                    value = argv[i]
                found.append((flag, value, ""))
                break
            else:
                found.append((flag, None, ""))
            j += 1
        i += 1
    return found, argv[i:]


def pbsdsh_options(argv: list[str]) -> tuple[dict, list[str]]:
    """getopt("c:n:svo"); the first error ends it."""
    opts = {"c": None, "n": None, "s": False, "v": False, "o": False}
    found, program = getopt(argv, "cnsvo", "cn")
    for flag, value, error in found:
        if error:
            raise Refused(f"pbsdsh: {error}\n{PBSDSH_USAGE}")
        if value is None:
            opts[flag] = True
            continue
        number = int(value) if value.lstrip("-").isdigit() and value.isascii() else 0  # atoi()
        if number < 0:
            raise Refused(PBSDSH_USAGE)
        opts[flag] = number
    return opts, program


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def home_folder() -> str:
    """Where the fake keeps its state (fakepbs.home makes it)."""
    return os.environ.get("FAKEPBS_HOME") or f"/tmp/fakepbs-{os.getuid()}"


def job_folder() -> str:
    """tm_init: the job's folder under FAKEPBS_HOME, from PBS_JOBID (fakepbs.job_dir)."""
    seq = os.environ.get("PBS_JOBID", "").split(".", 1)[0]
    if not seq.isdigit():
        raise Refused("pbsdsh: tm_init failed, rc = TM_ESYSTEM (17000)")
    return os.path.join(home_folder(), "jobs", seq)


def load_table(jdir: str) -> dict:
    try:
        with open(os.path.join(jdir, TABLE), "rb") as fh:
            return marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        raise Refused("pbsdsh: tm_init failed, rc = TM_ESYSTEM (17000)") from None


def task_id(jdir: str, table: dict, host: int) -> int:
    """MoM's task number (mom_comm.c momtask_create): a per-host counter (the job shell
    is task 1 on the first host) with the host's number in the top bits."""
    fd = os.open(os.path.join(jdir, TASKSEQ), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = os.read(fd, 1 << 16)
        counters = marshal.loads(data) if data else {}
        counter = counters[host] = counters.get(host, 0) + 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, marshal.dumps(counters))
    finally:
        os.close(fd)
    counter += 1 if host == 0 else 0
    shift = 32 - len(table["lines"]).bit_length()
    return (host << shift | counter) & 0xFFFFFFFF


def spool_names(join: str) -> tuple[str, str]:
    """The spools a job's stdout and stderr go to, for the job shell and its tasks alike
    (start_exec.c open_std_out_err: -j oe both to the output, -j eo both to the error)."""
    return {"oe": ("spool.o", "spool.o"), "eo": ("spool.e", "spool.e")}.get(join, ("spool.o", "spool.e"))


def spool_fds(jdir: str, join: str) -> tuple[int, int]:
    """The job's stdout and stderr spools, opened as a task writes them."""
    def spool(name: str) -> int:
        return os.open(os.path.join(jdir, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    out_name, err_name = spool_names(join)
    out = spool(out_name)
    return out, out if err_name == out_name else spool(err_name)


def task_signals() -> None:
    """A MoM's child's signals (start_exec.c fork_me): SIGHUP ignored, every other at its
    default (MoM catches the rest, so exec resets them), none blocked. pbsdsh's own
    differ: Python ignores SIGPIPE, and bash starts a `pbsdsh ... &` with SIGINT and
    SIGQUIT ignored."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGHUP else signal.SIG_DFL)
        except (OSError, ValueError):  # the C library's own real-time signals
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_task(argv: list[str], env: dict, out: int, err: int, cgroup, host: int) -> None:
    """In the forked child: MoM's signals, a session of its own, MoM's umask, the node's
    TMPDIR, HOME as the working folder, no stdin, the job's spools, no other descriptor;
    then exec, or exit 254 as MoM's child does."""
    try:
        task_signals()
        os.setsid()
        os.umask(0o077)
        try:  # the node's TMPDIR, made as a task starts there (start_exec.c mktmpdir)
            os.mkdir(env["TMPDIR"], 0o700)
        except FileExistsError:
            pass
        os.chdir(env["HOME"])
        # Above 2 first (start_exec.c FDMOVE): pbsdsh may run with 0-2 closed, and then a
        # spool or /dev/null would be one of them.
        null = fcntl.fcntl(os.open(os.devnull, os.O_RDONLY), fcntl.F_DUPFD, 3)
        out3 = fcntl.fcntl(out, fcntl.F_DUPFD, 3)
        err3 = out3 if err == out else fcntl.fcntl(err, fcntl.F_DUPFD, 3)
        os.dup2(null, 0)
        os.dup2(out3, 1)
        os.dup2(err3, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        if cgroup:
            import cgroups  # only jobs with FAKEPBS_CGROUP=1

            cgroups.join(cgroup, host)
        os.execvpe(argv[0], argv, env)
    except BaseException:  # noqa: B036 - nothing may run on in the child
        pass
    os._exit(EXEC_FAILED)


def spawn_task(jdir: str, table: dict, line: int, program: list[str]) -> tuple[int, int] | None:
    """tm_spawn on node-file line: (pid, task number), or None where that host's MoM
    refuses (FAKEPBS_SPAWN_FAIL). The task's record in tasks/ is what the MoM signals
    at qdel, walltime and the job's end."""
    entry = table["lines"][line]
    host = entry["host"]
    if host in table["spawn_fail"]:
        return None
    tid = task_id(jdir, table, host)
    env = dict(entry["env"], PBS_TASKNUM=f"{tid:08X}")
    out, err = spool_fds(jdir, table["join"])
    try:
        pid = os.fork()
        if pid == 0:
            exec_task([*entry["prefix"], *program], env, out, err, table["cgroup"], host)
    finally:
        os.close(out)
        if err != out:
            os.close(err)
    record = f'{{"pid": {pid}, "pgid": {pid}, "host": {host}, "node": {entry["node_json"]}, "tid": {tid}}}'
    with open(os.path.join(jdir, "tasks", f"{pid}.json"), "w") as fh:
        fh.write(record)
    return pid, tid


def end_task(jdir: str, pid: int) -> None:
    """A task's top process has ended: its session dies with it, as MoM does it."""
    signal_group(pid, signal.SIGKILL)
    try:
        os.unlink(os.path.join(jdir, "tasks", f"{pid}.json"))
    except FileNotFoundError:
        pass


class Signalled(Exception):
    """Raised by pbsdsh's signal handler to cut a blocking wait short."""


class Tasks:
    """pbsdsh's tm_spawn/tm_obit bookkeeping (pbsdsh.c wait_for_task)."""

    def __init__(self, jdir: str, verbose: bool) -> None:
        self.jdir, self.verbose = jdir, verbose
        self.running: dict[int, tuple[int, int]] = {}  # index: (pid, task number)
        self.fire = 0  # bailout(): the signal that arrived
        self.blocked = False  # in waitpid: bailout() raises Signalled to end it
        self.event = 1  # tm_init took event 1

    def new_event(self) -> int:
        self.event += 1
        return self.event

    def bailout(self, signum: int, _frame) -> None:
        self.fire = signum
        if self.blocked:
            raise Signalled

    def wait(self, only: int | None = None) -> None:
        """Report obits as tasks end; on SIGHUP/INT/TERM, tm_kill every task still
        running with it, print "pbsdsh: killing task ..." for each and exit 1 at once.
        Blocks in waitpid as pbsdsh blocks in tm_poll: no polling for the job's life
        (one pbsdsh per chunk stays for the job's life)."""
        while any(only is None or index == only for index in self.running):
            try:
                self.blocked = True
                if not self.fire:  # a signal before `blocked` was set is seen here
                    pid, wait_status = os.waitpid(-1 if only is None else self.running[only][0], 0)
            except Signalled:
                pass
            finally:
                self.blocked = False
            if self.fire:
                for _, (task_pid, tid) in sorted(self.running.items()):
                    print(f"pbsdsh: killing task 0x{tid:08X} signal {self.fire}", flush=True)
                    signal_group(task_pid, self.fire)
                os._exit(1)
            for index, (task_pid, _) in sorted(self.running.items()):
                if task_pid == pid:
                    del self.running[index]
                    end_task(self.jdir, pid)
                    code = os.waitstatus_to_exitcode(wait_status)  # -N: signal N
                    status = code if code >= 0 else 256 - code
                    if status != 0 or self.verbose:
                        print(f"pbsdsh: task 0x{index:08X} exit status {status}", flush=True)
                    break


def run_tasks(jdir: str, table: dict, targets: list[int], program: list[str], opts: dict) -> int:
    tasks = Tasks(jdir, opts["v"])
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, tasks.bailout)
    if opts["o"] and os.fork() != 0:
        os._exit(0)  # pbsdsh -o returns at once; the tasks stay under "MoM" (this child)
    for index, line in enumerate(targets):
        spawned = spawn_task(jdir, table, line, program)
        event = tasks.new_event()
        if spawned is None:
            # The MoM's TM_ERROR reply carries TM_ESYSTEM (mom_comm.c); no obit, no status.
            print(f"error {TM_ESYSTEM} on spawn", file=sys.stderr, flush=True)
            continue
        if opts["v"]:
            print(f"pbsdsh: spawned task 0x{index:08X} on logical node {line} event {event}", flush=True)
        tasks.running[index] = spawned
        if opts["s"] and not opts["o"]:
            tasks.new_event()  # tm_obit, registered before the next spawn
        if opts["s"]:
            tasks.wait(index)
    tasks.wait()
    return 0


def pbsdsh(argv: list[str]) -> int:
    opts, program = pbsdsh_options(argv)
    if not program or (opts["c"] is not None and opts["n"] is not None):
        raise Refused(PBSDSH_USAGE)
    if "PBS_ENVIRONMENT" not in os.environ:
        raise Refused("pbsdsh: not executing under PBS")
    jdir = job_folder()
    table = load_table(jdir)
    count = len(table["lines"])
    if opts["n"] is not None:
        targets = [opts["n"] % count]
    else:
        targets = [c % count for c in range(count if opts["c"] is None else opts["c"])]
    return run_tasks(jdir, table, targets, program, opts)


def main(argv: list[str]) -> int:
    try:
        return pbsdsh(argv)
    except Refused as exc:
        print(str(exc), file=sys.stderr)
        return 1
