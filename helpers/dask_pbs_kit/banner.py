"""kit.py banner: the lines that tell the user where the cluster is and how to reach it.

One helper call reads the job's scheduler file and prints every line: the readiness
figure, the scheduler's address, the interface Dask uses on each node, the dashboard and
its SSH tunnel, the Python line that connects a client, what protects the cluster, and
where the logs are.
"""
from __future__ import annotations

import json
import os

from . import args, schedfile
from .errors import USAGE, KitError

USAGE_TEXT = """usage: kit.py banner --scheduler-file JOBFILE --published PUBLISHED --workers N --chunks C
                    --took SECONDS --dashboard network|loopback|off --node SCHEDNODE
                    --login-host HOST --log-dir DIR --interface KNOB
                    [--tls-dir DIR --tls-config FILE] [--layout TEXT]

Print where the cluster described by JOBFILE (the job's own scheduler.json) is: N worker
processes on C chunks, ready in SECONDS. PUBLISHED is the scheduler file users connect
with; SCHEDNODE the scheduler's node; HOST the login host of the SSH tunnel (empty:
LOGIN_NODE); DIR the job's log folder, where INTERFACE=auto tasks leave NODE.iface files
(NODE INTERFACE ADDRESS HOW); KNOB the INTERFACE setting (empty: Dask's default). With
--tls-dir, the connect line names the CA, client certificate and key in it, and
--tls-config the client's Dask configuration; --layout TEXT, what runs on which chunks,
is printed as the `workers:` line.
exit status: 0 printed, 2 usage, 3 no JOBFILE, 4 incomplete JSON, 5 not a scheduler file"""

OPTIONS = {name: "value" for name in (
    "--scheduler-file", "--published", "--workers", "--chunks", "--took", "--dashboard",
    "--node", "--login-host", "--log-dir", "--interface", "--tls-dir", "--tls-config",
    "--layout")}
REQUIRED = [name for name in OPTIONS if name not in ("--tls-dir", "--tls-config", "--layout")]
DASHBOARDS = ("network", "loopback", "off")
DIGITS = "0123456789"  # not str.isdigit(): '²' is a digit to it, and no int


def plural(count: int, singular: str, many: str = "") -> str:
    """'1 chunk', '3 chunks', '1 worker process', '2 worker processes'."""
    return f"{count} {singular if count == 1 else many or singular + 's'}"


def py_string(text: str) -> str:
    """text as a double-quoted Python literal: a path with quotes or backslashes pastes right.
    JSON's escapes (backslash, quote, \\n, \\uXXXX) mean the same in Python."""
    literal = json.dumps(text, ensure_ascii=False)
    try:
        literal.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: escaped, still the same str
        literal = json.dumps(text)
    return literal


def natural_key(name: str) -> list:
    """Sort key that puts worker-2 before worker-10 (digit runs compare as numbers)."""
    runs: list = []
    for char in name:
        if runs and (char in DIGITS) == (runs[-1][-1] in DIGITS):
            runs[-1] += char
        else:
            runs.append(char)
    return [(0, int(run), "") if run[0] in DIGITS else (1, 0, run) for run in runs]


def read_iface_files(folder: str) -> list:
    """[(node, interface)] from folder/*.iface (each line NODE INTERFACE ADDRESS HOW), files
    in natural order of their names; unreadable files and short lines are skipped."""
    try:
        names = sorted((n for n in os.listdir(folder) if n.endswith(".iface")), key=natural_key)
    except OSError:
        return []
    records = []
    for name in names:
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as fh:
                records += [tuple(line.split()[:2]) for line in fh if len(line.split()) >= 2]
        except OSError:
            continue
    return records


def group_interfaces(records: list) -> list:
    """[(interface, [nodes])], interfaces in order of first use, each node once (its first
    record) in the order met."""
    groups: dict = {}
    seen: set = set()
    for node, iface in records:
        if node not in seen:
            seen.add(node)
            groups.setdefault(iface, []).append(node)
    return list(groups.items())


def network_text(knob: str, records: list, log_dir: str) -> str:
    """What the network line says for INTERFACE=knob (records: read_iface_files())."""
    if not knob:
        return "Dask's default interface (INTERFACE=)"
    if knob != "auto":
        return f"{knob} on every node (INTERFACE={knob})"
    groups = group_interfaces(records)
    if not groups:
        return f"chosen on each node (INTERFACE=auto); see {log_dir}"
    return "; ".join(f"{iface} on {', '.join(nodes)}" for iface, nodes in groups) + " (INTERFACE=auto)"


def dashboard_lines(info: dict, mode: str, node: str, login_host: str) -> list:
    """The dashboard line and, when there is a dashboard, the tunnel line."""
    if mode == "off":
        return ["  dashboard: off (DASHBOARD=off)"]
    loopback = mode == "loopback"
    try:
        url = schedfile.dashboard_url(info, loopback)
        port = schedfile.dashboard_port(info)
        tunnel = schedfile.tunnel_command(info, login_host or "LOGIN_NODE", 0, node if loopback else "")
    except KitError as exc:  # no dashboard port in the file: say why, print the rest
        return [f"  dashboard: none: {exc}"]
    if loopback:
        first = f"  dashboard: {url} on node {node} only (DASHBOARD=loopback)"
    else:
        first = (f"  dashboard: {url}   (plain HTTP, open to anyone who reaches the node; "
                 "DASHBOARD=loopback keeps it on the node)")
    return [first, f"  tunnel:    {tunnel}   (on your laptop, then open http://localhost:{port}/status)"]


def connect_lines(published: str, node: str, tls_dir: str, tls_config: str) -> list:
    """The Python line that connects a client (it works as pasted), and the security line."""
    scheduler_file = py_string(os.path.abspath(published))
    if not tls_dir:
        return [f"  connect:   from dask.distributed import Client; client = Client(scheduler_file={scheduler_file})",
                f"  security:  none (TLS=no): anyone who can reach node {node} can run code on this "
                "cluster as you"]
    ca, cert, key = (py_string(os.path.join(os.path.abspath(tls_dir), name))
                     for name in ("ca.pem", "client.pem", "client.key"))
    return [f"  connect:   from dask.distributed import Client, Security; client = Client("
            f"scheduler_file={scheduler_file}, security=Security(tls_ca_file={ca}, "
            f"tls_client_cert={cert}, tls_client_key={key}, require_encryption=True))",
            f"  security:  TLS with certificates made for this job only ({tls_dir.rstrip('/')}/, "
            f"deleted when the job ends); {tls_config} names them for examples/job_client.py"]


def banner_lines(info: dict, published: str, workers: int, chunks: int, took: float,
                 dashboard: str, node: str, login_host: str, log_dir: str, interface: str,
                 iface_records: list, tls_dir: str = "", tls_config: str = "",
                 layout: str = "") -> list:
    """Every line of the banner, without newlines. layout: what runs on which chunks (the
    job's own summary), printed as the workers: line when given."""
    return [
        f"dask-pbs: cluster ready in {took:.2f} s: {plural(workers, 'worker process', 'worker processes')} "
        f"on {plural(chunks, 'chunk')}",
        f"  scheduler: {info['address']}",
        *([f"  workers:   {layout}"] if layout else []),
        f"  network:   {network_text(interface, iface_records, log_dir)}",
        *dashboard_lines(info, dashboard, node, login_host),
        *connect_lines(published, node, tls_dir, tls_config),
        f"  logs:      {log_dir.rstrip('/')}/",
    ]


def _count(text: str, what: str) -> int:
    if not args.is_digits(text):
        raise KitError(f"{what} must be a whole number, not {text!r}\n{USAGE_TEXT}", USAGE)
    return int(text)


def cli(argv: list) -> None:
    """kit.py banner: parse, read the job's scheduler file, print the banner."""
    opts, operands = args.parse(argv, OPTIONS, USAGE_TEXT)
    absent = [name for name in REQUIRED if name not in opts]
    if absent or operands:
        what = f"missing {', '.join(absent)}" if absent else f"unexpected {operands[0]!r}"
        raise KitError(f"{what}\n{USAGE_TEXT}", USAGE)
    if ("--tls-dir" in opts) != ("--tls-config" in opts):
        raise KitError(f"--tls-dir and --tls-config go together\n{USAGE_TEXT}", USAGE)
    if opts["--dashboard"] not in DASHBOARDS:
        raise KitError(f"--dashboard must be network, loopback or off, not {opts['--dashboard']!r}", USAGE)
    info = schedfile.load(opts["--scheduler-file"])
    knob = opts["--interface"]
    records = read_iface_files(opts["--log-dir"]) if knob == "auto" else []
    print("\n".join(banner_lines(
        info, opts["--published"], _count(opts["--workers"], "--workers"),
        _count(opts["--chunks"], "--chunks"), args.number(opts["--took"], "--took"),
        opts["--dashboard"], opts["--node"], opts["--login-host"], opts["--log-dir"], knob,
        records, opts.get("--tls-dir", ""), opts.get("--tls-config", ""), opts.get("--layout", ""))))
