"""Where a start's CPU goes: the kit's job against the floor, by kind of process, to ready.

On a machine of few cores every process of a start competes for them, so the time to
ready follows the CPU the start uses in all. This samples every process of one run every
10 ms from /proc (its CPU seconds, its name and command line) and counts each one's last
figure under its kind:

  Dask (scheduler, nannies, forkservers, worker processes, resource trackers): the same
      processes in both runs (helpers/dask_pbs_kit/dask_start.py starts them);
  the kit: the job script, task.sh, kit.py's helpers, openssl;
  the fake PBS: pbsdsh (one per chunk, for the job's life), qsub, qstat and the MoM,
      standing in for PBS's own C programs and daemons;
  the bench: the job's PROGRAM (bench/stamp.py).

A run's processes are those whose environment names its temporary folder (the job's
tasks and script: PBS_O_WORKDIR; the fake PBS: FAKEPBS_HOME; the floor's: TMPDIR). A
process that lives less than a sample's 10 ms, or the last 10 ms of one, is missed: the
run's cgroup total (cpuacct, where the bench can make one) shows how much.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
GROUPS = {  # kind -> group, in the table's order
    "scheduler": "Dask", "nannies": "Dask", "worker processes": "Dask", "forkservers": "Dask",
    "resource trackers": "Dask", "uname (Dask's platform.processor)": "Dask",
    "job script": "kit", "task.sh": "kit", "kit.py helpers": "kit", "openssl": "kit",
    "pbsdsh": "fake PBS", "qsub, MoM": "fake PBS", "qstat": "fake PBS",
    "PROGRAM (stamp.py)": "bench", "other": "other",
}


def kind(comm: str, cmd: str, parent_kind: str | None) -> str:
    """The kind of a process, from its name, its command line and its parent's kind."""
    if "import fakepbs" in cmd or "import tm" in cmd or "/tests/fakepbs/bin/" in cmd:
        words = cmd.split()
        if "pbsdsh" in words:
            return "pbsdsh"
        return "qstat" if "qstat" in words else "qsub, MoM"
    if comm == "dask-forkserver":
        return "forkservers"
    if "resource_tracker" in cmd:
        return "resource trackers"
    if "dask_start" in cmd:
        if parent_kind == "forkservers":
            return "worker processes"
        return "scheduler" if "role=scheduler" in cmd else "nannies"
    if "task.sh" in cmd:
        return "task.sh"
    if "kit.py" in cmd:
        return "kit.py helpers"
    if comm == "openssl":
        return "openssl"
    if comm == "uname":
        return "uname (Dask's platform.processor)"
    if "stamp.py" in cmd:
        return "PROGRAM (stamp.py)"
    if comm == "bash" or cmd.startswith("-bash"):
        return "job script"
    return "other"


class Sampler:
    """Samples a run's processes in a thread from start(folder) to stop() (or until the
    file `until` exists); totals() then gives CPU seconds by kind."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.last: dict = {}  # pid -> {kind: CPU seconds at its last sample as that kind}
        self.kinds: dict = {}  # pid -> its kind now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, folder: Path, until: Path | None = None) -> None:
        mark = str(folder).encode()
        self._thread = threading.Thread(target=self._run, args=(mark, until), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, mark: bytes, until: Path | None) -> None:
        while not self._stop.is_set() and not (until is not None and until.exists()):
            self._sample(mark)
            time.sleep(self.interval)
        self._sample(mark)

    def _sample(self, mark: bytes) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                if pid not in self.kinds:
                    with open(f"/proc/{entry}/environ", "rb") as fh:
                        if mark not in fh.read():
                            continue
                with open(f"/proc/{entry}/stat") as fh:
                    head, _, rest = fh.read().rpartition(")")
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = rest.split()
            comm = head.partition("(")[2]
            what = kind(comm, cmd, self.kinds.get(int(fields[1])))
            # An exec (task.sh's bash becoming the Dask process) starts a new kind; the
            # CPU seen so far stays with the earlier one.
            seen = self.last.setdefault(pid, {})
            before = sum(cpu for k, cpu in seen.items() if k != what)
            self.kinds[pid] = what
            seen[what] = (int(fields[11]) + int(fields[12])) / TICK - before

    def totals(self) -> dict:
        out: dict = defaultdict(float)
        for seen in self.last.values():
            for what, cpu in seen.items():
                out[what] += cpu
        return out


def table(nodes: int, nworkers: int, kit: dict, floor: dict, kit_cgroup, floor_cgroup,
          kit_ready: float, floor_ready: float) -> None:
    print(f"{nodes} chunks x {nworkers} processes: ready in {kit_ready:.2f} s (kit), {floor_ready:.2f} s (floor)")
    print(f"  {'kind':<36} {'group':<9} {'kit':>7} {'floor':>7}")
    for what, group in GROUPS.items():
        if kit.get(what, 0) or floor.get(what, 0):
            print(f"  {what:<36} {group:<9} {kit.get(what, 0):>7.2f} {floor.get(what, 0):>7.2f}")
    for group in dict.fromkeys(GROUPS.values()):
        k = sum(v for w, v in kit.items() if GROUPS[w] == group)
        f = sum(v for w, v in floor.items() if GROUPS[w] == group)
        if k or f:
            print(f"  {'all of ' + group:<36} {'':<9} {k:>7.2f} {f:>7.2f}")
    print(f"  {'sampled, in all':<36} {'':<9} {sum(kit.values()):>7.2f} {sum(floor.values()):>7.2f}")

    def cell(v):
        return f"{v:>7.2f}" if v is not None else f"{'-':>7}"
    print(f"  {'the run cgroup total (cpuacct)':<36} {'':<9} {cell(kit_cgroup)} {cell(floor_cgroup)}", flush=True)
