"""A real browser on a JUPYTER=yes job: headless Chromium opens JupyterLab and the proxied
dashboard through the printed tunnel URL, sees them draw, and ends the job with File >
Shut Down. On the fake PBS's loopback nodes, and (as root) on a node of its own network
behind a tunnel, as from a laptop."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import job_processes

KIT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(KIT / "tests" / "tools"))
import browser  # noqa: E402

pytestmark = pytest.mark.skipif(bool(browser.missing()), reason=f"no browser: {browser.missing()} "
                                "(make test-deps installs chromium where apt and root allow)")


def netns_possible() -> bool:
    return os.geteuid() == 0 and any(
        os.path.exists(f"{d}/ip") for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"))


def job_state(jobid: str) -> str:
    done = subprocess.run(["qstat", "-x", "-f", jobid], capture_output=True, text=True, timeout=30)
    return done.stdout


@pytest.mark.parametrize("network", ["loopback", "netns"])
def test_jupyterlab_and_the_dashboard_draw_through_the_tunnel_and_shut_down_ends_the_job(
        fakepbs, tmp_path, monkeypatch, network):
    if network == "netns":
        if not netns_possible():
            pytest.skip("needs root and ip (a network namespace per node)")
        monkeypatch.setenv("FAKEPBS_NETNS", "1")
    monkeypatch.setenv("FAKEPBS_KILL_DELAY", "10")
    done = subprocess.run(
        ["qsub", "-l", "select=3:ncpus=1:mem=1gb", "-l", "walltime=00:05:00", "-v",
         f"DASK_PBS_KIT={KIT},PYTHON_PREFIX={KIT}/.venv,JUPYTER=yes",
         str(KIT / "scripts" / "launch-dask-cluster-path.pbs")],
        capture_output=True, text=True, timeout=60, check=True)
    jobid = done.stdout.strip()
    described = tmp_path / "scheduler.jupyter.json"
    deadline = time.monotonic() + 120
    while not described.exists():
        assert time.monotonic() < deadline, job_state(jobid)
        time.sleep(0.2)
    where = json.loads(described.read_text())
    tunnel = None
    if network == "netns":
        # The printed command, as a laptop runs it: ssh -N -L PORT:ADDRESS:PORT login.
        port, address, _ = re.match(r"ssh -N -L (\d+):([\d.]+):(\d+) ", where["tunnel"]).groups()
        tunnel = browser.Tunnel(int(port), address, int(port))
    driver = browser.Browser()
    try:
        lab = driver.open_lab(where["local_url"])
        assert lab["title"] == "JupyterLab" and lab["visible"] > 50
        assert driver.screenshot(str(tmp_path / "lab.png")) > 20_000  # not a blank page
        # dask-labextension found the dashboard through Jupyter's proxy: it lists its panes.
        assert driver.open_dask_sidebar() > 10
        board = driver.open_dashboard(where["dashboard"])
        assert board["title"] == "Dask: Status" and board["canvas"] >= 3
        assert driver.screenshot(str(tmp_path / "dashboard.png")) > 20_000
        driver.open_lab(where["local_url"])
        driver.shut_down_from_menu()
        deadline = time.monotonic() + 60
        while "job_state = F" not in job_state(jobid):
            assert time.monotonic() < deadline, "the job did not end after File > Shut Down"
            time.sleep(0.2)
    finally:
        driver.close()
        if tunnel:
            tunnel.close()
    assert "Exit_status = 0" in job_state(jobid)
    output = next(tmp_path.glob("dask-cluster-path.o*")).read_text()
    assert "JupyterLab has ended (File > Shut Down): ending the job" in output
    assert "warning" not in output
    assert job_processes(fakepbs) == []
