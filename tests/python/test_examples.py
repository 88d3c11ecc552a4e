"""The examples on a real cluster: wordcount equals collections.Counter; the lookup table reads."""
import importlib.util
import sys
from collections import Counter

import pytest
from distributed import Client, LocalCluster

from conftest import KIT

sys.path.insert(0, str(KIT / "examples"))  # the examples import job_client from beside them


def load(name):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), KIT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


def test_wordcount_equals_counter_over_the_same_files(client, tmp_path):
    wc = load("dask-wordcount")
    (tmp_path / "a.txt").write_text("The cat\nthe DOG, the end.\n" * 50)
    (tmp_path / "b.txt").write_text("héllo wörld\n\nsnake_case 42\n" * 30)
    files = wc.expand([str(tmp_path / "*.txt")])
    expected = Counter()
    for f in files:
        for line in open(f, encoding="utf-8"):
            expected.update(wc.words(line))
    assert wc.wordcount(client, files, blocksize="64B") == expected  # many partitions


@pytest.mark.parametrize("text", [
    b"one two\nthree\n\nfour five six\n",
    b"no newline at the end\nlast",
    b"crlf\r\nlines\r\n",
    "h\u00e9llo w\u00f6rld\nna\u00efve\n".encode(),
    b"",
])
def test_the_ranges_of_a_file_share_out_its_lines_exactly_once(tmp_path, text):
    wc = load("dask-wordcount")
    path = tmp_path / "f.txt"
    path.write_bytes(text)
    whole = [line.decode("utf-8") for line in text.splitlines(keepends=True)]
    for blocksize in range(1, len(text) + 2):  # every cut: inside a line, on a newline, past the end
        got = [line for piece in wc.pieces([str(path)], blocksize) for line in wc.lines_in_range(*piece)]
        assert got == whole, blocksize
    assert [line for piece in wc.pieces([str(path)], None) for line in wc.lines_in_range(*piece)] == whole


def test_wordcount_of_no_text_is_empty(client, tmp_path):
    wc = load("dask-wordcount")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert wc.wordcount(client, [str(tmp_path / "empty.txt")]) == Counter()


def test_wordcount_default_input_is_the_stdlib_and_matches_counter(client):
    wc = load("dask-wordcount")
    files = wc.default_files()
    assert len(files) > 50
    expected = Counter()
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                expected.update(wc.words(line))
    assert wc.wordcount(client, files) == expected


def test_wordcount_without_a_scheduler_file_says_how_to_start_one(tmp_path, capsys):
    wc = load("dask-wordcount")
    with pytest.raises(SystemExit, match="no scheduler file .*qsub scripts/launch-dask-cluster-path.pbs"):
        wc.main(["--scheduler-file", str(tmp_path / "none.json")])


def test_lookup_table_reads_whitespace_columns_with_current_pandas(client, tmp_path):
    lut = load("lookup-table")
    path = tmp_path / "lut.txt"
    lut.generate_table(str(path), rows=40)
    head = lut.read_table(client, str(path)).head()
    assert head.shape == (5, 12)
    assert list(head[4]) == [940.0] * 5
