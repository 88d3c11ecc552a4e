"""The GPU a worker task sees on its host, and which worker command it runs.

A GPU chunk (ngpus=G) runs one worker process per GPU, each a pbsdsh task of its own
(see plan.py's `gpu-worker` lines), and each must see only its own device. On its host,
a task asks `kit.py gpu` which one: entry HOST_GPU (0-based) of the job's devices there,

  1. CUDA_VISIBLE_DEVICES as PBS gave the task (the cgroup hook's execjob_launch sets it
     per host to the job's GPUs there: UUIDs since OpenPBS 20.0, device numbers in 19.1;
     src/hooks/cgroups/pbs_cgroups.PY setup_job_devices_env), when set and not empty;
     read from the task's own start (/proc/PID/environ, --initial-from) when given, since
     the job's env.sh may carry the first node's value to a host where PBS set none;
  2. else `nvidia-smi -L` (one `GPU i: NAME (UUID: GPU-...)` line per device, MIG
     devices indented under their GPU: a GPU split in MIG instances gives their UUIDs);
  3. else none: the task fails at once, naming the host and what it saw.

The worker command: WORKER_COMMAND=auto runs `dask cuda worker` when dask_cuda can be
imported by this Python (importlib.util.find_spec: found, not imported, so this stays
fast), else `dask worker`; dask-worker and dask-cuda-worker force one (the latter fails
here when dask_cuda is missing).
"""
from __future__ import annotations

import os

from .args import is_digits
from .errors import BAD_VALUE, USAGE, KitError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only
    from typing import List, Mapping, Optional, Tuple

NO_GPU = 20  # the host shows no GPU, or fewer than the job's chunks there asked for (12-16 are taken)
WORKER_COMMANDS = ("auto", "dask-worker", "dask-cuda-worker")
RUNS = {"dask-worker": "dask worker", "dask-cuda-worker": "dask cuda worker"}
NVIDIA_SMI_TIMEOUT = 30.0  # seconds: nvidia-smi may take a few to wake a driver up
QUOTED = 200  # characters of nvidia-smi's output quoted in a message

USAGE_TEXT = """usage: kit.py gpu --index I --gpus G [--chunk-gpus C] [--node NODE] [--initial-from PID]
                  [--worker-command auto|dask-worker|dask-cuda-worker]
       kit.py gpu --dask-cuda

On the host of a GPU worker task: print one line, DEVICE<TAB>COMMAND<TAB>HOW:
  DEVICE   what the worker's CUDA_VISIBLE_DEVICES must be: entry I (0-based) of this
           host's devices, CUDA_VISIBLE_DEVICES (UUIDs or indices) if set and not empty,
           else `nvidia-smi -L` (UUIDs)
  COMMAND  dask-cuda-worker or dask-worker: what --worker-command (default auto) means
           here (auto: dask-cuda-worker when dask_cuda is importable by this Python)
  HOW      where DEVICE came from and why COMMAND, for the worker's log
G is the number of GPUs the job's chunks hold on this host (the plan's HOST_GPUS), C
those of this chunk (CHUNK_GPUS, default G), both for the messages. --initial-from PID
reads CUDA_VISIBLE_DEVICES from the environment process PID started with (the task's
own, from PBS) rather than this one's. NODE (default this host's name) starts messages.
--dask-cuda: print yes or no, whether dask_cuda is importable by this Python.
exit status: 0 done, 2 usage, 7 a bad value (I >= G; dask-cuda-worker without dask_cuda),
20 this host shows no GPU, or fewer than G."""


def dask_cuda_found() -> bool:
    """Whether `import dask_cuda` would find the package (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("dask_cuda") is not None
    except (ImportError, ValueError):
        return False


def parse_visible(value: Optional[str]) -> List[str]:
    """The devices a CUDA_VISIBLE_DEVICES value lists: entries between commas, blanks
    dropped; none for unset, empty or NoDevFiles (what some batch systems write)."""
    if value is None:
        return []
    entries = [entry.strip() for entry in value.split(",")]
    entries = [entry for entry in entries if entry]
    return [] if entries == ["NoDevFiles"] else entries


def parse_nvidia_smi(text: str) -> List[str]:
    """Device UUIDs from `nvidia-smi -L`, in order; a GPU split into MIG instances gives
    the UUIDs of its instances (what CUDA_VISIBLE_DEVICES must name), not its own."""
    devices: List[str] = []
    current: List[str] = []  # [uuid of the latest GPU, then its MIG uuids]

    def flush() -> None:
        devices.extend(current[1:] or current[:1])

    for line in text.splitlines():
        stripped = line.strip()
        start = stripped.rfind("(UUID:")
        uuid = stripped[start + 6:].strip().rstrip(")").strip() if start >= 0 else ""
        if stripped.startswith("GPU ") and uuid:
            flush()
            current = [uuid]
        elif stripped.startswith("MIG ") and uuid and current:
            current.append(uuid)
    flush()
    return devices


def initial_variable(pid: int, name: str) -> Tuple[bool, Optional[str]]:
    """(readable, value of name or None) in the environment process pid started with."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
    except (OSError, ValueError):
        return False, None
    if not data:
        return False, None  # a zombie, or not ours to read
    prefix = name.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return True, os.fsdecode(item[len(prefix):])
    return True, None


def run_nvidia_smi(environ: Mapping[str, str]) -> Tuple[List[str], str]:
    """(UUIDs, what nvidia-smi -L said, for a message)."""
    import subprocess

    try:
        done = subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=dict(environ), timeout=NVIDIA_SMI_TIMEOUT)
    except FileNotFoundError:
        return [], "nvidia-smi is not on PATH"
    except subprocess.TimeoutExpired:
        return [], f"nvidia-smi -L did not answer within {NVIDIA_SMI_TIMEOUT:g} s"
    except OSError as exc:
        return [], f"nvidia-smi -L could not run ({exc.strerror})"
    text = done.stdout.decode("utf-8", "replace")
    devices = parse_nvidia_smi(text) if done.returncode == 0 else []
    said = " ".join(text.split())
    if len(said) > QUOTED:
        said = said[:QUOTED] + "..."
    status = f" (exit status {done.returncode})" if done.returncode else ""
    return devices, f"nvidia-smi -L printed {said!r}{status}" if said else \
        f"nvidia-smi -L printed nothing{status}"


def host_devices(environ: Mapping[str, str], initial_from: Optional[int] = None,
                 smi=run_nvidia_smi) -> Tuple[List[str], str, str]:
    """(devices, their source, what was seen) on this host: CUDA_VISIBLE_DEVICES of the
    task's start (or of this environment), else nvidia-smi -L. source is
    'CUDA_VISIBLE_DEVICES', 'nvidia-smi -L' or '' (none); seen says, for the log or a
    message, what CUDA_VISIBLE_DEVICES was, and what nvidia-smi said when it gave none."""
    readable, value = (False, None)
    if initial_from is not None:
        readable, value = initial_variable(initial_from, "CUDA_VISIBLE_DEVICES")
    if not readable:
        value = environ.get("CUDA_VISIBLE_DEVICES")
    visible = parse_visible(value)
    if visible:
        return visible, "CUDA_VISIBLE_DEVICES", f"CUDA_VISIBLE_DEVICES={value}"
    cvd = "CUDA_VISIBLE_DEVICES is unset" if value is None else \
        f"CUDA_VISIBLE_DEVICES={value!r} lists no device"
    devices, said = smi(environ)
    if devices:
        return devices, "nvidia-smi -L", cvd
    return [], "", f"{cvd} and {said}"


def _gpus(count: int) -> str:
    return f"{count} GPU{'s' if count != 1 else ''}"


def choose_device(index: int, gpus: int, chunk_gpus: int, node: str,
                  devices: List[str], source: str, seen: str) -> Tuple[str, str]:
    """(device, how) for GPU worker index among gpus on this host, or a KitError."""
    asks = (f"the chunk asks for {_gpus(gpus)}" if chunk_gpus == gpus else
            f"the job's chunks on this host ask for {_gpus(gpus)} (this one {chunk_gpus})")
    if not devices:
        raise KitError(f"node {node}: {asks} but this host shows none ({seen})", NO_GPU)
    if len(devices) < gpus:
        raise KitError(f"node {node}: {asks} but this host shows {len(devices)} "
                       f"({source} lists {', '.join(devices)})", NO_GPU)
    how = f"GPU {index} of {gpus} on this host, from {source}"
    if source == "nvidia-smi -L":
        how += f" ({seen})"
        if len(devices) > gpus:
            how += (f"; it lists {len(devices)} GPUs and the job holds {gpus}: nothing fences "
                    f"them (no PBS cgroup hook), entry {index} is taken by order")
    return devices[index], how


def worker_command(choice: str, node: str) -> Tuple[str, str]:
    """(dask-cuda-worker or dask-worker, why) for WORKER_COMMAND=choice."""
    if choice not in WORKER_COMMANDS:
        raise KitError(f"WORKER_COMMAND={choice} must be auto, dask-worker or dask-cuda-worker",
                       BAD_VALUE)
    if choice == "dask-worker":
        return "dask-worker", "WORKER_COMMAND=dask-worker"
    found = dask_cuda_found()
    if choice == "dask-cuda-worker":
        if not found:
            import sys

            raise KitError(
                f"node {node}: WORKER_COMMAND=dask-cuda-worker but dask_cuda cannot be "
                f"imported by {sys.executable}: install dask-cuda in the job's environment "
                "(pip install 'dask-cuda[cu12]'), or set WORKER_COMMAND=auto", BAD_VALUE)
        return "dask-cuda-worker", "WORKER_COMMAND=dask-cuda-worker"
    if found:
        return "dask-cuda-worker", "dask-cuda is installed, WORKER_COMMAND=auto"
    return "dask-worker", "no dask-cuda in the job's environment, WORKER_COMMAND=auto"


def _whole(opts: dict, name: str, default: Optional[str] = None) -> int:
    text = opts.get(name, default)
    if text is None:
        raise KitError(f"missing {name}\n{USAGE_TEXT}", USAGE)
    if not is_digits(text):
        raise KitError(f"{name} must be a whole number, not {text!r}", BAD_VALUE)
    return int(text)


def cli(argv: list, environ: Optional[Mapping[str, str]] = None) -> None:
    """kit.py gpu: print DEVICE<TAB>COMMAND<TAB>HOW, or yes/no for --dask-cuda."""
    from . import args

    environ = os.environ if environ is None else environ
    opts, operands = args.parse(argv, {
        "--index": "value", "--gpus": "value", "--chunk-gpus": "value", "--node": "value",
        "--initial-from": "value", "--worker-command": "value", "--dask-cuda": "flag",
    }, USAGE_TEXT)
    if operands:
        raise KitError(f"unexpected {operands[0]!r}\n{USAGE_TEXT}", USAGE)
    if opts.get("--dask-cuda"):
        if len(opts) > 1:
            raise KitError(f"--dask-cuda takes no other option\n{USAGE_TEXT}", USAGE)
        print("yes" if dask_cuda_found() else "no")
        return
    index, gpus = _whole(opts, "--index"), _whole(opts, "--gpus")
    chunk_gpus = _whole(opts, "--chunk-gpus", str(gpus))
    node = opts.get("--node") or os.uname().nodename
    if gpus < 1 or index >= gpus or chunk_gpus > gpus:
        raise KitError(f"--index {index} --gpus {gpus} --chunk-gpus {chunk_gpus}: the index "
                       "must be below the GPUs on this host (at least 1), and the chunk's GPUs "
                       "no more than those", BAD_VALUE)
    pid = None
    if "--initial-from" in opts:
        pid = _whole(opts, "--initial-from")
    command, why = worker_command(opts.get("--worker-command", "auto"), node)
    devices, source, seen = host_devices(environ, pid)
    device, how = choose_device(index, gpus, chunk_gpus, node, devices, source, seen)
    print(f"{device}\t{command}\t{how}; {RUNS[command]} ({why})")
