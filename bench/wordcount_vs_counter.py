#!/usr/bin/env python3
"""The scale-out benchmark's PROGRAM: the example's wordcount on the job's cluster against
one process with collections.Counter over the same files, in the same run.

    python3 bench/wordcount_vs_counter.py CORPUS_DIR RESULT_JSON

Both sides use the example's own count_lines() (so they count the same words the same
way); the answers must be equal, else the exit status is 1. Writes the two times to
RESULT_JSON.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys
import time
from collections import Counter

KIT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(KIT, "examples"))


def load_example():
    path = os.path.join(KIT, "examples", "dask-wordcount.py")
    spec = importlib.util.spec_from_file_location("dask_wordcount", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serial(wc, files: list) -> Counter:
    total: Counter = Counter()
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            total.update(wc.count_lines(fh))
    return total


def main() -> int:
    corpus, result = sys.argv[1], sys.argv[2]
    files = sorted(glob.glob(os.path.join(corpus, "*.txt")))
    wc = load_example()
    from job_client import connect

    with connect() as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        start = time.perf_counter()
        counts = wc.wordcount(client, files, show_progress=False)
        dask_s = time.perf_counter() - start
    start = time.perf_counter()
    expected = serial(wc, files)
    serial_s = time.perf_counter() - start
    same = counts == expected
    with open(result, "w") as fh:
        json.dump({"dask_s": dask_s, "serial_s": serial_s, "same": same,
                   "workers": len(workers), "threads": sum(w["nthreads"] for w in workers.values()),
                   "words": sum(expected.values()), "distinct": len(expected),
                   "bytes": sum(os.path.getsize(f) for f in files)}, fh)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
