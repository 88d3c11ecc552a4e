"""dask_start: a task's Dask process in one Python (the node's checks, a worker's forkserver,
dashboards once the cluster is ready), and kit.py task-setup (task.sh's other path)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import DASK, KIT
from dask_pbs_kit import dask_start as ds
from dask_pbs_kit import kit_cli
from dask_pbs_kit.errors import BAD_VALUE, MISSING, USAGE, KitError

KIT_PY = str(KIT / "helpers" / "kit.py")
PRELOAD = str(KIT / "scripts" / "lib" / "scheduler_preload.py")
ONE_LINE = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from dask_pbs_kit.dask_start import main; main()")  # task.sh's
GiB = 1024**3


# ------------------------------------------------------------------ pure functions

def test_settings_then_dask_arguments():
    assert ds.parse(["role=worker", "node=node01", "log=/l/w.log", "--", "--nworkers", "2"]) == (
        {"role": "worker", "node": "node01", "log": "/l/w.log"}, ["--nworkers", "2"])
    assert ds.parse(["interface=", "--"]) == ({"interface": ""}, [])
    for bad in (["colour=blue", "--"], ["role", "--"], ["role=worker"]):
        with pytest.raises(KitError) as err:
            ds.parse(bad)
        assert err.value.code == USAGE


@pytest.mark.parametrize("args, environ, expected", [
    ([], {}, True),
    ([], {ds.METHOD_VARIABLE: "forkserver"}, True),
    ([], {ds.METHOD_VARIABLE: "spawn"}, False),   # the user's choice stays
    ([], {ds.METHOD_VARIABLE: "fork"}, False),
    (["--no-nanny"], {}, False),                  # no nanny, no worker processes to start
])
def test_a_worker_uses_the_forkserver_unless_told_otherwise(args, environ, expected):
    assert ds.uses_forkserver("worker", args, environ) is expected
    assert ds.uses_forkserver("scheduler", args, environ) is False


def test_the_forkserver_preloads_the_dashboard_only_when_the_workers_start_with_it():
    assert ds.preload_modules(["--nworkers", "4"])[:1] == ["distributed"]
    assert "distributed.dashboard.worker" in ds.preload_modules(["--nworkers", "4"])
    assert "distributed.dashboard.worker" not in ds.preload_modules(["--no-dashboard"])


@pytest.mark.parametrize("args, value", [
    ([], "1"), (["--nworkers", "4"], "4"), (["--nworkers=4"], "4"), (["--nprocs", "2"], "2"),
    (["--nworkers", "auto"], "auto"), (["--nworkers"], "1")])
def test_nworkers(args, value):
    assert ds.nworkers(args) == value


def test_one_process_per_chunk_gets_its_dashboard_later_several_share_the_forkservers():
    environ = {}
    assert ds.hold_back_worker_dashboard(["--nworkers", "1"], PRELOAD, True, environ) == [
        "--no-dashboard", "--preload", PRELOAD, "--nworkers", "1"]
    assert environ == {"DASK_PBS_KIT_WORKER_DASHBOARD": "later", "DASK_PBS_KIT_DASHBOARD_PREFIX": ""}
    environ = {}
    for args, forkserver in ((["--nworkers", "4"], True), (["--no-dashboard"], True),
                             (["--dashboard"], False)):
        assert ds.hold_back_worker_dashboard(args, PRELOAD, forkserver, environ) == args
    assert ds.hold_back_worker_dashboard(["--nworkers", "1"], "/no/such/preload.py", True, environ) == [
        "--nworkers", "1"]
    assert environ == {}
    # Spawn imports bokeh in every worker process anyway: later is never worse there.
    assert ds.hold_back_worker_dashboard(["--nworkers", "4", "--dashboard-prefix", "/p"], PRELOAD, False,
                                         environ)[:3] == ["--no-dashboard", "--preload", PRELOAD]
    assert environ["DASK_PBS_KIT_DASHBOARD_PREFIX"] == "/p"


def test_the_schedulers_dashboard_waits_for_the_cluster_only_with_the_kits_plugin():
    environ = {}
    args = ["--preload", PRELOAD, "--dashboard-address", ":8787", "--dashboard-prefix=/x"]
    assert ds.hold_back_dashboard(args, environ) == ["--no-dashboard"] + args
    assert environ == {"DASK_PBS_KIT_DASHBOARD": "later", "DASK_PBS_KIT_DASHBOARD_PREFIX": "/x"}
    environ = {}
    for other in (["--no-dashboard"], ["--dashboard"]):
        assert ds.hold_back_dashboard(args + other, environ) == args + other
    assert ds.hold_back_dashboard(["--dashboard-address", ":8787"], environ) == ["--dashboard-address", ":8787"]
    assert environ == {}


def test_sys_path_as_the_dask_script_would_have_it(monkeypatch):
    monkeypatch.setattr(sys, "path", ["/kit/helpers", "", "/lib/python3.11", "/kit/helpers"])
    ds.fix_sys_path("/kit/helpers", "/env/bin/dask")
    # The folder task.sh put first goes; one from PYTHONPATH (a worker job's) stays.
    assert sys.path == ["/env/bin", "/lib/python3.11", "/kit/helpers"]
    monkeypatch.setattr(sys, "path", ["/kit/helpers", "/lib/python3.11"])  # python -P: no ''
    ds.fix_sys_path("/kit/helpers", "/env/bin/dask")
    assert sys.path == ["/lib/python3.11"]


def test_the_tasks_line_says_when_to_the_millisecond(monkeypatch):
    monkeypatch.setenv("TMPDIR", "/tmp/pbs.1")
    line = ds.task_line({"role": "worker", "node": "node01", "started": "1000.250000"},
                        ", memory limit 5 bytes per process (why)", 1000.75)
    assert re.fullmatch(r"dask-pbs: worker on node node01 \(pid \d+, TMPDIR /tmp/pbs\.1, memory limit 5 bytes "
                        r"per process \(why\)\) at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.750 \(0\.500 s after task\.sh "
                        r"began\)", line), line
    # bench/phases.py reads it back.
    sys.path.insert(0, str(KIT / "bench"))
    try:
        import phases
    finally:
        sys.path.remove(str(KIT / "bench"))
    start, at = phases.task_times(line)
    assert at == pytest.approx(1000.75, abs=0.002) and start == pytest.approx(1000.25, abs=0.002)
    assert ds.task_line({"role": "scheduler", "started": "bash 4"}, "", 1.0).endswith(".000")


def test_setup_adds_interface_and_memory_limit(monkeypatch):
    from dask_pbs_kit import host_memory, netif

    calls = []

    def detect(first, scheduler_file, wait):
        calls.append((first, scheduler_file, wait))
        return netif.Iface("ib0", "10.1.0.2", "255.255.0.0"), "host-name"

    monkeypatch.setattr(netif, "detect", detect)
    monkeypatch.setattr(host_memory, "cgroup_limit", lambda: 8 * GiB)
    monkeypatch.setattr(host_memory, "ram", lambda: 64 * GiB)
    settings = {"role": "worker", "node": "node02", "interface": "auto", "first": "node00",
                "scheduler_file": "/logs/scheduler.json", "timeout": "60", "memory": str(4 * GiB),
                "host_procs": "4", "reserve_ppm": "100000"}
    args, how, choice = ds.setup(settings, ["--nworkers", "4"])
    limit = (8 * GiB - 8 * GiB // 10) // 4
    assert args == ["--memory-limit", str(limit), "--interface", "ib0", "--nworkers", "4"]
    assert choice == "node02 ib0 10.1.0.2 host-name"
    assert how.startswith(f", interface ib0 10.1.0.2 (host-name, INTERFACE=auto), memory limit {limit} bytes")
    assert calls == [("node00", "/logs/scheduler.json", 60.0)]  # a worker may wait for the file
    args, how, choice = ds.setup({"role": "scheduler", "interface": "auto", "first": "node00",
                                  "scheduler_file": "/logs/scheduler.json"}, [])
    assert args == ["--interface", "ib0"] and calls[-1] == ("node00", "", 0.0)  # never the scheduler
    assert ds.setup({"role": "scheduler", "interface": ""}, ["--x"]) == (["--x"], "", None)
    with pytest.raises(KitError) as err:
        ds.setup(dict(settings, interface="", memory="1000"), [])
    assert err.value.code == BAD_VALUE


# ------------------------------------------------------------------ kit.py task-setup

def test_task_setup_on_this_machine():
    done = subprocess.run([sys.executable, KIT_PY, "task-setup", "role=worker", "node=node01",
                           "interface=auto", "first=localhost", "memory=1073741824", "host_procs=1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"interface \S+ \d+\.\d+\.\d+\.\d+ \S+", lines[0])
    assert lines[1].startswith("memory ") and "\t" in lines[1]
    done = subprocess.run([sys.executable, KIT_PY, "task-setup", "role=scheduler"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == ""


def test_task_setup_errors(capsys):
    assert kit_cli.main(["task-setup", "role=worker", "memory=1000", "host_procs=1"]) == BAD_VALUE
    assert "below the 256mb a worker needs" in capsys.readouterr().err
    assert kit_cli.main(["task-setup", "role=nanny"]) == USAGE
    assert kit_cli.main(["task-setup", "colour=blue"]) == USAGE
    assert kit_cli.main(["task-setup", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: kit.py task-setup")


# ------------------------------------------------------------------ real processes

def descendants(pid: int, depth: int = 99) -> list:
    """(pid, "[name] command line") of every live descendant of pid, down to depth generations."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{entry}/comm") as fh:
                    cmdline = f"[{fh.read().strip()}] {cmdline}"
            except (OSError, ValueError):
                continue
            children.setdefault(parent, []).append((int(entry), cmdline))
    found, todo = [], [(pid, 0)]
    while todo:
        here, level = todo.pop()
        for child in children.get(here, []) if level < depth else []:
            found.append(child)
            todo.append((child[0], level + 1))
    return found


def is_forkserver(cmd: str) -> bool:
    """A forkserver in descendants(): forked from its nanny (named so in ps) or spawned."""
    return cmd.startswith(f"[{ds.FORKSERVER_NAME}] ") or "forkserver import main" in cmd


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(check, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def http_status(port: int, path: str = "/status") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def launch(tmp_path: Path, role: str, settings: dict, dask_args: list, env: dict) -> subprocess.Popen:
    """What task.sh's exec runs, from a folder whose modules would shadow distributed's own
    if the current folder were on sys.path (as `python -c` puts it)."""
    words = [f"{k}={v}" for k, v in dict({"role": role, "script": DASK}, **settings).items()]
    return subprocess.Popen([sys.executable, "-c", ONE_LINE, str(KIT / "helpers"), *words, "--", *dask_args],
                            cwd=tmp_path / "submit", env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def job(tmp_path):
    """A job's log folder and environment, a submit folder with a decoy tornado.py."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "submit").mkdir()
    (tmp_path / "submit" / "tornado.py").write_text("raise SystemExit('the submit folder was on sys.path')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "PYTHONPATH"))}
    env.update(DASK_PBS_KIT_ROLL=str(logs / "workers.txt"), DASK_PBS_KIT_CLOSED=str(logs / "scheduler.closed"),
               TMPDIR=str(tmp_path))
    return logs, env


def test_scheduler_and_workers_start_in_one_python_each_dashboards_off_the_starts_path(tmp_path, job):
    logs, env = job
    procs = []
    try:
        sched = launch(tmp_path, "scheduler", {"node": "node00", "log": logs / "scheduler-0.log",
                                               "interface": "auto", "iface": logs / "scheduler-0.iface",
                                               "started": f"{time.time():.6f}"},
                       ["--scheduler-file", str(logs / "scheduler.json"), "--port", "0", "--preload", PRELOAD,
                        "--dashboard-address", "127.0.0.1:0"], env)
        procs.append(sched)
        info = wait_for(lambda: (logs / "scheduler.json").exists() and json.loads(
            (logs / "scheduler.json").read_text() or "null"), "scheduler file")
        port = info["services"]["dashboard"]
        assert http_status(port, "/health") == 200
        wait_for(lambda: http_status(port) == 200, "scheduler dashboard")  # soon after it listens
        for chunk, nworkers in ((1, 1), (2, 2)):
            procs.append(launch(tmp_path, "worker", {
                "node": f"node0{chunk}", "log": logs / f"worker-{chunk}.log", "interface": "auto",
                "iface": logs / f"worker-{chunk}.iface", "first": "localhost",
                "scheduler_file": logs / "scheduler.json", "timeout": "60", "memory": str(GiB),
                "host_procs": str(nworkers)},
                ["--scheduler-file", str(logs / "scheduler.json"), "--name", f"chunk-{chunk}",
                 "--nworkers", str(nworkers), "--nthreads", "1", "--local-directory", str(tmp_path)], env))
        wait_for(lambda: len((logs / "workers.txt").read_text().split()) == 3, "3 workers on the roll")
        # Each worker task: its Dask process, a forkserver, the worker processes its forks.
        for proc, nworkers in zip(procs[1:], (1, 2)):
            tree = descendants(proc.pid, 1)
            servers = [pid for pid, cmd in tree if is_forkserver(cmd)]
            assert len(servers) == 1, tree
            assert "forkserver import main" not in dict(tree)[servers[0]]  # a fork of the nanny
            forked = descendants(servers[0], 1)
            assert len(forked) == nworkers, (tree, forked)
        lines = {name: (logs / name).read_text() for name in ("scheduler-0.log", "worker-1.log", "worker-2.log")}
        for name, text in lines.items():
            role = name.split("-")[0]
            assert re.match(rf"dask-pbs: {role} on node node0\d \(pid \d+, TMPDIR {tmp_path}, interface \S+ ", text)
        assert ", memory limit 1073741824 bytes per process (the chunk's share of its mem=)) at " in lines["worker-1.log"]
        assert (logs / "worker-1.iface").read_text().startswith("node01 ")
        worker_port = int(re.search(r"dashboard at: +[\d.]+:(\d+)", lines["worker-1.log"]).group(1))
        assert http_status(worker_port) == 404  # one process per chunk: its dashboard comes later too
        # The job says the cluster is ready: every dashboard follows.
        (logs / "cluster-info.txt").write_text("ready\n")
        wait_for(lambda: http_status(port) == 200, "scheduler dashboard")
        wait_for(lambda: http_status(worker_port) == 200, "worker dashboard")
        for proc in procs:
            assert proc.poll() is None, proc.stderr.read()
    finally:
        for proc in reversed(procs):
            stop(proc)
    for proc in procs:
        assert "Traceback" not in proc.stderr.read()


def test_a_worker_that_cannot_run_says_so_on_the_jobs_stderr_and_in_its_log(tmp_path, job):
    logs, env = job
    proc = launch(tmp_path, "worker", {"node": "node03", "log": logs / "worker-3.log", "memory": "1000",
                                       "host_procs": "1"}, ["--scheduler-file", str(logs / "none.json")], env)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 7
    assert err.startswith("dask-pbs: node node03: each worker process would get 1000 bytes")
    assert (logs / "worker-3.log").read_text() == err


def test_a_tmpdir_too_long_for_a_unix_socket_means_spawn(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / ("d" * 80)))
    with pytest.raises(OSError) as err:
        ds.socket_folder()
    assert "too long a path for the forkserver's socket (75 characters at most)" in str(err.value)
    monkeypatch.setattr(tempfile, "tempdir", "/var/tmp/pbs.1234567.pbs01.cluster.example.org")
    ds.socket_folder()


def test_the_fork_stands_in_only_for_the_forkserver_it_knows():
    import multiprocessing.forkserver as mpfs
    from types import SimpleNamespace

    assert ds.fork_layout_known(SimpleNamespace(_forkserver=mpfs.ForkServer(), main=mpfs.main))
    newer = mpfs.ForkServer()
    newer._forkserver_authkey = None  # Python 3.14's forkserver authenticates its clients
    assert not ds.fork_layout_known(SimpleNamespace(_forkserver=newer, main=mpfs.main))

    def main(listener_fd, alive_r, authkey_r, preload, main_path=None, sys_path=None):
        pass
    assert not ds.fork_layout_known(SimpleNamespace(_forkserver=mpfs.ForkServer(), main=main))
    running = mpfs.ForkServer()
    running._forkserver_pid = 1
    assert not ds.fork_layout_known(SimpleNamespace(_forkserver=running, main=mpfs.main))
    assert not ds.fork_layout_known(SimpleNamespace())


FORKSERVER_SCRIPT = """
import json, os, pathlib, sys, threading, time, multiprocessing, multiprocessing.forkserver
sys.path.insert(0, sys.argv[1])
from dask_pbs_kit import dask_start as ds
if sys.argv[2] == "unknown":
    ds.fork_layout_known = lambda module: False
elif sys.argv[2] == "thread":
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
how = ds.start_forkserver(["distributed", "distributed.http.health"])
server = multiprocessing.forkserver._forkserver._forkserver_pid
with multiprocessing.get_context("forkserver").Pool(2) as pool:
    parents = {pool.apply(os.getppid) for _ in range(4)}
    names = {pool.apply(pathlib.Path("/proc/self/comm").read_text).strip() for _ in range(4)}
    imported = pool.apply(eval, ("'distributed.http.health' in __import__('sys').modules",))
print(json.dumps({"how": how, "server": server, "parents": sorted(parents), "names": sorted(names),
                  "imported": imported, "server_name": pathlib.Path(f"/proc/{server}/comm").read_text().strip(),
                  "server_fds": len(os.listdir(f"/proc/{server}/fd"))}), flush=True)
time.sleep(60)
"""


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # ended, its parent gone before it
    except OSError:
        return True


@pytest.mark.parametrize("mode, how", [("known", "fork"), ("unknown", "spawn"), ("thread", "spawn")])
def test_the_forkserver_is_a_fork_of_the_nanny_where_it_can_be_and_ends_with_it(tmp_path, mode, how):
    proc = subprocess.Popen([sys.executable, "-c", FORKSERVER_SCRIPT, str(KIT / "helpers"), mode],
                            cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp_path)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        facts = json.loads(proc.stdout.readline() or "null")
        assert facts, proc.stderr.read()
        assert facts["how"] == how
        assert facts["parents"] == [facts["server"]]  # every worker process is one of its forks
        assert facts["imported"]                      # with the preload imported before the fork
        assert facts["names"] == ["python"]           # named as their parent was, not as the forkserver
        with open(f"/proc/{facts['server']}/cmdline", "rb") as fh:
            spawned = b"forkserver import main" in fh.read()
        assert spawned is (how == "spawn")
        if how == "fork":
            assert facts["server_name"] == ds.FORKSERVER_NAME
            # its socket, the alive pipe's read end, its loop's signal pipe and selector, the
            # pool's status pipes (2), stdin/out/err: not the nanny's files nor its end of the pipe
            assert facts["server_fds"] <= 10, facts
        os.kill(proc.pid, signal.SIGKILL)  # the nanny dies at once: its forkserver follows
        proc.wait(timeout=10)
        wait_for(lambda: gone(facts["server"]), "forkserver's end", timeout=20)
    finally:
        stop(proc)


def test_a_worker_whose_tmpdir_is_too_long_spawns_and_says_so(tmp_path, job):
    logs, env = job
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    procs = []
    try:
        procs.append(launch(tmp_path, "scheduler", {"node": "node00", "log": logs / "scheduler-0.log"},
                            ["--scheduler-file", str(logs / "scheduler.json"), "--port", "0", "--preload",
                             PRELOAD, "--no-dashboard", "--interface", "lo"], env))
        procs.append(launch(tmp_path, "worker", {"node": "node01", "log": logs / "worker-1.log",
                                                 "memory": str(GiB), "host_procs": "1"},
                            ["--scheduler-file", str(logs / "scheduler.json"), "--nthreads", "1",
                             "--interface", "lo", "--local-directory", str(tmp_path)], dict(env, TMPDIR=str(deep))))
        wait_for(lambda: (logs / "workers.txt").exists() and len((logs / "workers.txt").read_text().split()) == 1,
                 "the worker on the roll")
        assert not [cmd for _, cmd in descendants(procs[1].pid, 1) if is_forkserver(cmd)]
        text = (logs / "worker-1.log").read_text()
        assert "dask-pbs: node node01: the worker processes' forkserver did not start (TMPDIR " in text
        assert "): they start with spawn" in text
    finally:
        for proc in reversed(procs):
            stop(proc)


# ------------------------------------------------------------------ the plugin's roll and dashboards

class FakeComm:
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)

    def closed(self):
        return False


class FakeScheduler:
    """What JobPlugin reads of a scheduler: workers (with name, extra), stream_comms."""

    def __init__(self):
        self.workers, self.stream_comms = {}, {}

    def join(self, address, name, extra=None):
        self.workers[address] = type("WS", (), {"name": name, "extra": extra or {}})()
        self.stream_comms[address] = FakeComm()


def load_preload():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kit_preload_under_test", PRELOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_roll_lists_workers_only_once_the_schedulers_pages_are_up(tmp_path, monkeypatch):
    import asyncio

    preload = load_preload()
    pages_up = None

    async def add_pages(server, module, prefix):
        await pages_up.wait()

    monkeypatch.setattr(preload, "add_pages", add_pages)
    roll = tmp_path / "workers.txt"

    async def scenario():
        nonlocal pages_up
        pages_up = asyncio.Event()
        sched = FakeScheduler()
        plugin = preload.JobPlugin(str(roll), dashboard_later=True,
                                   later={"ready_file": str(tmp_path / "ready"), "after": 30, "prefix": ""})
        await plugin.start(sched)
        assert roll.read_text() == ""
        sched.join("tls://a:1", "chunk-1", {"dask-pbs-kit": "dashboard later"})
        plugin.add_worker(sched, "tls://a:1")
        sched.join("tls://b:1", "chunk-2")
        plugin.add_worker(sched, "tls://b:1")
        await asyncio.sleep(0.2)
        assert roll.read_text() == ""  # no dashboard yet: the job must not call the cluster ready
        pages_up.set()
        await asyncio.sleep(0.05)
        assert roll.read_text() == "chunk-1\nchunk-2\n"
        # The job's ready file: the worker that asked is told to add its pages, the other not.
        (tmp_path / "ready").write_text("ready\n")
        await asyncio.sleep(0.2)
        assert sched.stream_comms["tls://a:1"].sent == [{"op": "dask-pbs-kit-dashboard"}]
        assert sched.stream_comms["tls://b:1"].sent == []
        sched.join("tls://c:1", "chunk-3", {"dask-pbs-kit": "dashboard later"})
        plugin.add_worker(sched, "tls://c:1")  # joins later: told at once
        assert sched.stream_comms["tls://c:1"].sent == [{"op": "dask-pbs-kit-dashboard"}]
        # Many changes at once: one rewrite within ROLL_EVERY, the last state kept.
        for i in range(50):
            sched.join(f"tls://d:{i}", f"chunk-9-{i:02d}")
            plugin.add_worker(sched, f"tls://d:{i}")
        await asyncio.sleep(0.15)
        assert len(roll.read_text().split()) == 53
        await plugin.close()
        plugin.watcher.cancel()

    asyncio.run(scenario())


class FakeLimits:
    """resource's getrlimit/setrlimit for RLIMIT_NOFILE, with a soft and a hard limit."""
    RLIMIT_NOFILE, RLIM_INFINITY = 7, -1

    def __init__(self, soft, hard):
        self.soft, self.hard = soft, hard

    def getrlimit(self, _which):
        return self.soft, self.hard

    def setrlimit(self, _which, pair):
        self.soft, self.hard = pair


def test_a_large_job_gets_a_connect_timeout_and_a_backlog_for_its_size(tmp_path):
    cap = tmp_path / "somaxconn"
    cap.write_text("4096\n")
    limits, environ = FakeLimits(1024, 65536), {}
    assert ds.size_for("worker", 16, environ, limits, str(cap)) == []
    assert limits.soft == 65536 and environ == {}  # small: only the open-file limit
    assert ds.size_for("worker", 4000, environ, limits, str(cap)) == []
    assert environ == {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "80s"}
    environ = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "300s"}  # the job's own stays
    notes = ds.size_for("scheduler", 4000, environ, FakeLimits(1024, 4096), str(cap))
    assert environ == {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "300s",
                       "DASK_DISTRIBUTED__COMM__SOCKET_BACKLOG": "8064"}
    assert notes == [
        "the kernel caps a listen backlog at 4096 (net.core.somaxconn): connections of 4000 worker processes "
        "beyond it wait for TCP's retries (seconds); a site may raise it to 8064",
        "the scheduler may hold 8128 files open for 4000 worker processes, and this node lets it open 4096 "
        "(ulimit -Hn): ask the site for more, or run fewer processes"]
    cap.write_text("65535\n")
    assert ds.size_for("scheduler", 4000, {}, FakeLimits(1024, 1 << 20), str(cap)) == []


class FakeClock:
    """time.monotonic and time.sleep for a wait: each nap moves the clock, and a file may
    appear at a given time."""

    def __init__(self, appear=None, at: float = 0.0) -> None:
        self.now, self.appear, self.at, self.naps = 0.0, appear, at, 0

    def clock(self) -> float:
        return self.now

    def nap(self, seconds: float) -> None:
        self.now += seconds
        self.naps += 1
        if self.appear is not None and self.now >= self.at:
            self.appear()
            self.appear = None


PLAN = ("job\tqstat -f -F json\nwalltime\t-1\t-1\tnone\nscheduler\t0\t0\tnode00\t1\n"
        "worker\t1\t1\tnode01\t4\t1\tauto\t4\t0\t0\n"
        "gpu-worker\t2\t2\tnode02\t1\t1\tauto\t2\t0\t0\t0\t2\t0\t2\n"
        "gpu-worker\t2\t2\tnode02\t1\t1\tauto\t2\t0\t0\t1\t2\t1\t2\n")


def test_job_size_a_number_or_the_plan_waited_for(tmp_path):
    assert ds.job_size("600", 5) == 600
    assert ds.job_size("", 5) == 0 and ds.job_size("many", 5) == 0
    plan = tmp_path / "plan.tsv"
    # The scheduler started before job-setup wrote the plan: it waits for the file.
    fake = FakeClock(lambda: plan.write_text(PLAN), at=0.5)
    assert ds.job_size(f"plan:{plan}", 120, fake.clock, fake.nap) == 6
    assert 0.5 <= fake.now < 0.51
    # A plan that never comes (the job failed and stops this task): unknown, after timeout.
    fake = FakeClock()
    assert ds.job_size(f"plan:{tmp_path / 'none.tsv'}", 2, fake.clock, fake.nap) == 0
    assert 2 <= fake.now < 2.01


def test_a_scheduler_started_before_its_certificates_waits_for_them(tmp_path):
    tls = tmp_path / "tls"
    tls.mkdir()

    def made():
        for name in ("ca.pem", "cluster.pem", "cluster.key", "client-config.json"):
            (tls / name).write_text("x")

    fake = FakeClock(made, at=0.3)
    ds.await_certificates(str(tls), "node00", 120, fake.clock, fake.nap)
    assert 0.3 <= fake.now < 0.31
    # client-config.json comes last: the certificates alone are not enough.
    (tls / "client-config.json").unlink()
    fake = FakeClock()
    with pytest.raises(KitError, match=r"cannot read the job's TLS certificates in .*/tls on node node00 "):
        ds.await_certificates(str(tls), "node00", 1, fake.clock, fake.nap)
    assert 1 <= fake.now < 1.01


def test_a_scheduler_whose_certificates_never_come_fails_on_the_jobs_stderr(tmp_path, job):
    logs, env = job
    proc = launch(tmp_path, "scheduler", {"node": "node00", "log": logs / "scheduler-0.log",
                                          "tls": tmp_path / "tls", "tls_pending": "yes", "timeout": "1"},
                  ["--scheduler-file", str(logs / "scheduler.json"), "--port", "0"], env)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 4
    assert err == (f"dask-pbs: cannot read the job's TLS certificates in {tmp_path / 'tls'} on node node00 "
                   "(is the submit folder shared with the compute nodes?)\n")
    assert err in (logs / "scheduler-0.log").read_text()
    assert not (logs / "scheduler.json").exists()


# ------------------------------------------------------------------ a worker started before the plan

def test_an_early_worker_takes_its_chunks_row_once_the_plan_comes(tmp_path):
    plan = tmp_path / "plan.tsv"
    settings = {"role": "worker", "plan": str(plan), "chunk": "1", "line": "1", "memory": "auto"}
    fake = FakeClock(lambda: plan.write_text(PLAN), at=0.4)
    taken, dask_args = ds.take_plan_row(settings, ["--scheduler-file", "s.json", "--nthreads", "9"], 120,
                                        fake.clock, fake.nap)
    assert 0.4 <= fake.now < 0.41
    assert taken == dict(settings, memory="auto", host_procs="4", reserve_ppm="0", reserve_bytes="0", workers="6")
    # The row's options first: the job's own (EXTRA_WORKER_ARGS) come last and win.
    assert dask_args == ["--nthreads", "1", "--name", "chunk-1", "--nworkers", "4", "--scheduler-file", "s.json",
                         "--nthreads", "9"]


@pytest.mark.parametrize("chunk, line", [("2", "2"), ("1", "2"), ("2", "1"), ("0", "0")])
def test_an_early_worker_whose_line_is_no_cpu_worker_of_its_chunk_has_no_row(tmp_path, chunk, line):
    """A GPU chunk's line (its tasks are one per GPU), a wrong guess, the scheduler's line."""
    plan = tmp_path / "plan.tsv"
    plan.write_text(PLAN)
    assert ds.take_plan_row({"plan": str(plan), "chunk": chunk, "line": line}, [], 1) is None


def test_an_early_worker_whose_plan_never_comes_fails_after_its_timeout(tmp_path):
    fake = FakeClock()
    with pytest.raises(KitError, match=r"the job's launch plan .*/plan.tsv did not come within 3 s") as err:
        ds.take_plan_row({"plan": str(tmp_path / "plan.tsv"), "chunk": "1", "line": "1"}, [], 3,
                         fake.clock, fake.nap)
    assert err.value.code == MISSING
    assert 3 <= fake.now < 3.01


def test_the_size_known_after_daskss_import_reaches_its_configuration(monkeypatch):
    import copy

    import dask.config

    saved = copy.deepcopy(dask.config.config)
    environ = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": "31s"}
    before = dict(environ)
    try:
        environ.update(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="57s", OTHER="x")
        environ["DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP"] = "31s"  # unchanged: not applied again
        ds.config_late(before, environ)
        assert dask.config.get("distributed.comm.timeouts.connect") == "57s"
        assert dask.config.get("distributed.comm.timeouts.tcp") == saved["distributed"]["comm"]["timeouts"]["tcp"]
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)


def test_task_setup_takes_an_early_workers_row(tmp_path, capsys):
    plan = tmp_path / "plan.tsv"
    plan.write_text(PLAN)
    row = [f"plan={plan}", "line=1"]
    assert kit_cli.main(["task-setup", "role=worker", "chunk=1", *row]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "args --nthreads 1 --name chunk-1 --nworkers 4"
    assert out[1].startswith("memory ") and "divided among the 4 " in out[1] or len(out) == 2
    assert kit_cli.main(["task-setup", "role=worker", "node=node01", "chunk=2", *row]) == 0
    assert capsys.readouterr().out == (
        "no-worker dask-pbs: node node01: the plan has no worker of chunk 2 on line 1 of $PBS_NODEFILE: this "
        "task ends (the job starts that chunk's tasks where the plan puts them)\n")
    plan.unlink()
    assert kit_cli.main(["task-setup", "role=worker", "chunk=1", "timeout=0", *row]) == MISSING
    assert "did not come within 0 s" in capsys.readouterr().err


def test_an_early_worker_joins_with_its_rows_settings_or_ends_without_one(tmp_path, job):
    logs, env = job
    plan = logs / "plan.tsv"
    procs = []
    try:
        sched = launch(tmp_path, "scheduler", {"node": "node00", "log": logs / "scheduler-0.log"},
                       ["--scheduler-file", str(logs / "scheduler.json"), "--port", "0", "--no-dashboard",
                        "--preload", PRELOAD], env)
        procs.append(sched)
        early = {"node": "node01", "plan": plan, "scheduler_file": logs / "scheduler.json", "timeout": "60"}
        worker_args = ["--scheduler-file", str(logs / "scheduler.json"), "--local-directory", str(tmp_path),
                       "--no-dashboard"]
        procs.append(launch(tmp_path, "worker", dict(early, log=logs / "worker-1.log", chunk="1", line="1"),
                            worker_args, env))
        gpu_line = launch(tmp_path, "worker", dict(early, log=logs / "worker-2.log", chunk="2", line="2"),
                          worker_args, env)
        procs.append(gpu_line)
        time.sleep(0.5)  # both import Dask, waiting for the plan
        assert procs[1].poll() is None and gpu_line.poll() is None
        plan.write_text(PLAN.replace("\tauto\t4\t", f"\t{GiB}\t4\t"))
        assert gpu_line.wait(timeout=60) == 0
        assert (logs / "worker-2.log").read_text() == (
            "dask-pbs: node node01: the plan has no worker of chunk 2 on line 2 of $PBS_NODEFILE: this task "
            "ends (the job starts that chunk's tasks where the plan puts them)\n")
        wait_for(lambda: (logs / "workers.txt").exists() and len((logs / "workers.txt").read_text().split()) == 4,
                 "4 worker processes on the roll")
        assert sorted((logs / "workers.txt").read_text().split()) == [f"chunk-1-{k}" for k in range(4)]
        # Its worker processes are forks of its forkserver, itself a fork of the nanny: the
        # multiprocessing method set after Dask's import reached Dask's configuration.
        tree = descendants(procs[1].pid, 1)
        servers = [pid for pid, cmd in tree if is_forkserver(cmd)]
        assert len(servers) == 1 and "forkserver import main" not in dict(tree)[servers[0]], tree
        assert len(descendants(servers[0], 1)) == 4
        text = (logs / "worker-1.log").read_text()
        assert ", memory limit 1073741824 bytes per process (the chunk's share of its mem=)) at " in text
        assert len(re.findall(r"Threads: +1\n", text)) == 4
    finally:
        for proc in reversed(procs):
            stop(proc)
    for proc in procs:
        assert "Traceback" not in proc.stderr.read()
