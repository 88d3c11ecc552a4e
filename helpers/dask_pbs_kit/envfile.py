"""The job script's environment, written so that a stripped pbsdsh task can source it.

A task must get back what the job script set or changed (PATH after `conda activate`,
DASK_* settings), but keep what PBS or a site hook gave it on its own host: TMPDIR,
PBS_NODENUM, NCPUS, and what an execjob_launch hook sets per host, such as
CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER or OFFLOAD_DEVICES (src/resmom/start_exec.c runs
that hook for tm tasks too). So the file compares the current environment with the job
script's initial one, /proc/PID/environ of the job script's shell (what PBS, the login
shell's profile and hooks gave it; the kernel keeps it as it was at exec). PID is the
helper's parent by default, as the bash library runs `kit.py env-file PATH` from the job
script itself; `kit.py env-file --initial-from PID PATH` names it.
  - a variable the job script added or changed: `export NAME=value` on every task;
  - a variable it has as it started: `[[ -v NAME ]] || export NAME=value`, only on a task
    that lacks it (a task keeps its host's own value);
  - per-task and per-node names (NOT_CARRIED) and exported functions: never.
When the initial environment cannot be read, or holds every variable as it is now (then
PID is not the job script's shell, which always exports something first, but e.g. a
wrapper that runs python as its child), every variable is exported (the file says so in
a comment).
"""
from __future__ import annotations

import os
import re
import shlex

from .errors import KitError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing costs a job start ~8 ms
    from typing import Mapping, Optional

# Per node or per task (PBS sets them in each task), or owned by the shell itself.
NOT_CARRIED = frozenset({
    "TMPDIR", "PBS_NODENUM", "PBS_TASKNUM", "PBS_NODEFILE", "PBS_VNODENUM", "NCPUS",
    "OMP_NUM_THREADS", "HOSTNAME", "HOST", "PWD", "OLDPWD", "SHLVL", "_", "SHELLOPTS",
    "BASHOPTS", "BASH_ENV", "ENV", "PS1", "PS2", "PS4", "PROMPT_COMMAND", "IFS",
    # A host's devices, as PBS's cgroup hook assigns them to the job on that host: a task on
    # a host without any must not get the first node's list (a CPU worker would think it
    # had those GPUs; a GPU worker picks its own entry of its host's list: kit.py gpu).
    "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
    "ZE_AFFINITY_MASK", "OFFLOAD_DEVICES",
})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEADER = "# Written by dask-pbs-kit: the job script's environment for pbsdsh tasks."


def carried(environ: Mapping[str, str]) -> dict:
    """The variables a task may get back: all but per-node ones and non-shell names."""
    return {
        name: value for name, value in environ.items()
        if _NAME.match(name) and name not in NOT_CARRIED and not name.startswith("BASH_FUNC_")
    }


def initial_environment(pid: int) -> Optional[dict]:
    """The environment process pid started with (/proc/PID/environ), or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
    except (OSError, ValueError):
        return None
    if not data:
        return None  # a zombie, or a kernel thread: nothing to compare with
    out = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            out[os.fsdecode(name)] = os.fsdecode(value)
    return out


def env_script(environ: Mapping[str, str], initial: Optional[Mapping[str, str]] = None,
               initial_from: str = "") -> str:
    """bash source text that exports each carried variable with its exact value: always
    when the job script set or changed it, else only where the task lacks it."""
    lines = [HEADER]
    variables = sorted(carried(environ).items())
    if initial is not None and all(initial.get(name) == value for name, value in variables):
        # The job script always exports something before it writes this file (the bash
        # library does): a process whose start had it all is not the script's shell, but
        # e.g. a wrapper that runs python as a child. Do not trust it.
        initial, initial_from = None, f"{initial_from} holds this very environment"
    if initial is None:
        lines.append("# The job script's initial environment was not readable"
                     f"{' (' + initial_from + ')' if initial_from else ''}: every variable is "
                     "exported, per-host ones (CUDA_VISIBLE_DEVICES...) included.")
    else:
        lines.append("# Set or changed by the job script: exported. As PBS, the login profile or a "
                     "hook gave it: exported only where the task lacks it.")
    for name, value in variables:
        export = f"export {name}={shlex.quote(value)}"
        if initial is not None and initial.get(name) == value:
            export = f"[[ -v {name} ]] || {export}"
        lines.append(export)
    return "\n".join(lines) + "\n"


def write_env_file(path: str, environ: Mapping[str, str], initial_pid: Optional[int] = None) -> None:
    """Write env_script() to path, readable by the owner only, replaced atomically.
    initial_pid: the job script's shell (default: this process's parent)."""
    pid = os.getppid() if initial_pid is None else initial_pid
    initial = initial_environment(pid)
    text = env_script(environ, initial, f"/proc/{pid}/environ")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise KitError(f"cannot write the task environment {path} ({exc.strerror}): set LOG_DIR "
                       "to a folder you can write on storage the compute nodes share") from None
