"""scheduler.json: read it safely, find the dashboard, build the SSH tunnel command."""
from __future__ import annotations

import json
import os
import time

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
    if not host or not port.isdigit():
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
