"""qstat's answers as released PBS versions print them: JSON, invalid JSON, folded text."""
import json
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from dask_pbs_kit import qstat_reader as qr
from dask_pbs_kit.errors import KitError

# `qstat -f -F json` of OpenPBS 23.06.06, written by hand from src/lib/Libcmds/pbs_json.c:
# bare when strtod reads the value whole unless it starts with 0 and is >= 1 (3, nan, .5,
# 1.), backslash pairs copied as they are (\u, \h, \w, \$ in Submit_arguments, which the
# server sends unescaped), Variable_List's backslashes doubled by the server
# (attr_fn_arst.c encode_arst_bs) so valid there, a value's leading '"' left unescaped.
RELEASED_23 = r'''{
    "timestamp":1700000000,
    "pbs_version":"23.06.06",
    "pbs_server":"pbs01",
    "Jobs":{
        "42.pbs01":{
            "Job_Name":"dask",
            "Job_Owner":"ann@login1.cluster.org",
            "resources_used":{
                "cpupercent":0,
                "cput":"00:00:00",
                "mem":"0kb",
                "ncpus":10,
                "vmem":"0kb",
                "walltime":"00:00:30"
            },
            "job_state":"R",
            "queue":"workq",
            "comment":""urgent\" run by admin",
            "exec_host":"n0/0*2+n1/0*4+n2/0*4",
            "exec_vnode":"(n0:ncpus=2:mem=4194304kb)+(n1:ncpus=4:mem=8388608kb)+(n2:ncpus=4:mem=8388608kb)",
            "Resource_List":{
                "mem":"20gb",
                "ncpus":10,
                "nodect":3,
                "place":"free",
                "select":3,
                "walltime":"01:00:00"
            },
            "Submit_arguments":"-V -v PS1=\u@\h:\w\$ dask.pbs",
            "Variable_List":{
                "PBS_O_HOME":"/home/ann",
                "PBS_JOBCOOKIE":"00012345678901234567",
                "NANVAR":nan,
                "INFVAR":inf,
                "HALF":.5,
                "ONE":1.,
                "PS1":"\\u@\\h:\\w\\$ ",
                "BASH_FUNC_ml%%":"() {  eval $($LMOD_DIR/ml_cmd \"$@\")\n}",
                "PBS_O_WORKDIR":"/home/ann/work"
            }
        }
    }
}
'''

# The same job from OpenPBS 20.0.1: no leading-zero rule (00012 is bare), an empty value
# written as nothing at all, quotes never escaped, a backslash copied alone (\u and the
# final backslash of Error_Path in attributes the server sends unescaped; \' where the
# server escaped a quote of a Variable_List value), and a non-ASCII byte through
# show_nonprint_chars on a signed char: "é" (c3 a9) becomes "^" 03 "^" e9, a raw control
# character and a byte that is not UTF-8.
RELEASED_20 = b'''{
    "timestamp":1600000000,
    "pbs_version":"20.0.1",
    "pbs_server":"pbs01",
    "Jobs":{
        "42.pbs01":{
            "Job_Name":"dask",
            "Account_Name":,
            "comment":"say "hi", then go",
            "Error_Path":"login1:/home/ann/work\\",
            "Resource_List":{
                "ncpus":10,
                "select":3,
                "walltime":"01:00:00"
            },
            "Submit_arguments":"-v PS1=\\u@\\h dask.pbs",
            "Variable_List":{
                "PBS_JOBCOOKIE":00012345678901234567,
                "MYVAR":"\\'quoted\\'",
                "PLACE":"caf^\x03^\xe9",
                "PBS_O_WORKDIR":"/home/ann/work"
            }
        }
    }
}
'''

# PBS Pro 19.1 prints a control character raw and an empty value as the number 0.
RELEASED_19 = b'{"Jobs":{"1.s":{"comment":0,"Variable_List":{"PS1":"\\\\u@\\\\h \x1b[0m"}}}}'


def ok(stdout, returncode=0, stderr=b""):
    return subprocess.CompletedProcess([], returncode, stdout.encode() if isinstance(stdout, str) else stdout,
                                       stderr)


def runner(answers):
    """A fake subprocess.run: answers maps the qstat arguments to a CompletedProcess."""
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        answer = answers.get(" ".join(argv[1:]))
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            return ok("", 1, b"qstat: Unknown Job Id\n")
        return answer
    run.calls = calls
    return run


def test_valid_json_is_read_by_json_loads_with_every_value_a_string():
    doc = {"Jobs": {"7.s": {"Resource_List": {"select": 3, "walltime": "00:10:00"},
                            "exec_host": "n0/0", "Exit_status": 0, "flag": True, "none": None}}}
    attrs, source = qr.read_job("7.s", runner({"-f -F json 7.s": ok(json.dumps(doc))}))
    assert source == "qstat -f -F json"
    assert attrs == {"Resource_List": {"select": "3", "walltime": "00:10:00"}, "exec_host": "n0/0",
                     "Exit_status": "0", "flag": "True", "none": ""}


def test_the_released_23_06_encoder_is_read_leniently():
    with pytest.raises(ValueError):
        json.loads(RELEASED_23)
    attrs, source = qr.read_job("42.pbs01", runner({"-f -F json 42.pbs01": ok(RELEASED_23)}))
    assert source == "qstat -f -F json (invalid JSON from an OpenPBS <= 23.06 qstat, read leniently)"
    assert attrs["Resource_List"]["select"] == "3"
    assert attrs["Resource_List"]["ncpus"] == "10"
    assert attrs["resources_used"]["walltime"] == "00:00:30"
    assert attrs["exec_vnode"].startswith("(n0:ncpus=2:mem=4194304kb)+")
    assert attrs["comment"] == '"urgent" run by admin'
    assert attrs["Submit_arguments"] == r"-V -v PS1=\u@\h:\w\$ dask.pbs"
    env = attrs["Variable_List"]
    assert env["NANVAR"] == "nan" and env["INFVAR"] == "inf"
    assert env["HALF"] == ".5" and env["ONE"] == "1."
    assert env["PBS_JOBCOOKIE"] == "00012345678901234567"
    assert env["PS1"] == "\\u@\\h:\\w\\$ "
    assert env["BASH_FUNC_ml%%"] == '() {  eval $($LMOD_DIR/ml_cmd "$@")\n}'
    assert env["PBS_O_WORKDIR"] == "/home/ann/work"


# Checked as the 23.06 test above is, line for line, but kept a test of its own: each
# names what its own release printed; one table over both would hide which quirk is whose.
def test_the_released_20_encoder_is_read_leniently():
    attrs, source = qr.read_job("42.pbs01", runner({"-f -F json 42.pbs01": ok(RELEASED_20)}))
    assert "read leniently" in source
    assert attrs["comment"] == 'say "hi", then go'
    assert attrs["Account_Name"] == ""
    assert attrs["Error_Path"] == "login1:/home/ann/work\\"
    assert attrs["Submit_arguments"] == r"-v PS1=\u@\h dask.pbs"
    assert attrs["Resource_List"] == {"ncpus": "10", "select": "3", "walltime": "01:00:00"}
    env = attrs["Variable_List"]
    assert env["PBS_JOBCOOKIE"] == "00012345678901234567"
    assert env["MYVAR"] == "'quoted'"
    assert env["PLACE"] == "caf^\x03^\ufffd"
    assert env["PBS_O_WORKDIR"] == "/home/ann/work"


def test_a_control_character_of_pbs_pro_19_is_read():
    attrs, source = qr.read_job("1.s", runner({"-f -F json 1.s": ok(RELEASED_19)}))
    assert "read leniently" in source
    assert attrs == {"comment": "0", "Variable_List": {"PS1": "\\u@\\h \x1b[0m"}}


def test_an_unknown_job_id_in_the_output_is_the_only_job():
    doc = {"Jobs": {"42.pbs01.cluster.org": {"exec_host": "n0/0"}}}
    attrs, _ = qr.read_job("42.pbs01", runner({"-f -F json 42.pbs01": ok(json.dumps(doc))}))
    assert attrs == {"exec_host": "n0/0"}


# `qstat -f` of a PBS Pro before 18, folded by src/cmds/qstat.c prt_attr: a value is cut
# at commas once a line would pass 78 columns and goes on after "\n\t"; a piece longer
# than a line is cut anywhere (here inside exec_vnode's "8388608kb" and a path).
FOLDED = (
    "Job Id: 42.pbs01\n"
    "    Job_Name = dask\n"
    "    resources_used.walltime = 00:00:30\n"
    "    job_state = R\n"
    "    exec_host = node001/0*16+node002/0*4+node003/0*4\n"
    "    exec_vnode = (node001[0]:ncpus=8:mem=8388608kb+node001[1]:ncpus=8:mem=83886\n"
    "\t08kb)+(node002:ncpus=4:mem=4194304kb)+(node003:ncpus=4:mem=4194304kb)\n"
    "    Resource_List.ncpus = 24\n"
    "    Resource_List.select = 1:ncpus=16:mem=16gb+2:ncpus=4:mem=4gb\n"
    "    Resource_List.walltime = 02:00:00\n"
    "    Variable_List = PBS_O_HOME=/home/ann,PBS_O_LANG=en_US.UTF-8,\n"
    "\tPBS_O_LOGNAME=ann,\n"
    "\tPBS_O_PATH=/opt/pbs/bin:/usr/local/bin:/usr/bin:/bin:/home/ann/.local/\n"
    "\tbin:/home/ann/miniconda3/condabin,PBS_O_MAIL=/var/spool/mail/ann,\n"
    "\tPBS_O_SHELL=/bin/bash,PBS_O_WORKDIR=/home/ann/work,PBS_O_SYSTEM=Linux,\n"
    "\tPS1=\\\\u@\\\\h:\\\\w\\\\$ ,MSG=a\\, b,PBS_O_QUEUE=workq,\n"
    "\tPBS_O_HOST=login1.cluster.org,BASH_FUNC_ml%%=() {  eval $($LMOD_DIR/ml_cm\n"
    "\td \\\"$@\\\")\n"
    "},LAST=1\n"
    "    comment = Job run at Mon Jan 01 at 10:00 on (node001[0]:ncpus=8:mem=8388608kb\n"
    "\t)\n"
    "\n"
)


def test_folded_qstat_f_text_is_joined():
    attrs = qr.parse_text(FOLDED.encode())
    assert attrs["exec_vnode"] == ("(node001[0]:ncpus=8:mem=8388608kb+node001[1]:ncpus=8:mem=8388608kb)"
                                   "+(node002:ncpus=4:mem=4194304kb)+(node003:ncpus=4:mem=4194304kb)")
    assert attrs["resources_used"] == {"walltime": "00:00:30"}
    assert attrs["Resource_List"]["select"] == "1:ncpus=16:mem=16gb+2:ncpus=4:mem=4gb"
    env = attrs["Variable_List"]
    assert env["PBS_O_PATH"] == "/opt/pbs/bin:/usr/local/bin:/usr/bin:/bin:/home/ann/.local/bin:/home/ann/miniconda3/condabin"
    assert env["PBS_O_LOGNAME"] == "ann"
    assert env["PS1"] == "\\u@\\h:\\w\\$ "
    assert env["MSG"] == "a, b"
    assert env["BASH_FUNC_ml%%"] == '() {  eval $($LMOD_DIR/ml_cmd "$@")\n}'
    assert env["LAST"] == "1"
    assert env["PBS_O_HOST"] == "login1.cluster.org"
    assert attrs["comment"].endswith("mem=8388608kb)")


def test_no_F_json_falls_back_to_the_text():
    run = runner({
        "-f -F json 42.pbs01": ok("", 2, b"qstat: invalid option -- 'F'\nusage: \nqstat [-f] [-J] ...\n"),
        "-f 42.pbs01": ok(FOLDED),
    })
    attrs, source = qr.read_job("42.pbs01", run)
    assert source == "qstat -f"
    assert attrs["Resource_List"]["walltime"] == "02:00:00"
    assert run.calls == [["qstat", "-f", "-F", "json", "42.pbs01"], ["qstat", "-f", "42.pbs01"]]


def test_json_that_cannot_be_read_at_all_falls_back_to_the_text():
    run = runner({"-f -F json 1.s": ok("{{{ not json"), "-f 1.s": ok("Job Id: 1.s\n    exec_host = n0/0\n")})
    assert qr.read_job("1.s", run) == ({"exec_host": "n0/0"}, "qstat -f")


@pytest.mark.parametrize("answers, reason", [
    ({"-f -F json 1.s": FileNotFoundError(2, "No such file")}, "no qstat on PATH"),
    ({"-f -F json 1.s": subprocess.TimeoutExpired("qstat", 30)}, "timed out after 30 s"),
    ({}, "qstat -f: exit status 1 (qstat: Unknown Job Id)"),
    ({"-f -F json 1.s": ok("{}"), "-f 1.s": ok("nothing useful\n")}, "no job in the output"),
])
def test_when_qstat_cannot_tell_the_reason_is_given(answers, reason):
    attrs, why = qr.read_job("1.s", runner(answers))
    assert attrs is None
    assert reason in why


def fold(name, resource, value: bytes) -> bytes:
    """src/cmds/qstat.c prt_attr, default format (CHAR_LINE_LIMIT 78)."""
    start = len(name) + 7 + (len(resource) + 1 if resource else 0)
    out = b"    " + name.encode() + (b"." + resource.encode() if resource else b"") + b" = "
    tokens = [t for t in value.split(b",") if t]
    for number, token in enumerate(tokens):
        if len(token) + start < 78:
            out += token
            start += len(token)
        else:
            if number:
                out += b"\n\t"
                start = 9
            for byte in token:
                out += bytes([byte])
                start += 1
                if start > 78:
                    start = 8
                    out += b"\n\t"
        if number + 1 < len(tokens):
            out += b","
    return out


plain = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_characters=",\\"),
                min_size=1, max_size=120)


@settings(max_examples=200)
@given(st.lists(plain, min_size=1, max_size=6), st.sampled_from(["exec_vnode", "Resource_List.select", "x"]))
def test_any_folded_value_comes_back_whole(pieces, label):
    value = ",".join(pieces)
    name, _, resource = label.partition(".")
    text = b"Job Id: 1.s\n" + fold(name, resource or None, value.encode()) + b"\n\n"
    attrs = qr.parse_text(text)
    got = attrs[name][resource] if resource else attrs[name]
    assert got == ",".join(piece for piece in pieces if piece)


# ------------------------------------------------------------------ the lenient parser

json_docs = st.recursive(
    st.text(max_size=12),
    lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300)
@given(json_docs, st.booleans(), st.sampled_from([None, 0, 2, 4]))
def test_on_valid_json_the_lenient_parser_is_json_loads(doc, ascii_only, indent):
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    assert qr.loads_lenient(text) == json.loads(text)


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_on_any_text_the_lenient_parser_raises_only_kit_error(text):
    try:
        qr.loads_lenient(text)
    except KitError:
        pass


@settings(max_examples=300)
@given(st.text(alphabet='{}[]":,\\ \nabn0.5ue', max_size=80))
def test_on_json_like_text_the_lenient_parser_raises_only_kit_error(text):
    try:
        qr.loads_lenient(text)
    except KitError:
        pass


def test_a_deeply_nested_document_is_refused_not_a_recursion_error():
    with pytest.raises(KitError):
        qr.loads_lenient("[" * 5000)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_any_qstat_text_gives_attributes_or_kit_error(data):
    try:
        attrs = qr.parse_text(b"Job Id: 1.s\n" + data)
    except KitError:
        return
    assert isinstance(attrs, dict)


@settings(max_examples=200)
@given(st.binary(max_size=300), st.sampled_from([0, 1, 2]))
def test_read_job_never_raises_on_any_output(data, status):
    run = runner({"-f -F json 1.s": ok(data, status), "-f 1.s": ok(data, status)})
    attrs, why = qr.read_job("1.s", run)
    assert attrs is None or isinstance(attrs, dict)
    assert isinstance(why, str)
