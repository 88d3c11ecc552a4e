"""The fake PBS Pro behaves as OpenPBS does (see the README's "The fake PBS")."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import job_processes
import netns  # of tests/fakepbs, which conftest puts on sys.path


def qsub(*args, block=True, check_rc=None):
    cmd = ["qsub"] + (["-W", "block=true"] if block else []) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check_rc is not None:
        assert done.returncode == check_rc, done.stderr
    return done


def script(path: Path, body: str, directives: str = "") -> str:
    path.write_text(f"#!/bin/bash\n{directives}{body}\n")
    return str(path)


def output(tmp_path, name="job.pbs", kind="o"):
    files = sorted(tmp_path.glob(f"{name}.{kind}*"))
    assert files, f"no {name}.{kind}* in {list(tmp_path.iterdir())}"
    return files[-1].read_text()


def blocking_job_started(tmp_path, body: str) -> tuple[subprocess.Popen, str]:
    """qsub -W block=true of a script (body) that writes $PBS_O_WORKDIR/started, run in the
    background until the script has: (qsub's process, the job id)."""
    proc = subprocess.Popen(["qsub", "-W", "block=true", script(tmp_path / "job.pbs", body)],
                            stdout=subprocess.PIPE, text=True)
    jobid = proc.stdout.readline().strip()
    deadline = time.monotonic() + 20
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, jobid


def test_job_id_name_and_output_files(fakepbs, tmp_path):
    s = script(tmp_path / "job.pbs", "echo out; echo err >&2")
    done = qsub(s, check_rc=0)
    assert done.stdout == "1.fakepbs\n"
    assert output(tmp_path) == "out\n"
    assert output(tmp_path, kind="e") == "err\n"
    assert (tmp_path / "job.pbs.o1").stat().st_mode & 0o777 == 0o600


def test_directives_until_the_first_command_and_the_command_line_wins(fakepbs, tmp_path):
    s = script(tmp_path / "job.pbs", 'echo "$PBS_JOBNAME $NCPUS $A"\n#PBS -N ignored',
               "#PBS -N fromdirective\n#PBS -l select=1:ncpus=3\n#PBS -v A=1\n")
    qsub(s, check_rc=0)
    assert output(tmp_path, "fromdirective") == "fromdirective 3 1\n"
    qsub("-N", "cli", "-v", "A=2", "-l", "select=1:ncpus=5", s, check_rc=0)
    assert output(tmp_path, "cli") == "cli 5 2\n"


def test_job_environment_is_built_like_moms(fakepbs, tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKED", "from-qsub")
    monkeypatch.setenv("PASSED", "by-name")
    s = script(tmp_path / "job.pbs", "env | sort")
    qsub("-j", "oe", "-v", "PASSED,SET=1", "-l", "select=2:ncpus=2:ompthreads=1", s, check_rc=0)
    env = dict(line.split("=", 1) for line in output(tmp_path).splitlines() if "=" in line)
    assert env["PATH"].startswith("/bin:/usr/bin")
    assert "LEAKED" not in env
    assert env["PASSED"] == "by-name" and env["SET"] == "1"
    assert env["PBS_O_WORKDIR"] == str(tmp_path)
    assert env["PBS_JOBID"] == "1.fakepbs" and env["PBS_NODENUM"] == "0"
    assert env["PBS_ENVIRONMENT"] == "PBS_BATCH"
    assert env["NCPUS"] == "1" and env["OMP_NUM_THREADS"] == "1"  # ompthreads wins
    assert env["HOME"] == os.path.expanduser("~")
    assert env["PWD"] == os.path.expanduser("~")  # cwd is $HOME, not the submit folder
    for name in ("PBS_O_HOST", "PBS_O_PATH", "PBS_JOBNAME", "PBS_QUEUE", "PBS_NODEFILE", "TMPDIR"):
        assert name in env


def test_capital_v_exports_qsubs_environment(fakepbs, tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKED", "from-qsub")
    qsub("-V", script(tmp_path / "job.pbs", 'echo "$LEAKED"'), check_rc=0)
    assert output(tmp_path) == "from-qsub\n"


@pytest.mark.parametrize("select, expected", [
    ("3:ncpus=2", ["node00", "node01", "node02"]),
    ("2:ncpus=4:mpiprocs=2", ["node00", "node00", "node01", "node01"]),
    ("1:ncpus=1+2:ncpus=4:mem=8gb", ["node00", "node01", "node02"]),
])
def test_node_file_has_one_line_per_mpiproc_in_chunk_order(fakepbs, tmp_path, select, expected):
    qsub("-l", f"select={select}", script(tmp_path / "job.pbs", 'cat "$PBS_NODEFILE"'), check_rc=0)
    assert output(tmp_path).split() == expected


def test_task_environment_is_stripped_while_the_script_has_its_exports(fakepbs, tmp_path):
    body = """export MINE=set-in-script PATH=/opt/mine/bin:$PATH
echo "script MINE=$MINE"
pbsdsh -n 1 -- /bin/sh -c 'env > "$PBS_O_WORKDIR/task1.env"'
pbsdsh -n 0 -- /bin/sh -c 'env > "$PBS_O_WORKDIR/task0.env"; pwd; umask'
"""
    qsub("-l", "select=2:ncpus=2", "-v", "GIVEN=yes", script(tmp_path / "job.pbs", body), check_rc=0)
    out = output(tmp_path)
    assert "script MINE=set-in-script" in out
    home = os.path.expanduser("~")
    assert f"\n{home}\n0077\n" in f"\n{out}"
    t1 = dict(l.split("=", 1) for l in (tmp_path / "task1.env").read_text().splitlines() if "=" in l)
    t0 = dict(l.split("=", 1) for l in (tmp_path / "task0.env").read_text().splitlines() if "=" in l)
    assert "MINE" not in t1 and not t1["PATH"].startswith("/opt/mine")
    assert t1["GIVEN"] == "yes"
    assert t1["PBS_NODENUM"] == "1" and t0["PBS_NODENUM"] == "0"
    assert len(t1["PBS_TASKNUM"]) == 8 and int(t1["PBS_TASKNUM"], 16) >= 1
    assert "PBS_NODEFILE" in t1 and "PBS_NODEFILE" not in t0
    assert t1["TMPDIR"] != t0["TMPDIR"]
    assert "USER" not in t1 and "SHELL" not in t1


def test_pbsdsh_exits_0_when_a_task_fails_and_says_so(fakepbs, tmp_path):
    body = 'pbsdsh -n 0 -- /bin/false; echo "rc=$?"; pbsdsh -n 0 -- /no/such/program; echo "rc=$?"'
    qsub(script(tmp_path / "job.pbs", body), check_rc=0)
    assert output(tmp_path) == (
        "pbsdsh: task 0x00000000 exit status 1\nrc=0\npbsdsh: task 0x00000000 exit status 254\nrc=0\n")


def test_a_task_starts_as_moms_child_does(fakepbs, tmp_path):
    """What tm.py's fork and exec must give, as MoM's start_process: signals as fork_me
    leaves them (SIGHUP ignored; SIGPIPE, which Python ignores, and SIGINT and SIGQUIT,
    which bash ignores for a `pbsdsh ... &`, at their default: `yes | head` ends `yes` by
    the signal, 141), none of the job script's open descriptors, a session of its own, and
    the node's TMPDIR made as the node's first task starts (not before); also with pbsdsh's
    own stdin and stdout closed. The job script's children have MoM's signals too."""
    body = """grep SigIgn /proc/self/status
ls -d "$(dirname "$TMPDIR")"/*node01 2>/dev/null || echo "node01 has no TMPDIR yet"
exec 7>"$PBS_O_WORKDIR/held"
pbsdsh -n 1 -- /bin/grep SigIgn /proc/self/status &
wait
pbsdsh -n 1 -- /bin/bash -c 'yes | head -1 >/dev/null; echo "pipe=${PIPESTATUS[0]}"
  ls /proc/$$/fd >"$TMPDIR/fds"; echo $(cat "$TMPDIR/fds")
  [[ $(ps -o sid= -p $$) -eq $$ ]] && echo "own session"
  [[ -d $TMPDIR ]] && echo "tmpdir made"'
pbsdsh -n 0 -- /bin/sh -c 'echo "closed 0 and 1: still to the job output"' <&- >&-
"""
    qsub("-l", "select=2:ncpus=1", script(tmp_path / "job.pbs", body), check_rc=0)
    lines = output(tmp_path).splitlines()

    def ignored(line: str) -> int:
        """Signals 1-31 ignored (32 and up belong to the C library: Python cannot set them,
        and whatever started this test may have left one ignored)."""
        assert line.startswith("SigIgn:"), lines
        return int(line.split()[1], 16) & 0x7FFFFFFF

    assert ignored(lines[0]) == ignored(lines[2]) == 1 << (1 - 1), lines  # SIGHUP alone
    assert lines[1] == "node01 has no TMPDIR yet"
    assert lines[3:] == ["pipe=141", "0 1 2", "own session", "tmpdir made",
                         "closed 0 and 1: still to the job output"], lines


def test_join_eo_puts_both_streams_in_the_error_file_and_writes_no_output_file(fakepbs, tmp_path):
    body = "echo out; echo err >&2; pbsdsh -n 1 -- /bin/sh -c 'echo task-out; echo task-err >&2'"
    qsub("-j", "eo", "-l", "select=2:ncpus=1", script(tmp_path / "job.pbs", body), check_rc=0)
    assert sorted(output(tmp_path, kind="e").split()) == ["err", "out", "task-err", "task-out"]
    assert list(tmp_path.glob("job.pbs.o*")) == []


def test_pbsdsh_node_index_wraps_and_c_runs_copies(fakepbs, tmp_path):
    body = 'pbsdsh -n 5 -- /bin/sh -c \'echo "n=$PBS_NODENUM"\'; pbsdsh -c 3 -- /bin/sh -c \'echo "c=$PBS_NODENUM"\''
    qsub("-l", "select=2:ncpus=1", script(tmp_path / "job.pbs", body), check_rc=0)
    lines = output(tmp_path).split()
    assert lines[0] == "n=1"
    assert sorted(lines[1:]) == ["c=0", "c=0", "c=1"]


def test_pbsdsh_outside_a_job_refuses(fakepbs):
    done = subprocess.run(["pbsdsh", "-n", "0", "--", "/bin/true"], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode == 1
    assert done.stderr == "pbsdsh: not executing under PBS\n"


def test_block_returns_the_jobs_exit_status(fakepbs, tmp_path):
    assert qsub(script(tmp_path / "job.pbs", "exit 7")).returncode == 7
    assert qsub(script(tmp_path / "k.pbs", "kill -KILL $$")).returncode == (256 + 9) % 256


@pytest.mark.parametrize("args, message", [
    (["-l", "select=2:ncpus=4:mem=1.5gb"], "Resource_List.select"),
    (["-l", "select=1:mem=20GiB"], "Resource_List.select"),
    (["-l", "select=1:mem=20 gb"], "Resource_List.select"),
    (["-l", "mem=1.5gb"], "Resource_List.mem"),
    (["-l", "walltime=1h"], "Resource_List.walltime"),
    (["-l", "select=2:ncpus=four"], "Resource_List.select"),
    (["-Z"], "invalid option -- 'Z'"),
])
def test_rejected_requests(fakepbs, tmp_path, args, message):
    done = qsub(*args, script(tmp_path / "job.pbs", "true"), block=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert done.stdout == ""


def test_walltime_kill_sends_sigterm_then_sigkill(fakepbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_KILL_DELAY", "2")
    body = """trap 'echo "got TERM"' TERM
pbsdsh -n 1 -- /bin/sleep 300 &
while true; do sleep 0.1; done
"""
    started = time.monotonic()
    done = qsub("-l", "select=2:ncpus=1", "-l", "walltime=00:00:02", script(tmp_path / "job.pbs", body))
    elapsed = time.monotonic() - started
    assert done.returncode == 227  # -29 mod 256
    assert "got TERM" in output(tmp_path)
    assert "=>> PBS: job killed: walltime 2 exceeded limit 2" in output(tmp_path, kind="e")
    assert 4 <= elapsed < 15
    assert job_processes(fakepbs) == []


def test_qdel_goes_through_sigterm_and_the_script_can_clean_up(fakepbs, tmp_path):
    body = """trap 'echo cleaned; exit 0' TERM
echo started > "$PBS_O_WORKDIR/started"
while true; do sleep 0.1; done
"""
    proc, jobid = blocking_job_started(tmp_path, body)
    listing = subprocess.run(["qstat"], capture_output=True, text=True).stdout
    assert jobid in listing and " R " in listing
    assert subprocess.run(["qdel", jobid]).returncode == 0
    assert proc.wait(timeout=30) == 0
    assert "cleaned" in output(tmp_path)
    assert job_processes(fakepbs) == []


def test_qstat_full_and_json(fakepbs, tmp_path):
    body = 'qstat -f "$PBS_JOBID" > "$PBS_O_WORKDIR/full"; qstat -f -F json "$PBS_JOBID" > "$PBS_O_WORKDIR/json"'
    qsub("-l", "select=2:ncpus=4:mem=20G", "-l", "walltime=01:00:00", script(tmp_path / "job.pbs", body),
         check_rc=0)
    full = (tmp_path / "full").read_text()
    for line in ("job_state = R", "Resource_List.select = 2:ncpus=4:mem=20G", "Resource_List.ncpus = 8",
                 "Resource_List.mem = 40gb", "Resource_List.nodect = 2", "Resource_List.walltime = 01:00:00",
                 "exec_host = node00/0*4+node01/0*4", "resources_used.walltime = 00:00:0", "stime = "):
        assert line in full
    job = json.loads((tmp_path / "json").read_text())["Jobs"]["1.fakepbs"]
    assert job["Resource_List"]["walltime"] == "01:00:00"
    done = subprocess.run(["qstat", "-x", "-f", "-F", "json", "1.fakepbs"], capture_output=True, text=True)
    finished = json.loads(done.stdout)["Jobs"]["1.fakepbs"]
    assert finished["job_state"] == "F" and finished["Exit_status"] == 0
    gone = subprocess.run(["qstat", "-f", "1.fakepbs"], capture_output=True, text=True)
    assert gone.returncode != 0 and "Job has finished" in gone.stderr


def test_nothing_of_a_job_outlives_it(fakepbs, tmp_path):
    body = """pbsdsh -n 1 -- /bin/sleep 300 &
pbsdsh -n 0 -- /bin/sh -c 'sleep 300 & sleep 300' &
sleep 300 &
sleep 1
ls -d "$TMPDIR" > "$PBS_O_WORKDIR/tmpdir"
"""
    qsub("-l", "select=2:ncpus=1", script(tmp_path / "job.pbs", body), check_rc=0)
    time.sleep(0.2)
    assert job_processes(fakepbs) == []
    tmpdir = (tmp_path / "tmpdir").read_text().strip()
    assert tmpdir and not os.path.exists(tmpdir)
    assert list((fakepbs / "tmp").iterdir()) == []
    assert sorted(p.name for p in (fakepbs / "jobs" / "1").iterdir()) == ["job.json", "tasks", "taskseq"]


# ---------------------------------------------------------------- FAKEPBS_NETNS=1

def runs(check, error: type) -> bool:
    """Whether check() returns rather than raise error (what a mode of the fake needs: root, ip,
    a writable cgroup)."""
    try:
        check()
    except error:
        return False
    return True


needs_netns = pytest.mark.skipif(not runs(netns.ip_command, netns.NetnsError),
                                 reason="needs root and ip (network namespaces)")


def namespaces_and_links(home) -> list:
    tag = netns.tag_of(str(home))
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line for line in (listed + links).splitlines() if f"fpbs-{tag}-" in line or f"fpl{tag}" in line]


@needs_netns
def test_netns_each_node_has_its_own_ib0_address_and_host_name(fakepbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_NETNS", "1")
    s = script(tmp_path / "job.pbs",
               "echo \"script $(hostname) $(ls /sys/class/net | tr '\\n' ' ')\"\n"
               "pbsdsh -- /bin/sh -c 'echo \"task $PBS_NODENUM $(hostname) "
               "$(ls /sys/class/net | tr \"\\n\" \" \")$(ip -4 -o addr show dev ib0 | "
               "sed \"s/.*inet \\([0-9./]*\\).*/\\1/\")\"'\n"
               "sleep 1\n",
               "#PBS -l select=3:ncpus=1\n")
    done = qsub(s, block=False, check_rc=0)
    # While the job runs, this (the login node) reaches the nodes but holds none of their addresses.
    spool = fakepbs / "jobs" / "1" / "spool.o"
    for _ in range(100):
        if "task 2" in (spool.read_text() if spool.exists() else ""):
            break
        time.sleep(0.05)
    mine = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    job = json.loads((fakepbs / "jobs" / "1" / "job.json").read_text())
    subnet = job["netns"]["subnet"]
    assert f"{subnet}.254/24" in mine and f"{subnet}.1/" not in mine
    subprocess.run(["qstat"], check=True, capture_output=True)
    wait_finished(fakepbs, done.stdout.strip())
    lines = sorted(output(tmp_path).splitlines())
    assert lines == ["script node00 ib0 lo ",
                     f"task 0 node00 ib0 lo {subnet}.1/24",
                     f"task 1 node01 ib0 lo {subnet}.2/24",
                     f"task 2 node02 ib0 lo {subnet}.3/24"]
    assert namespaces_and_links(fakepbs) == []


def wait_finished(home, jobid: str, timeout: float = 60) -> None:
    """Until the job is finished and its MoM has exited, as `qsub -W block=true` waits: the
    MoM marks the job F just before it exits, and a test that then counts what is left of
    the job must not count the MoM."""
    jdir = home / "jobs" / jobid.split(".")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = json.loads((jdir / "job.json").read_text())
        if job["state"] == "F" and not mom_running(jdir):
            return
        time.sleep(0.05)
    raise AssertionError(f"{jobid} still running after {timeout} s")


def mom_running(jdir: Path) -> bool:
    """Whether the fake MoM of the job in jdir still runs (`fakepbs.py _mom JDIR`)."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                words = fh.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"_mom" in words and str(jdir).encode() in words:
            return True
    return False


@needs_netns
def test_netns_nodes_reach_each_other_and_qdel_removes_every_namespace(fakepbs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKEPBS_NETNS", "1")
    # node01 serves on its ib0; node00 connects to it by address; then the job waits for qdel.
    s = script(tmp_path / "job.pbs", """
pbsdsh -n 1 -- /usr/bin/python3 -c 'import socket; s = socket.create_server(("0.0.0.0", 7777)); c, _ = s.accept(); c.sendall(b"from " + socket.gethostname().encode())' &
sleep 1
python3 -c 'import socket, sys; print(socket.create_connection((sys.argv[1], 7777), timeout=5).recv(100).decode())' "$(ip -4 -o addr show dev ib0 | sed 's/.*inet \\([0-9.]*\\).*/\\1/' | sed 's/\\.1$/.2/')"
wait
sleep 60
""", "#PBS -l select=2:ncpus=1\n")
    jobid = qsub(s, block=False, check_rc=0).stdout.strip()
    deadline = time.monotonic() + 30
    spool = fakepbs / "jobs" / "1" / "spool.o"
    while "from node01" not in (spool.read_text() if spool.exists() else ""):
        assert time.monotonic() < deadline, f"node00 never reached node01: {list(tmp_path.glob('job.pbs.*'))}"
        time.sleep(0.05)
    assert len(namespaces_and_links(fakepbs)) == 4  # switch, two nodes, the login link
    subprocess.run(["qdel", jobid], check=True)
    wait_finished(fakepbs, jobid)
    assert namespaces_and_links(fakepbs) == []


@needs_netns
def test_netns_clean_removes_what_a_killed_mom_left(fakepbs, tmp_path):
    spec = netns.plan(str(fakepbs), 99, ["node00", "node01"])
    netns.up(spec)
    assert len(namespaces_and_links(fakepbs)) == 4
    done = subprocess.run([os.environ.get("PYTHON", "python3"), str(Path(netns.__file__).with_name("fakepbs.py")),
                           "_netns_clean"], capture_output=True, text=True)
    assert done.returncode == 0 and "removed" in done.stdout
    assert namespaces_and_links(fakepbs) == []


def test_netns_without_root_is_refused_with_what_to_do(fakepbs, tmp_path, monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(netns.NetnsError, match="needs root and iproute2's ip .*unset FAKEPBS_NETNS"):
        netns.plan(str(fakepbs), 1, ["node00"])
