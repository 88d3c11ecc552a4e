"""scheduler.json reading, the dashboard URL and the tunnel command."""
import json
import subprocess
import sys

import pytest

from conftest import KIT
from dask_pbs_kit import dashboard_cli, schedfile
from dask_pbs_kit.errors import MALFORMED, MISSING, NO_DASHBOARD, NOT_SCHEDULER, USAGE, KitError


def write(tmp_path, content, name="scheduler.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_real_scheduler_file_gives_its_dashboard(real_scheduler_file):
    info = json.loads(real_scheduler_file.read_text())
    port = info["services"]["dashboard"]
    assert schedfile.dashboard_url(schedfile.load(str(real_scheduler_file))) == f"http://127.0.0.1:{port}/status"


def test_dashboard_url_command_on_a_real_file_in_a_subprocess(real_scheduler_file):
    done = subprocess.run([sys.executable, str(KIT / "helpers" / "dashboard_url.py"), str(real_scheduler_file)],
                          capture_output=True, text=True, check=True)
    port = json.loads(real_scheduler_file.read_text())["services"]["dashboard"]
    assert done.stdout == f"http://127.0.0.1:{port}/status\n"
    assert done.stderr == ""


def test_origin_format_with_bokeh_service(tmp_path, capsys):
    path = write(tmp_path, {"type": "Scheduler", "address": "tcp://10.1.2.50:8786",
                            "workers": {}, "services": {"http": 9786, "bokeh": 8787},
                            "id": "Scheduler-14dafe2c"})
    assert dashboard_cli.main([path]) == 0
    assert capsys.readouterr().out == "http://10.1.2.50:8787/status\n"


@pytest.mark.parametrize("address, url", [
    ("tls://10.0.0.5:40001", "http://10.0.0.5:8787/status"),
    ("ucx://10.0.0.5:40001", "http://10.0.0.5:8787/status"),
    ("tcp://[::1]:8786", "http://[::1]:8787/status"),
    ("tcp://node12.cluster:8786", "http://node12.cluster:8787/status"),
])
def test_protocols_and_ipv6(address, url):
    assert schedfile.dashboard_url({"address": address, "services": {"dashboard": 8787}}) == url


def test_tunnel_goes_through_the_named_login_host(tmp_path, capsys):
    path = write(tmp_path, {"type": "Scheduler", "address": "tcp://10.0.0.5:8786", "services": {"dashboard": 8790}})
    assert dashboard_cli.main([path, "--tunnel", "me@login1"]) == 0
    assert capsys.readouterr().out == (
        "ssh -N -L 8790:10.0.0.5:8790 me@login1\n# then open http://localhost:8790/status\n")


def test_tunnel_defaults_to_pbs_o_host_and_takes_a_local_port(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PBS_O_HOST", "login2")
    path = write(tmp_path, {"address": "tcp://[fe80::1]:8786", "services": {"dashboard": 8787}})
    assert dashboard_cli.main(["--tunnel", "--local-port", "9000", path]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ssh -N -L 9000:[fe80::1]:8787 login2", "# then open http://localhost:9000/status"]


@pytest.mark.parametrize("content, code, message", [
    (None, MISSING, "no such scheduler file"),
    ('{"type": "Scheduler", "addr', MALFORMED, "not complete JSON"),
    ("", MALFORMED, "not complete JSON"),
    ({"type": "Worker", "address": "tcp://1.2.3.4:1"}, NOT_SCHEDULER, "not a Dask scheduler file"),
    ({"workers": {}}, NOT_SCHEDULER, "not a Dask scheduler file"),
    ([1, 2], NOT_SCHEDULER, "not a Dask scheduler file"),
    ({"address": "tcp://1.2.3.4:1", "services": {}}, NO_DASHBOARD, "install bokeh"),
])
def test_each_error_has_its_message_and_exit_status(tmp_path, capsys, content, code, message):
    path = str(tmp_path / "scheduler.json") if content is None else write(tmp_path, content)
    assert dashboard_cli.main([path]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dask-pbs: dashboard_url.py: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1


def test_usage_errors(capsys):
    assert dashboard_cli.main(["--bogus"]) == USAGE
    assert "unknown option --bogus" in capsys.readouterr().err
    assert dashboard_cli.main(["a.json", "b.json"]) == USAGE
    assert dashboard_cli.main(["--wait", "soon"]) == USAGE


def test_help_goes_to_stdout_with_status_0(capsys):
    assert dashboard_cli.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: dashboard_url.py")


def test_wait_sees_a_file_that_appears_later(tmp_path):
    path = tmp_path / "scheduler.json"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import time, json; time.sleep(0.5); "
        f"open({str(path)!r}, 'w').write(json.dumps({{'address': 'tcp://1.2.3.4:5', 'services': {{'dashboard': 6}}}}))")])
    try:
        assert schedfile.dashboard_url(schedfile.load(str(path), wait=20)) == "http://1.2.3.4:6/status"
    finally:
        writer.wait()


def test_wait_gives_up_with_the_missing_file_error(tmp_path):
    with pytest.raises(KitError) as err:
        schedfile.load(str(tmp_path / "none.json"), wait=0.3)
    assert err.value.code == MISSING


def test_loopback_dashboard_url_and_tunnel_end_on_the_node(tmp_path, capsys):
    path = write(tmp_path, {"type": "Scheduler", "address": "tls://10.0.0.5:8786", "services": {"dashboard": 8790}})
    assert dashboard_cli.main([path, "--loopback"]) == 0
    assert capsys.readouterr().out == "http://localhost:8790/status\n"
    assert dashboard_cli.main([path, "--tunnel", "me@login1", "--loopback", "--node", "node07"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ssh -N -L 8790:localhost:8790 -J me@login1 node07", "# then open http://localhost:8790/status"]
    assert dashboard_cli.main([path, "--loopback", "--tunnel", "login1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "ssh -N -L 8790:localhost:8790 -J login1 10.0.0.5"


# ------------------------------------------------------------------ --workers: the cluster's count

def test_worker_names_say_which_worker_job_they_come_from():
    assert schedfile.worker_job_of("job-1235-chunk-1-0") == "1235"
    assert schedfile.worker_job_of("job-1235_7-chunk-2") == "1235_7"
    assert schedfile.worker_job_of("chunk-1-0") == ""
    assert schedfile.worker_job_of("tcp://10.0.0.1:4000") == ""
    names = ["chunk-1-0", "chunk-1-1", "job-1235-chunk-1-0", "job-1235-chunk-1-1", "job-99-chunk-2", "mine"]
    assert schedfile.count_workers(names) == (6, {"1235": 2, "99": 1})
    assert schedfile.workers_text(names) == "6 workers (3 from worker jobs: 1 of job 99, 2 of job 1235)"
    assert schedfile.workers_text(names[:2]) == "2 workers (none from worker jobs)"
    assert schedfile.workers_text(["job-5-chunk-1"]) == "1 worker (1 from worker jobs: 1 of job 5)"
    assert schedfile.workers_text([]) == "0 workers (none from worker jobs)"


def cluster_layout(tmp_path, roll, tls=True, sched_id="Scheduler-1"):
    """A cluster job's files: tmp_path/scheduler.json published, LOG_DIR dask-logs/1.srv."""
    log_dir = tmp_path / "dask-logs" / "1.srv"
    (log_dir / "tls").mkdir(parents=True)
    (log_dir / "workers.txt").write_text("".join(f"{n}\n" for n in roll))
    info = {"type": "Scheduler", "id": sched_id, "address": "tls://10.0.0.5:8786",
            "services": {"dashboard": 8787}}
    (log_dir / "scheduler.json").write_text(json.dumps(info))
    (tmp_path / "scheduler.json").write_text(json.dumps(info))
    if tls:
        (tmp_path / "scheduler.tls.json").write_text(json.dumps({"distributed": {"comm": {"tls": {
            "ca-file": str(log_dir / "tls" / "ca.pem")}}}}))
    return str(tmp_path / "scheduler.json"), log_dir


def test_the_roll_is_found_through_the_tls_configuration(tmp_path, capsys):
    path, log_dir = cluster_layout(tmp_path, ["chunk-1", "chunk-2", "job-7-chunk-1-0", "job-7-chunk-1-1"],
                                   sched_id="not-the-same")
    (log_dir / "scheduler.json").unlink()
    assert schedfile.find_log_dir(path, schedfile.load(path)) == str(log_dir)
    assert dashboard_cli.main([path, "--workers"]) == 0
    assert capsys.readouterr().out == "4 workers (2 from worker jobs: 2 of job 7)\n"


def test_without_tls_the_roll_is_the_one_of_the_same_scheduler_in_dask_logs(tmp_path, capsys):
    path, log_dir = cluster_layout(tmp_path, ["chunk-1", "job-8-chunk-1"], tls=False)
    other = tmp_path / "dask-logs" / "0.srv"
    other.mkdir()
    (other / "scheduler.json").write_text('{"id": "Scheduler-0", "address": "tcp://1.2.3.4:5"}')
    (other / "workers.txt").write_text("chunk-1\n")
    (tmp_path / "dask-logs" / "junk").write_text("not a folder")
    assert schedfile.find_log_dir(path, schedfile.load(path)) == str(log_dir)
    assert dashboard_cli.main([path, "--workers"]) == 0
    assert capsys.readouterr().out == "2 workers (1 from worker jobs: 1 of job 8)\n"
    # The job's own copy in its LOG_DIR: the roll beside it.
    assert schedfile.find_log_dir(str(other / "scheduler.json"), {"id": "x"}) == str(other)


def test_without_a_roll_the_scheduler_is_asked(real_scheduler_file, capsys):
    assert schedfile.find_log_dir(str(real_scheduler_file), schedfile.load(str(real_scheduler_file))) == ""
    assert dashboard_cli.main([str(real_scheduler_file), "--workers"]) == 0
    assert capsys.readouterr().out == "0 workers (none from worker jobs)\n"


def test_without_a_roll_nor_an_answer_the_count_fails_with_status_3(tmp_path, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write(tmp_path, {"type": "Scheduler", "id": "S", "address": "tcp://127.0.0.1:1",
                            "services": {"dashboard": port}})
    assert dashboard_cli.main([path, "--workers"]) == MISSING
    err = capsys.readouterr().err
    assert err.startswith("dask-pbs: dashboard_url.py: cannot count the workers: no roll of the cluster "
                          f"job found beside the scheduler file, and http://127.0.0.1:{port}/json/identity.json "
                          "did not answer")
    assert err.count("\n") == 1


def test_the_count_from_the_roll_loads_neither_distributed_nor_urllib(tmp_path):
    path, _ = cluster_layout(tmp_path, ["chunk-1", "job-9-chunk-1"])
    code = (f"import sys; sys.path.insert(0, {str(KIT / 'helpers')!r}); "
            "from dask_pbs_kit import dashboard_cli; "
            f"assert dashboard_cli.main([{path!r}, '--workers']) == 0; "
            "assert not {'distributed', 'dask', 'urllib.request'} & set(sys.modules), sys.modules.keys()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "2 workers (1 from worker jobs: 1 of job 9)\n", "")
