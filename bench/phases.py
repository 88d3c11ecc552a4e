"""Where a kit job's start goes: its phases, read from the job's own files afterwards.

For each worker chunk of a finished job (the bench's production jobs, one fake node per
chunk), the moments its start passes through, all on one clock (the machine's):

  job start     the fake MoM starts the job script (job.json's stime)
  pbsdsh        the job script runs the chunk's pbsdsh: the mtime of LOG_DIR/worker-N.log.pbsdsh,
                which the redirection creates as pbsdsh starts and nothing writes until
                it ends (the bench's PROGRAM reads it while the cluster runs: stamp.py)
  task.sh       task.sh starts, and Dask's command starts (after the kit's checks on the
                node): the task's first log line says when ("at ... (0.031 s after task.sh
                began)")
  nanny         the last "Start Nanny at" of the chunk's log (its nanny process has imported
                distributed and listens)
  worker        the last "Start worker at" (every worker process of the chunk is up)
  registered    the last "Registered to:" (every worker process is on the scheduler)

and the scheduler's "Scheduler at:" (it listens, and writes its file). Dask's log lines
carry milliseconds; task.sh's too; file times the kernel's clock tick (a few ms). The
phases are the differences of successive moments; "fan-out" is the time from the job's
first pbsdsh to its last (the job script starting one per chunk on the first node).
"""
from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

PHASES = [  # (column, from, to)
    ("to pbsdsh", "job", "pbsdsh"),
    ("pbsdsh", "pbsdsh", "task"),
    ("task.sh", "task", "exec"),
    ("nanny", "exec", "nanny"),
    ("worker proc", "nanny", "worker"),
    ("register", "worker", "registered"),
]
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.](\d{3})")
TASK_LINE = re.compile(r" at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) \(([0-9.]+) s after task\.sh began\)$")


def local_time(text: str, millis: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def last_stamp(lines: list, marker: str) -> float | None:
    found = None
    for line in lines:
        if marker in line:
            match = STAMP.match(line)
            if match:
                found = local_time(*match.groups())
    return found


def task_times(first_line: str) -> tuple:
    """(task.sh start, its exec of Dask) from task.sh's line, or (None, None)."""
    match = TASK_LINE.search(first_line.rstrip("\n"))
    if not match:
        return None, None
    at = local_time(match.group(1), match.group(2))
    return at - float(match.group(3)), at


def chunk_moments(log: Path, spawned: float | None, job_start: float) -> dict:
    lines = log.read_text(errors="replace").splitlines()
    task, exec_ = next((times for times in map(task_times, lines[:20]) if times[0] is not None), (None, None))
    return {"job": job_start, "pbsdsh": spawned, "task": task, "exec": exec_,
            "nanny": last_stamp(lines, "Start Nanny at"),
            "worker": last_stamp(lines, "Start worker at"),
            "registered": last_stamp(lines, "Registered to:")}


def job_phases(log_dir: Path, fake_job: Path, noted: dict) -> dict:
    """{"chunks": [{phase: seconds, "cpu": CPU s of the chunk's processes}], "scheduler":
    s from the job's start to its listening, "registered": s to the last worker registered,
    "scheduler cpu", "job cpu": CPU s at ready (None: not measured)}. noted: what
    bench/stamp.py noted while the cluster ran."""
    job_start = json.loads((fake_job / "job.json").read_text())["stime"]
    spawn_times, cpu = noted.get("spawned", {}), noted.get("cpu", {})
    chunks = []
    last = None
    for log in sorted(log_dir.glob("worker-*.log"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)):
        moments = chunk_moments(log, spawn_times.get(f"{log.name}.pbsdsh"), job_start)
        phases = {}
        for column, begin, end in PHASES:
            if moments[begin] is not None and moments[end] is not None:
                phases[column] = moments[end] - moments[begin]
        if log.stem in cpu:
            phases["chunk cpu"] = cpu[log.stem]
        chunks.append(phases)
        if moments["registered"] is not None:
            last = max(last or 0.0, moments["registered"])
    sched = log_dir.glob("scheduler-*.log")
    listening = None
    for log in sched:
        listening = last_stamp(log.read_text(errors="replace").splitlines(), "Scheduler at:")
    scheduler_cpu = [v for k, v in cpu.items() if k.startswith("scheduler")]
    spawned = list(spawn_times.values())
    return {"chunks": chunks,
            "fan-out": max(spawned) - min(spawned) if spawned else None,
            "scheduler": None if listening is None else listening - job_start,
            "registered": None if last is None else last - job_start,
            "scheduler cpu": scheduler_cpu[0] if scheduler_cpu else None,
            "job cpu": noted.get("job_cpu")}


def breakdown_row(results: list) -> dict:
    """Medians over every chunk of every run (results: job_phases() of each run), and of
    each run's scheduler and last registration."""
    row = {}
    for column in [p[0] for p in PHASES] + ["chunk cpu"]:
        values = [c[column] for r in results for c in r["chunks"] if column in c]
        row[column] = statistics.median(values) if values else None
    for key in ("fan-out", "scheduler", "registered", "scheduler cpu", "job cpu"):
        values = [r[key] for r in results if r[key] is not None]
        row[key] = statistics.median(values) if values else None
    return row
