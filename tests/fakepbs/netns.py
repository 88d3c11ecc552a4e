"""The fake PBS's network mode (FAKEPBS_NETNS=1): every node its own network namespace.

A job's nodes are joined by a bridge, as a cluster's nodes by their switch:

  <prefix>-sw          a namespace holding one bridge per link (br0, br1, ...)
  <prefix>-node00 ...  one namespace per node: lo, and the links of FAKEPBS_NETNS_LINKS
                       (default "ib0") in order: link k has 10.(99+k).N.<i+1>/24
  fpl<tag><seq>        a link in the caller's namespace (the login node): 10.99.N.254/24
                       on the first link's network, so that a client here reaches the
                       nodes, as from a login node

A link named "name:dark" (e.g. eth9:dark) has an address on its own subnet and reaches
nothing (a veth whose other end is left unbridged). FAKEPBS_NETNS_RESOLVE=<link>|none (default: the first link)
says what the nodes' host names resolve to inside the nodes: a hosts file per namespace,
/etc/netns/<namespace>/hosts, which `ip netns exec` bind-mounts over /etc/hosts (this
machine's /etc/hosts is never touched).

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
NETNS_ETC = "/etc/netns"


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


def parse_links(text: str) -> list:
    """FAKEPBS_NETNS_LINKS: [{"name": "ib0", "dark": False}, ...], or NetnsError."""
    links = []
    for word in (text or "ib0").split(","):
        name, _, kind = word.strip().partition(":")
        if not name or len(name) > 15 or kind not in ("", "dark") or "/" in name:
            raise NetnsError(f"FAKEPBS_NETNS_LINKS: bad link {word!r} (name or name:dark)")
        links.append({"name": name, "dark": kind == "dark"})
    if links[0]["dark"]:
        raise NetnsError("FAKEPBS_NETNS_LINKS: the first link joins the nodes; it cannot be dark")
    return links


def plan(home: str, seq: int, nodes: list, links: str = "ib0", resolve: str = "",
         hostnames: list | None = None) -> dict:
    """Names for one job's namespaces (nothing is created)."""
    tag = tag_of(home)
    prefix = f"fpbs-{tag}-{seq}"
    parsed = parse_links(links)
    names = [link["name"] for link in parsed]
    resolve = resolve or names[0]
    if resolve != "none" and resolve not in names:
        raise NetnsError(f"FAKEPBS_NETNS_RESOLVE={resolve}: not one of the links {names} or none")
    return {"ip": ip_command(), "switch": f"{prefix}-sw",
            "nodes": [f"{prefix}-{node}" for node in nodes],
            "login_link": f"fpl{tag}{seq}"[:15], "subnet": None, "links": parsed,
            "resolve": resolve, "hostnames": hostnames or list(nodes)}


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
        for number, link in enumerate(spec.get("links", [{"name": "ib0", "dark": False}])):
            if number and not link["dark"]:
                _ip(spec, "-n", spec["switch"], "link", "add", f"br{number}", "type", "bridge")
                _ip(spec, "-n", spec["switch"], "link", "set", f"br{number}", "up")
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one free subnet per job, machine-wide
            spec["subnet"] = _free_subnet(spec)
            _attach(spec, None, spec["login_link"], "pl", LOGIN_HOST)
        for index, name in enumerate(spec["nodes"]):
            _ip(spec, "netns", "add", name)
            _ip(spec, "-n", name, "link", "set", "lo", "up")
            for number, link in enumerate(spec.get("links", [{"name": "ib0", "dark": False}])):
                _add_link(spec, name, index, number, link)
        write_hosts_files(spec)
    except (NetnsError, OSError) as exc:
        down(spec)
        raise NetnsError(str(exc)) from None


def link_subnet(spec: dict, number: int) -> str:
    """Link k's /24: 10.(99+k).N, N the job's free third octet (the first link's)."""
    third = spec["subnet"].rsplit(".", 1)[1]
    return f"10.{99 + number}.{third}"


def _add_link(spec: dict, namespace: str, index: int, number: int, link: dict) -> None:
    address = f"{link_subnet(spec, number)}.{index + 1}/24"
    if link["dark"]:
        # A veth whose other end sits unbridged in the switch namespace: up, addressed,
        # and reaching nothing (the dummy link type needs a kernel module not always there).
        port = f"d{number}x{index}"
        _ip(spec, "link", "add", link["name"], "netns", namespace, "type", "veth",
            "peer", "name", port, "netns", spec["switch"])
        _ip(spec, "-n", namespace, "addr", "add", address, "dev", link["name"])
        _ip(spec, "-n", namespace, "link", "set", link["name"], "up")
        _ip(spec, "-n", spec["switch"], "link", "set", port, "up")
    elif number == 0:
        _attach(spec, namespace, link["name"], f"p{index}", index + 1)
    else:
        port = f"p{number}x{index}"
        _ip(spec, "link", "add", link["name"], "netns", namespace, "type", "veth",
            "peer", "name", port, "netns", spec["switch"])
        _ip(spec, "-n", namespace, "addr", "add", address, "dev", link["name"])
        _ip(spec, "-n", namespace, "link", "set", link["name"], "up")
        _ip(spec, "-n", spec["switch"], "link", "set", port, "master", f"br{number}", "up")


def hosts_dir(namespace: str) -> str:
    return os.path.join(NETNS_ETC, namespace)


def write_hosts_files(spec: dict) -> None:
    """Each node's /etc/hosts (as `ip netns exec` shows it): localhost, and every node's
    names (short and, with FAKEPBS_FQDN, full) at its address on the resolve link."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if spec.get("resolve", "none") != "none":
        number = [link["name"] for link in spec["links"]].index(spec["resolve"])
        for index, name in enumerate(spec["hostnames"]):
            short = name.split(".", 1)[0]
            words = [name] if short == name else [name, short]
            lines.append(f"{link_subnet(spec, number)}.{index + 1}\t" + " ".join(words))
    for namespace in spec["nodes"]:
        os.makedirs(hosts_dir(namespace), exist_ok=True)
        with open(os.path.join(hosts_dir(namespace), "hosts"), "w") as fh:
            fh.write("\n".join(lines) + "\n")


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
        shutil.rmtree(hosts_dir(name), ignore_errors=True)
    _ip(spec, "link", "delete", spec["login_link"], check=False)


def exec_prefix(spec: dict, host: int, hostname: str, setup: str = "") -> list:
    """The words that run a program inside node host's namespace, with the node's own
    host name (a UTS namespace); setup: more shell words run first in the node's private
    mount namespace. Every step execs: the program keeps the first's pid."""
    script = 'hostname "$0" && ' + (f"{setup} && " if setup else "") + 'exec "$@"'
    return [spec["ip"], "netns", "exec", spec["nodes"][host], "unshare", "--uts",
            "/bin/sh", "-c", script, hostname]


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
    for name in os.listdir(NETNS_ETC) if os.path.isdir(NETNS_ETC) else []:
        if name.startswith(f"fpbs-{tag}-"):
            shutil.rmtree(hosts_dir(name), ignore_errors=True)
            removed.append(hosts_dir(name))
    for line in _ip(spec, "-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if link.startswith(f"fpl{tag}"):
            _ip(spec, "link", "delete", link, check=False)
            removed.append(link)
    return removed
