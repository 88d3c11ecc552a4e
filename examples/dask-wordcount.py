#!/usr/bin/env python3
"""Count words with dask.bag on the job's cluster: the model of a production program.

Connects with job_client.connect() (Client(scheduler_file=...) plus the job's TLS
certificate, see job_client.py), counts the words of text files given as globs
(default: the running Python's own standard-library sources, always there), shows
progress, then prints the top K words and the totals. Exit status 0 when done.

    python3 examples/dask-wordcount.py                      # stdlib sources
    python3 examples/dask-wordcount.py 'data/*.txt' --top 20
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from collections import Counter

WORD = re.compile(r"\w+")


def words(line: str) -> list:
    """The words of a line, as counted here: runs of letters, digits and _, lower-cased."""
    return WORD.findall(line.lower())


def count_lines(lines) -> Counter:
    counts: Counter = Counter()
    for line in lines:
        counts.update(words(line))
    return counts


def merge(counters) -> Counter:
    total: Counter = Counter()
    for counts in counters:
        total.update(counts)
    return total


def default_files() -> list:
    """The standard library's top-level sources: a few MB that every Python has."""
    return sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))


def expand(patterns: list) -> list:
    files = sorted({f for p in patterns for f in glob.glob(p, recursive=True) if os.path.isfile(f)})
    if not files:
        raise SystemExit(f"dask-wordcount: no file matches {' '.join(patterns)}")
    return files


def wordcount(client, files: list, blocksize: str | None = "64MiB",
              show_progress: bool | None = None) -> Counter:
    """The word counts of files on the client's cluster; a progress bar on a terminal or in
    a PBS job's output unless show_progress is False."""
    import dask.bag as db
    from distributed import progress

    bag = db.read_text(files, blocksize=blocksize, encoding="utf-8", errors="replace")
    future = client.compute(bag.reduction(count_lines, merge))
    if show_progress is None:
        show_progress = sys.stdout.isatty() or bool(os.environ.get("PBS_JOBID"))
    if show_progress:
        progress(future)
        print()
    return future.result()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="*", help="globs of text files (default: stdlib sources)")
    parser.add_argument("--scheduler-file", default=os.environ.get("DASK_SCHEDULER_FILE", "scheduler.json"),
                        help="the job's scheduler.json (default: $DASK_SCHEDULER_FILE, else ./scheduler.json)")
    parser.add_argument("--top", type=int, default=10, help="how many words to print (default 10)")
    opts = parser.parse_args(argv)
    files = expand(opts.patterns) if opts.patterns else default_files()
    from job_client import connect  # beside this file: the job's scheduler file and TLS certificate

    with connect(opts.scheduler_file) as client:
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        print(f"counting words in {len(files)} files on {workers} workers")
        counts = wordcount(client, files)
    print(f"top {opts.top} words:")
    for word, n in counts.most_common(opts.top):
        print(f"{n:>12}  {word}")
    print(f"total: {sum(counts.values())} words, {len(counts)} distinct, {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
