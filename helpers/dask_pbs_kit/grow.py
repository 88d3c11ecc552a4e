"""kit.py join-check and retire: grow a running cluster with worker-only jobs, and let them go.

A worker job (scripts/launch-dask-workers.pbs) starts `dask worker` processes that join the
cluster of another job of the same user, named job-SEQ-chunk-I[-K] (SEQ: the worker job's
own PBS job number, see prefix_for), and retires them through the scheduler before it ends:
their data moves to the remaining workers (Scheduler.retire_workers, the Active Memory
Manager's RetireWorker policy), so nothing computed is lost.

  join-check  before anything starts: is there a live cluster of this user at that scheduler
              file, and where are its certificates? (stdlib only: no distributed import)
  retire      retire every worker whose name starts with a prefix (imports distributed)

Also a nanny preload (`dask worker --preload-nanny dask_pbs_kit.grow`, with helpers/ on
PYTHONPATH): the worker job's nannies ignore SIGTERM. PBS sends SIGTERM to every process
of a job at once on qdel; a nanny that obeyed it would kill its worker and its data with
it before the job script could retire it. The job script retires them instead (SIGINT and
SIGKILL still stop them; PBS sends SIGKILL after its kill delay).

Only the standard library at import; `retire` loads distributed when it runs.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys
import time

from . import args, schedfile
from .errors import (BAD_VALUE, CLUSTER_GONE, MALFORMED, MISSING, NO_TLS_FILES, NOT_READABLE,
                     NOT_RETIRED, NOT_SCHEDULER, RETIRE_TIMEOUT, USAGE, KitError)

JOIN_USAGE = """usage: kit.py join-check SCHEDULER_FILE [--timeout SECONDS] [--job-id JOBID] [--copy-to FILE]

Before a worker job starts anything: check that SCHEDULER_FILE describes a running cluster
this user may join, and print what the job needs, one NAME VALUE line each:
  address        the scheduler's address (tcp:// or tls://)
  scheduler_file SCHEDULER_FILE, absolute
  tls_config     (TLS) the client configuration beside it (x.json: x.tls.json)
  tls_dir        (TLS) the cluster job's certificate folder: ca.pem, cluster.pem and
                 cluster.key, what this job's workers present (task.sh tls=DIR)
  log_dir        the cluster job's LOG_DIR (its roll workers.txt, scheduler.closed)
  cluster_job    the cluster job's id, if found (the first line of LOG_DIR/job.log)
  prefix         the names of this job's workers start with it: job-SEQ- (from --job-id,
                 default $PBS_JOBID; absent when neither is known)
The cluster must answer at its address within SECONDS (default 3): a TCP connection, and
for TLS a handshake whose certificate comes from the cluster's own CA. --copy-to writes
the scheduler file as read to FILE (mode 0600, in one rename), and with TLS its client
configuration beside it (FILE's x.tls.json): copies that stay when the cluster job
removes its own, for `kit.py retire --scheduler-file FILE` and the workers.
exit status: 0 joinable; 2 usage; 3 no scheduler file (or no log folder of its job found);
4 incomplete JSON; 5 not a scheduler file; 12 a file not readable (another user's
cluster); 13 the cluster is gone (nothing answers at its address, or its scheduler
closed); 14 a TLS cluster without its client configuration or certificate files"""

RETIRE_USAGE = """usage: kit.py retire --scheduler-file FILE [--tls-config CONFIG] --prefix PREFIX [--timeout SECONDS]

Retire every worker whose name starts with PREFIX (a worker job's, job-SEQ-): the
scheduler moves the keys they hold to the remaining workers, closes them (with their
nannies) and removes them; then print one line saying how many workers went and how many
keys (bytes) held only by them moved. CONFIG is the cluster's client configuration (default
FILE's x.tls.json), needed when the address is tls://. Gives up after SECONDS (default 8:
PBS's kill delay, 10 s, is all a qdel leaves).
exit status: 0 retired (or none had the prefix); 2 usage; 3, 4, 5 as join-check; 12 not
readable; 13 the cluster is gone (nothing to retire: its workers closed with it); 14 TLS
files missing while the cluster answers; 15 not done within SECONDS; 16 some workers
hold data no other worker could take (none left running, or all paused): they still run"""

PROBE_TIMEOUT = 3.0
RETIRE_TIMEOUT_S = 8.0
POLL = 0.05


# ------------------------------------------------------------------ names

def prefix_for(jobid: str) -> str:
    """The prefix of a worker job's worker names: 'job-1235-' for 1235.pbsserver; an array
    sub-job 1235[7].server gives 'job-1235_7-'. Only letters, digits and '_' in SEQ: a
    prefix never matches another job's names (job-12- is no prefix of job-123-...)."""
    seq = jobid.strip().split(".", 1)[0]
    seq = re.sub(r"[^A-Za-z0-9]+", "_", seq).strip("_")
    if not seq:
        raise KitError(f"cannot make worker names from the job id {jobid!r}", USAGE)
    return f"{schedfile.ADDED_PREFIX}{seq}-"


# ------------------------------------------------------------------ files

def _owner(path: str) -> str:
    try:
        import pwd

        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (ImportError, KeyError, OSError):
        return "another user"


def read_private(path: str, what: str) -> bytes:
    """The bytes of one of the cluster's files, with a KitError saying why not."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise KitError(f"{path}: no {what}", MISSING) from None
    except PermissionError:
        raise KitError(
            f"{path}: permission denied: it belongs to {_owner(path)}, and a cluster takes "
            "workers of its own user only (its files are its owner's, mode 0600): start "
            "your own cluster job", NOT_READABLE) from None
    except OSError as exc:
        raise KitError(f"{path}: cannot read the {what} ({exc.strerror})", MISSING) from None


def read_scheduler_file(path: str) -> tuple:
    """(info, raw bytes) of a scheduler file, every failure its own exit status."""
    try:
        raw = read_private(path, "scheduler file")
    except KitError as exc:
        if exc.code == MISSING and not os.path.exists(path):
            raise KitError(
                f"{path}: no such scheduler file: is the cluster's job running? (`qstat`; a "
                "cluster job publishes it once all its workers have connected, and removes it "
                "when it ends)", MISSING) from None
        raise
    try:
        info = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise KitError(f"{path}: not complete JSON (pass the scheduler file a cluster job "
                       "published)", MALFORMED) from None
    if not isinstance(info, dict) or not isinstance(info.get("address"), str) or (
            info.get("type", "Scheduler") != "Scheduler"):
        raise KitError(f"{path}: not a Dask scheduler file (it has no scheduler address: pass "
                       "the scheduler.json that the cluster job published)", NOT_SCHEDULER)
    protocol, _, _ = schedfile.split_address(info["address"])
    if protocol not in ("tcp", "tls"):
        raise KitError(f"{path}: the scheduler speaks {protocol}://; worker jobs join tcp:// "
                       "and tls:// clusters only", NOT_SCHEDULER)
    return info, raw


def tls_files(scheduler_file: str, config: str = "") -> dict:
    """The cluster's TLS files, checked readable: {'config', 'ca', 'cert', 'key' (the
    client's), 'dir' (the job's tls/), 'cluster_cert', 'cluster_key'}."""
    config = config or schedfile.tls_config_path(scheduler_file)
    if not os.path.exists(config):
        raise KitError(
            f"{scheduler_file} names a TLS cluster but {config}, its client configuration, is "
            "missing (the cluster job writes it beside its scheduler file and removes both "
            "when it ends)", NO_TLS_FILES)
    raw = read_private(config, "client configuration")
    try:
        comm = json.loads(raw.decode("utf-8"))["distributed"]["comm"]
        tls = comm["tls"]
        files = {"config": os.path.abspath(config), "ca": tls["ca-file"],
                 "cert": tls["client"]["cert"], "key": tls["client"]["key"]}
        if not all(isinstance(v, str) and v for v in files.values()):
            raise TypeError
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise KitError(f"{config}: not a dask-pbs-kit client configuration (pass the scheduler "
                       "file a cluster job published: its x.tls.json is beside it)",
                       NO_TLS_FILES) from None
    # The cluster job keeps ca.pem, cluster.pem/.key and client.pem/.key in one folder.
    files["raw"] = raw
    files["dir"] = os.path.dirname(files["ca"])
    files["cluster_cert"] = os.path.join(files["dir"], "cluster.pem")
    files["cluster_key"] = os.path.join(files["dir"], "cluster.key")
    for name in ("ca", "cert", "key", "cluster_cert", "cluster_key"):
        path = files[name]
        try:
            read_private(path, "certificate file")
        except KitError as exc:
            if exc.code == MISSING:
                raise KitError(
                    f"{path}: missing, though {config} names the cluster's certificates "
                    f"in {files['dir']}/ (the cluster job deletes them when it ends; is its "
                    "log folder on storage this node shares?)", NO_TLS_FILES) from None
            raise
    return files


def cluster_job_id(log_dir: str) -> str:
    """The cluster job's id from the first line of LOG_DIR/job.log ("dask-pbs: job ID: logs
    in ..."), else the folder's name when it looks like one (1234.server); '' if neither."""
    try:
        with open(os.path.join(log_dir, "job.log"), encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
        match = re.match(r"dask-pbs: job (\S+): logs in ", first)
        if match:
            return match.group(1)
    except OSError:
        pass
    name = os.path.basename(log_dir.rstrip("/"))
    return name if re.match(r"^[0-9]+(\[[0-9]*\])?(\.\S+)?$", name) else ""


# ------------------------------------------------------------------ is the cluster there?

def closed_marker(log_dir: str) -> str:
    """The marker a cluster job leaves when its scheduler has closed or died, or ''."""
    for name in ("scheduler.closed", "scheduler.died"):
        path = os.path.join(log_dir, name)
        if log_dir and os.path.exists(path):
            return path
    return ""


def probe(address: str, tls: dict | None = None, timeout: float = PROBE_TIMEOUT) -> str:
    """Raise CLUSTER_GONE unless the scheduler answers at address: a TCP connection within
    timeout, and with tls (tls_files()) a server certificate from the cluster's own CA (a
    port that another program took since is no cluster). Returns '' or a warning (the
    scheduler took the connection but was too busy to finish the TLS handshake: alive)."""
    _, host, port = schedfile.split_address(address)
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise KitError(f"nothing answers at {address} within {timeout:g} s: the cluster's job "
                       "has ended (or its node is down or unreachable from here)",
                       CLUSTER_GONE) from None
    except OSError as exc:
        raise KitError(f"nothing answers at {address} ({exc.strerror or exc}): the cluster's job "
                       "has ended (its scheduler file was left behind)", CLUSTER_GONE) from None
    with sock:
        if tls is None:
            return ""
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # as Dask: the CA is the job's own, names do not matter
        try:
            context.load_verify_locations(tls["ca"])
            context.load_cert_chain(tls["cert"], tls["key"])
        except (OSError, ssl.SSLError) as exc:
            raise KitError(f"{tls['config']}: its certificates cannot be used ({exc})",
                           NO_TLS_FILES) from None
        sock.settimeout(max(0.1, timeout - (time.monotonic() - started)))
        try:
            with context.wrap_socket(sock):
                pass  # the handshake is the check
        except ssl.SSLCertVerificationError:
            raise KitError(f"the program now listening at {address} is not this cluster's "
                           "scheduler (its certificate is not from the cluster's CA): the "
                           "cluster's job has ended", CLUSTER_GONE) from None
        except socket.timeout:
            return (f"the scheduler at {address} took the connection but did not finish a TLS "
                    f"handshake within {timeout:g} s (busy?)")
        except (ssl.SSLError, OSError) as exc:
            raise KitError(f"no TLS scheduler at {address} ({exc}): the cluster's job has ended",
                           CLUSTER_GONE) from None
    return ""


def check_cluster(scheduler_file: str, timeout: float = PROBE_TIMEOUT,
                  tls_config: str = "") -> dict:
    """Everything join-check checks, in order; the facts it found (see JOIN_USAGE)."""
    info, raw = read_scheduler_file(scheduler_file)
    address = info["address"]
    facts = {"address": address, "scheduler_file": os.path.abspath(scheduler_file), "raw": raw,
             "warning": ""}
    log_dir = schedfile.find_log_dir(scheduler_file, info, tls_config)
    tls = None
    if address.startswith("tls://"):
        try:
            tls = tls_files(scheduler_file, tls_config)
        except KitError as exc:
            # The files go when the cluster ends: then say that it ended, not that they are missing.
            if exc.code == NO_TLS_FILES:
                probe(address, None, timeout)
            raise
        facts.update(tls_config=tls["config"], tls_dir=tls["dir"], tls_raw=tls["raw"])
    if log_dir:
        marker = closed_marker(log_dir)
        if marker:
            raise KitError(f"the cluster's scheduler has closed ({marker} is there): its job "
                           "has ended or is ending", CLUSTER_GONE)
        facts["log_dir"] = os.path.abspath(log_dir)
        job = cluster_job_id(log_dir)
        if job:
            facts["cluster_job"] = job
    facts["warning"] = probe(address, tls, timeout)
    facts["tls"] = tls
    return facts


def copy_atomic(raw: bytes, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise KitError(f"cannot write {path} ({exc.strerror})") from None


def join_check_cli(argv: list, environ=os.environ) -> None:
    """kit.py join-check: refuse with a distinct status, or print NAME VALUE lines."""
    opts, operands = args.parse(argv, {"--timeout": "value", "--job-id": "value",
                                       "--copy-to": "value"}, JOIN_USAGE)
    if len(operands) != 1:
        raise KitError(JOIN_USAGE, USAGE)
    timeout = args.number(opts.get("--timeout", str(PROBE_TIMEOUT)), "--timeout")
    jobid = opts.get("--job-id", environ.get("PBS_JOBID", ""))
    prefix = prefix_for(jobid) if jobid else ""
    facts = check_cluster(operands[0], timeout)
    if not facts.get("log_dir"):
        # The roll of the cluster's registered workers is there: how the job knows that its
        # own workers have joined (kit.py wait-ready), and what counts them.
        raise KitError(
            f"cannot find the log folder of the cluster job of {operands[0]} (its roll of "
            "workers, workers.txt): with TLS it is found through the certificates the client "
            "configuration names, without TLS in dask-logs/ beside the scheduler file (the "
            "default LOG_DIR); pass the job's own copy, LOG_DIR/scheduler.json", MISSING)
    if "--copy-to" in opts:
        # The client configuration too, beside the copy as beside the original: `retire
        # --scheduler-file COPY` finds it, and through it the cluster's log folder.
        if facts.get("tls_raw"):
            copy_atomic(facts["tls_raw"], schedfile.tls_config_path(opts["--copy-to"]))
        copy_atomic(facts["raw"], opts["--copy-to"])
    if facts["warning"]:
        print(f"dask-pbs: warning: {facts['warning']}", file=sys.stderr)
    lines = [(name, facts.get(name, "")) for name in (
        "address", "scheduler_file", "tls_config", "tls_dir", "log_dir", "cluster_job")]
    lines.append(("prefix", prefix))
    for _, value in lines:
        if "\n" in value:
            raise KitError(f"{value!r}: a path with a newline cannot be passed on", BAD_VALUE)
    print("".join(f"{name} {value}\n" for name, value in lines if value), end="")


# ------------------------------------------------------------------ retire

def _size(nbytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


async def _retire(address: str, security, prefix: str, deadline: float) -> dict:
    """Retire the prefix's workers; a report (dict) of what happened. Raises asyncio's
    TimeoutError at the deadline, OSError when the scheduler goes away. A worker of the
    prefix that registers meanwhile (a job deleted while it starts) is retired in a
    further round."""
    import asyncio

    from distributed import Client

    if time.monotonic() >= deadline:  # importing distributed took it all
        raise asyncio.TimeoutError
    left = lambda: max(0.05, deadline - time.monotonic())  # noqa: E731
    client = await asyncio.wait_for(
        Client(address, security=security, asynchronous=True, timeout=left(),
               set_as_default=False, name="dask-pbs-kit retire"), left())

    async def named() -> dict:
        ident = await asyncio.wait_for(client.scheduler.identity(n_workers=-1), left())
        return {addr: str(w.get("name")) for addr, w in (ident.get("workers") or {}).items()}

    report = {"names": [], "retired": [], "kept": [], "keys": 0, "unique": 0,
              "unique_bytes": 0, "moved": 0, "others": 0}
    seen: set = set()
    try:
        while True:
            workers = await named()
            batch = {a: n for a, n in workers.items() if n.startswith(prefix) and a not in seen}
            if not seen:
                report["others"] = len(workers) - len(batch)
            if not batch:
                return report
            seen.update(batch)
            report["names"] = sorted(set(report["names"]) | set(batch.values()))
            has_what = await asyncio.wait_for(client.scheduler.has_what(workers=list(batch)), left())
            keys = {k for held in has_what.values() for k in held}
            who_has = await asyncio.wait_for(client.scheduler.who_has(keys=list(keys)), left()) \
                if keys else {}
            # Keys whose every copy is on this job's workers: those the retirement must move.
            unique = [k for k, holders in who_has.items() if holders and set(holders) <= seen]
            if unique:
                sizes = await asyncio.wait_for(
                    client.scheduler.nbytes(keys=unique, summary=False), left())
                report["unique_bytes"] += sum(int(v) for v in sizes.values())
            report["keys"] += len(keys)
            report["unique"] += len(unique)
            retired = await asyncio.wait_for(client.scheduler.retire_workers(
                names=list(batch.values()), close_workers=True, remove=True,
                stimulus_id=f"dask-pbs-kit-retire-{prefix}{time.time()}"), left())
            gone = {a for a in retired if a in batch}
            report["retired"] = sorted(report["retired"] + [batch[a] for a in gone])
            # A worker whose data had nowhere to go was not retired: it runs on.
            report["kept"] = sorted(report["kept"] + [n for a, n in batch.items() if a not in gone])
            while gone & set(await named()):  # removed before retire_workers returned, normally
                await asyncio.sleep(POLL)
            if unique:
                now = await asyncio.wait_for(client.scheduler.who_has(keys=unique), left())
                report["moved"] += sum(1 for k in unique if set(now.get(k) or ()) - seen)
    finally:
        try:
            await asyncio.wait_for(client.close(), 2)
        except Exception:  # noqa: BLE001  a client that cannot close cleanly changes nothing
            pass


def _security(tls: dict | None):
    if tls is None:
        return None
    from distributed.security import Security

    return Security(tls_ca_file=tls["ca"], tls_client_cert=tls["cert"], tls_client_key=tls["key"],
                    require_encryption=True)


def report_line(report: dict, took: float) -> str:
    """What retire says on stdout."""
    prefix = report["prefix"]
    if not report["names"]:
        return f"no worker named {prefix}* on the cluster: nothing to retire"
    n = len(report["retired"])
    text = f"retired {n} worker{'' if n == 1 else 's'} {prefix}* in {took:.2f} s: "
    if report["unique"]:
        text += (f"{report['moved']} of {report['unique']} keys ({_size(report['unique_bytes'])}) "
                 f"held only by them moved to the {report['others']} remaining "
                 f"worker{'' if report['others'] == 1 else 's'}")
    else:
        text += "no key held only by them"
    if report["keys"] > report["unique"]:
        text += f" ({report['keys'] - report['unique']} more had copies elsewhere)"
    return text


def retire_cli(argv: list) -> None:
    """kit.py retire: retire a worker job's workers through the scheduler."""
    import asyncio

    opts, operands = args.parse(argv, {"--scheduler-file": "value", "--tls-config": "value",
                                       "--prefix": "value", "--timeout": "value"}, RETIRE_USAGE)
    absent = [name for name in ("--scheduler-file", "--prefix") if name not in opts]
    if absent or operands:
        what = f"missing {', '.join(absent)}" if absent else f"unexpected {operands[0]!r}"
        raise KitError(f"{what}\n{RETIRE_USAGE}", USAGE)
    prefix = opts["--prefix"]
    if not prefix or prefix.startswith("chunk-") or "chunk-".startswith(prefix):
        raise KitError(f"--prefix {prefix!r} would retire the cluster job's own workers "
                       "(chunk-I): give a worker job's prefix, job-SEQ-", USAGE)
    timeout = args.number(opts.get("--timeout", str(RETIRE_TIMEOUT_S)), "--timeout")
    started = time.monotonic()
    deadline = started + timeout
    # The probe's own timeout: a short --timeout must not make a live cluster look gone.
    facts = check_cluster(opts["--scheduler-file"], min(PROBE_TIMEOUT, max(timeout, 1.0)),
                          opts.get("--tls-config", ""))
    security = _security(facts["tls"])
    try:
        report = asyncio.run(_retire(facts["address"], security, prefix, deadline))
    except (asyncio.TimeoutError, TimeoutError):
        raise KitError(f"the workers {prefix}* were not retired within {timeout:g} s (see the "
                       "scheduler's log; what is left ends with the job)", RETIRE_TIMEOUT) from None
    except OSError as exc:  # CommClosedError is an OSError: the scheduler went meanwhile
        try:
            probe(facts["address"], facts["tls"], 1.0)
        except KitError:
            raise KitError(f"the cluster at {facts['address']} ended while its workers "
                           f"{prefix}* were being retired: nothing left to retire",
                           CLUSTER_GONE) from None
        raise KitError(f"retiring {prefix}* failed: {exc}", CLUSTER_GONE) from None
    report["prefix"] = prefix
    print(report_line(report, time.monotonic() - started))
    if report["kept"]:
        raise KitError(
            f"{len(report['kept'])} worker(s) kept data no other worker could take (no other "
            f"worker running, or all paused), and still run: {', '.join(report['kept'])}; "
            "stopping them loses that data (Dask recomputes what it can)", NOT_RETIRED)


# ------------------------------------------------------------------ nanny preload

def dask_setup(nanny) -> None:
    """`dask worker --preload-nanny dask_pbs_kit.grow`: this process ignores SIGTERM, and so
    do the worker processes it starts afterwards (an ignored signal stays ignored across
    exec). It runs after `dask worker` has set its own SIGTERM handler (that handler closes
    the nannies and kills the workers with their data), before the workers start."""
    import logging
    import signal

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logging.getLogger("distributed.nanny").info(
            "dask-pbs: this worker job's processes ignore SIGTERM: the job retires them through "
            "the scheduler (kit.py retire), their data moving to the remaining workers")
