"""kit.py interface (INTERFACE=auto): the rule, this machine, and nodes in network namespaces."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import KIT
from dask_pbs_kit import kit_cli, netif
from dask_pbs_kit.errors import NO_INTERFACE, USAGE, KitError
from dask_pbs_kit.netif import Iface

KIT_PY = str(KIT / "helpers" / "kit.py")
LO = Iface("lo", "127.0.0.1", "255.0.0.0")
ETH0 = Iface("eth0", "10.1.0.5", "255.255.255.0")
ETH1 = Iface("eth1", "10.3.0.5", "255.255.0.0")
IB0 = Iface("ib0", "10.2.0.5", "255.255.255.0")
IB1 = Iface("ib1", "10.4.0.5", "255.255.255.0")
BARE = Iface("ifb0")  # no IPv4 address


def choose(interfaces, names=(), route=None):
    iface, how = netif.choose(interfaces, list(names), route, "node05")
    return iface.name, how


# ------------------------------------------------------------------ the rule

@pytest.mark.parametrize("names, route, expected", [
    (["10.1.0.5"], None, ("eth0", "host-name")),           # A only
    ([], "10.1.0.5", ("eth0", "route")),                   # B only
    (["10.1.0.5"], "10.1.0.5", ("eth0", "host-name")),     # A and B agree
    (["10.1.0.5"], "10.2.0.5", ("ib0", "ib")),             # they differ: ib wins, B's side
    (["10.2.0.5"], "10.1.0.5", ("ib0", "ib")),             # ... or A's side
    (["10.1.0.5"], "10.3.0.5", ("eth0", "host-name")),     # they differ, no ib: A
    (["10.1.0.77"], None, ("eth0", "host-name")),          # an address in eth0's subnet
    (["127.0.1.1"], "10.1.0.5", ("eth0", "route")),        # a loopback name says nothing
    (["127.0.1.1"], None, ("lo", "host-name")),            # ... unless nothing else says
    (["127.0.0.1"], "127.0.0.1", ("lo", "host-name")),     # ... or B is loopback too
    (["192.168.9.9"], "172.16.0.1", ("ib0", "ib")),        # neither holds: several, ib0
])
def test_the_rule(names, route, expected):
    assert choose([LO, BARE, ETH0, IB0, ETH1], names, route) == expected


def test_an_exact_address_beats_a_subnet_and_non_loopback_beats_loopback():
    wide = Iface("eth9", "10.0.0.1", "255.0.0.0")  # its subnet holds eth0's address too
    assert choose([wide, ETH0], ["10.1.0.5"]) == ("eth0", "host-name")
    assert choose([LO, ETH0], ["127.0.0.1", "10.1.0.5"]) == ("eth0", "host-name")


def test_with_neither_the_only_network_interface_or_the_first_ib():
    assert choose([LO, BARE, ETH0]) == ("eth0", "only")
    assert choose([LO, IB1, ETH0, IB0]) == ("ib0", "ib")
    assert choose([LO, ETH0, Iface("eth1", "10.3.0.5", "255.255.0.0", up=False)]) == ("eth0", "only")


def test_with_nothing_to_go_on_the_error_lists_the_interfaces():
    with pytest.raises(KitError) as err:
        netif.choose([LO, BARE, ETH0, ETH1, Iface("eth2", "10.5.0.5", "255.255.255.0", up=False)], [], None,
                     "node05", "its host name node05 resolves to no IPv4 address; this is the first node")
    assert err.value.code == NO_INTERFACE
    assert str(err.value) == (
        "INTERFACE=auto cannot choose an interface for Dask on node node05: its host name node05 resolves to "
        "no IPv4 address; this is the first node; its interfaces: lo 127.0.0.1/8, ifb0 (no IPv4 address), "
        "eth0 10.1.0.5/24, eth1 10.3.0.5/16, eth2 10.5.0.5/24 (down) (set INTERFACE to one of them, e.g. "
        "qsub -v INTERFACE=eth0, or INTERFACE= for Dask's default)")
    with pytest.raises(KitError):
        netif.choose([LO], [], None)


def test_same_host_and_prefix_length():
    assert netif.same_host("node01", "NODE01.cluster.org.")
    assert not netif.same_host("node01", "node010")
    assert [netif.prefix_length(m) for m in ("255.255.255.0", "255.0.0.0", "255.255.255.255", "")] == [24, 8, 32, 32]


def test_the_first_node_is_found_by_name_or_in_the_scheduler_file(tmp_path):
    assert netif.first_node_target("node00.cluster", "", 0, "node00") == ("", "this is the first node")
    assert netif.first_node_target("127.0.0.9", "", 0, "node03") == ("127.0.0.9", "")
    path = tmp_path / "scheduler.json"
    # The workers start before the scheduler has written its file: it comes later.
    writer = threading.Timer(0.3, path.write_text, ['{"address": "tls://10.9.8.7:40111"}'])
    writer.start()
    try:
        started = time.monotonic()
        assert netif.first_node_target("no-such-node.invalid", str(path), 20, "node03") == ("10.9.8.7", "")
        assert time.monotonic() - started < 10
    finally:
        writer.join()
    target, why = netif.first_node_target("no-such-node.invalid", str(tmp_path / "none.json"), 0.2, "node03")
    assert target == ""
    assert why.startswith("the first node's name no-such-node.invalid does not resolve, and no scheduler "
                          f"address ({tmp_path}/none.json: no such scheduler file")


def test_usage_errors(capsys):
    assert kit_cli.main(["interface", "eth0"]) == USAGE
    assert capsys.readouterr().err.startswith("dask-pbs: unexpected 'eth0'\nusage: kit.py interface")
    assert kit_cli.main(["interface", "--wait", "long"]) == USAGE


# ------------------------------------------------------------------ this machine

def ip_addresses() -> dict:
    """{interface: 'address/prefix'} as `ip` sees them (primary IPv4 address of each)."""
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not ip:
        pytest.skip("no ip command to compare with")
    found: dict = {}
    for line in subprocess.run([ip, "-4", "-o", "addr", "show"], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        words = line.split()
        found.setdefault(words[1], words[3])
    return found


def test_the_ioctls_read_what_ip_shows():
    mine = {i.name: f"{i.address}/{netif.prefix_length(i.netmask)}" for i in netif.local_interfaces() if i.address}
    assert mine == ip_addresses()
    assert netif.local_interfaces()[0] == Iface("lo", "127.0.0.1", "255.0.0.0", True)


def test_the_command_on_this_machine():
    done = subprocess.run([sys.executable, KIT_PY, "interface"], capture_output=True, text=True, check=True)
    interfaces = netif.local_interfaces()
    host_addresses = netif.resolve(socket.gethostname())
    iface, how = netif.choose(interfaces, host_addresses, None)
    assert done.stdout == f"{iface.name} {iface.address} {how}\n"
    if host_addresses and all(a.startswith("127.") for a in host_addresses):  # this machine: lo is right
        assert done.stdout == "lo 127.0.0.1 host-name\n"


def test_the_route_to_another_host_beats_a_loopback_host_name():
    network = [i for i in netif.local_interfaces() if i.address and i.up and not netif.is_loopback(i)]
    if not network:
        pytest.skip("no network interface with an IPv4 address")
    iface = network[0]
    # Another address in the interface's subnet: the route to it leaves from the interface.
    peer = socket.inet_ntoa((netif._int(iface.address) ^ 1).to_bytes(4, "big"))
    done = subprocess.run([sys.executable, KIT_PY, "interface", "--first-node", peer], capture_output=True,
                          text=True, check=True)
    how = "host-name" if netif.holder(network, netif.resolve(socket.gethostname())) == iface else "route"
    assert done.stdout == f"{iface.name} {iface.address} {how}\n"


# ------------------------------------------------------------------ nodes of their own (root)

class Node:
    """A network namespace with the given interfaces (veths whose peers wait in a second
    namespace) and its own /etc/hosts (through /etc/netns/NAME/hosts, which `ip netns exec`
    mounts; the real /etc/hosts is never touched)."""

    def __init__(self, ip: str, name: str) -> None:
        self.ip, self.name, self.peer = ip, name, name + "p"
        self.etc = f"/etc/netns/{name}"

    def sh(self, *argv: str) -> None:
        subprocess.run([self.ip, *argv], check=True, capture_output=True, text=True)

    def up(self, interfaces: dict) -> None:
        self.sh("netns", "add", self.name)
        self.sh("netns", "add", self.peer)
        self.sh("-n", self.name, "link", "set", "lo", "up")
        for number, (iface, cidr) in enumerate(interfaces.items()):
            temporary = f"dk{os.getpid() % 100000}t{number}"
            self.sh("link", "add", temporary, "netns", self.name, "type", "veth", "peer", "name", f"p{number}",
                    "netns", self.peer)
            self.sh("-n", self.name, "link", "set", temporary, "name", iface)
            self.sh("-n", self.name, "addr", "add", cidr, "dev", iface)
            self.sh("-n", self.name, "link", "set", iface, "up")
        os.makedirs(self.etc)

    def down(self) -> None:
        for namespace in (self.name, self.peer):
            subprocess.run([self.ip, "netns", "delete", namespace], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir("/etc/netns")  # only if no one else keeps a namespace's files there

    def interface(self, hostname: str, hosts: str, *argv: str) -> subprocess.CompletedProcess:
        """kit.py interface run on this node, whose host name is hostname."""
        with open(f"{self.etc}/hosts", "w") as fh:
            fh.write(hosts)
        return subprocess.run(
            [self.ip, "netns", "exec", self.name, "unshare", "--uts", "/bin/sh", "-c", 'hostname "$0" && exec "$@"',
             hostname, sys.executable, KIT_PY, "interface", *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture
def node():
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if os.geteuid() != 0 or not ip or not shutil.which("unshare"):
        pytest.skip("needs root, ip and unshare (network and UTS namespaces)")
    made = []

    def make(interfaces: dict) -> Node:
        one = Node(ip, f"dpkif{os.getpid()}n{len(made)}")
        made.append(one)
        one.up(interfaces)
        return one

    try:
        yield make
    finally:
        for one in made:
            one.down()
    listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout
    assert f"dpkif{os.getpid()}" not in listed


NODE = {"eth0": "10.201.0.2/24", "ib0": "10.202.0.2/24", "eth1": "10.203.0.2/24"}


@pytest.mark.parametrize("hosts, argv, expected", [
    # A on eth0, B (the route to the first node) on ib0: ib wins.
    ("10.201.0.2 node01\n10.202.0.1 node00\n", ["--first-node", "node00"], "ib0 10.202.0.2 ib"),
    # A on ib0, B on eth0: ib wins.
    ("10.202.0.2 node01\n10.201.0.1 node00\n", ["--first-node", "node00"], "ib0 10.202.0.2 ib"),
    # Both on eth1.
    ("10.203.0.2 node01\n10.203.0.1 node00\n", ["--first-node", "node00"], "eth1 10.203.0.2 host-name"),
    # A Debian-style 127.0.1.1 name: the route decides.
    ("127.0.1.1 node01\n10.203.0.1 node00\n", ["--first-node", "node00"], "eth1 10.203.0.2 route"),
    # The first node itself, with no name that resolves: the ib one among several.
    ("", ["--first-node", "node01"], "ib0 10.202.0.2 ib"),
    # The first node itself, named in the node file by a name of its eth1 address.
    ("10.203.0.2 node01-eth\n", ["--first-node", "node01-eth"], "eth1 10.203.0.2 host-name"),
])
def test_a_node_with_several_interfaces(node, hosts, argv, expected):
    done = node(NODE).interface("node01", hosts, *argv)
    assert (done.returncode, done.stdout, done.stderr) == (0, expected + "\n", "")


def test_an_unresolvable_first_node_is_found_through_the_scheduler_file(node, tmp_path):
    path = tmp_path / "scheduler.json"
    writer = threading.Timer(0.5, path.write_text, ['{"type": "Scheduler", "address": "tls://10.201.0.1:40111"}'])
    writer.start()
    try:
        done = node(NODE).interface("node01", "", "--first-node", "node00", "--scheduler-file", str(path),
                                    "--wait", "20")
    finally:
        writer.join()
    assert (done.returncode, done.stdout, done.stderr) == (0, "eth0 10.201.0.2 route\n", "")


def test_one_network_interface_is_the_only_choice_and_two_without_ib_fail(node):
    done = node({"eth0": "10.201.0.2/24"}).interface("node01", "", "--first-node", "node01")
    assert (done.returncode, done.stdout) == (0, "eth0 10.201.0.2 only\n")
    done = node({"eth0": "10.201.0.2/24", "eth1": "10.203.0.2/16"}).interface("node01", "", "--first-node", "node01")
    assert done.returncode == NO_INTERFACE
    assert done.stdout == ""
    assert done.stderr == (
        "dask-pbs: INTERFACE=auto cannot choose an interface for Dask on node node01: its host name node01 "
        "resolves to no IPv4 address; this is the first node; its interfaces: lo 127.0.0.1/8, eth0 10.201.0.2/24, "
        "eth1 10.203.0.2/16 (set INTERFACE to one of them, e.g. qsub -v INTERFACE=eth0, or INTERFACE= for "
        "Dask's default)\n")
