"""JupyterLab beside the job's cluster (JUPYTER=yes): its private folder, its readiness,
and the lines that say how to reach it through one ssh tunnel.

The job starts `jupyter-lab` on the scheduler's node once the cluster is ready (see
scripts/lib/dask-pbs.sh, dpk::start_jupyter). What Jupyter would otherwise write into a
shared home, or leave readable, goes into the job's own folder (LOG_DIR/jupyter, 0700):
the token (a file read as it is: no newline), the runtime folder (Jupyter writes the token
into a 0644 file there when the folder is not private), notebook trust, IPython's history
and JupyterLab's workspace and settings overrides (the Dask sidebar opens the dashboard
through Jupyter's proxy; no news prompt).

  kit.py jupyter-prepare FOLDER --scheduler-file FILE --dashboard network|loopback|off
  kit.py jupyter-wait --runtime DIR --pid PID --log LOG --timeout S --node NODE
                      --login-host HOST --publish FILE [--info INFO] [--loopback]
                      [--dashboard-port PORT]
"""
from __future__ import annotations

import json
import os
import time

from . import args
from .errors import MISSING, NOT_READY, PROCESS_EXITED, USAGE, KitError

PREPARE_USAGE = """usage: kit.py jupyter-prepare FOLDER --scheduler-file FILE --dashboard network|loopback|off

Make FOLDER (0700) for one job's JupyterLab: token (0600, a fresh random token), runtime/,
notary/, ipython/, workspaces/, settings/overrides.json (the Dask sidebar's dashboard at
Jupyter's /proxy/PORT/status, PORT the dashboard's in the job's scheduler FILE). Print the
address JupyterLab listens on, bound as the dashboard is (network: the scheduler's address;
loopback or off: 127.0.0.1), and the dashboard's port (none without one)."""

WAIT_USAGE = """usage: kit.py jupyter-wait --runtime DIR --pid PID --log LOG --timeout SECONDS --node NODE
                          --login-host HOST --publish FILE [--info INFO] [--loopback]
                          [--dashboard-port PORT]

Wait until the JupyterLab of process PID (its runtime folder DIR) answers, then print the
banner's lines (its URL with the token, the ssh tunnel that reaches it from a laptop),
append them to INFO (the job's cluster-info.txt) and then write them, with what
dashboard_url.py --jupyter needs, to FILE (0600): whoever sees FILE finds INFO complete.
Fails at once,
quoting the end of LOG, if PID exits first.
exit status: 0 ready, 2 usage, 9 not ready within SECONDS, 10 JupyterLab exited"""

POLL = 0.05
LOG_LINES = 12


def _write_private(path: str, text: str) -> None:
    """Write path readable by its owner only, replaced in one rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def prepare(folder: str, dashboard_port: int | None) -> None:
    """The job's Jupyter folder; see PREPARE_USAGE."""
    import secrets

    for sub in ("", "runtime", "notary", "ipython", "workspaces", "settings"):
        path = os.path.join(folder, sub)
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # a folder made earlier, or by a looser umask, is made private
    _write_private(os.path.join(folder, "token"), secrets.token_hex(24))
    overrides: dict = {"@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false", "checkForUpdates": False}}
    if dashboard_port:
        overrides["dask-labextension:plugin"] = {"defaultURL": f"/proxy/{dashboard_port}/status"}
    _write_private(os.path.join(folder, "settings", "overrides.json"), json.dumps(overrides, indent=1))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-LOG_LINES:])
    except OSError:
        return "(no log)\n"


def _answers(url: str) -> bool:
    """True when Jupyter's /api answers (it needs no token)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def wait_ready(runtime: str, pid: int, log: str, timeout: float) -> dict:
    """The server's runtime description (jpserver-PID.json: url, port, token, root_dir)
    once it answers. KitError if PID exits first or the timeout passes."""
    path = os.path.join(runtime, f"jpserver-{pid}.json")
    deadline = time.monotonic() + timeout
    while True:
        if not _alive(pid):
            raise KitError(f"JupyterLab exited before it was ready (JUPYTER=yes); its log {log} "
                           f"ends with:\n{_tail(log)}", PROCESS_EXITED)
        try:
            with open(path, encoding="utf-8") as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            info = None
        if info and _answers(info.get("url", "")):
            return info
        if time.monotonic() > deadline:
            raise KitError(f"JupyterLab did not answer within {timeout:g} s; its log {log} "
                           f"ends with:\n{_tail(log)}", NOT_READY)
        time.sleep(POLL)


def reach(info: dict, node: str, login_host: str, loopback: bool,
          dashboard_port: int | None) -> dict:
    """Where the server is and how a laptop reaches it: what the banner and
    dashboard_url.py --jupyter print."""
    from .schedfile import url_host

    port, token = int(info["port"]), info.get("token", "")
    host = info.get("hostname") or "localhost"
    if host in ("0.0.0.0", "", "::"):
        host = "localhost"
    if loopback:
        tunnel = f"ssh -N -L {port}:localhost:{port} -J {login_host} {node}"
        on_node = f"http://localhost:{port}"
    else:
        tunnel = f"ssh -N -L {port}:{url_host(host)}:{port} {login_host}"
        on_node = f"http://{url_host(host)}:{port}"
    return {"url": f"{on_node}/lab?token={token}", "local_url": f"http://localhost:{port}/lab?token={token}",
            "tunnel": tunnel, "node": node, "port": port, "loopback": loopback,
            "dashboard": f"http://localhost:{port}/proxy/{dashboard_port}/status" if dashboard_port else "",
            "root_dir": info.get("root_dir", "")}


def banner_lines(where: dict) -> list:
    """The banner's lines for JupyterLab."""
    dashboard = f"; the dashboard: {where['dashboard']}" if where["dashboard"] else ""
    return [
        f"  jupyter:   {where['url']}   (JupyterLab on node {where['node']}, in "
        f"{where['root_dir'] or 'the submit folder'}; File > Shut Down ends the job)",
        f"  tunnel:    {where['tunnel']}   (on your laptop, then open {where['local_url']}{dashboard})",
    ]


def load_published(path: str) -> dict:
    """What jupyter-wait published (for dashboard_url.py --jupyter)."""
    try:
        with open(path, encoding="utf-8") as fh:
            where = json.load(fh)
    except FileNotFoundError:
        raise KitError(f"{path}: no JupyterLab of this job (is the job running with "
                       "JUPYTER=yes? it writes this file once JupyterLab answers)", MISSING) from None
    except (OSError, ValueError) as exc:
        raise KitError(f"{path}: cannot read it ({exc})", MISSING) from None
    if not isinstance(where, dict) or "tunnel" not in where:
        raise KitError(f"{path}: not a JupyterLab description written by the kit", MISSING)
    return where


def jupyter_file(scheduler_file: str) -> str:
    """Where the job describes its JupyterLab: beside the scheduler file."""
    stem = scheduler_file[:-5] if scheduler_file.endswith(".json") else scheduler_file
    return stem + ".jupyter.json"


def _port(text: str | None) -> int | None:
    if text in (None, "", "none"):
        return None
    if not args.is_digits(str(text)):
        raise KitError(f"--dashboard-port must be a port number or none, not {text!r}", USAGE)
    return int(text)


def prepare_cli(argv: list) -> None:
    """kit.py jupyter-prepare: see PREPARE_USAGE."""
    from . import schedfile

    opts, operands = args.parse(argv, {"--scheduler-file": "value", "--dashboard": "value"},
                                PREPARE_USAGE)
    if len(operands) != 1 or "--scheduler-file" not in opts or opts.get("--dashboard") not in (
            "network", "loopback", "off"):
        raise KitError(PREPARE_USAGE, USAGE)
    info = schedfile.load(opts["--scheduler-file"])
    port = None
    if opts["--dashboard"] != "off":
        try:
            port = schedfile.dashboard_port(info)
        except KitError:
            port = None  # no bokeh: JupyterLab still starts, without the dashboard's link
    address = "127.0.0.1"
    if opts["--dashboard"] == "network":
        address = schedfile.split_address(info["address"])[1]
    prepare(operands[0], port)
    print(address, port or "none")


def wait_cli(argv: list) -> None:
    """kit.py jupyter-wait ...: see WAIT_USAGE."""
    names = ("--runtime", "--pid", "--log", "--timeout", "--node", "--login-host", "--publish")
    options = {name: "value" for name in names}
    options.update({"--loopback": "flag", "--dashboard-port": "value", "--info": "value"})
    opts, operands = args.parse(argv, options, WAIT_USAGE)
    missing = [name for name in names if name not in opts]
    if operands or missing or not args.is_digits(opts["--pid"]):
        raise KitError(WAIT_USAGE, USAGE)
    info = wait_ready(opts["--runtime"], int(opts["--pid"]), opts["--log"],
                      args.number(opts["--timeout"], "--timeout"))
    where = reach(info, opts["--node"], opts["--login-host"], "--loopback" in opts,
                  _port(opts.get("--dashboard-port")))
    lines = "\n".join(banner_lines(where))
    if "--info" in opts:  # before FILE appears: a user waiting for FILE then reads all of INFO
        with open(opts["--info"], "a", encoding="utf-8") as fh:
            fh.write(lines + "\n")
    _write_private(opts["--publish"], json.dumps(where, indent=1))
    print(lines)
