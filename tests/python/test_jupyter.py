"""The JupyterLab helpers: the job's private folder, the wait, the lines that reach it."""
import json
import os
import stat
import subprocess
import sys

import pytest

from dask_pbs_kit import jupyter, kit_cli
from dask_pbs_kit.errors import MISSING, NOT_READY, PROCESS_EXITED, USAGE, KitError


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_prepare_makes_a_private_folder_with_a_token_without_newline(tmp_path):
    folder = tmp_path / "jupyter"
    jupyter.prepare(str(folder), 8787)
    assert mode(folder) == 0o700
    for sub in ("runtime", "notary", "ipython", "workspaces", "settings"):
        assert mode(folder / sub) == 0o700
    token = (folder / "token").read_text()
    assert mode(folder / "token") == 0o600
    assert len(token) == 48 and token.strip() == token  # Jupyter reads the file as it is
    overrides = json.loads((folder / "settings" / "overrides.json").read_text())
    assert overrides["dask-labextension:plugin"] == {"defaultURL": "/proxy/8787/status"}
    jupyter.prepare(str(folder), None)
    assert (folder / "token").read_text() != token  # a fresh one each time
    assert "dask-labextension:plugin" not in json.loads((folder / "settings" / "overrides.json").read_text())


def test_prepare_command_reads_the_scheduler_file_and_binds_as_the_dashboard(tmp_path, capsys):
    sched = tmp_path / "scheduler.json"
    sched.write_text(json.dumps({"type": "Scheduler", "address": "tls://10.0.0.5:40000",
                                 "services": {"dashboard": 8790}}))
    cases = {"network": "10.0.0.5 8790", "loopback": "127.0.0.1 8790", "off": "127.0.0.1 none"}
    for dashboard, printed in cases.items():
        assert kit_cli.main(["jupyter-prepare", str(tmp_path / dashboard), "--scheduler-file",
                             str(sched), "--dashboard", dashboard]) == 0
        assert capsys.readouterr().out == printed + "\n"
    assert kit_cli.main(["jupyter-prepare", str(tmp_path / "x"), "--scheduler-file", str(sched),
                         "--dashboard", "public"]) == USAGE


def test_wait_fails_at_once_with_the_log_when_jupyter_exits(tmp_path):
    log = tmp_path / "jupyter.log"
    log.write_text("Traceback (most recent call last):\nImportError: no jupyterlab_server\n")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(KitError) as err:
        jupyter.wait_ready(str(tmp_path), proc.pid, str(log), 30)
    assert err.value.code == PROCESS_EXITED
    assert "ImportError: no jupyterlab_server" in str(err.value)


def test_wait_times_out_on_a_server_that_never_answers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f"jpserver-{proc.pid}.json").write_text(json.dumps({"url": "http://127.0.0.1:9/"}))
        with pytest.raises(KitError) as err:
            jupyter.wait_ready(str(tmp_path), proc.pid, str(tmp_path / "none.log"), 0.5)
        assert err.value.code == NOT_READY
    finally:
        proc.kill()
        proc.wait()


def test_the_lines_that_reach_it_on_the_network_and_on_loopback():
    info = {"port": 41234, "token": "abc", "hostname": "10.99.0.1", "root_dir": "/home/me/run"}
    where = jupyter.reach(info, "node00", "login1", False, 8787)
    assert where["tunnel"] == "ssh -N -L 41234:10.99.0.1:41234 login1"
    assert where["url"] == "http://10.99.0.1:41234/lab?token=abc"
    assert jupyter.banner_lines(where) == [
        "  jupyter:   http://10.99.0.1:41234/lab?token=abc   (JupyterLab on node node00, in "
        "/home/me/run; File > Shut Down ends the job)",
        "  tunnel:    ssh -N -L 41234:10.99.0.1:41234 login1   (on your laptop, then open "
        "http://localhost:41234/lab?token=abc; the dashboard: http://localhost:41234/proxy/8787/status)"]
    where = jupyter.reach(dict(info, hostname="127.0.0.1"), "node00", "login1", True, None)
    assert where["tunnel"] == "ssh -N -L 41234:localhost:41234 -J login1 node00"
    assert where["dashboard"] == "" and "the dashboard" not in jupyter.banner_lines(where)[1]


def test_wait_completes_the_jobs_info_before_it_publishes(tmp_path, monkeypatch, capsys):
    # A user (or a test) that waits for the published file then reads cluster-info.txt:
    # it must already hold JupyterLab's lines.
    info_file, published = tmp_path / "cluster-info.txt", tmp_path / "scheduler.jupyter.json"
    info_file.write_text("dask-pbs: cluster ready\n")
    monkeypatch.setattr(jupyter, "wait_ready", lambda *a: {
        "port": 41234, "token": "abc", "hostname": "10.99.0.1", "root_dir": "/run"})
    seen = []
    real_write = jupyter._write_private
    monkeypatch.setattr(jupyter, "_write_private",
                        lambda path, text: (seen.append(info_file.read_text()), real_write(path, text)))
    jupyter.wait_cli(["--runtime", str(tmp_path), "--pid", "1", "--log", "/dev/null", "--timeout", "5",
                      "--node", "node00", "--login-host", "login1", "--publish", str(published),
                      "--info", str(info_file), "--dashboard-port", "8787"])
    lines = capsys.readouterr().out
    assert "  jupyter:   http://10.99.0.1:41234/lab?token=abc" in lines
    assert seen == ["dask-pbs: cluster ready\n" + lines]
    assert info_file.read_text() == seen[0]
    assert json.loads(published.read_text())["url"] == "http://10.99.0.1:41234/lab?token=abc"


def test_what_the_job_published_is_read_back_or_refused(tmp_path):
    assert jupyter.jupyter_file("/w/scheduler.json") == "/w/scheduler.jupyter.json"
    with pytest.raises(KitError) as err:
        jupyter.load_published(str(tmp_path / "none.jupyter.json"))
    assert err.value.code == MISSING and "JUPYTER=yes" in str(err.value)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(KitError):
        jupyter.load_published(str(tmp_path / "bad.json"))


def test_dashboard_url_prints_the_tunnel_and_the_url_the_job_published(tmp_path, capsys):
    from dask_pbs_kit import dashboard_cli

    sched = tmp_path / "scheduler.json"
    sched.write_text(json.dumps({"type": "Scheduler", "address": "tls://10.0.0.5:40000",
                                 "services": {"dashboard": 8787}}))
    assert dashboard_cli.main([str(sched), "--jupyter"]) == MISSING
    assert "JUPYTER=yes" in capsys.readouterr().err
    where = jupyter.reach({"port": 4321, "token": "t0k", "hostname": "10.0.0.5"}, "n0", "login1", False, 8787)
    (tmp_path / "scheduler.jupyter.json").write_text(json.dumps(where))
    assert dashboard_cli.main([str(sched), "--jupyter"]) == 0
    assert capsys.readouterr().out == (
        "ssh -N -L 4321:10.0.0.5:4321 login1\n# then open http://localhost:4321/lab?token=t0k\n")
