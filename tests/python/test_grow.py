"""kit.py join-check and retire (grow.py): every refusal, and a real TLS cluster that a
worker job's workers join and leave without losing what they hold."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import DASK, KIT
from dask_pbs_kit import grow, kit_cli
from dask_pbs_kit.errors import (CLUSTER_GONE, MALFORMED, MISSING, NO_TLS_FILES, NOT_READABLE,
                                 NOT_RETIRED, NOT_SCHEDULER, RETIRE_TIMEOUT, USAGE, KitError)

KIT_PY = str(KIT / "helpers" / "kit.py")
DASHBOARD_PY = str(KIT / "helpers" / "dashboard_url.py")
PRELOAD = str(KIT / "scripts" / "lib" / "scheduler_preload.py")
JOB = "4242.server"


def kit(*argv, timeout=120, **kwargs):
    return subprocess.run([sys.executable, KIT_PY, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_files(root, address, tls=True):
    """A cluster job's files as dask-pbs.sh leaves them: LOG_DIR root/dask-logs/JOB (job.log,
    tls/), the published root/scheduler.json and, with TLS, root/scheduler.tls.json."""
    log_dir = root / "dask-logs" / JOB
    log_dir.mkdir(parents=True)
    (log_dir / "job.log").write_text(f"dask-pbs: job {JOB}: logs in {log_dir}/\n")
    info = {"type": "Scheduler", "id": "Scheduler-1", "address": address,
            "services": {"dashboard": 8787}, "workers": {}}
    (log_dir / "scheduler.json").write_text(json.dumps(info))
    (root / "scheduler.json").write_text(json.dumps(info))
    if tls:
        assert kit_cli.main(["tls", str(log_dir / "tls"), "--name", JOB]) == 0
        shutil.copy(log_dir / "tls" / "client-config.json", root / "scheduler.tls.json")
    return root / "scheduler.json", log_dir


class Listener:
    """A TCP port that takes connections: silent (the kernel's backlog only), or a TLS server
    with the certificate of another job's CA. Closed on leaving a `with` block."""

    def __init__(self, cert_dir=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = None
        if cert_dir is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(f"{cert_dir}/cluster.pem", f"{cert_dir}/cluster.key")
            self.thread = threading.Thread(target=self._serve, args=(context,), daemon=True)
            self.thread.start()

    def _serve(self, context):
        self.sock.settimeout(30)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                pass

    def close(self):
        self.sock.close()
        if self.thread is not None:
            self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def refused(capsys, argv, code, *words):
    """kit.py ARGV (in this process) exits with code, one message naming the words."""
    assert kit_cli.main(argv) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("dask-pbs: ")
    for word in words:
        assert word in err, err
    return err


# ------------------------------------------------------------------ names

@pytest.mark.parametrize("jobid, prefix", [
    ("1235.pbsserver", "job-1235-"), ("1235", "job-1235-"), ("1235[7].pbs01", "job-1235_7-"),
    ("  88.a.b.c\n", "job-88-"),
])
def test_a_worker_jobs_prefix_is_its_job_number(jobid, prefix):
    assert grow.prefix_for(jobid) == prefix


def test_no_prefix_from_an_empty_job_id():
    with pytest.raises(KitError) as err:
        grow.prefix_for(".server")
    assert err.value.code == USAGE


def test_the_cluster_job_id_comes_from_its_job_log(tmp_path):
    (tmp_path / "job.log").write_text("dask-pbs: job 77.pbs01: logs in /x/\nmore\n")
    assert grow.cluster_job_id(str(tmp_path)) == "77.pbs01"
    (tmp_path / "job.log").unlink()
    assert grow.cluster_job_id(str(tmp_path)) == ""
    assert grow.cluster_job_id(str(tmp_path / "1234.server")) == "1234.server"


def test_the_report_line():
    report = {"prefix": "job-7-", "names": ["job-7-chunk-1-0", "job-7-chunk-1-1"],
              "retired": ["job-7-chunk-1-0", "job-7-chunk-1-1"], "kept": [], "keys": 10,
              "unique": 8, "unique_bytes": 32_000_000, "moved": 8, "others": 2}
    assert grow.report_line(report, 1.234) == (
        "retired 2 workers job-7-* in 1.23 s: 8 of 8 keys (32.0 MB) held only by them moved to "
        "the 2 remaining workers (2 more had copies elsewhere)")
    report.update(keys=0, unique=0, unique_bytes=0, moved=0, retired=["job-7-chunk-1-0"])
    assert grow.report_line(report, 0.5) == "retired 1 worker job-7-* in 0.50 s: no key held only by them"
    report["names"] = []
    assert grow.report_line(report, 0.1) == "no worker named job-7-* on the cluster: nothing to retire"


# ------------------------------------------------------------------ join-check refuses

def test_no_scheduler_file(tmp_path, capsys):
    refused(capsys, ["join-check", str(tmp_path / "scheduler.json")], MISSING,
            "no such scheduler file", "is the cluster's job running?")


@pytest.mark.parametrize("content, code, words", [
    ('{"type": "Scheduler", "addr', MALFORMED, "not complete JSON"),
    ('{"type": "Worker", "address": "tcp://1.2.3.4:5"}', NOT_SCHEDULER, "not a Dask scheduler file"),
    ('[1]', NOT_SCHEDULER, "not a Dask scheduler file"),
    ('{"address": "ucx://1.2.3.4:5"}', NOT_SCHEDULER, "speaks ucx://"),
])
def test_not_a_scheduler_file(tmp_path, capsys, content, code, words):
    (tmp_path / "s.json").write_text(content)
    refused(capsys, ["join-check", str(tmp_path / "s.json")], code, words)


def test_a_stale_file_nothing_listens_at(tmp_path, capsys):
    path, _ = cluster_files(tmp_path, f"tcp://127.0.0.1:{free_port()}", tls=False)
    started = time.monotonic()
    refused(capsys, ["join-check", str(path)], CLUSTER_GONE, "nothing answers at tcp://127.0.0.1:",
            "Connection refused", "the cluster's job has ended")
    assert time.monotonic() - started < 2


def test_a_stale_tls_file_whose_certificates_are_left(tmp_path, capsys):
    # A cluster job killed with SIGKILL leaves both files and its tls/ folder.
    path, _ = cluster_files(tmp_path, f"tls://127.0.0.1:{free_port()}")
    refused(capsys, ["join-check", str(path)], CLUSTER_GONE, "nothing answers at tls://")


def test_a_stale_tls_file_without_certificates_is_gone_not_missing_files(tmp_path, capsys):
    path, log_dir = cluster_files(tmp_path, f"tls://127.0.0.1:{free_port()}")
    shutil.rmtree(log_dir / "tls")
    refused(capsys, ["join-check", str(path)], CLUSTER_GONE, "nothing answers at tls://")


def test_a_closed_marker_says_gone_though_the_port_answers(tmp_path, capsys):
    with Listener() as listener:
        path, log_dir = cluster_files(tmp_path, f"tcp://127.0.0.1:{listener.port}", tls=False)
        (log_dir / "scheduler.closed").write_text("closed\n")
        refused(capsys, ["join-check", str(path)], CLUSTER_GONE,
                f"the cluster's scheduler has closed ({log_dir}/scheduler.closed is there)")


def test_a_cluster_whose_log_folder_cannot_be_found(tmp_path, capsys):
    with Listener() as listener:
        path, log_dir = cluster_files(tmp_path, f"tcp://127.0.0.1:{listener.port}", tls=False)
        (log_dir / "scheduler.json").unlink()  # TLS=no: found through dask-logs/*/scheduler.json only
        refused(capsys, ["join-check", str(path)], MISSING,
                f"cannot find the log folder of the cluster job of {path} (its roll of workers")
        # The job's own copy in its LOG_DIR has its roll beside it.
        (log_dir / "workers.txt").write_text("chunk-1\n")
        shutil.copy(path, log_dir / "scheduler.json")
        assert kit_cli.main(["join-check", str(log_dir / "scheduler.json"), "--job-id", "5"]) == 0
        assert capsys.readouterr().out == (
            f"address tcp://127.0.0.1:{listener.port}\nscheduler_file {log_dir}/scheduler.json\n"
            f"log_dir {log_dir}\ncluster_job {JOB}\nprefix job-5-\n")


def test_tls_cluster_without_its_client_configuration(tmp_path, capsys):
    with Listener() as listener:
        path, _ = cluster_files(tmp_path, f"tls://127.0.0.1:{listener.port}")
        (tmp_path / "scheduler.tls.json").unlink()
        refused(capsys, ["join-check", str(path)], NO_TLS_FILES,
                f"{tmp_path}/scheduler.tls.json, its client configuration, is missing")
        (tmp_path / "scheduler.tls.json").write_text('{"distributed": {}}')
        refused(capsys, ["join-check", str(path)], NO_TLS_FILES, "not a dask-pbs-kit client configuration")


@pytest.mark.parametrize("name", ["ca.pem", "client.key", "cluster.pem", "cluster.key"])
def test_tls_cluster_without_one_certificate_file(tmp_path, capsys, name):
    with Listener() as listener:
        path, log_dir = cluster_files(tmp_path, f"tls://127.0.0.1:{listener.port}")
        (log_dir / "tls" / name).unlink()
        refused(capsys, ["join-check", str(path)], NO_TLS_FILES,
                f"{log_dir}/tls/{name}: missing, though {tmp_path}/scheduler.tls.json names the "
                f"cluster's certificates in {log_dir}/tls/")


def test_another_program_with_another_ca_at_the_port_is_no_cluster(tmp_path, capsys):
    other = tmp_path / "other"
    assert kit_cli.main(["tls", str(other), "--name", "other"]) == 0
    with Listener(cert_dir=other) as listener:
        path, _ = cluster_files(tmp_path / "c", f"tls://127.0.0.1:{listener.port}")
        refused(capsys, ["join-check", str(path)], CLUSTER_GONE, "is not this cluster's scheduler")


def test_a_scheduler_too_busy_to_finish_the_handshake_counts_as_alive(tmp_path, capsys):
    with Listener() as listener:  # connections wait in the backlog: nobody answers the TLS hello
        path, log_dir = cluster_files(tmp_path, f"tls://127.0.0.1:{listener.port}")
        assert kit_cli.main(["join-check", str(path), "--timeout", "0.5"]) == 0
        out, err = capsys.readouterr()
        assert err.startswith(f"dask-pbs: warning: the scheduler at tls://127.0.0.1:{listener.port} "
                              "took the connection but did not finish a TLS handshake within 0.5 s")
        assert f"tls_dir {log_dir}/tls\n" in out


def as_nobody():
    """A Python that uid 65534 can run, or a reason to skip."""
    if os.getuid() != 0:
        return None, "needs root to run a child as another user"
    for exe in ("/usr/bin/python3", sys.executable):
        try:
            done = subprocess.run([exe, "-c", "import sys; assert sys.version_info >= (3, 9)"],
                                  user=65534, group=65534, cwd="/", capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return exe, ""
    return None, "no Python that uid 65534 may run"


def test_another_users_cluster_is_not_readable():
    """The files of a cluster of root's (0600 in a folder others may enter, as a home with
    mode 0755), read by uid 65534: a real permission refusal, not a simulated one."""
    python, why = as_nobody()
    if python is None:
        pytest.skip(why)
    root = tempfile.mkdtemp(prefix="dpk-grow-")

    def write_private(name, text):  # a new file of root's, mode 0600
        with open(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(text)

    def join_check_as_nobody(scheduler_file):
        return subprocess.run([python, KIT_PY, "join-check", scheduler_file], user=65534, group=65534,
                              cwd="/", capture_output=True, text=True, timeout=60)

    try:
        os.chmod(root, 0o755)
        path = os.path.join(root, "scheduler.json")
        write_private(path, '{"address": "tcp://127.0.0.1:1"}')
        done = join_check_as_nobody(path)
        assert done.returncode == NOT_READABLE
        assert done.stdout == ""
        assert done.stderr == (
            f"dask-pbs: {path}: permission denied: it belongs to root, and a cluster takes workers "
            "of its own user only (its files are its owner's, mode 0600): start your own cluster job\n")
        # The TLS configuration of a readable scheduler file, unreadable: the same refusal.
        os.chmod(path, 0o644)
        with open(path, "w") as fh:
            fh.write('{"address": "tls://127.0.0.1:1"}')
        config = os.path.join(root, "scheduler.tls.json")
        write_private(config, "{}")
        done = join_check_as_nobody(path)
        assert done.returncode == NOT_READABLE
        assert done.stderr.startswith(f"dask-pbs: {config}: permission denied: it belongs to root")
    finally:
        shutil.rmtree(root)


def test_join_check_usage(capsys):
    refused(capsys, ["join-check"], USAGE, "usage: kit.py join-check")
    refused(capsys, ["join-check", "a.json", "--timeout", "soon"], USAGE, "--timeout must be a number")
    assert kit_cli.main(["join-check", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: kit.py join-check SCHEDULER_FILE")


@pytest.mark.parametrize("argv, words", [
    (["--prefix", "job-1-"], "missing --scheduler-file"),
    (["--scheduler-file", "s.json"], "missing --prefix"),
    (["--scheduler-file", "s.json", "--prefix", ""], "would retire the cluster job's own workers"),
    (["--scheduler-file", "s.json", "--prefix", "chunk-1"], "would retire the cluster job's own workers"),
    (["--scheduler-file", "s.json", "--prefix", "ch"], "would retire the cluster job's own workers"),
    (["--scheduler-file", "s.json", "--prefix", "job-1-", "extra"], "unexpected 'extra'"),
])
def test_retire_usage(capsys, argv, words):
    refused(capsys, ["retire", *argv], USAGE, words)


def test_retire_refuses_as_join_check_does(tmp_path, capsys):
    refused(capsys, ["retire", "--scheduler-file", str(tmp_path / "s.json"), "--prefix", "job-1-"],
            MISSING, "no such scheduler file")
    path, _ = cluster_files(tmp_path, f"tls://127.0.0.1:{free_port()}")
    refused(capsys, ["retire", "--scheduler-file", str(path), "--prefix", "job-1-"], CLUSTER_GONE,
            "nothing answers at tls://")


# ------------------------------------------------------------------ a real cluster, grown and shrunk

class Processes:
    """Dask processes, each in a session of its own (its nanny's workers go with it)."""

    def __init__(self):
        self.procs = {}

    def start(self, name, argv, log, env):
        with open(log, "w") as fh:
            self.procs[name] = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True, cwd=os.path.dirname(log))
        return self.procs[name]

    def stop(self, name, sig=signal.SIGTERM, wait=15.0):
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        self.kill_group(proc)

    @staticmethod
    def kill_group(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the session still holds
        except ProcessLookupError:
            pass
        proc.wait()

    def group_gone(self, proc, within=10.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    def cleanup(self):
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)  # the worker job's nannies ignore SIGTERM: SIGKILL then
            except subprocess.TimeoutExpired:
                pass
            self.kill_group(proc)
        left = [name for name, proc in self.procs.items() if not self.group_gone(proc)]
        assert not left, f"processes left in the sessions of {left}"


@pytest.fixture
def processes():
    procs = Processes()
    try:
        yield procs
    finally:
        procs.cleanup()


def tls_env(tls_dir, **extra):
    """The environment task.sh gives a TLS scheduler or worker."""
    env = {**os.environ, **extra,
           "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
           "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{tls_dir}/ca.pem",
           "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": f"{tls_dir}/cluster.pem",
           "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": f"{tls_dir}/cluster.key",
           "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": f"{tls_dir}/cluster.pem",
           "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": f"{tls_dir}/cluster.key"}
    for name in ("DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"):
        env.pop(name, None)
    return env


def wait_for(predicate, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} after {timeout:g} s"
        time.sleep(0.05)


def roll_of(log_dir):
    try:
        return sorted((log_dir / "workers.txt").read_text().split())
    except OSError:
        return []


def worker_argv(scheduler_file, name, nworkers=1, grow_preload=False):
    argv = [DASK, "worker", "--scheduler-file", str(scheduler_file), "--name", name,
            "--nworkers", str(nworkers), "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
            "--protocol", "tls"]
    return argv + (["--preload-nanny", "dask_pbs_kit.grow"] if grow_preload else [])


def scheduler_transitions(client, keys):
    """{key: [(start, finish), ...]} from the scheduler's own transition log."""
    story: dict = {}
    for entry in client.story(*keys):
        if entry[0] == "scheduler":
            story.setdefault(entry[1], []).append((entry[2], entry[3]))
    return story


def test_a_worker_job_joins_a_tls_cluster_and_retires_without_losing_data(tmp_path, processes):
    from distributed import Client, Security, wait

    # The cluster job: LOG_DIR with its certificates, a scheduler with the kit's plugin,
    # two workers named as the cluster job names them, the published files.
    cluster = tmp_path / "cluster"
    log_dir = cluster / "dask-logs" / JOB
    log_dir.mkdir(parents=True, mode=0o700)
    (log_dir / "job.log").write_text(f"dask-pbs: job {JOB}: logs in {log_dir}/\n")
    assert kit(*["tls", log_dir / "tls", "--name", JOB]).returncode == 0
    tls_dir = log_dir / "tls"
    job_file = log_dir / "scheduler.json"
    sched_env = tls_env(tls_dir, DASK_PBS_KIT_ROLL=str(log_dir / "workers.txt"),
                        DASK_PBS_KIT_CLOSED=str(log_dir / "scheduler.closed"), DASK_PBS_KIT_STOP_WAIT="0.5")
    scheduler = processes.start("scheduler", [
        DASK, "scheduler", "--scheduler-file", str(job_file), "--host", "127.0.0.1", "--protocol", "tls",
        "--port", "0", "--dashboard-address", "127.0.0.1:0", "--preload", PRELOAD],
        str(log_dir / "scheduler-0.log"), sched_env)
    wait_for(lambda: job_file.exists() and job_file.read_text().rstrip().endswith("}"), "scheduler file")
    for chunk in (1, 2):
        processes.start(f"chunk-{chunk}", worker_argv(job_file, f"chunk-{chunk}"),
                        str(log_dir / f"worker-{chunk}.log"), tls_env(tls_dir))
    wait_for(lambda: roll_of(log_dir) == ["chunk-1", "chunk-2"], "cluster workers on the roll")
    published = cluster / "scheduler.json"
    shutil.copy(tls_dir / "client-config.json", cluster / "scheduler.tls.json")
    shutil.copy(job_file, published)
    address = json.loads(published.read_text())["address"]

    # The worker job: join-check, then its workers with the cluster's certificate.
    workers_job = tmp_path / "workers-job"
    workers_job.mkdir(mode=0o700)
    copy = workers_job / "cluster.json"
    done = kit("join-check", published, "--copy-to", copy, env={**os.environ, "PBS_JOBID": "77.server"})
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"address {address}\nscheduler_file {published}\ntls_config {cluster}/scheduler.tls.json\n"
        f"tls_dir {tls_dir}\nlog_dir {log_dir}\ncluster_job {JOB}\nprefix job-77-\n")
    facts = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert copy.read_text() == published.read_text()
    assert (workers_job / "cluster.tls.json").read_text() == (cluster / "scheduler.tls.json").read_text()
    assert os.stat(copy).st_mode & 0o777 == 0o600

    added_env = tls_env(facts["tls_dir"], PYTHONPATH=str(KIT / "helpers"))
    added = processes.start("job-77", worker_argv(copy, f"{facts['prefix']}chunk-1", 2, grow_preload=True),
                            str(workers_job / "worker-1.log"), added_env)
    grown = ["chunk-1", "chunk-2", "job-77-chunk-1-0", "job-77-chunk-1-1"]
    wait_for(lambda: roll_of(log_dir) == grown, "the worker job's workers on the roll")
    done = subprocess.run([sys.executable, DASHBOARD_PY, str(published), "--workers"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "4 workers (2 from worker jobs: 2 of job 77)\n", "")

    # A computation whose results live on the added workers only (pinned), and two on the
    # cluster's own; each run of a task adds a line to the counter.
    counter = tmp_path / "executions"
    counter.write_text("")
    nbytes = 4_000_000

    def make(i, size, path):
        with open(path, "a") as fh:
            fh.write(f"{i}\n")
        return bytes([i]) * size

    security = Security(tls_ca_file=f"{tls_dir}/ca.pem", tls_client_cert=f"{tls_dir}/client.pem",
                        tls_client_key=f"{tls_dir}/client.key", require_encryption=True)
    client = Client(address, security=security, timeout=60)
    try:
        by_name = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        on_added = [client.submit(make, i, nbytes, str(counter), pure=False,
                                  workers=[by_name[f"job-77-chunk-1-{i % 2}"]]) for i in range(8)]
        on_cluster = [client.submit(make, 100 + i, nbytes, str(counter), pure=False,
                                    workers=[by_name[f"chunk-{i + 1}"]]) for i in range(2)]
        futures = on_added + on_cluster
        wait(futures)
        held = client.has_what()
        assert sorted(len(held[by_name[n]]) for n in grown[2:]) == [4, 4]
        assert len(counter.read_text().split()) == 10

        # qdel of the worker job: PBS sends SIGTERM to every process of the job at once, and
        # the job script retires its workers through the scheduler meanwhile.
        started = time.monotonic()
        os.killpg(added.pid, signal.SIGTERM)
        done = kit("retire", "--scheduler-file", copy, "--prefix", facts["prefix"])
        took = time.monotonic() - started
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        assert re.fullmatch(r"retired 2 workers job-77-\* in \d+\.\d\d s: 8 of 8 keys \(32\.0 MB\) held only "
                            r"by them moved to the 2 remaining workers\n", done.stdout), done.stdout
        assert took < 10, f"retire took {took:.2f} s: more than PBS's kill delay"
        print(f"\nretire of 2 workers holding 8 x 4 MB: {took:.2f} s ({done.stdout.strip()})")

        # The results are all there, none recomputed, on the cluster's own workers only.
        assert [f.result() for f in on_added] == [bytes([i]) * nbytes for i in range(8)]
        assert [f.result() for f in on_cluster] == [bytes([100 + i]) * nbytes for i in range(2)]
        assert len(counter.read_text().split()) == 10
        story = scheduler_transitions(client, [f.key for f in futures])
        for future in futures:
            steps = story[future.key]
            assert steps.count(("processing", "memory")) == 1, steps
            assert ("memory", "released") not in steps, steps
        assert set(client.has_what()) == {by_name["chunk-1"], by_name["chunk-2"]}
        assert roll_of(log_dir) == ["chunk-1", "chunk-2"]
        assert added.wait(timeout=30) == 0  # the retired workers' process ends by itself, cleanly
        assert processes.group_gone(added)
        done = subprocess.run([sys.executable, DASHBOARD_PY, str(published), "--workers"],
                              capture_output=True, text=True, timeout=60)
        assert done.stdout == "2 workers (none from worker jobs)\n"

        done = kit("retire", "--scheduler-file", copy, "--prefix", facts["prefix"])
        assert (done.returncode, done.stdout) == (0, "no worker named job-77-* on the cluster: nothing to retire\n")
        done = kit("retire", "--scheduler-file", copy, "--prefix", "job-78-", "--timeout", "0.01")
        assert done.returncode == RETIRE_TIMEOUT
        assert done.stderr.startswith("dask-pbs: the workers job-78-* were not retired within 0.01 s")

        # A worker job whose data has nowhere to go: the cluster's own workers are gone.
        client.cancel(futures)
        del futures, on_added, on_cluster
        last = processes.start("job-79", worker_argv(copy, "job-79-chunk-1", 1, grow_preload=True),
                               str(workers_job / "worker-79.log"), added_env)
        wait_for(lambda: "job-79-chunk-1" in roll_of(log_dir), "job-79 on the roll")
        for name in ("chunk-1", "chunk-2"):
            processes.stop(name)
        wait_for(lambda: roll_of(log_dir) == ["job-79-chunk-1"], "the cluster's workers gone")
        only = client.submit(make, 7, 1000, str(counter), pure=False)
        assert only.result() == bytes([7]) * 1000
        done = kit("retire", "--scheduler-file", copy, "--prefix", "job-79-")
        assert done.returncode == NOT_RETIRED
        assert done.stdout.startswith("retired 0 workers job-79-* in ")
        assert done.stderr == (
            "dask-pbs: 1 worker(s) kept data no other worker could take (no other worker running, or "
            "all paused), and still run: job-79-chunk-1; stopping them loses that data (Dask "
            "recomputes what it can)\n")
        assert roll_of(log_dir) == ["job-79-chunk-1"]
        assert only.result() == bytes([7]) * 1000
    finally:
        client.close()

    # The cluster ends first (its job's teardown: SIGTERM to the scheduler, whose plugin
    # closes every worker, the worker job's included): the worker job's process ends at once.
    started = time.monotonic()
    os.killpg(scheduler.pid, signal.SIGTERM)
    assert last.wait(timeout=30) == 0
    print(f"the worker job's process ended {time.monotonic() - started:.2f} s after the cluster's SIGTERM")
    assert time.monotonic() - started < 10
    assert scheduler.wait(timeout=30) == 0
    assert (log_dir / "scheduler.closed").exists()
    for argv in (["join-check", copy], ["retire", "--scheduler-file", copy, "--prefix", "job-79-"]):
        done = kit(*argv)
        assert done.returncode == CLUSTER_GONE, done.stderr
        assert "the cluster's scheduler has closed" in done.stderr
    # Its certificates deleted too (the job's teardown removes tls/): still gone, not "missing files".
    shutil.rmtree(tls_dir)
    done = kit("retire", "--scheduler-file", copy, "--prefix", "job-79-")
    assert done.returncode == CLUSTER_GONE, done.stderr
