"""The fake PBS's FAKEPBS_* settings: what sites run, as a job script sees it."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAKEPBS_BIN, job_processes, kill_job_processes
import cgroups  # of tests/fakepbs, which conftest puts on sys.path
import netns
from test_fakepbs import blocking_job_started, needs_netns, output, qsub, runs, script, wait_finished

FAKEPBS = str(FAKEPBS_BIN.parent / "fakepbs.py")


@pytest.fixture
def pbs(fakepbs, monkeypatch):
    """fakepbs, fast, and nothing left: processes, cgroups, namespaces, hosts files."""
    monkeypatch.setenv("FAKEPBS_KILL_DELAY", "2")
    monkeypatch.setenv("FAKEPBS_POLL", "0.05")
    yield fakepbs
    kill_job_processes(fakepbs)
    cgroups.clean_all(str(fakepbs))
    netns.clean_all(str(fakepbs))


def run_job(tmp_path, body: str, *args: str, name: str = "job.pbs") -> str:
    qsub(*args, script(tmp_path / name, body), check_rc=0)
    return output(tmp_path, name)


def qstat_json_in_job(tmp_path, *args: str) -> str:
    run_job(tmp_path, 'qstat -f -F json "$PBS_JOBID" > "$PBS_O_WORKDIR/json"', *args)
    return (tmp_path / "json").read_text()


# ---------------------------------------------------------------- FAKEPBS_QSTAT_JSON

def test_valid_json_prints_numbers_as_numbers(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_MANAGER", "1")  # schedselect is shown to managers only
    text = qstat_json_in_job(tmp_path, "-l", "select=3", "-v", "A=00000,B=007,C=x\\u")
    job = json.loads(text)["Jobs"]["1.fakepbs"]
    assert job["Resource_List"]["select"] == 3
    assert job["Resource_List"]["ncpus"] == 3 and job["Resource_List"]["place"] == "free"
    assert job["schedselect"] == "3:ncpus=1"
    assert job["exec_vnode"] == "(node00:ncpus=1)+(node01:ncpus=1)+(node02:ncpus=1)"
    assert job["exec_host"] == "node00/0+node01/0+node02/0"
    # cJSON reads 00000 and 007 as numbers; the server doubled the backslash
    assert job["Variable_List"]["A"] == 0 and job["Variable_List"]["B"] == 7
    assert job["Variable_List"]["C"] == "x\\\\u"
    assert job["Job_Name"] == "job.pbs"


def test_released_json_is_invalid_as_the_releases_print_it(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_QSTAT_JSON", "released")
    monkeypatch.setenv("PS1", r"\u@\h:\w\$ ")
    text = qstat_json_in_job(tmp_path, "-l", "select=3", "-v",
                             "Z=00000,N=nan,H=.5,O=1.,S=005,PS1,E=,X=1")
    with pytest.raises(ValueError):
        json.loads(text)
    assert '"select":3,' in text
    assert '"Z":00000,' in text and '"N":nan,' in text and '"H":.5,' in text and '"O":1.,' in text
    assert '"S":"005",' in text  # leading 0 and >= 1: a string
    assert '"PS1":"\\\\u@\\\\h:\\\\w\\\\$ "' in text  # Variable_List: backslashes doubled
    # E= swallowed the next comma and entry (23.06's Variable_List split)
    assert '"E":",X=1"' in text
    # Submit_arguments is not escaped by the server: \u stays an invalid JSON escape
    assert re.search(r'"Submit_arguments":"[^\n]*PS1', text)


def test_released_bash_function_values(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_QSTAT_JSON", "released")
    monkeypatch.setenv("BASH_FUNC_ml%%", '() {  eval "$($LMOD_DIR/ml_cmd "$@")"\n}')
    text = qstat_json_in_job(tmp_path, "-V")
    line = next(l for l in text.splitlines() if "BASH_FUNC_ml%%" in l)
    assert line.strip() == '"BASH_FUNC_ml%%":"() {  eval \\"$($LMOD_DIR/ml_cmd \\"$@\\")\\"\\n}",'


def test_no_json_before_pbs_pro_18(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_QSTAT_JSON", "none")
    body = 'qstat -f -F json "$PBS_JOBID"; echo "rc=$?"; qstat -f "$PBS_JOBID" | head -1'
    qsub("-j", "oe", script(tmp_path / "job.pbs", body), check_rc=0)
    out = output(tmp_path)
    assert out.startswith("qstat: invalid option -- 'F'\nusage: \nqstat [-f] [-J] [-p] [-t] [-x] [ job")
    assert "qstat --version\nrc=2\nJob Id: 1.fakepbs\n" in out


def test_qstat_full_text_folds_long_values_like_prt_attr(pbs, tmp_path):
    long = ",".join(f"V{i}=" + "x" * 20 for i in range(12))
    run_job(tmp_path, 'qstat -f "$PBS_JOBID" > "$PBS_O_WORKDIR/full"; qstat -f -w "$PBS_JOBID" > "$PBS_O_WORKDIR/wide"',
            "-v", long, "-l", "select=2:ncpus=2:mem=1gb", "-l", "place=scatter")
    full = (tmp_path / "full").read_text()
    assert "    Resource_List.select = 2:ncpus=2:mem=1gb\n" in full
    assert "    exec_vnode = (node00:ncpus=2:mem=1048576kb)+(node01:ncpus=2:mem=1048576kb)\n" in full
    assert "    exec_host = node00/0*2+node01/0*2\n" in full
    assert "    Resource_List.place = scatter\n" in full
    variables = full[full.index("    Variable_List = "):].split("\n    ")[0]
    lines = variables.split("\n")
    assert len(lines) > 3 and all(l.startswith("\t") for l in lines[1:])
    assert all(len(l.expandtabs(8)) <= 81 for l in lines)
    assert "".join(l.lstrip("\t") for l in lines).endswith(long.split(",")[-1])
    wide = (tmp_path / "wide").read_text()
    assert "\t" not in wide and f",{long.split(',')[0]}," in wide


@pytest.mark.parametrize("command, usage", [
    (["qstat", "-h"], "qstat: invalid option -- 'h'\nusage: \nqstat [-f]"),
    (["qdel", "-h"], "qdel: invalid option -- 'h'\nusage:\n\tqdel [-W force|suppress_email=X] [-x] job_identifier...\n"),
    (["qdel"], "usage:\n\tqdel [-W force"),
    (["qstat", "-F", "json"], "qstat: conflicting options.\nusage: "),
])
def test_usage_on_a_bad_option(pbs, command, usage):
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith(usage)


def test_bin_headers_are_usage_lines():
    for path in FAKEPBS_BIN.iterdir():
        assert path.read_text().splitlines()[1].startswith(f"# Usage: {path.name} ")


# ---------------------------------------------------------------- FAKEPBS_DEFAULT_CHUNK

def test_default_chunk_fills_schedselect_not_select(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_DEFAULT_CHUNK", "mem=2gb:ncpus=1")
    monkeypatch.setenv("FAKEPBS_MANAGER", "1")
    text = qstat_json_in_job(tmp_path, "-l", "select=2:ncpus=3+1:mem=1gb")
    job = json.loads(text)["Jobs"]["1.fakepbs"]
    assert job["Resource_List"]["select"] == "2:ncpus=3+1:mem=1gb"
    assert job["schedselect"] == "2:ncpus=3:mem=2gb+1:mem=1gb:ncpus=1"
    assert job["exec_vnode"] == ("(node00:ncpus=3:mem=2097152kb)+(node01:ncpus=3:mem=2097152kb)"
                                 "+(node02:mem=1048576kb:ncpus=1)")
    assert job["Resource_List"]["mem"] == "5gb" and job["Resource_List"]["ncpus"] == 7


def test_schedselect_is_hidden_from_a_user_who_is_not_a_manager(pbs, tmp_path):
    job = json.loads(qstat_json_in_job(tmp_path, "-l", "select=2:ncpus=1"))["Jobs"]["1.fakepbs"]
    assert "schedselect" not in job and job["exec_vnode"] == "(node00:ncpus=1)+(node01:ncpus=1)"


# ---------------------------------------------------------------- FAKEPBS_LAUNCH_HOOK

GPU_BODY = """echo "script $CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER"
pbsdsh -- /bin/sh -c 'echo "task $PBS_NODENUM $CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER"; PBS_NODENUM=0 FAKEPBS_HOST_INDEX=0 nvidia-smi -L'
"""


def test_launch_hook_sets_each_hosts_gpus_in_the_script_and_tasks(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_LAUNCH_HOOK", "1")
    out = run_job(tmp_path, GPU_BODY, "-l", "select=2:ncpus=1:ngpus=2")
    lines = out.splitlines()
    tasks = {l.split()[1]: l.split()[2] for l in lines if l.startswith("task ")}
    assert set(tasks) == {"0", "1"} and tasks["0"] != tasks["1"]
    for host, ids in tasks.items():
        uuids = ids.split(",")
        assert len(uuids) == 2 and all(re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", u) for u in uuids)
        for number, uuid in enumerate(uuids):  # nvidia-smi knows its host, whatever the env says
            assert f"GPU {number}: Fake GPU (UUID: {uuid})" in lines
    assert f"script {tasks['0']} PCI_BUS_ID" in lines
    assert all(l.endswith("PCI_BUS_ID") for l in lines if l.startswith("task "))


def test_launch_hook_index_ids_and_no_gpus(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_LAUNCH_HOOK", "1")
    monkeypatch.setenv("FAKEPBS_GPU_IDS", "index")
    out = run_job(tmp_path, 'echo "[$CUDA_VISIBLE_DEVICES] [${CUDA_DEVICE_ORDER-unset}]"', "-l", "select=1:ngpus=2")
    assert out == "[0,1] [unset]\n"
    out = run_job(tmp_path, 'echo "[${CUDA_VISIBLE_DEVICES-unset}]"', "-l", "select=1:ncpus=1", name="b.pbs")
    assert out == "[unset]\n"


# ---------------------------------------------------------------- FAKEPBS_START=login

def test_login_start_runs_a_login_shell_that_honours_the_shebang(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_START", "login")
    profile = tmp_path / "profile"
    profile.write_text('echo "site profile"\nPATH=/usr/bin:/bin\n')
    monkeypatch.setenv("FAKEPBS_PROFILE", str(profile))
    (tmp_path / "job.py").write_text("#!/usr/bin/python3\nimport os, shutil\n"
                                     "print(os.getppid() != 0, bool(shutil.which('qstat')))\nraise SystemExit(3)\n")
    done = qsub(str(tmp_path / "job.py"))
    assert done.returncode == 3
    assert output(tmp_path, "job.py") == "site profile\nTrue True\n"
    job = json.loads((pbs / "jobs" / "1" / "job.json").read_text())
    assert job["exit_status"] == 3


def test_login_start_qdel_kills_the_shell_while_the_trap_runs_on(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_START", "login")
    body = """trap 'sleep 1; echo trapped > "$PBS_O_WORKDIR/trap"; exit 0' TERM
echo started > "$PBS_O_WORKDIR/started"
while true; do sleep 0.05; done
"""
    proc, jobid = blocking_job_started(tmp_path, body)
    started = time.monotonic()
    subprocess.run(["qdel", jobid], check=True)
    assert proc.wait(timeout=30) == 15  # 271 % 256
    assert 1 <= time.monotonic() - started < 2  # ended once the trap was done, before kill_delay
    assert (tmp_path / "trap").read_text() == "trapped\n"
    job = json.loads((pbs / "jobs" / "1" / "job.json").read_text())
    assert job["exit_status"] == 271
    assert job_processes(pbs) == []


def test_login_start_orphan_is_killed_at_kill_delay(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_START", "login")
    body = """trap 'sleep 30; echo never > "$PBS_O_WORKDIR/trap"' TERM
touch "$PBS_O_WORKDIR/started"; while true; do sleep 0.05; done
"""
    jobid = qsub(script(tmp_path / "job.pbs", body), block=False, check_rc=0).stdout.strip()
    while not (tmp_path / "started").exists():
        time.sleep(0.05)
    started = time.monotonic()
    subprocess.run(["qdel", jobid], check=True)
    wait_finished(pbs, jobid)
    assert 2 <= time.monotonic() - started < 6
    assert not (tmp_path / "trap").exists() and job_processes(pbs) == []


# ---------------------------------------------------------------- FAKEPBS_SPAWN_FAIL, pbsdsh

def test_spawn_failure_prints_tm_error_and_pbsdsh_exits_0(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_SPAWN_FAIL", "1,2")
    body = 'pbsdsh -- /bin/sh -c \'echo "ran on $PBS_NODENUM"\'; echo "rc=$?"'
    qsub("-l", "select=3:ncpus=1", script(tmp_path / "job.pbs", body), check_rc=0)
    assert output(tmp_path) == "ran on 0\nrc=0\n"
    assert output(tmp_path, kind="e") == "error 17000 on spawn\nerror 17000 on spawn\n"


def test_pbsdsh_on_sigterm_kills_its_tasks_and_exits_1_at_once(pbs, tmp_path):
    body = """pbsdsh -- /bin/sh -c 'trap "sleep 1; echo task-trap" TERM; sleep 30 & wait' &
pid=$!
sleep 1
kill -TERM $pid
wait $pid; echo "rc=$?"
sleep 2
"""
    out = run_job(tmp_path, body, "-l", "select=2:ncpus=1")
    lines = out.splitlines()
    killing = [l for l in lines if l.startswith("pbsdsh: killing task 0x")]
    assert len(killing) == 2 and all(l.endswith(" signal 15") for l in killing)
    assert {l.split()[3] for l in killing} == {"0x00000002", "0x40000001"}  # MoM task ids
    assert lines.index("rc=1") < lines.index("task-trap")  # pbsdsh did not wait for them


# ---------------------------------------------------------------- FAKEPBS_NODEFILE, FQDN, place

def test_nas_node_file_has_ncpus_lines_per_chunk(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_NODEFILE", "nas")
    body = 'cat "$PBS_NODEFILE"; echo "$NCPUS $OMP_NUM_THREADS"; pbsdsh -n 3 -- /bin/sh -c \'echo "t $NCPUS $OMP_NUM_THREADS"\''
    out = run_job(tmp_path, body, "-l", "select=2:ncpus=3+1:ncpus=2:mpiprocs=1")
    assert out.split("\n")[:7] == ["node00"] * 3 + ["node01"] * 3 + ["node02"]
    assert "3 1\nt 3 1\n" in out


def test_fqdn_and_place_pack(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_FQDN", "example.org")
    body = ('cat "$PBS_NODEFILE"; pbsdsh -- /bin/sh -c \'echo "n=$PBS_NODENUM $TMPDIR"\'; '
            'qstat -f -w "$PBS_JOBID" | grep exec_')
    out = run_job(tmp_path, body, "-l", "select=3:ncpus=2", "-l", "place=pack")
    assert out.split("\n")[:3] == ["node00.example.org"] * 3
    tasks = [l for l in out.splitlines() if l.startswith("n=")]
    assert len(tasks) == 3 and len(set(tasks)) == 1 and tasks[0].startswith("n=0 ")
    assert "exec_host = node00.example.org/0*2+node00.example.org/1*2+node00.example.org/2*2" in out
    assert "exec_vnode = (node00.example.org:ncpus=2)+(node00.example.org:ncpus=2)+(node00.example.org:ncpus=2)" in out


def test_processes_subcommand_lists_a_running_jobs_processes(pbs, tmp_path):
    jobid = qsub(script(tmp_path / "job.pbs", "touch $PBS_O_WORKDIR/s; sleep 30"), block=False).stdout.strip()
    while not (tmp_path / "s").exists():
        time.sleep(0.05)
    done = subprocess.run([sys.executable, FAKEPBS, "_processes"], capture_output=True, text=True)
    assert sorted(int(p) for p in done.stdout.split()) == sorted(job_processes(pbs)) != []
    subprocess.run(["qdel", jobid], check=True)
    wait_finished(pbs, jobid)


# ---------------------------------------------------------------- FAKEPBS_CGROUP

needs_cgroup = pytest.mark.skipif(not runs(cgroups.check, cgroups.CgroupError),
                                  reason="needs root and a writable memory cgroup")

CGROUP_BODY = r"""pbsdsh -- /bin/sh -c '
path=$(sed -n "s/^[0-9]*:[a-z,]*memory[a-z,]*://p" /proc/self/cgroup)
echo "cg $PBS_NODENUM $path $(cat /sys/fs/cgroup/memory$path/memory.limit_in_bytes)"'
pbsdsh -n 1 -- /usr/bin/python3 -c 'b = bytearray(600 * 1024 * 1024); print("survived")'
ls /sys/fs/cgroup/memory >/dev/null && echo done
"""


@needs_cgroup
@pytest.mark.parametrize("netns_mode", [False, pytest.param(True, marks=needs_netns)])
def test_cgroup_limits_each_hosts_memory(pbs, tmp_path, monkeypatch, netns_mode):
    monkeypatch.setenv("FAKEPBS_CGROUP", "1")
    if netns_mode:
        monkeypatch.setenv("FAKEPBS_NETNS", "1")
    out = run_job(tmp_path, CGROUP_BODY, "-l", "select=1:ncpus=1:mem=300mb+1:ncpus=1")
    rows = sorted(l.split() for l in out.splitlines() if l.startswith("cg "))
    assert [r[1] for r in rows] == ["0", "1"]
    assert rows[0][2].endswith("/fakepbs-" + cgroups.tag_of(str(pbs)) + "-1/node00")
    assert rows[0][3] == str(300 * 1024**2) and rows[1][3] == str(256 * 1024**2)
    assert "pbsdsh: task 0x00000000 exit status 265" in out and "survived" not in out
    assert out.endswith("done\n")
    assert cgroups.clean_all(str(pbs)) == []  # removed at job end


def test_cgroup_refused_without_a_writable_cgroup(pbs, monkeypatch):
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    with pytest.raises(cgroups.CgroupError, match="needs a writable memory cgroup"):
        cgroups.check()


# ---------------------------------------------------------------- netns links and names

@needs_netns
def test_netns_links_and_name_resolution(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_NETNS", "1")
    monkeypatch.setenv("FAKEPBS_NETNS_LINKS", "ib0,eth1,eth9:dark")
    monkeypatch.setenv("FAKEPBS_NETNS_RESOLVE", "eth1")
    monkeypatch.setenv("FAKEPBS_FQDN", "example.org")
    body = r"""pbsdsh -n 0 -- /bin/sh -c 'ls /sys/class/net | tr "\n" " "; echo; hostname; getent hosts node01 node01.example.org'
pbsdsh -n 0 -- /bin/sh -c 'for l in ib0 eth1 eth9; do ip -4 -o addr show dev $l | sed "s/.*inet \([0-9.]*\).*/\1/"; done'
pbsdsh -n 1 -- /usr/bin/python3 -c 'import socket; s = socket.create_server(("0.0.0.0", 7777)); s.settimeout(5); s.accept()[0].sendall(b"hi")' &
sleep 1
pbsdsh -n 0 -- /usr/bin/python3 -c 'import socket; print(socket.create_connection(("node01", 7777), timeout=5).recv(9).decode())'
wait
"""
    out = run_job(tmp_path, body, "-l", "select=2:ncpus=1")
    lines = out.splitlines()
    subnet = json.loads((pbs / "jobs" / "1" / "job.json").read_text())["netns"]["subnet"]
    third = subnet.split(".")[2]
    assert lines[0] == "eth1 eth9 ib0 lo "
    assert lines[1] == "node00.example.org"
    assert f"10.100.{third}.2    node01.example.org node01" in lines[2] + " " + lines[3] or \
        lines[2].split() == [f"10.100.{third}.2", "node01.example.org", "node01"]
    assert lines[4:7] == [f"10.99.{third}.1", f"10.100.{third}.1", f"10.101.{third}.1"]
    assert "hi" in lines
    assert not os.path.exists(netns.hosts_dir(netns.plan(str(pbs), 1, ["node00"])["nodes"][0]))


@needs_netns
def test_netns_resolve_none(pbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_NETNS", "1")
    monkeypatch.setenv("FAKEPBS_NETNS_RESOLVE", "none")
    out = run_job(tmp_path, "getent hosts node01; echo rc=$?", "-l", "select=2:ncpus=1")
    assert out == "rc=2\n"
    assert Path("/etc/hosts").read_text().count("node01") == 0
