"""A worker's memory limit on its own host: the job's memory cgroup (v1, v2) and the RAM."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dask_pbs_kit import host_memory as hm
from dask_pbs_kit import kit_cli
from dask_pbs_kit.errors import BAD_VALUE, KitError

GiB = 1024**3
KIT = Path(__file__).resolve().parents[2]


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str, meminfo_kb: int = 64 * 1024**2) -> str:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo.replace("ROOT", str(tmp_path)))
    (proc / "meminfo").write_text(f"MemTotal:       {meminfo_kb} kB\nMemFree: 1 kB\n")
    return str(proc)


def limit_file(tmp_path: Path, rel: str, name: str, value: str) -> None:
    folder = tmp_path / rel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(value + "\n")


def test_v1_the_smallest_limit_on_the_way_up_to_the_mount(tmp_path):
    # PBS's hook limits the job's cgroup; the task sits in a folder below it with no limit.
    proc = fake_proc(tmp_path, "4:memory:/pbs_jobs/7.srv/tasks\n3:cpuset:/\n",
                     "35 31 0:32 / ROOT/cg/memory rw - cgroup cgroup rw,memory\n")
    limit_file(tmp_path, "cg/memory", "memory.limit_in_bytes", "9223372036854771712")
    limit_file(tmp_path, "cg/memory/pbs_jobs/7.srv", "memory.limit_in_bytes", str(8 * GiB))
    limit_file(tmp_path, "cg/memory/pbs_jobs/7.srv/tasks", "memory.limit_in_bytes", "9223372036854771712")
    assert hm.cgroup_limit(proc) == 8 * GiB
    assert hm.ram(proc) == 64 * GiB


def test_v2_memory_max_and_max_meaning_none(tmp_path):
    proc = fake_proc(tmp_path, "0::/pbs_jobs.service/jobid/7.srv\n",
                     "41 31 0:38 / ROOT/cg rw - cgroup2 cgroup2 rw\n")
    limit_file(tmp_path, "cg/pbs_jobs.service", "memory.max", "max")
    limit_file(tmp_path, "cg/pbs_jobs.service/jobid/7.srv", "memory.max", str(3 * GiB))
    assert hm.cgroup_limit(proc) == 3 * GiB
    (tmp_path / "cg/pbs_jobs.service/jobid/7.srv/memory.max").write_text("max\n")
    assert hm.cgroup_limit(proc) is None


def test_a_container_mounts_its_own_subtree(tmp_path):
    proc = fake_proc(tmp_path, "4:memory:/docker/abc/pbs_jobs/7\n",
                     "35 31 0:32 /docker/abc ROOT/cg/memory rw - cgroup cgroup rw,memory\n")
    limit_file(tmp_path, "cg/memory/pbs_jobs/7", "memory.limit_in_bytes", str(2 * GiB))
    assert hm.cgroup_limit(proc) == 2 * GiB


def test_no_cgroup_files_means_no_limit(tmp_path):
    proc = fake_proc(tmp_path, "", "")
    assert hm.cgroup_limit(proc) is None


def test_the_planned_share_stands_when_the_host_grants_enough():
    assert hm.worker_limit(4 * GiB, 2, 100_000, 0, 16 * GiB, 64 * GiB) == (
        4 * GiB, "the chunk's share of its mem=")


def test_the_host_caps_the_share_divided_among_its_processes_after_the_reserve():
    limit, why = hm.worker_limit(4 * GiB, 4, 100_000, 0, 8 * GiB, 64 * GiB)
    assert limit == int(8 * GiB * 0.9) // 4
    assert "memory cgroup allows 8gb for 4 Dask processes" in why


def test_no_mem_known_takes_the_hosts_share_with_an_absolute_reserve():
    limit, why = hm.worker_limit(None, 3, 0, 2 * GiB, None, 32 * GiB)
    assert limit == 30 * GiB // 3
    assert why.startswith("no mem= known") and "its RAM is 32gb" in why


def test_too_little_memory_on_the_host_is_refused_with_the_numbers():
    with pytest.raises(KitError) as err:
        hm.worker_limit(None, 4, 100_000, 0, 256 * 1024**2, 64 * GiB)
    assert err.value.code == BAD_VALUE
    assert "below the 256mb a worker needs" in str(err.value)


@pytest.mark.parametrize("argv", [["--memory", "1gb", "--host-procs", "1"],
                                  ["--memory", "auto", "--host-procs", "x"]])
def test_bad_values_are_refused(argv, capsys):
    assert kit_cli.main(["host-memory", *argv]) == BAD_VALUE
    assert "dask-pbs: " in capsys.readouterr().err


def test_the_command_on_this_machine(capsys):
    assert kit_cli.main(["host-memory", "--memory", "auto", "--host-procs", "2",
                         "--reserve-ppm", "100000"]) == 0
    limit, why = capsys.readouterr().out.rstrip("\n").split("\t")
    host = min(v for v in (hm.cgroup_limit(), hm.ram()) if v)
    assert int(limit) == (host - host // 10) // 2


def writable_memory_cgroup():
    """This process's v1 memory cgroup folder, if it can make a child (root, rw mount)."""
    for version, folder, _ in hm._cgroup_dirs("/proc"):
        if version == 1 and os.access(folder, os.W_OK):
            return folder
    return None


@pytest.mark.skipif(writable_memory_cgroup() is None, reason="needs a writable v1 memory cgroup (root)")
def test_a_process_in_a_limited_cgroup_gets_its_share(tmp_path):
    folder = Path(writable_memory_cgroup()) / f"dpk-test-{os.getpid()}"
    folder.mkdir()
    try:
        (folder / "memory.limit_in_bytes").write_text(str(2 * GiB))
        done = subprocess.run(
            ["/bin/sh", "-c", f'echo $$ > {folder}/cgroup.procs && exec "$0" "$@"', sys.executable,
             str(KIT / "helpers" / "kit.py"), "host-memory", "--memory", str(4 * GiB),
             "--host-procs", "2"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\t")[0] == str(GiB)
    finally:
        folder.rmdir()
