"""kit.py interface: INTERFACE=auto, this node's network interface for Dask's --interface.

Each Dask task runs it on its own node. The rule, on each node:
  A  the interface holding an address that this node's host name resolves to (also the
     first node's name, when that names this very node);
  B  the interface holding the source address of the route to the first node (to the
     scheduler's address in the scheduler file when neither the first node's name nor
     this host's own resolves: only then does a worker wait for that file); none when the
     first node is this node;
  a loopback A counts only when B is missing or loopback too; when A and B differ, an ib*
  one wins, else A; when only one exists, it; when neither, the only non-loopback
  interface with an IPv4 address, or the first ib* one among several; else an error that
  lists the node's interfaces.
IPv4 only: addresses and masks come from the SIOCGIFADDR and SIOCGIFNETMASK ioctls (the
primary address of each interface), the route from a UDP socket's connect(), which sends
nothing. No `ip` command.
"""
from __future__ import annotations

import socket
from collections import namedtuple  # loaded already (socket needs it); typing is not

from . import args
from .errors import NO_INTERFACE, USAGE, KitError

USAGE_TEXT = """usage: kit.py interface [--first-node NAME] [--scheduler-file FILE --wait SECONDS]

Print this node's interface for Dask (INTERFACE=auto) as one line: INTERFACE ADDRESS HOW,
HOW being the rule that chose it: host-name (it holds an address of this host's name),
route (it leads to the first node NAME, or to the scheduler's address in FILE when NAME
and this host's own name do not resolve, waiting up to SECONDS for FILE), ib (an ib* interface preferred to
another), only (the one non-loopback interface with an IPv4 address).
exit status: 0 printed, 2 usage, 11 no interface could be chosen"""

OPTIONS = {"--first-node": "value", "--scheduler-file": "value", "--wait": "value"}
SIOCGIFFLAGS, SIOCGIFADDR, SIOCGIFNETMASK = 0x8913, 0x8915, 0x891B
IFF_UP = 0x1


class Iface(namedtuple("Iface", "name address netmask up", defaults=("", "", True))):
    """One network interface: name, IPv4 address and netmask (dotted strings, '' when it
    has none), and up (bool)."""

    __slots__ = ()

    def describe(self) -> str:
        if not self.address:
            return f"{self.name} (no IPv4 address)"
        return f"{self.name} {self.address}/{prefix_length(self.netmask)}" + ("" if self.up else " (down)")


def _int(address: str) -> int:
    return int.from_bytes(socket.inet_aton(address), "big")


def prefix_length(netmask: str) -> int:
    return bin(_int(netmask)).count("1") if netmask else 32


def is_loopback(iface: Iface) -> bool:
    return iface.name == "lo" or iface.address.startswith("127.")


def is_ib(iface: Iface) -> bool:
    return iface.name.startswith("ib")


def holds(iface: Iface, address: str) -> bool:
    """True if address is in iface's subnet (a zero mask holds only its own address)."""
    mask = _int(iface.netmask) if iface.netmask else 0xFFFFFFFF
    mask = mask or 0xFFFFFFFF
    return _int(address) & mask == _int(iface.address) & mask


def _best(candidates: list) -> Iface | None:
    """Non-loopback before loopback, ib* before the rest, then the interfaces' order."""
    ranked = sorted(enumerate(candidates), key=lambda p: (is_loopback(p[1]), not is_ib(p[1]), p[0]))
    return ranked[0][1] if ranked else None


def holder(usable: list, addresses: list) -> Iface | None:
    """The interface with one of addresses as its own, else one whose subnet holds one
    (non-loopback, then ib*, then the first)."""
    exact = [i for i in usable if i.address in addresses]
    return _best(exact or [i for i in usable if any(holds(i, a) for a in addresses)])


def choose(interfaces: list, host_addresses: list, route_source: str | None,
           node: str = "", why: str = "") -> tuple:
    """(interface, how) by the rule in this module's docstring. interfaces: [Iface];
    host_addresses: the IPv4 addresses this node's name resolves to; route_source: the
    source address of the route to the first node (None: no route, or this is it).
    Raises KitError(NO_INTERFACE) naming the interfaces when none can be chosen; why
    says what was tried (for that message)."""
    usable = [i for i in interfaces if i.address and i.up]
    by_name = holder(usable, host_addresses)
    by_route = next((i for i in usable if i.address == route_source), None) if route_source else None
    if by_name and is_loopback(by_name) and by_route and not is_loopback(by_route):
        by_name = None  # a name on 127.x.x.x says nothing about the network
    if by_name and by_route:
        if by_name.name == by_route.name:
            return by_name, "host-name"
        if is_ib(by_name) != is_ib(by_route):
            return (by_name if is_ib(by_name) else by_route), "ib"
        return by_name, "host-name"
    if by_name:
        return by_name, "host-name"
    if by_route:
        return by_route, "route"
    network = [i for i in usable if not is_loopback(i)]
    if len(network) == 1:
        return network[0], "only"
    ib = sorted((i for i in network if is_ib(i)), key=lambda i: (len(i.name), i.name))
    if ib:
        return ib[0], "ib"
    listing = ", ".join(i.describe() for i in interfaces) or "no interface at all"
    example = f", e.g. qsub -v INTERFACE={network[0].name}" if network else ""
    raise KitError(
        f"INTERFACE=auto cannot choose an interface for Dask on node {node or '?'}"
        f"{': ' + why if why else ''}; its interfaces: {listing} (set INTERFACE to one of "
        f"them{example}, or INTERFACE= for Dask's default)", NO_INTERFACE)


# ------------------------------------------------------------------ what this node has

def _ioctl_address(sock: socket.socket, code: int, name: str) -> str:
    import fcntl
    import struct

    try:
        reply = fcntl.ioctl(sock.fileno(), code, struct.pack("256s", name.encode()[:15]))
    except OSError:  # EADDRNOTAVAIL: no IPv4 address
        return ""
    return socket.inet_ntoa(reply[20:24])


def _ioctl_up(sock: socket.socket, name: str) -> bool:
    import fcntl
    import struct

    try:
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return False
    return bool(struct.unpack_from("H", reply, 16)[0] & IFF_UP)


def local_interfaces() -> list:
    """This node's interfaces in index order, with their primary IPv4 address and mask."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            address = _ioctl_address(sock, SIOCGIFADDR, name)
            netmask = _ioctl_address(sock, SIOCGIFNETMASK, name) if address else ""
            found.append(Iface(name, address, netmask, _ioctl_up(sock, name)))
    return found


def resolve(name: str) -> list:
    """The IPv4 addresses name resolves to, in the resolver's order (none if it does not)."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


def source_address_to(target: str) -> str | None:
    """This node's source address for packets to target, from the routing table (a UDP
    connect() sends nothing); None when there is no route."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


def same_host(a: str, b: str) -> bool:
    """node01 and node01.cluster.org are one host (node files may hold either form)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or a.split(".")[0] == b.split(".")[0]


def scheduler_host(path: str, wait: float) -> tuple:
    """(the scheduler's host from its file, ''), or ('', why not) after waiting."""
    from . import schedfile

    try:
        return schedfile.split_address(schedfile.load(path, wait)["address"])[1], ""
    except KitError as exc:
        return "", f"no scheduler address ({exc})"


def first_node_target(first_node: str, scheduler_file: str, wait: float, hostname: str,
                      named: bool = False) -> tuple:
    """(address to route to, why there is none). The scheduler file is read only when the
    first node's name does not resolve and this host's own name gave no address (named
    False): waiting for it holds the worker's start until the scheduler has written it.
    Never when the first node is this host."""
    if first_node and same_host(first_node, hostname):
        return "", "this is the first node"
    addresses = resolve(first_node) if first_node else []
    if addresses:
        return addresses[0], ""
    why = f"the first node's name {first_node} does not resolve" if first_node else "no --first-node"
    if not scheduler_file or named:
        return "", why
    host, not_read = scheduler_host(scheduler_file, wait)
    if not host:
        return "", f"{why}, and {not_read}"
    addresses = resolve(host)
    return (addresses[0], "") if addresses else ("", f"{why}, nor does the scheduler's host {host}")


def detect(first_node: str = "", scheduler_file: str = "", wait: float = 0.0) -> tuple:
    """(interface, how) for this node, from what it has and what its names resolve to."""
    interfaces = local_interfaces()
    hostname = socket.gethostname()
    host_addresses = resolve(hostname)
    target, why_no_route = first_node_target(first_node, scheduler_file, wait, hostname,
                                             named=bool(host_addresses))
    source = None
    local = {i.address for i in interfaces if i.address}
    if target and (target in local or target.startswith("127.")):
        if not target.startswith("127."):
            host_addresses.append(target)  # the first node's name names this node: A's too
        why_no_route = "this is the first node"
    elif target:
        source = source_address_to(target)
        why_no_route = (f"the route to the first node ({target}) leaves from {source}" if source
                        else f"no route to the first node ({target})")
    why = (f"its host name {hostname} resolves to "
           f"{', '.join(host_addresses) or 'no IPv4 address'}; {why_no_route}")
    return choose(interfaces, host_addresses, source, hostname, why)


def cli(argv: list) -> None:
    """kit.py interface: print INTERFACE ADDRESS HOW for this node."""
    opts, operands = args.parse(argv, OPTIONS, USAGE_TEXT)
    if operands:
        raise KitError(f"unexpected {operands[0]!r}\n{USAGE_TEXT}", USAGE)
    wait = args.number(opts.get("--wait", "0"), "--wait")
    iface, how = detect(opts.get("--first-node", ""), opts.get("--scheduler-file", ""), wait)
    print(f"{iface.name} {iface.address} {how}")
