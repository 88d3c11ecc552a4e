"""The job script's environment, written so that a stripped pbsdsh task can source it."""
from __future__ import annotations

import os
import re
import shlex
from typing import Mapping

# Per node or per task (PBS sets them in each task), or owned by the shell itself.
NOT_CARRIED = frozenset({
    "TMPDIR", "PBS_NODENUM", "PBS_TASKNUM", "PBS_NODEFILE", "PBS_VNODENUM", "NCPUS",
    "OMP_NUM_THREADS", "HOSTNAME", "HOST", "PWD", "OLDPWD", "SHLVL", "_", "SHELLOPTS",
    "BASHOPTS", "BASH_ENV", "ENV", "PS1", "PS2", "PS4", "PROMPT_COMMAND", "IFS",
})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def carried(environ: Mapping[str, str]) -> dict:
    """The variables a task must get back: all but per-node ones and non-shell names."""
    return {
        name: value for name, value in environ.items()
        if _NAME.match(name) and name not in NOT_CARRIED and not name.startswith("BASH_FUNC_")
    }


def env_script(environ: Mapping[str, str]) -> str:
    """bash source text that exports each carried variable with its exact value."""
    lines = ["# Written by dask-pbs-kit: the job script's environment for pbsdsh tasks."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(carried(environ).items())]
    return "\n".join(lines) + "\n"


def write_env_file(path: str, environ: Mapping[str, str]) -> None:
    """Write env_script() to path, readable by the owner only, replaced atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(env_script(environ))
    os.replace(tmp, path)
