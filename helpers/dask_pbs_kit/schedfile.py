"""scheduler.json: read it safely, find the dashboard, build the SSH tunnel command."""
from __future__ import annotations

import json
import os
import time

from .args import is_digits
from .errors import MALFORMED, MISSING, NO_DASHBOARD, NOT_SCHEDULER, KitError

POLL = 0.1  # what distributed's own json_load_robust uses


def load(path: str, wait: float = 0.0) -> dict:
    """The scheduler's description; with wait > 0, wait that many seconds for it to appear."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return _load_once(path)
        except KitError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(POLL)


def _load_once(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise KitError(
            f"{path}: no such scheduler file (is the job running? `qstat` tells; a job "
            "still starting writes it within seconds: add --wait 60)", MISSING) from None
    except OSError as exc:
        raise KitError(f"{path}: cannot read it ({exc.strerror})", MISSING) from None
    try:
        info = json.loads(text)
    except ValueError:
        raise KitError(
            f"{path}: not complete JSON (the scheduler may be writing it: retry, or add "
            "--wait 60)", MALFORMED) from None
    if not isinstance(info, dict) or not isinstance(info.get("address"), str) or (
        info.get("type", "Scheduler") != "Scheduler"
    ):
        raise KitError(
            f"{path}: not a Dask scheduler file (it has no scheduler address: pass the "
            "scheduler.json that the job wrote)", NOT_SCHEDULER)
    return info


def split_address(address: str) -> tuple[str, str, int]:
    """('tcp', '10.0.0.5', 8786) from 'tcp://10.0.0.5:8786'; IPv6 hosts lose their brackets."""
    protocol, sep, rest = address.partition("://")
    if not sep:
        protocol, rest = "tcp", address
    host, _, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not is_digits(port):
        raise KitError(f"scheduler address {address!r} has no host:port", NOT_SCHEDULER)
    return protocol, host, int(port)


def url_host(host: str) -> str:
    """A host as it goes in a URL or an ssh -L spec: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def dashboard_port(info: dict) -> int:
    """The dashboard's port: 'dashboard' now, 'bokeh' in distributed < 2.0."""
    services = info.get("services") or {}
    port = services.get("dashboard", services.get("bokeh"))
    if not isinstance(port, int):
        raise KitError(
            "the scheduler runs no dashboard (install bokeh in the job's Python environment "
            "and start a new job)", NO_DASHBOARD)
    return port


def dashboard_url(info: dict, loopback: bool = False) -> str:
    """The URL on the scheduler's address; with loopback, the one the scheduler's node
    itself (or a tunnel to it) opens."""
    _, host, _ = split_address(info["address"])
    return f"http://{'localhost' if loopback else url_host(host)}:{dashboard_port(info)}/status"


def tunnel_command(info: dict, login_host: str, local_port: int = 0, node: str = "") -> str:
    """The ssh command a laptop runs to reach the dashboard through the login node. With
    node (a dashboard on the node's loopback), the tunnel ends on that node itself."""
    _, host, _ = split_address(info["address"])
    port = dashboard_port(info)
    if node:
        return f"ssh -N -L {local_port or port}:localhost:{port} -J {login_host} {node}"
    return f"ssh -N -L {local_port or port}:{url_host(host)}:{port} {login_host}"


# ------------------------------------------------------------------ counting the workers

# A worker job (scripts/launch-dask-workers.pbs) names its processes job-SEQ-chunk-I[-K],
# SEQ its own PBS job number; the cluster job's own workers are chunk-I[-K].
ADDED_PREFIX = "job-"
ROLL = "workers.txt"  # the roll the cluster's scheduler keeps in its LOG_DIR (scheduler_preload.py)


def tls_config_path(scheduler_file: str) -> str:
    """The client configuration a TLS job writes beside its scheduler file (x.json: x.tls.json)."""
    stem = scheduler_file[:-5] if scheduler_file.endswith(".json") else scheduler_file
    return stem + ".tls.json"


def _is_log_dir(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, ROLL)) or os.path.isfile(os.path.join(folder, "job.log"))


def find_log_dir(scheduler_file: str, info: dict, tls_config: str = "") -> str:
    """The cluster job's LOG_DIR (its roll, logs and certificates), or "" if not found.

    In order: the folder of the job's CA named by the client configuration (tls_config,
    default the one beside the file; TLS: LOG_DIR/tls/ca.pem); the file's own folder (the
    job's own copy, LOG_DIR/scheduler.json); the folder in FILE's folder/dask-logs/ (the
    default LOG_DIR) whose scheduler.json has the same scheduler id."""
    try:
        with open(tls_config or tls_config_path(scheduler_file), encoding="utf-8") as fh:
            ca = json.load(fh)["distributed"]["comm"]["tls"]["ca-file"]
        folder = os.path.dirname(os.path.dirname(ca))
        if _is_log_dir(folder):
            return folder
    except (OSError, ValueError, KeyError, TypeError):
        pass
    here = os.path.dirname(os.path.abspath(scheduler_file))
    if os.path.isfile(os.path.join(here, ROLL)):
        return here
    wanted = info.get("id")
    logs = os.path.join(here, "dask-logs")
    try:
        entries = [entry.path for entry in os.scandir(logs) if entry.is_dir()]
    except OSError:
        return ""
    for folder in entries:
        try:
            with open(os.path.join(folder, "scheduler.json"), encoding="utf-8") as fh:
                if wanted and json.load(fh).get("id") == wanted:
                    return folder
        except (OSError, ValueError, AttributeError):
            continue
    return ""


def read_roll(log_dir: str) -> list:
    """The worker names on the roll of LOG_DIR; KitError(MISSING) if it cannot be read."""
    path = os.path.join(log_dir, ROLL)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().split()
    except OSError as exc:
        raise KitError(f"{path}: cannot read the cluster's roll of workers ({exc.strerror})",
                       MISSING) from None


def query_worker_names(info: dict, timeout: float = 3.0) -> list:
    """The worker names the scheduler itself reports on its HTTP server (json/identity.json,
    served even with --no-dashboard); KitError(MISSING) when it does not answer."""
    import urllib.request  # only this fallback pays for it

    _, host, _ = split_address(info["address"])
    services = info.get("services") or {}
    port = services.get("dashboard", services.get("bokeh"))
    url = f"http://{url_host(host)}:{port}/json/identity.json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            workers = json.loads(response.read().decode("utf-8")).get("workers") or {}
        return [str(w.get("name", address)) for address, w in workers.items()]
    except (OSError, ValueError, AttributeError) as exc:
        raise KitError(f"cannot count the workers: no roll of the cluster job found beside the "
                       f"scheduler file, and {url} did not answer ({exc})", MISSING) from None


def worker_job_of(name: str) -> str:
    """The worker job's number in a worker name (job-1235-chunk-1-0: '1235'); '' for others."""
    if not name.startswith(ADDED_PREFIX):
        return ""
    return name[len(ADDED_PREFIX):].partition("-")[0]


def count_workers(names: list) -> tuple:
    """(all workers, {worker job number: its workers}) from a list of worker names."""
    jobs: dict = {}
    for name in names:
        seq = worker_job_of(name)
        if seq:
            jobs[seq] = jobs.get(seq, 0) + 1
    return len(names), jobs


def workers_text(names: list) -> str:
    """'6 workers (2 from worker jobs: 2 of job 1235)', '4 workers (none from worker jobs)'."""
    total, jobs = count_workers(names)
    added = sum(jobs.values())
    head = f"{total} worker{'' if total == 1 else 's'}"
    if not added:
        return f"{head} (none from worker jobs)"
    parts = ", ".join(f"{n} of job {seq}" for seq, n in sorted(jobs.items(), key=lambda i: (len(i[0]), i[0])))
    return f"{head} ({added} from worker jobs: {parts})"


def worker_names(scheduler_file: str, info: dict, timeout: float = 3.0) -> list:
    """The cluster's worker names: from the roll of its job if found, else from the scheduler."""
    log_dir = find_log_dir(scheduler_file, info)
    if log_dir:
        return read_roll(log_dir)
    return query_worker_names(info, timeout)
