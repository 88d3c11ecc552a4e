"""A fake PBS Pro for one machine: qsub, pbsdsh, qstat, qdel and the MoM that runs jobs.

Only the batch system is fake; every process it starts is real. Behaviour follows
OpenPBS (src/cmds/qsub.c, pbsdsh.c, qstat.c, qdel.c, src/resmom/): see README.md beside
this file, which also lists the FAKEPBS_* settings that turn on what sites run.

State lives under $FAKEPBS_HOME (default /tmp/fakepbs-<uid>): jobs/<seq>/ holds the
job's attributes (job.json), spooled script, node file, output spool and task registry.
Modules beside this one: resources.py (select, schedselect, placement), qstat_output.py
(qstat's text and JSON), launch_hook.py (GPU variables), cgroups.py (memory cgroups),
netns.py (network namespaces), tm.py (pbsdsh, which runs without this module).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# pwd, random, shlex and qstat_output load in the functions that use them. pbsdsh, run
# once per chunk of a job, is tm.py, which starts without this module.
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import launch_hook  # noqa: E402
import tm  # noqa: E402
from resources import (  # noqa: E402
    INT_RESOURCES, SIZE_RESOURCES, chunks_of, exec_host, exec_vnode, format_hms, host_memory,
    host_of_chunks, nodefile_lines, parse_size, parse_walltime, resource_list, schedselect,
    split_select,
)

BIN = HERE / "bin"
QUEUE = "workq"
FIVE_YEARS = 5 * 365 * 24 * 3600
WALLTIME_EXIT = -29
# How the fake runs itself (command.sh, for bin/*, does the same): an import reads the compiled module.
ENTRY = "import sys; sys.path[0:0] = [sys.argv[1]]; import fakepbs; sys.exit(fakepbs.main(sys.argv[2:]))"
NAME_RE = __import__("re").compile(r"^[A-Za-z0-9_+.\-]{1,230}$")


class PBSError(Exception):
    """A request PBS refuses; str() is the message, .code the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- state

def home() -> Path:
    path = Path(tm.home_folder())
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def server() -> str:
    return os.environ.get("FAKEPBS_SERVER", "fakepbs")


def next_counter(path: Path) -> int:
    """Increment the counter in a file under an exclusive lock (job numbers)."""
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

def check_resource(key: str, value: str) -> None:
    """Refuse what the server refuses, with qsub's wording."""
    try:
        if key == "select":
            split_select(value)
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


def settings(environ=os.environ) -> dict:
    """The FAKEPBS_* modes, read by qsub and kept in job.json: a running job keeps them."""
    def choice(name: str, allowed: tuple, default: str) -> str:
        value = environ.get(name, "") or default
        if value not in allowed:
            raise PBSError(f"qsub: {name}={value}: not one of {'|'.join(allowed)}", 2)
        return value

    def flag(name: str) -> bool:
        return environ.get(name, "").lower() in ("1", "yes", "true")

    fail = environ.get("FAKEPBS_SPAWN_FAIL", "")
    if fail and not all(p.strip().isdigit() for p in fail.split(",")):
        raise PBSError(f"qsub: FAKEPBS_SPAWN_FAIL={fail}: host indices, e.g. 1,2", 2)
    return {
        "qstat_json": choice("FAKEPBS_QSTAT_JSON", ("valid", "released", "none"), "valid"),
        "default_chunk": environ.get("FAKEPBS_DEFAULT_CHUNK", ""),
        "launch_hook": flag("FAKEPBS_LAUNCH_HOOK"),
        "gpu_ids": choice("FAKEPBS_GPU_IDS", ("uuid", "index"), "uuid"),
        "start": choice("FAKEPBS_START", ("direct", "login"), "direct"),
        "profile": environ.get("FAKEPBS_PROFILE", ""),
        "spawn_fail": sorted({int(p) for p in fail.split(",") if p.strip()}),
        "nodefile": choice("FAKEPBS_NODEFILE", ("standard", "nas"), "standard"),
        "fqdn": environ.get("FAKEPBS_FQDN", "").strip("."),
        "cgroup": flag("FAKEPBS_CGROUP"),
        "cgroup_default": environ.get("FAKEPBS_CGROUP_DEFAULT", "") or "256mb",
        "netns_links": environ.get("FAKEPBS_NETNS_LINKS", "") or "ib0",
        "netns_resolve": environ.get("FAKEPBS_NETNS_RESOLVE", ""),
        "manager": flag("FAKEPBS_MANAGER"),
    }


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
    import shlex
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
    import pwd
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
    modes = settings()
    res = opts["resources"]
    res.setdefault("select", "1:ncpus=1")
    res["walltime_s"] = parse_walltime(res.pop("walltime", "")) if "walltime" in res else FIVE_YEARS
    try:
        sched = schedselect(res["select"], modes["default_chunk"])
    except ValueError:
        raise PBSError("qsub: Illegal attribute or resource value Resource_List.select", 2) from None
    chunks = chunks_of(sched, nas=modes["nodefile"] == "nas")
    chunk_host = host_of_chunks(len(chunks), res.get("place", "free"))
    name = opts.get("N") or Path(script).name
    if not NAME_RE.match(name):
        raise PBSError(f"qsub: illegal -N value {name!r} (set a job name with -N)", 2)

    seq = next_counter(home() / "seq")
    jobid = f"{seq}.{server()}"
    nodes = [f"node{i:02d}" + (f".{modes['fqdn']}" if modes["fqdn"] else "")
             for i in range(max(chunk_host) + 1)]
    network = cgroup_spec = None
    try:
        if netns_module().wanted():
            network = netns_module().plan(str(home()), seq, [n.split(".")[0] for n in nodes],
                                          modes["netns_links"], modes["netns_resolve"], nodes)
        if modes["cgroup"]:
            default = parse_size(modes["cgroup_default"].lower().replace("ib", "b"))
            limits = [host_memory(chunks, chunk_host, h) or default for h in range(len(nodes))]
            cgroup_spec = cgroups_module().plan(str(home()), seq, [n.split(".")[0] for n in nodes], limits)
    except (netns_module().NetnsError, cgroups_module().CgroupError) as exc:
        raise PBSError(f"qsub: {exc}", 1) from None
    except ValueError:
        raise PBSError(f"qsub: FAKEPBS_CGROUP_DEFAULT={modes['cgroup_default']}: not a PBS size", 2) from None
    jdir = home() / "jobs" / str(seq)
    jdir.mkdir(mode=0o700)
    (jdir / "tasks").mkdir()
    (jdir / "script.SC").write_text(text)
    os.chmod(jdir / "script.SC", 0o700)  # the login shell runs it by its path
    workdir = os.environ.get("PWD") or os.getcwd()
    if not os.path.exists(workdir) or not os.path.samefile(workdir, "."):
        workdir = os.getcwd()
    job = {
        "id": jobid,
        "seq": seq,
        "name": name,
        "owner": f"{pwd.getpwuid(os.getuid()).pw_name}@{os.uname().nodename}",
        "queue": opts.get("q", QUEUE),
        "account": opts.get("A"),
        "state": "Q",
        "resources": res,
        "schedselect": sched,
        "chunks": chunks,
        "chunk_host": chunk_host,
        "nodes": nodes,
        "variables": job_variable_list(opts, workdir),
        "submit_args": " ".join(argv),
        "workdir": workdir,
        "output": output_path(opts.get("o"), workdir, name, seq, "o", jobid),
        "error": output_path(opts.get("e"), workdir, name, seq, "e", jobid),
        "join": opts.get("j", "n"),
        "kill_delay": float(os.environ.get("FAKEPBS_KILL_DELAY", "10")),
        "poll": float(os.environ.get("FAKEPBS_POLL", "0.2")),
        "python": sys.executable,
        "home": str(home()),
        "netns": network,
        "cgroup": cgroup_spec,
        "modes": modes,
        "cookie": job_cookie(),
        "ctime": time.time(),
    }
    save_job(jdir, job)
    mom = subprocess.Popen(
        [sys.executable, "-S", "-c", ENTRY, str(HERE), "_mom", str(jdir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    print(jobid, flush=True)
    if opts["W"].get("block", "").lower() == "true":
        mom.wait()
        job = load_job(jdir)
        return int(job.get("exit_status", 0)) % 256
    return 0


def job_cookie() -> str:
    """src/resmom/start_exec.c: 32 upper-case hex digits, four "%.8lX" of random()."""
    import random
    return "".join(f"{random.getrandbits(31):08X}" for _ in range(4))


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
    out["PBS_O_HOST"] = os.uname().nodename
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
        "PBS_JOBCOOKIE": job["cookie"],
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


def chunk_env(job: dict, chunk_index: int, script: bool) -> dict:
    """NCPUS/OMP_NUM_THREADS of the vnode entry a process starts on (start_exec.c):
    ompthreads, else ncpus. NAS builds (localmod 020) set OMP_NUM_THREADS=1 in tasks, and
    in the job script unless schedselect names ompthreads."""
    chunk = job["chunks"][chunk_index]
    threads = str(chunk.get("ompthreads", chunk.get("ncpus", 0)))
    omp = threads
    if job["modes"]["nodefile"] == "nas" and (not script or "ompthreads" not in job["schedselect"]):
        omp = "1"
    return {"NCPUS": threads, "OMP_NUM_THREADS": omp}


def host_env(job: dict, host: int) -> dict:
    """Per-host part: the node's TMPDIR, PBS_NODENUM, the launch hook's variables, and
    FAKEPBS_HOST_INDEX (the fake's own record of where a process runs)."""
    env = {"TMPDIR": node_tmpdir(job, host), "PBS_NODENUM": str(host), "FAKEPBS_HOST_INDEX": str(host)}
    env.update(launch_hook.launch_env(job, host))
    return env


def job_nodefile_lines(job: dict) -> list[tuple[int, int]]:
    return nodefile_lines(job["chunks"], job["chunk_host"])


def netns_module():
    """netns.py, loaded only by jobs that ask for namespaces (FAKEPBS_NETNS=1)."""
    import netns

    return netns


def cgroups_module():
    import cgroups

    return cgroups


def on_node(job: dict, host: int) -> list:
    """The words that make a program run on node host: nothing on loopback."""
    if not job.get("netns"):
        return []
    setup = cgroups_module().mount_words(job["cgroup"]) if job.get("cgroup") else ""
    return netns_module().exec_prefix(job["netns"], host, job["nodes"][host], setup)


def as_moms_child(job: dict, host: int):
    """preexec_fn: the signals of a MoM's child (tm.task_signals: SIGHUP ignored, the rest
    at their default, whatever this MoM's own starter left ignored), and the host's memory
    cgroup before the child runs anything."""
    spec = job.get("cgroup")

    def preexec() -> None:
        tm.task_signals()
        if spec:
            cgroups_module().join(spec, host)
    return preexec


def launch_table(jdir: Path, job: dict) -> dict:
    """What pbsdsh (tm.py) needs to start a task on each node-file line, computed as the
    job starts: the environment MoM builds for a task (nothing from the job script's own
    changes; PBS_TASKNUM is added at the spawn), the words that put it on its node, the
    node's name as JSON for the task's record. A node's TMPDIR is made as a task starts
    there (tm.py; start_exec.c start_process calls mktmpdir)."""
    lines = []
    for host, chunk in job_nodefile_lines(job):
        env = base_env(job)
        env.update(chunk_env(job, chunk, script=False))
        env.update(host_env(job, host))
        if host != 0:
            env["PBS_NODEFILE"] = str(jdir / "nodefile")
        lines.append({"host": host, "env": env, "prefix": on_node(job, host),
                      "node_json": json.dumps(job["nodes"][host])})
    return {"lines": lines, "spawn_fail": job["modes"]["spawn_fail"], "join": job["join"],
            "cgroup": job.get("cgroup")}


def save_launch_table(jdir: Path, job: dict) -> None:
    import marshal

    tmp = jdir / (tm.TABLE + ".tmp")
    tmp.write_bytes(marshal.dumps(launch_table(jdir, job)))
    os.replace(tmp, jdir / tm.TABLE)


def registered_tasks(jdir: Path) -> list[dict]:
    tasks = []
    for path in (jdir / "tasks").glob("*.json"):
        try:
            tasks.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return tasks


def session_alive(sid: int) -> bool:
    """Is any process of session sid left (MoM's bld_ptree over /proc)?"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            return True
    return False


def shell_command(job: dict, jdir: Path) -> tuple[list[str], int | None]:
    """The job's top process and its stdin. direct: `bash script` (no shebang). login: as
    MoM with SHELL_INVOKE (start_exec.c): the user's shell as a login shell ("-bash")
    reading the spooled script's path from a pipe; the shell runs it as a child, so its
    shebang counts. --noprofile keeps this machine's profile files out; FAKEPBS_PROFILE
    plays the site's /etc/profile, and PBS's bin is added as profile.d/pbs.sh does."""
    import shlex
    script = str(jdir / "script.SC")
    if job["modes"]["start"] != "login":
        return [*on_node(job, 0), "/bin/bash", script], None
    read_fd, write_fd = os.pipe()
    lines = []
    if job["modes"]["profile"]:
        lines.append(f". {shlex.quote(job['modes']['profile'])}")
    lines.append(f'case ":$PATH:" in *":{BIN}:"*) ;; *) PATH="$PATH:{BIN}";; esac')
    lines.append(shlex.quote(script))
    os.write(write_fd, ("\n".join(lines) + "\n").encode())
    os.close(write_fd)
    # exec -a: argv[0] "-bash", what makes bash a login shell, with the pid kept.
    return [*on_node(job, 0), "/bin/bash", "-c", "exec -a -bash /bin/bash --noprofile"], read_fd


def mom(jdir_text: str) -> int:
    """Run one job to its end, as the mother superior's MoM does."""
    jdir = Path(jdir_text)
    job = load_job(jdir)
    os.umask(0o077)
    nodefile = jdir / "nodefile"
    nodefile.write_text("".join(job["nodes"][host] + "\n" for host, _ in job_nodefile_lines(job)))
    os.chmod(nodefile, 0o644)
    env = base_env(job)
    env.update(chunk_env(job, 0, script=True))
    env.update(host_env(job, 0))
    os.makedirs(env["TMPDIR"], mode=0o700, exist_ok=True)  # start_exec.c mktmpdir
    user = job["owner"].split("@")[0]
    env.update({
        "PBS_NODEFILE": str(nodefile),
        "PBS_TASKNUM": "1",
        "LOGNAME": user,
        "USER": user,
        "SHELL": "/bin/bash",
    })
    out_name, err_name = tm.spool_names(job["join"])
    spool_o = open(jdir / out_name, "ab")
    spool_e = spool_o if err_name == out_name else open(jdir / err_name, "ab")
    try:
        if job.get("cgroup"):
            cgroups_module().up(job["cgroup"])
        if job.get("netns"):
            netns_module().up(job["netns"])
        save_launch_table(jdir, job)
    except (OSError, netns_module().NetnsError, cgroups_module().CgroupError) as exc:
        spool_e.write(f"=>> PBS: job failed to start: {exc}\n".encode())
        finish_job(jdir, job, -1, spool_o, spool_e)  # JOB_EXEC_FAIL1
        return 0
    start = time.time()
    job.update(state="R", stime=start)
    save_job(jdir, job)
    argv, stdin = shell_command(job, jdir)
    shell = subprocess.Popen(
        argv, cwd=env["HOME"], env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=spool_o, stderr=spool_e, start_new_session=True, preexec_fn=as_moms_child(job, 0),
    )
    if stdin is not None:
        os.close(stdin)
    job["shell_pid"] = shell.pid
    save_job(jdir, job)
    status, exit_status = watch_job(jdir, job, shell, start, spool_e)
    if exit_status is None:
        exit_status = status if status >= 0 else 256 - status
    # The script has ended: every task left on any node is killed at once.
    tm.signal_group(shell.pid, signal.SIGKILL)
    for task in registered_tasks(jdir):
        tm.signal_group(task["pgid"], signal.SIGKILL)
    finish_job(jdir, job, exit_status, spool_o, spool_e)
    return 0


def watch_job(jdir: Path, job: dict, shell: subprocess.Popen, start: float, spool_e):
    """MoM's poll loop: walltime, qdel, SIGTERM then SIGKILL after kill_delay. With the
    login shell the top process dies of the SIGTERM at once while the script, orphaned,
    runs its trap: the job ends at the next poll that finds the session empty, or at
    kill_delay (mom_start.c scan_for_terminated, JOB_SVFLG_TERMJOB; mom_mach.c cput_sum;
    mom_main.c kill_job)."""
    killed_at = None
    exit_status = None
    status = None
    while True:
        if status is None:
            try:
                status = shell.wait(timeout=job["poll"])
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(job["poll"])
        if status is not None and (killed_at is None or not session_alive(shell.pid)):
            return status, exit_status
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
            if status is not None:
                return status, exit_status


def terminate_mother_superior(jdir: Path, shell_pid: int, sig: int) -> None:
    """Walltime/qdel: signal the job shell's session and the tasks on the first host.

    Tasks on other hosts get the signal only through a pbsdsh that forwards it.
    """
    tm.signal_group(shell_pid, sig)
    for task in registered_tasks(jdir):
        if task["host"] == 0 or sig == signal.SIGKILL:
            tm.signal_group(task["pgid"], sig)


def finish_job(jdir: Path, job: dict, exit_status: int, spool_o, spool_e) -> None:
    # Let the SIGKILLed sessions go (the tasks' and the job shell's, whose orphaned script
    # may outlive the shell) before copying output and removing their folders.
    deadline = time.time() + 5
    shell = job.get("shell_pid")
    while time.time() < deadline and (
            any(pid_alive(t["pgid"]) for t in registered_tasks(jdir))
            or (shell and session_alive(shell))):
        time.sleep(0.02)
    spool_o.close()
    if spool_e is not spool_o:
        spool_e.close()
    used = tm.spool_names(job["join"])  # a joined job writes one file, the other none
    for name, dest in (("spool.o", job["output"]), ("spool.e", job["error"])):
        if name in used:
            copy_output(jdir / name, dest)
    for index in range(len(job["nodes"])):
        remove_tree(node_tmpdir(job, index))
    if job.get("netns"):
        netns_module().down(job["netns"])
    if job.get("cgroup"):
        cgroups_module().down(job["cgroup"])
    for path in (jdir / "tasks").glob("*.json"):
        path.unlink(missing_ok=True)
    for name in ("nodefile", "spool.o", "spool.e", "script.SC", "delete", tm.TABLE):
        (jdir / name).unlink(missing_ok=True)
    job.update(state="F", exit_status=exit_status, end=time.time())
    save_job(jdir, job)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ancestors() -> set:
    """This process and its ancestors (a helper's own shell may carry FAKEPBS_HOME)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def job_processes(home) -> list:
    """Live processes of the jobs run under FAKEPBS_HOME=home, but the caller: every process
    the fake starts carries that variable (tests and benchmarks check nothing is left)."""
    marker = f"FAKEPBS_HOME={home}".encode()
    found = []
    mine = ancestors()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
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


def job_attributes(job: dict) -> list[tuple[str, str | None, str]]:
    """(name, resource, value) in the server's order (master_job_attr_def.xml), the values
    as the server encodes them. schedselect is manager-only (ATR_DFLAG_MGRD): shown only
    when the job's owner is a PBS manager (FAKEPBS_MANAGER=1). A job never runs as one at
    a site (root's jobs are refused by default, acl_roots), so the default hides it, even
    when these tests run as root."""
    import qstat_output
    host = os.uname().nodename
    hosts = job["nodes"]
    running = "stime" in job
    attrs: list[tuple[str, str | None, str]] = [
        ("Job_Name", None, job["name"]), ("Job_Owner", None, job["owner"])]
    if running:
        end = job.get("end", time.time())
        used_cpus = str(sum(c.get("ncpus", 0) for c in job["chunks"]))
        attrs += [("resources_used", "ncpus", used_cpus),
                  ("resources_used", "walltime", format_hms(end - job["stime"]))]
    attrs += [("job_state", None, job["state"]), ("queue", None, job["queue"]),
              ("server", None, server())]
    if job.get("account"):
        attrs.append(("Account_Name", None, job["account"]))
    attrs += [("Checkpoint", None, "u"), ("ctime", None, time.ctime(job["ctime"])),
              ("Error_Path", None, f"{host}:{job['error']}")]
    if running:
        attrs += [("exec_host", None, exec_host(job["chunks"], hosts, job["chunk_host"])),
                  ("exec_vnode", None, exec_vnode(job["chunks"], hosts, job["chunk_host"]))]
    attrs += [("Hold_Types", None, "n"), ("Join_Path", None, job["join"]),
              ("Keep_Files", None, "n"), ("Mail_Points", None, "a"),
              ("mtime", None, time.ctime(job.get("end") or job.get("stime") or job["ctime"])),
              ("Output_Path", None, f"{host}:{job['output']}"), ("Priority", None, "0"),
              ("qtime", None, time.ctime(job["ctime"])), ("Rerunable", None, "True")]
    attrs += [("Resource_List", k, v) for k, v in resource_list(job["resources"], job["chunks"]).items()]
    if job.get("modes", {}).get("manager"):
        attrs.append(("schedselect", None, job["schedselect"]))
    if running:
        attrs += [("stime", None, time.ctime(job["stime"])),
                  ("session_id", None, str(job.get("shell_pid", 0))),
                  ("jobdir", None, os.path.expanduser("~")),
                  ("substate", None, "92" if job["state"] == "F" else "42")]
    attrs.append(("Variable_List", None, qstat_output.encode_arst_bs(
        [f"{k}={v}" for k, v in job["variables"].items()])))
    attrs += [("etime", None, time.ctime(job["ctime"])), ("run_count", None, "1" if running else "0")]
    if job["state"] == "F":
        attrs.append(("Exit_status", None, str(job["exit_status"])))
    attrs += [("Submit_arguments", None, job.get("submit_args", "")),
              ("project", None, "_pbs_project_default"), ("Submit_Host", None, host)]
    return attrs


def qstat_options(argv: list[str], mode: str) -> tuple[dict, list[str]]:
    """getopt over qstat's options; what this fake answers: -f -x -w -F json|dsv (-F from
    PBS Pro 18; with FAKEPBS_QSTAT_JSON=none, PBS Pro 14's option set)."""
    import qstat_output
    usage = qstat_output.USAGE_14 if mode == "none" else qstat_output.USAGE_18
    takes_value = set("uWD") | (set() if mode == "none" else {"F"})
    known = set("ainpqrstwxfGHJMQBT1") | takes_value | (set() if mode == "none" else {"E"})
    opts: dict = {"f": False, "x": False, "w": False, "F": None}
    errors = []
    found, ids = tm.getopt(argv, known, takes_value)
    for flag, value, error in found:
        if error:
            errors.append(f"qstat: {error}")
        elif value is None:
            opts[flag] = True
        elif flag == "F":
            if value.lower() not in ("json", "dsv", "default"):
                errors.append("")
            opts["F"] = value.lower()
    if not errors and opts["F"] not in (None, "default") and not opts["f"]:
        errors.append("qstat: conflicting options.")
    if not errors and opts["w"] and opts["F"] not in (None, "default"):
        errors.append("qstat: option w cannot be used with -F")
    if errors:
        text = "".join(e + "\n" for e in errors if e)
        raise PBSError(text + usage.rstrip("\n"), 2)
    return opts, ids


def qstat(argv: list[str]) -> int:
    import qstat_output
    mode = "valid"
    ids_hint = [a for a in argv if not a.startswith("-")]
    if ids_hint:  # a job's mode is its own, taken at qsub time
        try:
            mode = load_job(job_dir(ids_hint[-1]))["modes"]["qstat_json"]
        except (OSError, PBSError, KeyError, ValueError):
            pass
    else:
        mode = settings()["qstat_json"]
    opts, ids = qstat_options(argv, mode)
    if ids:
        selected = []
        for jobid in ids:
            jdir = job_dir(jobid)
            try:
                job = load_job(jdir)
            except OSError:
                raise PBSError(f"qstat: Unknown Job Id {jobid}", 153) from None
            if job["state"] == "F" and not opts["x"]:
                raise PBSError(f"qstat: {jobid} Job has finished, use -x or -H to obtain historical job information", 35)
            selected.append(job)
    else:
        selected = [job for _, job in all_jobs(opts["x"])]
    out = sys.stdout.buffer
    jobs = [(job["id"], job_attributes(job)) for job in selected]
    if opts["F"] == "json":
        encode = qstat_output.released_json if mode == "released" else qstat_output.master_json
        version = "23.06.06" if mode == "released" else "23.06.06.fake-master"
        out.write(encode(jobs, int(time.time()), version, server()))
    elif opts["f"]:
        for job_id, attrs in jobs:
            out.write(qstat_output.full_text(job_id, attrs, opts["w"] and mode != "none"))
    elif selected:
        out.write(b"Job id            Name             User              Time Use S Queue\n")
        out.write(b"----------------  ---------------- ----------------  -------- - -----\n")
        for job in selected:
            user = job["owner"].split("@")[0]
            out.write(f"{job['id']:<17} {job['name'][:16]:<16} {user[:16]:<16}  {'0':>8} "
                      f"{job['state']} {job['queue']}\n".encode())
    out.flush()
    return 0


QDEL_USAGE = (  # src/cmds/qdel.c main
    "usage:\n"
    "\tqdel [-W force|suppress_email=X] [-x] job_identifier...\n"
    "\tqdel --version"
)


def qdel(argv: list[str]) -> int:
    errors = []
    # Not tm.getopt(): this loop reads one option letter a word (-xW force is -x alone),
    # as the fake's qdel always has; getopt() would read such clusters as glibc does, a
    # change of what qdel accepts that is for its own commit, not a clean-up's.
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        if argv[i] == "--":
            i += 1
            break
        flag = argv[i][1]
        if flag == "W":
            value = argv[i][2:] or (argv[i + 1] if i + 1 < len(argv) else None)
            i += 0 if argv[i][2:] else 1
            if value is None:
                errors.append("qdel: option requires an argument -- 'W'")
        elif flag != "x":
            errors.append(f"qdel: invalid option -- '{flag}'")
        i += 1
    if errors or i >= len(argv):
        raise PBSError("".join(e + "\n" for e in errors) + QDEL_USAGE, 2)
    status = 0
    for jobid in argv[i:]:
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


# ---------------------------------------------------------------- fake nvidia-smi

def caller_host(job: dict, jdir: Path) -> int:
    """The host a process runs on: that of its nearest ancestor the fake started (a
    task's top process, or the job shell), so an environment file that carries another
    host's variables does not mislead it; else FAKEPBS_HOST_INDEX."""
    tops = {t["pid"]: t["host"] for t in registered_tasks(jdir)}
    if job.get("shell_pid"):
        tops[job["shell_pid"]] = 0
    pid = os.getpid()
    while pid > 1:
        if pid in tops:
            return tops[pid]
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return int(os.environ.get("FAKEPBS_HOST_INDEX", "0"))


def nvidia_smi(argv: list[str]) -> int:
    if argv != ["-L"]:
        raise PBSError("nvidia-smi: the fake answers only -L", 2)
    try:
        jdir = job_dir(os.environ["PBS_JOBID"])
        job = load_job(jdir)
    except (KeyError, OSError, PBSError):
        raise PBSError("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9) from None
    lines = launch_hook.nvidia_smi_lines(job, caller_host(job, jdir))
    if not lines:
        print("No devices found.")
        return 6
    print("\n".join(lines))
    return 0


COMMANDS = {"qsub": qsub, "pbsdsh": tm.main, "qstat": qstat, "qdel": qdel, "nvidia-smi": nvidia_smi}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: fakepbs.py qsub|pbsdsh|qstat|qdel|nvidia-smi ... | _processes | _netns_clean",
              file=sys.stderr)
        return 2
    if argv[0] == "_mom":
        return mom(argv[1])
    if argv[0] == "_processes":  # for test helpers: what of this FAKEPBS_HOME still runs
        for pid in job_processes(home()):
            print(pid)
        return 0
    if argv[0] == "_netns_clean":  # tests' safety net: this FAKEPBS_HOME's namespaces
        for name in netns_module().clean_all(str(home())):
            print(f"fakepbs: removed {name}")
        for name in cgroups_module().clean_all(str(home())):
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
