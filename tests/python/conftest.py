"""Shared fixtures: the helpers on sys.path, real Dask schedulers, a private fake PBS."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[2]
FAKEPBS_BIN = KIT / "tests" / "fakepbs" / "bin"
sys.path.insert(0, str(KIT / "helpers"))
sys.path.insert(0, str(KIT / "tests" / "fakepbs"))
from fakepbs import job_processes  # noqa: E402  (re-exported to the tests)
DASK = str(Path(sys.executable).with_name("dask"))


def stop_session(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group of proc (started with start_new_session=True); SIGKILL
    it if proc has not ended within timeout seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def sleeper(env: dict) -> subprocess.Popen:
    """A `sleep 60` started with env, returned once /proc/PID/environ shows env: Popen
    returns when exec has closed its error pipe, a moment before the kernel sets up the new
    image's environment, and reading it in that moment gives nothing."""
    proc = subprocess.Popen(["/bin/sleep", "60"], env=env)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/environ", "rb") as fh:
            if fh.read():
                return proc
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"sleep {proc.pid} showed no environment within 10 s")


@contextlib.contextmanager
def dask_scheduler(path: Path, *options: str, env: dict | None = None):
    """A real `dask scheduler` on 127.0.0.1 (more options: options), until it has written
    its scheduler file to path; stopped on leaving."""
    proc = subprocess.Popen(
        [DASK, "scheduler", "--scheduler-file", str(path), "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", "127.0.0.1:0", *options],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not path.exists() or not path.read_text().strip().endswith("}"):
            assert proc.poll() is None, "dask scheduler exited"
            assert time.monotonic() < deadline, "no scheduler file after 60 s"
            time.sleep(0.05)
        yield path
    finally:
        stop_session(proc)


@pytest.fixture
def real_scheduler_file(tmp_path):
    """A scheduler.json written by a real `dask scheduler`; the process is stopped after."""
    with dask_scheduler(tmp_path / "scheduler.json") as path:
        yield path


def kill_job_processes(home) -> None:
    """SIGKILL whatever of the jobs run under FAKEPBS_HOME=home still runs."""
    for pid in job_processes(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def fakepbs(tmp_path, monkeypatch):
    """A private fake PBS: its bin first on PATH, its state under tmp_path; no job left."""
    home = tmp_path / "pbs"
    monkeypatch.setenv("FAKEPBS_HOME", str(home))
    monkeypatch.setenv("FAKEPBS_KILL_DELAY", "2")
    monkeypatch.setenv("PATH", f"{FAKEPBS_BIN}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    yield home
    kill_job_processes(home)
    import netns  # a failed test must not leave namespaces behind either

    netns.clean_all(str(home))
