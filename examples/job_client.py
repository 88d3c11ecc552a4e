"""Connect to the cluster of a dask-pbs-kit job: copy this file beside your own program.

    from job_client import connect
    client = connect()                        # $DASK_SCHEDULER_FILE, else ./scheduler.json
    client = connect("~/run1/scheduler.json")

By default the kit's clusters speak TLS with certificates made for that one job; the job
names the client's certificate in a file beside scheduler.json (scheduler.tls.json for
scheduler.json). connect() reads it when it is there; with TLS=no there is none and the
connection is plain tcp. Any other keyword goes to distributed.Client.
"""
from __future__ import annotations

import json
import os


def tls_config_path(scheduler_file: str) -> str:
    """The client configuration the job writes beside its scheduler file."""
    stem = scheduler_file[:-5] if scheduler_file.endswith(".json") else scheduler_file
    return stem + ".tls.json"


def security_for(scheduler_file: str):
    """The Security that reaches this job's scheduler, or None when it runs plain tcp."""
    from distributed.security import Security

    path = tls_config_path(scheduler_file)
    address = _address(scheduler_file)
    if not os.path.exists(path):
        if address.startswith("tls://"):
            raise SystemExit(
                f"{scheduler_file}: the cluster speaks TLS but {path} (the job's client "
                "certificate) is missing: it exists while the job runs, readable by the job's "
                "owner only")
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            comm = json.load(fh)["distributed"]["comm"]
        tls = comm["tls"]
        return Security(tls_ca_file=tls["ca-file"], tls_client_cert=tls["client"]["cert"],
                        tls_client_key=tls["client"]["key"],
                        require_encryption=bool(comm.get("require-encryption", True)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a dask-pbs-kit client configuration ({exc}); "
                         "pass the file the job wrote beside its scheduler file") from None


def connect(scheduler_file: str | None = None, **kwargs):
    """A Client of the job's cluster, with the job's certificate when it runs TLS."""
    from distributed import Client

    scheduler_file = os.path.expanduser(
        scheduler_file or os.environ.get("DASK_SCHEDULER_FILE") or "scheduler.json")
    kwargs.setdefault("timeout", "30s")
    return Client(scheduler_file=scheduler_file, security=security_for(scheduler_file), **kwargs)


def _address(scheduler_file: str) -> str:
    try:
        with open(scheduler_file, encoding="utf-8") as fh:
            return str(json.load(fh).get("address", ""))
    except FileNotFoundError:
        raise SystemExit(f"no scheduler file {scheduler_file} (is the job running? `qstat` "
                         "tells; start one with qsub scripts/launch-dask-cluster-path.pbs)") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{scheduler_file}: cannot read it as a scheduler file ({exc})") from None
