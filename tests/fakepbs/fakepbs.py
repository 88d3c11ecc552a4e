"""A fake PBS Pro for one machine: qsub, pbsdsh, qstat, qdel and the MoM that runs jobs.

Only the batch system is fake; every process it starts is real. Behaviour follows
OpenPBS (src/cmds/qsub.c, pbsdsh.c, src/resmom/): see ../../README.md, "The fake PBS".

State lives under $FAKEPBS_HOME (default /tmp/fakepbs-<uid>): jobs/<seq>/ holds the
job's attributes (job.json), spooled script, node file, output spool and task registry.
Settings for tests: FAKEPBS_KILL_DELAY (s between SIGTERM and SIGKILL, default 10),
FAKEPBS_POLL (MoM's limit-check period, default 0.2 s), FAKEPBS_SERVER (default fakepbs),
FAKEPBS_NETNS=1 (each node its own network namespace with an ib0: see netns.py).
"""
from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = HERE / "bin"
QUEUE = "workq"
FIVE_YEARS = 5 * 365 * 24 * 3600
WALLTIME_EXIT = -29
SIZE_RE = re.compile(r"^(\d+)([kmgtp]?)([bw]?)$", re.IGNORECASE)
WALLTIME_RE = re.compile(r"^\d+(:\d+){0,2}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_+.\-]{1,230}$")
INT_RESOURCES = {"ncpus", "mpiprocs", "ompthreads", "ngpus", "nodect"}
SIZE_RESOURCES = {"mem", "vmem", "pmem"}
PER_HOST_VARS = {"PBS_NODENUM", "PBS_TASKNUM", "TMPDIR", "NCPUS", "OMP_NUM_THREADS", "PBS_NODEFILE"}


class PBSError(Exception):
    """A request PBS refuses; str() is the message, .code the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- state

def home() -> Path:
    base = os.environ.get("FAKEPBS_HOME") or f"/tmp/fakepbs-{os.getuid()}"
    path = Path(base)
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def server() -> str:
    return os.environ.get("FAKEPBS_SERVER", "fakepbs")


def next_counter(path: Path) -> int:
    """Increment an integer file under an exclusive lock (job and task numbers)."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read().strip()
        value = int(text) + 1 if text else 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(value))
        return value


def job_dir(jobid: str) -> Path:
    seq = jobid.split(".", 1)[0]
    if not seq.isdigit():
        raise PBSError(f"qstat: Unknown Job Id {jobid}", 153)
    return home() / "jobs" / seq


def load_job(jdir: Path) -> dict:
    return json.loads((jdir / "job.json").read_text())


def save_job(jdir: Path, job: dict) -> None:
    tmp = jdir / "job.json.tmp"
    tmp.write_text(json.dumps(job, indent=1))
    os.replace(tmp, jdir / "job.json")


# ---------------------------------------------------------------- resources

def parse_size(text: str) -> int:
    """PBS size: integer, optional k/m/g/t/p (powers of 1024), optional b or w (8 bytes)."""
    m = SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    number, scale, unit = int(m.group(1)), m.group(2).lower(), m.group(3).lower()
    factor = 1024 ** "_kmgtp".index(scale) if scale else 1
    return number * factor * (8 if unit == "w" else 1)


def format_size(nbytes: int) -> str:
    for suffix, factor in (("tb", 1024**4), ("gb", 1024**3), ("mb", 1024**2), ("kb", 1024)):
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return f"{nbytes}b"


def parse_walltime(text: str) -> int:
    if not WALLTIME_RE.match(text):
        raise ValueError(text)
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def format_hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse_select(text: str) -> list[dict]:
    """Expand 'N:res=v:...+...' into one dict per chunk (PBS Pro chunk syntax)."""
    chunks: list[dict] = []
    for group in text.split("+"):
        parts = group.split(":")
        count = 1
        if parts and parts[0].isdigit():
            count = int(parts.pop(0))
        if count < 1:
            raise ValueError(group)
        chunk: dict = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or not key or not value:
                raise ValueError(part)
            if key in INT_RESOURCES:
                if not value.isdigit():
                    raise ValueError(part)
                chunk[key] = int(value)
            elif key in SIZE_RESOURCES:
                chunk[key] = format_size(parse_size(value))
            else:
                chunk[key] = value
        chunk.setdefault("ncpus", 1)
        chunk.setdefault("mpiprocs", 1 if chunk["ncpus"] > 0 else 0)
        chunks.extend(dict(chunk) for _ in range(count))
    return chunks


def resource_list(resources: dict) -> dict:
    """Resource_List as qstat shows it, job-wide sums included."""
    chunks = parse_select(resources["select"])
    out = dict(resources)
    out["ncpus"] = sum(c["ncpus"] for c in chunks)
    out["nodect"] = len(chunks)
    mems = [parse_size(c["mem"]) for c in chunks if "mem" in c]
    if mems:
        out["mem"] = format_size(sum(mems))
    out.setdefault("place", "free")
    out["walltime"] = format_hms(resources["walltime_s"])
    out.pop("walltime_s", None)
    return out


def check_resource(key: str, value: str) -> None:
    """Refuse what the server refuses, with qsub's wording."""
    try:
        if key == "select":
            parse_select(value)
        elif key == "walltime":
            parse_walltime(value)
        elif key in SIZE_RESOURCES:
            parse_size(value)
        elif key in INT_RESOURCES and not value.isdigit():
            raise ValueError(value)
    except ValueError:
        raise PBSError(
            f"qsub: Illegal attribute or resource value Resource_List.{key}", 2
        ) from None


# ---------------------------------------------------------------- qsub

QSUB_USAGE = (
    "usage: qsub [-A account] [-e path] [-j oe|eo|n] [-l resource_list] [-N name]\n"
    "            [-o path] [-q queue] [-v variable_list] [-V] [-W attr=value] script"
)


def split_list(text: str) -> list[str]:
    """Split a -v list on commas outside quotes, as qsub does."""
    items, current, quote = [], "", ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            items.append(current)
            current = ""
        else:
            current += ch
    if current:
        items.append(current)
    return [i for i in items if i]


def parse_qsub_args(argv: list[str], opts: dict, allow_script: bool) -> str | None:
    """Apply qsub options in argv to opts; returns the script operand if any."""
    i = 0
    script = None
    flags_with_value = set("AeNjloqvW")
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        flag, rest = arg[1:2], arg[2:]
        if flag == "V" and not rest:
            opts["V"] = True
            i += 1
            continue
        if flag not in flags_with_value:
            raise PBSError(f"qsub: invalid option -- '{flag}'\n{QSUB_USAGE}", 2)
        if rest:
            value = rest
            i += 1
        else:
            if i + 1 >= len(argv):
                raise PBSError(f"qsub: option requires an argument -- '{flag}'\n{QSUB_USAGE}", 2)
            value = argv[i + 1]
            i += 2
        if flag == "l":
            for item in value.split(","):
                key, sep, val = item.partition("=")
                if not sep:
                    raise PBSError(f"qsub: illegal -l value\n{QSUB_USAGE}", 2)
                check_resource(key, val)
                opts["resources"][key] = val
        elif flag == "v":
            for item in split_list(value):
                name, sep, val = item.partition("=")
                opts["vars"][name] = val if sep else os.environ.get(name, "")
        elif flag == "W":
            key, _, val = value.partition("=")
            opts["W"][key] = val
        elif flag == "j":
            if value not in ("oe", "eo", "n"):
                raise PBSError(f"qsub: illegal -j value\n{QSUB_USAGE}", 2)
            opts["j"] = value
        elif flag == "N":
            if not NAME_RE.match(value):
                raise PBSError("qsub: illegal -N value", 2)
            opts["N"] = value
        else:
            opts[flag] = value
    rest_args = argv[i:]
    if rest_args:
        if not allow_script or len(rest_args) > 1:
            raise PBSError(f"qsub: too many arguments\n{QSUB_USAGE}", 2)
        script = rest_args[0]
    return script


def directives(script_text: str) -> list[str]:
    """#PBS arguments from the top of the script, up to the first executable line."""
    args: list[str] = []
    for line in script_text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#PBS"):
            args.extend(shlex.split(stripped[4:], comments=True))
        elif not stripped.startswith("#"):
            break
    return args


def qsub(argv: list[str]) -> int:
    cli = {"resources": {}, "vars": {}, "W": {}}
    script = parse_qsub_args(argv, cli, allow_script=True)
    if script is None:
        raise PBSError(f"qsub: a script file is required here\n{QSUB_USAGE}", 2)
    try:
        text = Path(script).read_text()
    except OSError as exc:
        raise PBSError(f"qsub: script file:: {exc.strerror}", 2) from None
    opts = {"resources": {}, "vars": {}, "W": {}}
    parse_qsub_args(directives(text), opts, allow_script=False)
    # The command line wins over directives; -l and -v merge key by key.
    for key, value in cli.items():
        if isinstance(value, dict):
            opts[key].update(value)
        else:
            opts[key] = value
    res = opts["resources"]
    res.setdefault("select", "1:ncpus=1")
    res["walltime_s"] = parse_walltime(res.pop("walltime", "")) if "walltime" in res else FIVE_YEARS
    chunks = parse_select(res["select"])
    name = opts.get("N") or Path(script).name
    if not NAME_RE.match(name):
        raise PBSError(f"qsub: illegal -N value {name!r} (set a job name with -N)", 2)

    seq = next_counter(home() / "seq")
    jobid = f"{seq}.{server()}"
    jdir = home() / "jobs" / str(seq)
    jdir.mkdir(mode=0o700)
    (jdir / "tasks").mkdir()
    (jdir / "script.SC").write_text(text)
    workdir = os.environ.get("PWD") or os.getcwd()
    if not os.path.exists(workdir) or not os.path.samefile(workdir, "."):
        workdir = os.getcwd()
    env_vars = job_variable_list(opts, workdir)
    nodes = [f"node{i:02d}" for i in range(len(chunks))]
    network = None
    if netns_module().wanted():
        try:
            network = netns_module().plan(str(home()), seq, nodes)
        except netns_module().NetnsError as exc:
            raise PBSError(f"qsub: {exc}", 1) from None
    job = {
        "id": jobid,
        "seq": seq,
        "name": name,
        "owner": f"{pwd.getpwuid(os.getuid()).pw_name}@{socket.gethostname()}",
        "queue": opts.get("q", QUEUE),
        "account": opts.get("A"),
        "state": "Q",
        "resources": res,
        "chunks": chunks,
        "nodes": nodes,
        "variables": env_vars,
        "workdir": workdir,
        "output": output_path(opts.get("o"), workdir, name, seq, "o", jobid),
        "error": output_path(opts.get("e"), workdir, name, seq, "e", jobid),
        "join": opts.get("j", "n"),
        "kill_delay": float(os.environ.get("FAKEPBS_KILL_DELAY", "10")),
        "poll": float(os.environ.get("FAKEPBS_POLL", "0.2")),
        "python": sys.executable,
        "home": str(home()),
        "netns": network,
    }
    save_job(jdir, job)
    mom = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "_mom", str(jdir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    print(jobid, flush=True)
    if opts["W"].get("block", "").lower() == "true":
        mom.wait()
        job = load_job(jdir)
        return int(job.get("exit_status", 0)) % 256
    return 0


def output_path(path: str | None, workdir: str, name: str, seq: int, kind: str, jobid: str) -> str:
    if not path:
        return os.path.join(workdir, f"{name}.{kind}{seq}")
    path = path.split(":", 1)[1] if ":" in path and not path.startswith("/") else path
    full = os.path.join(workdir, path)
    if os.path.isdir(full):
        return os.path.join(full, f"{jobid}.{'OU' if kind == 'o' else 'ER'}")
    return full


def job_variable_list(opts: dict, workdir: str) -> dict:
    """Variable_List: the PBS_O_* set taken from qsub's environment, plus -V and -v."""
    env = os.environ
    out: dict = {}
    if opts.get("V"):
        out.update({k: v for k, v in env.items() if not k.startswith("PBS_O_")})
    for name in ("HOME", "LANG", "LOGNAME", "PATH", "MAIL", "SHELL", "TZ"):
        if name in env:
            out[f"PBS_O_{name}"] = env[name]
    out["PBS_O_WORKDIR"] = workdir
    out["PBS_O_SYSTEM"] = os.uname().sysname
    out["PBS_O_HOST"] = socket.gethostname()
    out["PBS_O_QUEUE"] = opts.get("q", QUEUE)
    out.update(opts["vars"])
    return out


# ---------------------------------------------------------------- MoM

def base_env(job: dict) -> dict:
    """What MoM gives every process of the job: pbs_environment, Variable_List, MoM's own."""
    user_home = os.path.expanduser("~")
    env = {
        # pbs_environment holds PATH=/bin:/usr/bin; a site's profile adds the PBS commands,
        # here the fake's bin folder.
        "PATH": f"/bin:/usr/bin:{BIN}",
        "FAKEPBS_HOME": job["home"],
        "FAKEPBS_PYTHON": job["python"],
    }
    env.update(job["variables"])
    env.update({
        "HOME": user_home,
        "PBS_JOBNAME": job["name"],
        "PBS_JOBID": job["id"],
        "PBS_QUEUE": job["queue"],
        "PBS_JOBCOOKIE": f"{job['seq']:032X}",
        "PBS_MOMPORT": "15003",
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "ENVIRONMENT": "BATCH",
        "PBS_JOBDIR": user_home,
    })
    if job.get("account"):
        env["PBS_ACCOUNT"] = job["account"]
    return env


def node_tmpdir(job: dict, host_index: int) -> str:
    return os.path.join(job["home"], "tmp", f"pbs.{job['id']}.{job['nodes'][host_index]}")


def host_env(job: dict, host_index: int) -> dict:
    """Per-host part: the chunk's NCPUS/OMP_NUM_THREADS, the node's TMPDIR, PBS_NODENUM."""
    chunk = job["chunks"][host_index]
    threads = chunk.get("ompthreads", chunk["ncpus"])
    tmpdir = node_tmpdir(job, host_index)
    os.makedirs(tmpdir, mode=0o700, exist_ok=True)
    return {
        "NCPUS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "TMPDIR": tmpdir,
        "PBS_NODENUM": str(host_index),
    }


def nodefile_lines(job: dict) -> list[int]:
    """Host index of each PBS_NODEFILE line: one per mpiproc, in chunk order."""
    lines: list[int] = []
    for index, chunk in enumerate(job["chunks"]):
        lines.extend([index] * chunk["mpiprocs"])
    return lines


def netns_module():
    """netns.py, loaded only by jobs that ask for namespaces (FAKEPBS_NETNS=1)."""
    sys.path.insert(0, str(HERE))
    import netns

    return netns


def on_node(job: dict, host: int) -> list:
    """The words that make a program run on node host: nothing on loopback."""
    if not job.get("netns"):
        return []
    return netns_module().exec_prefix(job["netns"], host, job["nodes"][host])


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def registered_tasks(jdir: Path) -> list[dict]:
    tasks = []
    for path in (jdir / "tasks").glob("*.json"):
        try:
            tasks.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return tasks


def mom(jdir_text: str) -> int:
    """Run one job to its end, as the mother superior's MoM does."""
    jdir = Path(jdir_text)
    job = load_job(jdir)
    os.umask(0o077)
    nodefile = jdir / "nodefile"
    nodefile.write_text("".join(job["nodes"][i] + "\n" for i in nodefile_lines(job)))
    os.chmod(nodefile, 0o644)
    env = base_env(job)
    env.update(host_env(job, 0))
    user = job["owner"].split("@")[0]
    env.update({
        "PBS_NODEFILE": str(nodefile),
        "PBS_TASKNUM": "1",
        "LOGNAME": user,
        "USER": user,
        "SHELL": "/bin/bash",
    })
    spool_o = open(jdir / "spool.o", "ab")
    spool_e = spool_o if job["join"] == "oe" else open(jdir / "spool.e", "ab")
    if job["join"] == "eo":
        spool_o = spool_e
    script = jdir / "script.SC"
    if job.get("netns"):
        try:
            netns_module().up(job["netns"])
        except netns_module().NetnsError as exc:
            spool_e.write(f"=>> PBS: job failed to start: {exc}\n".encode())
            finish_job(jdir, job, -1, spool_o, spool_e)  # JOB_EXEC_FAIL1
            return 0
    start = time.time()
    job.update(state="R", stime=start)
    save_job(jdir, job)
    shell = subprocess.Popen(
        [*on_node(job, 0), "/bin/bash", str(script)], cwd=env["HOME"], env=env,
        stdin=subprocess.DEVNULL, stdout=spool_o, stderr=spool_e, start_new_session=True,
    )
    job["shell_pid"] = shell.pid
    save_job(jdir, job)
    killed_at = None
    exit_status = None
    while True:
        try:
            status = shell.wait(timeout=job["poll"])
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.time()
        if killed_at is None:
            reason = None
            if now - start > job["resources"]["walltime_s"]:
                used, limit = int(now - start), job["resources"]["walltime_s"]
                reason = f"=>> PBS: job killed: walltime {used} exceeded limit {limit}\n"
                exit_status = WALLTIME_EXIT
            elif (jdir / "delete").exists():
                reason = ""
            if reason is not None:
                spool_e.write(reason.encode())
                spool_e.flush()
                terminate_mother_superior(jdir, shell.pid, signal.SIGTERM)
                killed_at = now
        elif now - killed_at > job["kill_delay"]:
            terminate_mother_superior(jdir, shell.pid, signal.SIGKILL)
    if exit_status is None:
        exit_status = status if status >= 0 else 256 - status
    # The script has ended: every task left on any node is killed at once.
    signal_group(shell.pid, signal.SIGKILL)
    for task in registered_tasks(jdir):
        signal_group(task["pgid"], signal.SIGKILL)
    finish_job(jdir, job, exit_status, spool_o, spool_e)
    return 0


def terminate_mother_superior(jdir: Path, shell_pid: int, sig: int) -> None:
    """Walltime/qdel: signal the job shell's session and the tasks on the first host.

    Tasks on other hosts get the signal only through a pbsdsh that forwards it.
    """
    signal_group(shell_pid, sig)
    for task in registered_tasks(jdir):
        if task["host"] == 0 or sig == signal.SIGKILL:
            signal_group(task["pgid"], sig)


def finish_job(jdir: Path, job: dict, exit_status: int, spool_o, spool_e) -> None:
    # Let the SIGKILLed sessions go before copying output and removing their folders.
    deadline = time.time() + 5
    while time.time() < deadline and any(pid_alive(t["pgid"]) for t in registered_tasks(jdir)):
        time.sleep(0.02)
    spool_o.close()
    if spool_e is not spool_o:
        spool_e.close()
    copy_output(jdir / "spool.o", job["output"])
    if job["join"] == "n":
        copy_output(jdir / "spool.e", job["error"])
    for index in range(len(job["nodes"])):
        remove_tree(node_tmpdir(job, index))
    if job.get("netns"):
        netns_module().down(job["netns"])
    for path in (jdir / "tasks").glob("*.json"):
        path.unlink(missing_ok=True)
    for name in ("nodefile", "spool.o", "spool.e", "script.SC", "delete"):
        (jdir / name).unlink(missing_ok=True)
    job.update(state="F", exit_status=exit_status, end=time.time())
    save_job(jdir, job)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def job_processes(home) -> list:
    """Live processes of the jobs run under FAKEPBS_HOME=home, but the caller: every process
    the fake starts carries that variable (tests and benchmarks check nothing is left)."""
    marker = f"FAKEPBS_HOME={home}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if marker in environ and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def copy_output(spool: Path, dest: str) -> None:
    data = spool.read_bytes() if spool.exists() else b""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def remove_tree(path: str) -> None:
    if not os.path.isdir(path):
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            full = os.path.join(root, name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    os.rmdir(path)


# ---------------------------------------------------------------- pbsdsh

PBSDSH_USAGE = (
    "Usage: pbsdsh [-c copies][-s][-v][-o] -- program [args...]\n"
    "       pbsdsh [-n node_index][-s][-v][-o] -- program [args...]"
)


def pbsdsh(argv: list[str]) -> int:
    copies = node = None
    sync = verbose = no_obit = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        flag, rest = arg[1:2], arg[2:]
        if flag in "cn":
            if not rest:
                if i + 1 >= len(argv):
                    raise PBSError(PBSDSH_USAGE, 1)
                rest = argv[i + 1]
                i += 1
            try:
                value = int(rest)
            except ValueError:
                value = 0  # atoi()
            if value < 0:
                raise PBSError(PBSDSH_USAGE, 1)
            if flag == "c":
                copies = value
            else:
                node = value
        elif flag in "svo" and not rest:
            sync, verbose, no_obit = sync or flag == "s", verbose or flag == "v", no_obit or flag == "o"
        else:
            raise PBSError(PBSDSH_USAGE, 1)
        i += 1
    program = argv[i:]
    if not program or (copies is not None and node is not None):
        raise PBSError(PBSDSH_USAGE, 1)
    if "PBS_ENVIRONMENT" not in os.environ:
        raise PBSError("pbsdsh: not executing under PBS", 1)
    try:
        jdir = job_dir(os.environ["PBS_JOBID"])
        job = load_job(jdir)
    except (KeyError, OSError, PBSError):
        raise PBSError("pbsdsh: tm_init failed, rc = TM_ESYSTEM (17000)", 1) from None
    lines = nodefile_lines(job)
    if node is not None:
        targets = [lines[node % len(lines)]]
    else:
        count = len(lines) if copies is None else copies
        targets = [lines[c % len(lines)] for c in range(count)]
    return run_tasks(jdir, job, targets, program, sync, verbose, no_obit)


def task_env(jdir: Path, job: dict, host: int) -> dict:
    """The environment MoM builds for a task: nothing from the job script's own changes."""
    env = base_env(job)
    env.update(host_env(job, host))
    taskno = next_counter(jdir / "taskseq")
    env["PBS_TASKNUM"] = f"{taskno:08x}"
    if host != 0:
        env["PBS_NODEFILE"] = str(jdir / "nodefile")
    return env


def spawn_task(jdir: Path, job: dict, host: int, program: list[str]) -> subprocess.Popen | None:
    env = task_env(jdir, job, host)
    out = open(jdir / "spool.o", "ab")
    err = out if job["join"] == "oe" else open(jdir / ("spool.o" if job["join"] == "eo" else "spool.e"), "ab")
    try:
        proc = subprocess.Popen(
            [*on_node(job, host), *program], cwd=env["HOME"], env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=err, start_new_session=True, umask=0o077, close_fds=True,
        )
    except OSError:
        return None
    finally:
        out.close()
        if err is not out:
            err.close()
    record = {"pid": proc.pid, "pgid": proc.pid, "host": host, "node": job["nodes"][host]}
    (jdir / "tasks" / f"{proc.pid}.json").write_text(json.dumps(record))
    return proc


def end_task(jdir: Path, proc: subprocess.Popen) -> int:
    """Reap a task; its session dies with its top process, as MoM does it."""
    status = proc.wait()
    signal_group(proc.pid, signal.SIGKILL)
    (jdir / "tasks" / f"{proc.pid}.json").unlink(missing_ok=True)
    return status if status >= 0 else 256 - status


def run_tasks(jdir, job, targets, program, sync, verbose, no_obit) -> int:
    procs: list[tuple[int, subprocess.Popen]] = []

    def bail(signum, _frame):
        for index, proc in procs:
            if proc.poll() is None:
                print(f"pbsdsh: killing task 0x{index:08X} signal {signum}", flush=True)
                signal_group(proc.pid, signum)
        sys.exit(1)

    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, bail)
    if no_obit and os.fork() != 0:
        os._exit(0)  # pbsdsh -o returns at once; the tasks stay under "MoM" (this child)
    for index, host in enumerate(targets):
        proc = spawn_task(jdir, job, host, program)
        if proc is None:
            print(f"pbsdsh: task 0x{index:08X} exit status 254", flush=True)
            continue
        if verbose:
            print(f"pbsdsh: spawned task 0x{index:08X} on logical node {host}", flush=True)
        procs.append((index, proc))
        if sync:
            report(index, end_task(jdir, proc), verbose)
    if not sync:
        for index, proc in procs:
            report(index, end_task(jdir, proc), verbose)
    return 0


def report(index: int, status: int, verbose: bool) -> None:
    if status != 0 or verbose:
        print(f"pbsdsh: task 0x{index:08X} exit status {status}", flush=True)


# ---------------------------------------------------------------- qstat / qdel

def all_jobs(include_finished: bool) -> list[tuple[Path, dict]]:
    found = []
    for jdir in sorted((home() / "jobs").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0):
        try:
            job = load_job(jdir)
        except (OSError, ValueError):
            continue
        if job["state"] != "F" or include_finished:
            found.append((jdir, job))
    return found


def job_attributes(job: dict) -> dict:
    attrs = {
        "Job_Name": job["name"],
        "Job_Owner": job["owner"],
        "job_state": job["state"],
        "queue": job["queue"],
        "Resource_List": resource_list(job["resources"]),
        "exec_host": "+".join(
            f"{node}/0*{chunk['ncpus']}" for node, chunk in zip(job["nodes"], job["chunks"])
        ),
        "Output_Path": job["output"],
        "Error_Path": job["error"],
    }
    if "stime" in job:
        attrs["stime"] = time.ctime(job["stime"])
        end = job.get("end", time.time())
        attrs["resources_used"] = {"walltime": format_hms(end - job["stime"])}
    if job["state"] == "F":
        attrs["Exit_status"] = job["exit_status"]
    attrs["Variable_List"] = job["variables"]
    return attrs


def qstat(argv: list[str]) -> int:
    full = as_json = history = False
    ids: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-f":
            full = True
        elif arg == "-x":
            history = True
        elif arg == "-F":
            if i + 1 >= len(argv) or argv[i + 1] != "json":
                raise PBSError("qstat: only -F json is supported by the fake", 2)
            as_json = True
            i += 1
        elif arg.startswith("-"):
            raise PBSError(f"qstat: invalid option -- '{arg[1:]}'", 2)
        else:
            ids.append(arg)
        i += 1
    if ids:
        selected = []
        for jobid in ids:
            jdir = job_dir(jobid)
            try:
                job = load_job(jdir)
            except OSError:
                raise PBSError(f"qstat: Unknown Job Id {jobid}", 153) from None
            if job["state"] == "F" and not history:
                raise PBSError(f"qstat: {jobid} Job has finished, use -x or -H to obtain historical job information", 35)
            selected.append(job)
    else:
        selected = [job for _, job in all_jobs(history)]
    if as_json:
        print(json.dumps({
            "timestamp": int(time.time()),
            "pbs_version": "fake-23.06",
            "pbs_server": server(),
            "Jobs": {job["id"]: job_attributes(job) for job in selected},
        }, indent=4))
    elif full:
        for job in selected:
            print(f"Job Id: {job['id']}")
            for key, value in job_attributes(job).items():
                if isinstance(value, dict):
                    if key == "Variable_List":
                        value = {"": ",".join(f"{k}={v}" for k, v in value.items())}
                    for sub, subval in value.items():
                        print(f"    {key}{'.' + sub if sub else ''} = {subval}")
                else:
                    print(f"    {key} = {value}")
            print()
    elif selected:
        print(f"{'Job id':<17} {'Name':<16} {'User':<16} {'Time Use':>8} S Queue")
        print(f"{'-' * 17} {'-' * 16} {'-' * 16} {'-' * 8} - -----")
        for job in selected:
            user = job["owner"].split("@")[0]
            print(f"{job['id']:<17} {job['name'][:16]:<16} {user[:16]:<16} {'0':>8} {job['state']} {job['queue']}")
    return 0


def qdel(argv: list[str]) -> int:
    if not argv:
        raise PBSError("usage: qdel [-W force] job_identifier...", 2)
    status = 0
    for jobid in argv:
        try:
            jdir = job_dir(jobid)
            job = load_job(jdir)
        except (OSError, PBSError):
            print(f"qdel: Unknown Job Id {jobid}", file=sys.stderr)
            status = 153
            continue
        if job["state"] == "F":
            print(f"qdel: Job has finished {jobid}", file=sys.stderr)
            status = 35
            continue
        (jdir / "delete").touch()
    return status


COMMANDS = {"qsub": qsub, "pbsdsh": pbsdsh, "qstat": qstat, "qdel": qdel}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: fakepbs.py qsub|pbsdsh|qstat|qdel ...", file=sys.stderr)
        return 2
    if argv[0] == "_mom":
        return mom(argv[1])
    if argv[0] == "_netns_clean":  # tests' safety net: this FAKEPBS_HOME's namespaces
        for name in netns_module().clean_all(str(home())):
            print(f"fakepbs: removed {name}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"fakepbs: unknown command {argv[0]}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except PBSError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
