"""The fake PBS's network mode (FAKEPBS_NETNS=1): every node its own network namespace.

A job's nodes are joined by a bridge, as a cluster's nodes by their switch:

  <prefix>-sw          a namespace holding the bridge br0
  <prefix>-node00 ...  one namespace per node: lo, and ib0 with 10.99.N.<i+1>/24
  fpl<tag><seq>        a link in the caller's namespace (the login node): 10.99.N.254/24,
                       so that a client here reaches the nodes, as from a login node

Each node's addresses exist only inside its namespace: a Dask process bound to ib0 or to
127.0.0.1 on node00 is what it would be on a real node. Processes enter a node with
`ip netns exec`, which also mounts that namespace's /sys (so /sys/class/net lists lo and
ib0 only), and get the node's host name in a UTS namespace. <prefix> carries a hash of FAKEPBS_HOME: parallel test runs never share names.
Needs root and iproute2's `ip`.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess

SUBNET = "10.99"
LOCK = "/tmp/fakepbs-netns.lock"
LOGIN_HOST = 254


class NetnsError(Exception):
    """The namespaces could not be made; str() says why."""


def wanted(environ=os.environ) -> bool:
    return environ.get("FAKEPBS_NETNS", "").lower() in ("1", "yes", "true")


def ip_command() -> str:
    """The ip binary (PBS jobs' PATH lacks /usr/sbin), or NetnsError."""
    found = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if os.geteuid() != 0 or not found:
        raise NetnsError(
            "FAKEPBS_NETNS=1 needs root and iproute2's ip (one network namespace per node); "
            "unset FAKEPBS_NETNS to run every node on this machine's loopback")
    return found


def tag_of(home: str) -> str:
    return hashlib.sha1(os.path.abspath(home).encode()).hexdigest()[:6]


def plan(home: str, seq: int, nodes: list) -> dict:
    """Names for one job's namespaces (nothing is created)."""
    tag = tag_of(home)
    prefix = f"fpbs-{tag}-{seq}"
    return {"ip": ip_command(), "switch": f"{prefix}-sw",
            "nodes": [f"{prefix}-{node}" for node in nodes],
            "login_link": f"fpl{tag}{seq}"[:15], "subnet": None}


def _ip(spec: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([spec["ip"], *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def up(spec: dict) -> None:
    """Create the switch, the nodes and the login link; on failure remove what was made."""
    try:
        _ip(spec, "netns", "add", spec["switch"])
        _ip(spec, "-n", spec["switch"], "link", "add", "br0", "type", "bridge")
        _ip(spec, "-n", spec["switch"], "link", "set", "br0", "up")
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one free subnet per job, machine-wide
            spec["subnet"] = _free_subnet(spec)
            _attach(spec, None, spec["login_link"], "pl", LOGIN_HOST)
        for index, name in enumerate(spec["nodes"]):
            _ip(spec, "netns", "add", name)
            _ip(spec, "-n", name, "link", "set", "lo", "up")
            _attach(spec, name, "ib0", f"p{index}", index + 1)
    except NetnsError:
        down(spec)
        raise


def _free_subnet(spec: dict) -> str:
    for third in range(256):
        subnet = f"{SUBNET}.{third}"
        if not _ip(spec, "-4", "-o", "addr", "show", "to", f"{subnet}.0/24").stdout.strip():
            return subnet
    raise NetnsError(f"no free {SUBNET}.N.0/24 subnet left for another job's nodes")


def _attach(spec: dict, namespace: str | None, link: str, port: str, host: int) -> None:
    """A veth from namespace (None: this one) to a port of the bridge, with an address."""
    where = ["-n", namespace] if namespace else []
    _ip(spec, "link", "add", link, *(["netns", namespace] if namespace else []),
        "type", "veth", "peer", "name", port, "netns", spec["switch"])
    _ip(spec, *where, "addr", "add", f"{spec['subnet']}.{host}/24", "dev", link)
    _ip(spec, *where, "link", "set", link, "up")
    _ip(spec, "-n", spec["switch"], "link", "set", port, "master", "br0", "up")


def down(spec: dict) -> None:
    """Delete the job's namespaces and login link (what does not exist is skipped)."""
    for name in [*spec["nodes"], spec["switch"]]:
        _ip(spec, "netns", "delete", name, check=False)
    _ip(spec, "link", "delete", spec["login_link"], check=False)


def exec_prefix(spec: dict, host: int, hostname: str) -> list:
    """The words that run a program inside node host's namespace, with the node's own
    host name (a UTS namespace). Every step execs: the program keeps the first's pid."""
    return [spec["ip"], "netns", "exec", spec["nodes"][host], "unshare", "--uts",
            "/bin/sh", "-c", 'hostname "$0" && exec "$@"', hostname]


def address(spec: dict, host: int) -> str:
    return f"{spec['subnet']}.{host + 1}"


def clean_all(home: str) -> list:
    """Remove every namespace and login link of this FAKEPBS_HOME (a test's safety net)."""
    try:
        ip = ip_command()
    except NetnsError:
        return []
    tag = tag_of(home)
    spec = {"ip": ip}
    names = _ip(spec, "netns", "list", check=False).stdout.split("\n")
    removed = []
    for line in names:
        name = line.split(" ")[0]
        if name.startswith(f"fpbs-{tag}-"):
            _ip(spec, "netns", "delete", name, check=False)
            removed.append(name)
    for line in _ip(spec, "-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if link.startswith(f"fpl{tag}"):
            _ip(spec, "link", "delete", link, check=False)
            removed.append(link)
    return removed
