"""The job environment file: what a stripped pbsdsh task sources."""
import os
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from conftest import sleeper
from dask_pbs_kit import envfile, kit_cli

TRICKY = {
    "SPACES": "a b  c", "QUOTES": "it's \"quoted\"", "DOLLAR": "$HOME ${x} $(id) `id`",
    "NEWLINES": "one\ntwo\n", "UNICODE": "ünïcødé ✓", "EMPTY": "", "BACKSLASH": "a\\b\\",
}


def source_and_dump(path, names):
    """Source the file in a shell with a stripped environment and print the values back."""
    script = f'source "$1"; for n in {" ".join(names)}; do printf "%s\\0" "${{!n-UNSET}}"; done'
    done = subprocess.run(["/usr/bin/env", "-i", "PATH=/bin:/usr/bin", "TMPDIR=/node/tmp",
                           "/bin/bash", "-c", script, "bash", path], capture_output=True, check=True)
    return dict(zip(names, done.stdout.decode().split("\0")))


def test_values_survive_exactly(tmp_path):
    path = tmp_path / "env.sh"
    envfile.write_env_file(str(path), TRICKY)
    assert source_and_dump(str(path), list(TRICKY)) == TRICKY
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_per_node_and_per_task_variables_stay_the_tasks_own(tmp_path):
    path = tmp_path / "env.sh"
    envfile.write_env_file(str(path), {"TMPDIR": "/job/tmp", "PBS_NODENUM": "0", "PBS_TASKNUM": "1",
                                       "PBS_NODEFILE": "/f", "HOSTNAME": "n0", "PWD": "/x", "NCPUS": "4",
                                       "KEEP": "yes"})
    got = source_and_dump(str(path), ["TMPDIR", "PBS_NODENUM", "PBS_NODEFILE", "HOSTNAME", "PWD", "KEEP"])
    assert got["TMPDIR"] == "/node/tmp"
    assert got["PBS_NODENUM"] == got["PBS_NODEFILE"] == "UNSET"
    assert got["HOSTNAME"] != "n0"  # bash sets the node's own
    assert got["KEEP"] == "yes"


def test_names_bash_cannot_assign_are_left_out():
    text = envfile.env_script({"BASH_FUNC_module%%": "() { :; }", "a.b": "1", "OK_1": "v", "SHELLOPTS": "x"})
    assert "export OK_1=v" in text
    assert "module" not in text and "a.b" not in text and "SHELLOPTS" not in text


def test_env_file_command_writes_the_current_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_JOB_SCRIPT", "x y")
    assert kit_cli.main(["env-file", str(tmp_path / "e.sh")]) == 0
    assert source_and_dump(str(tmp_path / "e.sh"), ["FROM_JOB_SCRIPT"]) == {"FROM_JOB_SCRIPT": "x y"}


names = st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True).filter(lambda n: n not in envfile.NOT_CARRIED)
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(names, values, min_size=1, max_size=5))
def test_any_value_round_trips(tmp_path_factory, env):
    path = tmp_path_factory.mktemp("env") / "env.sh"
    envfile.write_env_file(str(path), env)
    assert source_and_dump(str(path), list(env)) == env


# ------------------------------------------------------------------ per-host variables

# The job script: PBS and a hook gave it these; it changes some and adds one, then runs
# the helper directly (its parent is the script's shell), as dpk::write_env does.
JOB_SCRIPT = """
export CHANGED="new value" ADDED=added
unset GONE
"$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv[1]); from dask_pbs_kit import kit_cli; sys.exit(kit_cli.main(sys.argv[2:]))' "$HELPERS" env-file "$OUT"
status=$?
exit $status
"""


def run_job_script(tmp_path, extra=()):
    from conftest import KIT

    out = tmp_path / "env.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HELPERS": str(KIT / "helpers"),
           "OUT": str(out), "CUDA_VISIBLE_DEVICES": "GPU-aaaa", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
           "PBS_JOBID": "7.s", "PBS_O_WORKDIR": "/home/ann", "CHANGED": "old", "GONE": "x",
           "FROM_PROFILE": "same everywhere"}
    done = subprocess.run(["/bin/bash", "-c", JOB_SCRIPT, *extra], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def test_what_the_script_changed_reaches_every_task_what_pbs_gave_stays_the_tasks(tmp_path):
    out = run_job_script(tmp_path)
    text = out.read_text()
    assert "export CHANGED='new value'" in text.splitlines()
    assert "export ADDED=added" in text.splitlines()
    # A host's devices are never copied: a host without GPUs must not get the first node's.
    assert "CUDA_VISIBLE_DEVICES" not in text
    assert "GONE" not in text
    # A task on another host: its own GPU; lacks CUDA_DEVICE_ORDER and FROM_PROFILE; under set -u.
    script = ('set -u; source "$1"; for n in CUDA_VISIBLE_DEVICES CUDA_DEVICE_ORDER CHANGED ADDED '
              'FROM_PROFILE PBS_JOBID; do printf "%s\\0" "${!n-UNSET}"; done')
    done = subprocess.run(["/usr/bin/env", "-i", "PATH=/bin:/usr/bin", "CUDA_VISIBLE_DEVICES=GPU-bbbb",
                           "CHANGED=host1", "PBS_JOBID=7.s", "/bin/bash", "-c", script, "bash", str(out)],
                          capture_output=True, check=True)
    got = done.stdout.decode().split("\0")[:-1]
    assert got == ["GPU-bbbb", "PCI_BUS_ID", "new value", "added", "same everywhere", "7.s"]
    done = subprocess.run(["/usr/bin/env", "-i", "PATH=/bin:/usr/bin", "/bin/bash", "-c", script,
                           "bash", str(out)], capture_output=True, check=True)
    assert done.stdout.decode().split("\0")[0] == "UNSET"  # a host without GPUs gets none


def test_an_empty_per_host_value_is_kept(tmp_path):
    out = run_job_script(tmp_path)
    done = subprocess.run(["/usr/bin/env", "-i", "CUDA_VISIBLE_DEVICES=", "/bin/bash", "-c",
                           'source "$1"; printf "[%s]" "$CUDA_VISIBLE_DEVICES"', "bash", str(out)],
                          capture_output=True, check=True, text=True)
    assert done.stdout == "[]"


def test_initial_from_names_the_job_scripts_shell(tmp_path, monkeypatch):
    # pytest's own parent is not the job script: name a process whose environment we know.
    child = sleeper({"KEEP_MINE": "v1", "CHANGED": "old"})
    try:
        monkeypatch.setenv("KEEP_MINE", "v1")
        monkeypatch.setenv("CHANGED", "new")
        assert kit_cli.main(["env-file", "--initial-from", str(child.pid), str(tmp_path / "e.sh")]) == 0
    finally:
        child.kill()
        child.wait()
    lines = (tmp_path / "e.sh").read_text().splitlines()
    assert "[[ -v KEEP_MINE ]] || export KEEP_MINE=v1" in lines
    assert "export CHANGED=new" in lines


def test_an_unreadable_initial_environment_exports_everything_and_says_so(tmp_path):
    envfile.write_env_file(str(tmp_path / "e.sh"), {"A": "1"}, initial_pid=2**22 + 12345)
    lines = (tmp_path / "e.sh").read_text().splitlines()
    assert lines[1].startswith("# The job script's initial environment was not readable")
    assert "export A=1" in lines


def test_a_bad_initial_from_is_a_bad_value(tmp_path, capsys):
    assert kit_cli.main(["env-file", "--initial-from", "me", str(tmp_path / "e.sh")]) == 7
    assert "--initial-from PID must be an integer" in capsys.readouterr().err


def test_a_parent_that_holds_this_very_environment_is_not_trusted(tmp_path):
    # e.g. a python wrapper that runs the real python as its child, not by exec.
    initial = {"PATH": "/opt/env/bin:/bin", "CUDA_VISIBLE_DEVICES": "GPU-aaaa"}
    text = envfile.env_script(dict(initial), initial, "/proc/99/environ")
    lines = text.splitlines()
    assert "(/proc/99/environ holds this very environment)" in lines[1]
    assert "export PATH=/opt/env/bin:/bin" in lines
