"""The job model: chunks, what each got, node-file lines, walltime."""
import pytest
from hypothesis import given, settings, strategies as st

from dask_pbs_kit import job_resources as jr
from dask_pbs_kit.errors import BAD_VALUE, KitError

GiB = 1024**3
SOURCE = "qstat -f -F json"


def job_of(tmp_path, lines, attrs, ncpus=None, knob=None, started=1000.0, now=1010.0):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("".join(f"{line}\n" for line in lines))
    env = {"PBS_NODEFILE": str(nodefile)}
    if ncpus is not None:
        env["NCPUS"] = ncpus
    return jr.read_job(env, (attrs, SOURCE), knob, started, now)


def summary(job):
    return [(c.index, c.ncpus, c.mem, c.first_line, c.node) for c in job.chunks]


# ------------------------------------------------------------------ select statements


def test_select_with_repeats_groups_and_defaults():
    chunks = jr.parse_select("1:ncpus=1:mem=4gb+2:ncpus=4:mem=20G:mpiprocs=2")
    assert [(c.index, c.ncpus, c.mem, c.mpiprocs, c.nas_mpiprocs) for c in chunks] == [
        (0, 1, 4 * GiB, 1, 1), (1, 4, 20 * GiB, 2, 2), (2, 4, 20 * GiB, 2, 2)]


def test_select_3_from_json_is_a_number():
    chunks = jr.parse_select(3)
    assert [(c.ncpus, c.mem, c.mpiprocs) for c in chunks] == [(1, None, 1)] * 3


def test_nas_rule_gives_ncpus_lines_unless_the_chunk_names_mpiprocs_or_ompthreads():
    chunks = jr.parse_select("1:ncpus=4+1:ncpus=4:ompthreads=4+1:ncpus=4:mpiprocs=2+1:ncpus=0")
    assert [(c.mpiprocs, c.nas_mpiprocs) for c in chunks] == [(1, 4), (1, 1), (2, 2), (0, 0)]


def test_quoted_string_values_of_schedselect_keep_their_plus_and_colon():
    chunks = jr.parse_select("2:ncpus=2:mem=4gb:model=\"a+b:c\"")
    assert len(chunks) == 2 and chunks[0].resources["model"] == "a+b:c"


@pytest.mark.parametrize("select", ["2:ncpus", "2:ncpus=two", "1:mem=1.5gb", "", [3], None, True,
                                    {"a": 1}, "0:ncpus=1", "²", "2:ncpus=²", "2:ncpus=٣"])
def test_bad_select_is_refused(select):
    with pytest.raises(KitError) as err:
        jr.parse_select(select)
    assert err.value.code == BAD_VALUE


# ------------------------------------------------------------------ exec_vnode, exec_host


def test_exec_vnode_sums_the_vnodes_of_each_chunk():
    text = ("(node001[0]:ncpus=8:mem=8388608kb+node001[1]:ncpus=8:mem=8388608kb)"
            "+(node002:ncpus=4:mem=4194304kb)+(node003:mem=1gb)")
    assert jr.parse_exec_vnode(text) == [("node001", 16, 16 * GiB), ("node002", 4, 4 * GiB),
                                         ("node003", None, GiB)]


def test_exec_vnode_of_qrun_H_has_one_chunk_per_vnode():
    assert jr.parse_exec_vnode("n1:ncpus=2:mem=4gb+n2:ncpus=4") == [("n1", 2, 4 * GiB), ("n2", 4, None)]


@pytest.mark.parametrize("text", ["(n1:ncpus=2", "(n1:ncpus)", "(:ncpus=2)", "(n1:mem=lots)",
                                  "((n1))", "", 5])
def test_an_exec_vnode_that_does_not_parse_is_refused(text):
    with pytest.raises(KitError):
        jr.parse_exec_vnode(text)


def test_exec_host_with_and_without_a_cpu_count():
    assert jr.parse_exec_host("n0/0*2+n1/1+n1.cluster.org/2*8") == [("n0", 2), ("n1", 1),
                                                                     ("n1.cluster.org", 8)]
    with pytest.raises(KitError):
        jr.parse_exec_host("n0:ncpus=2")


# ------------------------------------------------------------------ the job


def test_default_chunk_mem_only_in_schedselect_and_exec_vnode(tmp_path):
    attrs = {
        "Resource_List": {"select": "1:ncpus=2:mem=4gb+2:ncpus=4", "walltime": "01:00:00"},
        "schedselect": "1:ncpus=2:mem=4gb+2:ncpus=4:mem=8gb",
        "exec_host": "n0/0*2+n1/0*4+n2/0*4",
        "exec_vnode": "(n0:ncpus=2:mem=4194304kb)+(n1:ncpus=4:mem=8388608kb)+(n2:ncpus=4:mem=8388608kb)",
    }
    job = job_of(tmp_path, ["n0", "n1", "n2"], attrs)
    assert summary(job) == [(0, 2, 4 * GiB, 0, "n0"), (1, 4, 8 * GiB, 1, "n1"), (2, 4, 8 * GiB, 2, "n2")]
    assert job.source == ("qstat -f -F json: chunks from schedselect, what each got from exec_vnode, "
                          "node-file lines by mpiprocs")
    assert job.warnings == []
    # A user does not see schedselect (manager-only): exec_vnode still tells the mem.
    del attrs["schedselect"]
    job = job_of(tmp_path, ["n0", "n1", "n2"], attrs)
    assert summary(job) == [(0, 2, 4 * GiB, 0, "n0"), (1, 4, 8 * GiB, 1, "n1"), (2, 4, 8 * GiB, 2, "n2")]


def test_exec_vnode_multi_vnode_chunks_and_mpiprocs_lines(tmp_path):
    attrs = {"Resource_List": {"select": "1:ncpus=2+2:ncpus=16:mpiprocs=2"},
             "exec_vnode": "(n0:ncpus=2:mem=2gb)+(n1[0]:ncpus=8:mem=8gb+n1[1]:ncpus=8:mem=8gb)"
                           "+(n2[0]:ncpus=8:mem=8gb+n2[1]:ncpus=8:mem=8gb)"}
    job = job_of(tmp_path, ["n0", "n1", "n1", "n2", "n2"], attrs)
    assert summary(job) == [(0, 2, 2 * GiB, 0, "n0"), (1, 16, 16 * GiB, 1, "n1"), (2, 16, 16 * GiB, 3, "n2")]


def test_exec_host_gives_hosts_and_ncpus_without_exec_vnode(tmp_path):
    attrs = {"Resource_List": {"select": 3}, "exec_host": "n0/0*4+n1/0*4+n2/0*4"}
    job = job_of(tmp_path, ["n0", "n1", "n2"], attrs)
    assert summary(job) == [(0, 4, None, 0, "n0"), (1, 4, None, 1, "n1"), (2, 4, None, 2, "n2")]
    assert "hosts from exec_host" in job.source


def test_nas_node_files_have_ncpus_lines_per_chunk(tmp_path):
    attrs = {"Resource_List": {"select": "1:ncpus=2+2:ncpus=4:mem=8gb"}}
    lines = ["r1i0n0"] * 2 + ["r1i0n1"] * 4 + ["r1i0n2"] * 4
    job = job_of(tmp_path, lines, attrs)
    assert summary(job) == [(0, 2, None, 0, "r1i0n0"), (1, 4, 8 * GiB, 2, "r1i0n1"),
                            (2, 4, 8 * GiB, 6, "r1i0n2")]
    assert job.source.endswith("node-file lines by mpiprocs = ncpus (NASA NAS rule)")


def test_fqdns_in_the_node_file_and_short_names_in_exec_vnode_are_matched(tmp_path):
    # default_chunk gave mpiprocs=2, which only the (manager-only) schedselect shows.
    attrs = {"Resource_List": {"select": "3:ncpus=4:mem=4gb"},
             "exec_vnode": "(n0:ncpus=4:mem=4gb)+(n1:ncpus=4:mem=4gb)+(n2:ncpus=4:mem=4gb)"}
    lines = ["n0.cluster.org", "n0.cluster.org", "n1.cluster.org", "n1.cluster.org",
             "n2.cluster.org", "n2.cluster.org"]
    job = job_of(tmp_path, lines, attrs)
    assert summary(job) == [(0, 4, 4 * GiB, 0, "n0.cluster.org"), (1, 4, 4 * GiB, 2, "n1.cluster.org"),
                            (2, 4, 4 * GiB, 4, "n2.cluster.org")]
    assert job.source.endswith("node-file lines by host name")


def test_place_pack_puts_every_chunk_on_one_host(tmp_path):
    attrs = {"Resource_List": {"select": "3:ncpus=2:mem=2gb", "place": "pack"},
             "exec_host": "n0/0*2+n0/1*2+n0/2*2",
             "exec_vnode": "(n0:ncpus=2:mem=2gb)+(n0:ncpus=2:mem=2gb)+(n0:ncpus=2:mem=2gb)"}
    job = job_of(tmp_path, ["n0"] * 3, attrs)
    assert summary(job) == [(0, 2, 2 * GiB, 0, "n0"), (1, 2, 2 * GiB, 1, "n0"), (2, 2, 2 * GiB, 2, "n0")]


def test_a_chunk_without_node_file_lines_borrows_its_hosts(tmp_path):
    attrs = {"Resource_List": {"select": "1:ncpus=2+1:ncpus=0:mem=4gb"},
             "exec_vnode": "(n0:ncpus=2)+(n0:mem=4gb)"}
    job = job_of(tmp_path, ["n0"], attrs)
    assert summary(job) == [(0, 2, None, 0, "n0"), (1, 0, 4 * GiB, 0, "n0")]


def test_the_node_file_fallback_warns_and_groups_runs_of_a_host(tmp_path):
    job = job_of(tmp_path, ["n0", "n0", "n1", "n2"], None, ncpus="8")
    assert [(c.node, c.mpiprocs, c.first_line, c.ncpus, c.mem) for c in job.chunks] == [
        ("n0", 2, 0, 8, None), ("n1", 1, 2, 8, None), ("n2", 1, 3, 8, None)]
    assert job.source == "$PBS_NODEFILE and $NCPUS"
    assert any("one chunk per run of identical lines" in w and "ncpus=8" in w for w in job.warnings)


def test_a_select_that_does_not_match_the_node_file_is_not_trusted(tmp_path):
    job = job_of(tmp_path, ["n0", "n1"], {"Resource_List": {"select": "3:ncpus=1"}})
    assert len(job.chunks) == 2 and job.source == "$PBS_NODEFILE and $NCPUS"
    assert any("3 chunks do not match the 2 lines" in w for w in job.warnings)


def test_an_exec_vnode_that_does_not_parse_is_left_out_with_a_warning(tmp_path):
    job = job_of(tmp_path, ["n0", "n1"], {"Resource_List": {"select": "2:ncpus=4:mem=2gb"},
                                          "exec_vnode": "(n0:ncpus=4:mem=2gb)+(n1:ncpus=four)"})
    assert summary(job) == [(0, 4, 2 * GiB, 0, "n0"), (1, 4, 2 * GiB, 1, "n1")]
    assert any("cannot read exec_vnode" in w for w in job.warnings)


# ------------------------------------------------------------------ GPUs


def test_ngpus_from_the_select_statement_zero_when_not_given():
    chunks = jr.parse_select("1:ncpus=2+2:ncpus=8:ngpus=4:mem=16gb")
    assert [(c.ncpus, c.ngpus) for c in chunks] == [(2, 0), (8, 4), (8, 4)]
    with pytest.raises(KitError, match="ngpus must be a whole number, not 'x'") as err:
        jr.parse_select("1:ncpus=2:ngpus=x")
    assert err.value.code == BAD_VALUE


def test_exec_vnode_sums_ngpus_over_a_chunks_vnodes():
    # A GPU node as sites describe it: one vnode per socket, two GPUs each.
    text = ("(g1[0]:ncpus=4:ngpus=2:mem=8gb+g1[1]:ncpus=4:ngpus=2:mem=8gb)"
            "+(n2:ncpus=2:mem=2gb)")
    assert jr.exec_vnode_chunks(text) == [("g1", 8, 16 * GiB, 4), ("n2", 2, 2 * GiB, None)]
    assert jr.parse_exec_vnode(text) == [("g1", 8, 16 * GiB), ("n2", 2, 2 * GiB)]  # as before
    with pytest.raises(KitError, match="exec_vnode ngpus"):
        jr.exec_vnode_chunks("(g1:ncpus=4:ngpus=two)")


def test_a_mixed_job_each_chunk_with_what_exec_vnode_says_it_got(tmp_path):
    # The user wrote ngpus only in the select; a default_chunk could add it: exec_vnode wins.
    attrs = {"Resource_List": {"select": "1:ncpus=2+2:ncpus=8:ngpus=4"},
             "exec_host": "n0/0*2+g1/0*8+g2/0*8",
             "exec_vnode": "(n0:ncpus=2)+(g1[0]:ncpus=4:ngpus=2+g1[1]:ncpus=4:ngpus=2)"
                           "+(g2:ncpus=8:ngpus=4)"}
    job = job_of(tmp_path, ["n0", "g1", "g2"], attrs)
    assert [(c.node, c.ncpus, c.ngpus) for c in job.chunks] == [("n0", 2, 0), ("g1", 8, 4), ("g2", 8, 4)]
    attrs["exec_vnode"] = "(n0:ncpus=2:ngpus=1)+(g1:ncpus=8:ngpus=2)+(g2:ncpus=8)"
    job = job_of(tmp_path, ["n0", "g1", "g2"], attrs)
    assert [c.ngpus for c in job.chunks] == [1, 2, 4]  # g2: exec_vnode names none, select's stays
    # exec_host alone (no exec_vnode): the select's ngpus.
    del attrs["exec_vnode"]
    assert [c.ngpus for c in job_of(tmp_path, ["n0", "g1", "g2"], attrs).chunks] == [0, 4, 4]


def test_the_node_file_fallback_knows_no_gpus_and_says_so_when_this_node_has_some(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("g0\ng1\n")
    env = {"PBS_NODEFILE": str(nodefile), "NCPUS": "8", "CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}
    job = jr.read_job(env, (None, "no qstat on PATH"), "10", 0, 0)
    assert [c.ngpus for c in job.chunks] == [0, 0]
    assert any(w.startswith("this node has GPUs (CUDA_VISIBLE_DEVICES=GPU-a,GPU-b) but the node "
                            "file does not tell") for w in job.warnings)
    env["CUDA_VISIBLE_DEVICES"] = ""
    assert not any("GPUs" in w for w in jr.read_job(env, (None, "x"), "10", 0, 0).warnings)


def test_no_node_file_says_to_use_qsub(tmp_path):
    with pytest.raises(KitError, match="submit with qsub"):
        jr.read_job({}, (None, "x"))
    with pytest.raises(KitError, match="is this a PBS job"):
        jr.read_job({"PBS_NODEFILE": str(tmp_path / "missing")}, (None, "x"))


garbage = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
              st.sampled_from(["(n0:ncpus=2)", "(n0:ncpus=2)+(n1:mem=1gb)", "n0/0*2", "2:ncpus=2",
                               "01:00:00", "(", "n0/x", "3", "1:mem=-1gb", "2:ncpus=2:ngpus=2",
                               "(n0:ncpus=2:ngpus=2)+(n1:ngpus=x)", "1:ngpus=-1"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["select", "walltime", "mem", "x"]), inner,
                                            max_size=3)),
    max_leaves=8)
attr_names = st.sampled_from(["Resource_List", "resources_used", "schedselect", "exec_vnode",
                              "exec_host", "Variable_List", "x"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(garbage, st.dictionaries(attr_names, garbage, max_size=6)),
       st.one_of(st.none(), st.text(max_size=4)))
def test_garbage_attributes_give_a_job_never_a_traceback(tmp_path_factory, attrs, ncpus):
    tmp = tmp_path_factory.mktemp("g")
    job = job_of(tmp, ["n0", "n0", "n1"], attrs, ncpus=ncpus)
    assert job.chunks and all(c.first_line >= 0 and c.node for c in job.chunks[:1])
    assert job.walltime.source in ("pbs", "none")


# ------------------------------------------------------------------ walltime


def test_walltime_forms():
    assert jr.parse_walltime("01:00:00") == 3600
    assert jr.parse_walltime("90:00") == 5400
    assert jr.parse_walltime("45") == 45
    for bad in ("1h", "1:2:3:4", "", "-5", "1:-5"):
        with pytest.raises(KitError):
            jr.parse_walltime(bad)


def test_time_left_counts_from_the_script_start_or_pbs_usage():
    attrs = {"Resource_List": {"walltime": "00:10:00"}, "resources_used": {"walltime": "00:00:30"}}
    wall, warnings = jr.job_walltime(attrs, None, started=1000, now=1010)
    assert (wall.limit, wall.left, wall.source, warnings) == (600, 570, "pbs", [])
    wall, _ = jr.job_walltime(attrs, "00:01:00", started=1000, now=1100)
    assert (wall.limit, wall.left, wall.source) == (600, 500, "pbs")  # PBS wins over the knob


def test_walltime_from_the_knob_when_pbs_does_not_tell():
    wall, warnings = jr.job_walltime({"Resource_List": {"select": "1"}}, "30:00", started=1000, now=1060)
    assert (wall.limit, wall.left, wall.source, warnings) == (1800, 1740, "WALLTIME", [])


def test_walltime_unknown_is_minus_one_with_a_warning_saying_what_to_do():
    wall, warnings = jr.job_walltime(None, None, started=0, now=5)
    assert (wall.limit, wall.left, wall.source) == (-1, -1, "none")
    assert len(warnings) == 1
    assert "held until PBS ends the job" in warnings[0]
    assert "set WALLTIME to the -l walltime you asked for" in warnings[0]


def test_a_bad_walltime_attribute_is_a_warning_and_the_knob_stands_in():
    wall, warnings = jr.job_walltime({"Resource_List": {"walltime": [1]}}, "10", 0, 0)
    assert (wall.limit, wall.source) == (10, "WALLTIME")
    wall, warnings = jr.job_walltime({"Resource_List": {"walltime": "soon"}}, None, 0, 0)
    assert wall.source == "none" and "cannot read Resource_List.walltime" in warnings[0]


def test_only_ascii_digits_are_counts():
    """str.isdigit() takes '²' and '٣', which int() refuses: every helper asks is_digits."""
    from dask_pbs_kit.args import is_digits

    assert is_digits("0") and is_digits("123")
    assert not any(is_digits(t) for t in ("", "²", "٣", "1²", " 1", "-1", "1.0"))
