"""The job environment file: what a stripped pbsdsh task sources."""
import os
import subprocess

from hypothesis import given, settings, strategies as st

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
