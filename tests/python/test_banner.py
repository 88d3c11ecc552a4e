"""kit.py banner: golden outputs, interfaces grouped, and a pasted connect line that connects."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from conftest import KIT, dask_scheduler
from dask_pbs_kit import banner, kit_cli
from dask_pbs_kit.errors import MISSING, USAGE

KIT_PY = str(KIT / "helpers" / "kit.py")
VENV_PYTHON = str(KIT / ".venv" / "bin" / "python")
NO_BOKEH = ("the scheduler runs no dashboard (install bokeh in the job's Python environment "
            "and start a new job)")


def scheduler_file(tmp_path, address="tls://10.148.0.3:40111", services=None):
    path = tmp_path / "job" / "scheduler.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"type": "Scheduler", "id": "Scheduler-1", "address": address,
                                "services": {"dashboard": 8787} if services is None else services,
                                "workers": {}}))
    return path


def iface(folder, name, *lines):
    (folder / name).write_text("".join(f"{line}\n" for line in lines))


def run_banner(capsys, path, *extra, workers=6, chunks=3, took="4.1", dashboard="network",
               interface="ib0", log_dir="/home/me/kit/dask-logs/1234.pbsserver", tls=True):
    argv = ["banner", "--scheduler-file", str(path), "--published", "/home/me/kit/scheduler.json",
            "--workers", str(workers), "--chunks", str(chunks), "--took", took, "--dashboard", dashboard,
            "--node", "node00", "--login-host", "login1", "--log-dir", str(log_dir), "--interface", interface]
    if tls:
        argv += ["--tls-dir", f"{log_dir}/tls", "--tls-config", "/home/me/kit/scheduler.tls.json"]
    assert kit_cli.main(argv + list(extra)) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


TLS_CONNECT = (
    '  connect:   from dask.distributed import Client, Security; client = Client(scheduler_file='
    '"/home/me/kit/scheduler.json", security=Security(tls_ca_file="/home/me/kit/dask-logs/1234.pbsserver/tls/ca.pem", '
    'tls_client_cert="/home/me/kit/dask-logs/1234.pbsserver/tls/client.pem", '
    'tls_client_key="/home/me/kit/dask-logs/1234.pbsserver/tls/client.key", require_encryption=True))\n'
    "  security:  TLS with certificates made for this job only (/home/me/kit/dask-logs/1234.pbsserver/tls/, "
    "deleted when the job ends); /home/me/kit/scheduler.tls.json names them for examples/job_client.py\n")
PLAIN_CONNECT = (
    '  connect:   from dask.distributed import Client; client = Client(scheduler_file="/home/me/kit/scheduler.json")\n'
    "  security:  none (TLS=no): anyone who can reach node node00 can run code on this cluster as you\n")


# ------------------------------------------------------------------ golden outputs

def test_network_dashboard_tls_and_auto_interfaces(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    iface(logs, "scheduler-0.iface", "node00 ib0 10.0.0.1 host-name")
    iface(logs, "worker-10.iface", "node10 eth2 10.1.0.11 only")
    iface(logs, "worker-2.iface", "node02 ib0 10.0.0.3 route")
    iface(logs, "worker-0.iface", "node00 ib0 10.0.0.1 host-name")  # same node: listed once
    iface(logs, "notes.txt", "node99 eth9 10.9.9.9 only")  # not an .iface file
    out = run_banner(capsys, scheduler_file(tmp_path), interface="auto", log_dir=logs, tls=False)
    assert out.splitlines()[2] == "  network:   ib0 on node00, node02; eth2 on node10 (INTERFACE=auto)"


def test_golden_network_tls(tmp_path, capsys):
    assert run_banner(capsys, scheduler_file(tmp_path)) == (
        "dask-pbs: cluster ready in 4.10 s: 6 worker processes on 3 chunks\n"
        "  scheduler: tls://10.148.0.3:40111\n"
        "  network:   ib0 on every node (INTERFACE=ib0)\n"
        "  dashboard: http://10.148.0.3:8787/status   (plain HTTP, open to anyone who reaches the node; "
        "DASHBOARD=loopback keeps it on the node)\n"
        "  tunnel:    ssh -N -L 8787:10.148.0.3:8787 login1   (on your laptop, then open http://localhost:8787/status)\n"
        + TLS_CONNECT +
        "  logs:      /home/me/kit/dask-logs/1234.pbsserver/\n")


def test_golden_loopback_without_tls_singular(tmp_path, capsys):
    path = scheduler_file(tmp_path, "tcp://10.148.0.3:8786", {"dashboard": 8790})
    assert run_banner(capsys, path, workers=1, chunks=1, took="0.5", dashboard="loopback", interface="",
                      tls=False) == (
        "dask-pbs: cluster ready in 0.50 s: 1 worker process on 1 chunk\n"
        "  scheduler: tcp://10.148.0.3:8786\n"
        "  network:   Dask's default interface (INTERFACE=)\n"
        "  dashboard: http://localhost:8790/status on node node00 only (DASHBOARD=loopback)\n"
        "  tunnel:    ssh -N -L 8790:localhost:8790 -J login1 node00   (on your laptop, then open "
        "http://localhost:8790/status)\n"
        + PLAIN_CONNECT +
        "  logs:      /home/me/kit/dask-logs/1234.pbsserver/\n")


def test_golden_off_with_auto_interfaces_on_one_interface(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    for node in range(3):
        iface(logs, f"worker-{node}.iface", f"node0{node} ib0 10.0.0.{node + 1} host-name")
    out = run_banner(capsys, scheduler_file(tmp_path), workers=2, chunks=2, took="12", dashboard="off",
                     interface="auto", log_dir=f"{logs}/")
    assert out.splitlines()[:4] == [
        "dask-pbs: cluster ready in 12.00 s: 2 worker processes on 2 chunks",
        "  scheduler: tls://10.148.0.3:40111",
        "  network:   ib0 on node00, node01, node02 (INTERFACE=auto)",
        "  dashboard: off (DASHBOARD=off)"]
    assert out.splitlines()[-1] == f"  logs:      {logs}/"


def test_auto_without_iface_files_points_at_the_logs(tmp_path, capsys):
    out = run_banner(capsys, scheduler_file(tmp_path), interface="auto", log_dir=tmp_path / "none")
    assert out.splitlines()[2] == f"  network:   chosen on each node (INTERFACE=auto); see {tmp_path}/none"


@pytest.mark.parametrize("dashboard", ["network", "loopback"])
def test_no_dashboard_port_says_why_and_the_banner_still_prints(tmp_path, capsys, dashboard):
    out = run_banner(capsys, scheduler_file(tmp_path, services={}), dashboard=dashboard, tls=False)
    lines = out.splitlines()
    assert lines[3] == f"  dashboard: none: {NO_BOKEH}"
    assert not any(line.startswith("  tunnel:") for line in lines)
    assert out.endswith(PLAIN_CONNECT + "  logs:      /home/me/kit/dask-logs/1234.pbsserver/\n")


def test_a_real_scheduler_file(real_scheduler_file, capsys):
    port = json.loads(real_scheduler_file.read_text())["services"]["dashboard"]
    address = json.loads(real_scheduler_file.read_text())["address"]
    lines = run_banner(capsys, real_scheduler_file, tls=False).splitlines()
    assert lines[1] == f"  scheduler: {address}"
    assert lines[3].startswith(f"  dashboard: http://127.0.0.1:{port}/status   (plain HTTP")
    assert lines[4] == (f"  tunnel:    ssh -N -L {port}:127.0.0.1:{port} login1   (on your laptop, then "
                        f"open http://localhost:{port}/status)")


def test_paths_with_quotes_still_paste_as_python(tmp_path):
    odd = '/home/o"brien/it\'s a \\ dir/scheduler.json'
    line = banner.connect_lines(odd, "n0", "/x/t\"ls", "/x/c.json")[0]
    code = line.split("client = ", 1)[1]
    call = ast.parse(code, mode="eval").body
    files = [ast.literal_eval(kw.value) for kw in call.keywords if kw.arg == "scheduler_file"]
    assert files == [odd]
    security = [kw.value for kw in call.keywords if kw.arg == "security"][0]
    assert ast.literal_eval(security.keywords[0].value) == '/x/t"ls/ca.pem'


def test_plural_and_grouping_helpers():
    assert [banner.plural(n, "chunk") for n in (0, 1, 2)] == ["0 chunks", "1 chunk", "2 chunks"]
    assert banner.plural(1, "worker process", "worker processes") == "1 worker process"
    assert banner.group_interfaces([("a", "ib0"), ("b", "eth0"), ("c", "ib0"), ("a", "eth0")]) == [
        ("ib0", ["a", "c"]), ("eth0", ["b"])]
    assert sorted(["w-10", "w-2", "s-0", "w-1"], key=banner.natural_key) == ["s-0", "w-1", "w-2", "w-10"]


@pytest.mark.parametrize("extra, message", [
    (["--workers", "six"], "--workers must be a whole number, not 'six'"),
    (["--dashboard", "public"], "--dashboard must be network, loopback or off, not 'public'"),
    (["--tls-dir", "/x"], "--tls-dir and --tls-config go together"),
])
def test_usage_errors(tmp_path, capsys, extra, message):
    argv = ["banner", "--scheduler-file", str(scheduler_file(tmp_path)), "--published", "p", "--workers", "1",
            "--chunks", "1", "--took", "1", "--dashboard", "off", "--node", "n", "--login-host", "",
            "--log-dir", "l", "--interface", ""]
    assert kit_cli.main(argv + extra) == USAGE
    assert capsys.readouterr().err.startswith(f"dask-pbs: {message}")
    assert kit_cli.main(["banner", "--published", "p"]) == USAGE
    assert capsys.readouterr().err.startswith("dask-pbs: missing --scheduler-file, --workers, --chunks")


def test_a_missing_scheduler_file_is_exit_3(tmp_path, capsys):
    assert kit_cli.main(["banner", "--scheduler-file", str(tmp_path / "no.json"), "--published", "p",
                         "--workers", "1", "--chunks", "1", "--took", "1", "--dashboard", "off", "--node", "n",
                         "--login-host", "", "--log-dir", "l", "--interface", ""]) == MISSING
    assert "no such scheduler file" in capsys.readouterr().err


# ------------------------------------------------------------------ the connect line, pasted

@pytest.fixture
def tls_scheduler(tmp_path):
    """A real `dask scheduler` speaking mutual TLS with the job's certificates, given as
    task.sh gives them; yields (scheduler file, tls folder)."""
    tls = tmp_path / "logs" / "tls"
    subprocess.run([sys.executable, KIT_PY, "tls", str(tls), "--name", "1.test"], check=True)
    env = {**os.environ,
           "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
           "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(tls / "ca.pem"),
           "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": str(tls / "cluster.pem"),
           "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": str(tls / "cluster.key")}
    with dask_scheduler(tmp_path / "logs" / "scheduler.json", "--protocol", "tls", env=env) as path:
        yield path, tls


def paste(line: str) -> subprocess.CompletedProcess:
    """Run the banner's connect line in a fresh Python with no Dask settings of ours."""
    code = line.split("connect:", 1)[1].strip()
    code += "\nprint(client.scheduler_info()['address'])\nclient.close()\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    return subprocess.run([VENV_PYTHON, "-c", code], capture_output=True, text=True, env=env,
                          cwd="/", timeout=120)


def connect_line(path, *extra):
    done = subprocess.run([sys.executable, KIT_PY, "banner", "--scheduler-file", str(path), "--published",
                           str(path), "--workers", "0", "--chunks", "0", "--took", "1", "--dashboard", "network",
                           "--node", "node00", "--login-host", "login1", "--log-dir", str(path.parent),
                           "--interface", "lo", *extra], capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if line.startswith("  connect:")][0]


def test_the_pasted_tls_connect_line_connects(tls_scheduler):
    path, tls = tls_scheduler
    address = json.loads(path.read_text())["address"]
    assert address.startswith("tls://127.0.0.1:")
    done = paste(connect_line(path, "--tls-dir", str(tls), "--tls-config", str(tls / "client-config.json")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == address
    # Without the security part the same scheduler is not reached: the test proves the line.
    assert paste(connect_line(path)).returncode != 0


def test_the_pasted_plain_connect_line_connects(real_scheduler_file):
    address = json.loads(real_scheduler_file.read_text())["address"]
    done = paste(connect_line(real_scheduler_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == address
