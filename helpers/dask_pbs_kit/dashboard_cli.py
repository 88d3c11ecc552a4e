"""python helpers/dashboard_url.py: the dashboard URL (or SSH tunnel) of a running job."""
from __future__ import annotations

import os
import sys

from . import args, schedfile
from .errors import USAGE, KitError

USAGE_TEXT = """usage: dashboard_url.py [SCHEDULER_FILE] [--wait SECONDS] [--tunnel [LOGIN_HOST]] [--local-port PORT]
                        [--loopback [--node NODE]] [--workers] [--jupyter]

Print the Dask dashboard URL of the scheduler described by SCHEDULER_FILE
(default: scheduler.json in the current folder).
  --wait SECONDS        wait up to SECONDS for the file (a job that is still starting)
  --tunnel [LOGIN_HOST] print the ssh command that forwards the dashboard to this machine,
                        through LOGIN_HOST (default: $PBS_O_HOST, else this host's name)
  --local-port PORT     the port on your laptop (default: the dashboard's port)
  --loopback            the dashboard listens on its node's loopback only (DASHBOARD=loopback):
                        print the node's own URL, and a tunnel that ends on the node,
                        jumping through LOGIN_HOST
  --node NODE           the scheduler's node name for that tunnel (default: its address)
  --workers             print how many workers the cluster has, and how many of them
                        came from worker jobs (scripts/launch-dask-workers.pbs), instead:
                        "6 workers (2 from worker jobs: 2 of job 1235)"; read from the
                        cluster job's roll (LOG_DIR/workers.txt), else asked of the
                        scheduler's HTTP server
  --jupyter             print how to reach the job's JupyterLab (JUPYTER=yes) instead: the
                        ssh tunnel to run on your laptop and the URL with its token, from
                        the file the job writes beside SCHEDULER_FILE once JupyterLab answers
exit status: 0 ok, 2 usage, 3 no file (--workers: no roll found, no answer), 4 incomplete
             JSON, 5 not a scheduler file, 6 no dashboard (bokeh missing)"""

OPTIONS = {"--wait": "value", "--tunnel": "optional", "--local-port": "value",
           "--loopback": "flag", "--node": "value", "--workers": "flag", "--jupyter": "flag"}


def main(argv=None) -> int:
    try:
        opts, operands = args.parse(sys.argv[1:] if argv is None else argv, OPTIONS, USAGE_TEXT)
        if len(operands) > 1:
            raise KitError(f"one scheduler file at most\n{USAGE_TEXT}", USAGE)
        path = operands[0] if operands else "scheduler.json"
        wait = args.number(opts.get("--wait", "0"), "--wait")
        local = int(args.number(opts.get("--local-port", "0"), "--local-port"))
        info = schedfile.load(path, wait)
        loopback = "--loopback" in opts
        if "--jupyter" in opts:
            from . import jupyter

            published = jupyter.jupyter_file(path)
            where = _wait_for(lambda: jupyter.load_published(published), wait)
            print(where["tunnel"])
            print(f"# then open {where['local_url']}")
        elif "--workers" in opts:
            print(schedfile.workers_text(schedfile.worker_names(path, info)))
        elif "--tunnel" in opts:
            login = opts["--tunnel"] or os.environ.get("PBS_O_HOST") or _hostname()
            port = local or schedfile.dashboard_port(info)
            node = opts.get("--node") or schedfile.split_address(info["address"])[1] if loopback else ""
            print(schedfile.tunnel_command(info, login, local, node))
            print(f"# then open http://localhost:{port}/status")
        else:
            print(schedfile.dashboard_url(info, loopback))
        return 0
    except KitError as exc:
        stream = sys.stdout if exc.code == 0 else sys.stderr
        prefix = "" if exc.code == 0 else "dask-pbs: dashboard_url.py: "
        print(f"{prefix}{exc}", file=stream)
        return exc.code


def _wait_for(read, wait: float):
    """read(), retried for up to wait seconds while it raises KitError (a job starting)."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            return read()
        except KitError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(schedfile.POLL)


def _hostname() -> str:
    import socket  # only the --tunnel path pays for it

    return socket.getfqdn()
