#!/usr/bin/env python3
"""The origin's interactive session for current pandas: read a whitespace-delimited
lookup table with dask.dataframe and show its head.

    python3 examples/lookup-table.py                  # generates a small table first
    python3 examples/lookup-table.py my_table.txt     # your own table

pandas 3 removed delim_whitespace=True: the separator is now sep=r"\\s+".
"""
from __future__ import annotations

import argparse
import os
import sys


def generate_table(path: str, rows: int = 200) -> None:
    """A table shaped like the origin's LUT: angles, then reflectance-like columns."""
    with open(path, "w") as fh:
        for i in range(rows):
            angle = 5 * (i % 18)
            fh.write(f"{angle:3d} {i // 18:3d}   0  0.1  940.0  0.1  0.0  0.2  "
                     f"{0.98302 - angle * 1e-5:.5f}  0.98302  {0.96870 - angle * 1e-5:.5f}  0.0\n")


def read_table(client, path: str):
    import dask.dataframe as dd

    return dd.read_csv(path, sep=r"\s+", header=None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", nargs="?", help="whitespace-delimited text table (default: generate one)")
    parser.add_argument("--scheduler-file", default=os.environ.get("DASK_SCHEDULER_FILE", "scheduler.json"))
    opts = parser.parse_args(argv)
    path = opts.table or "lookup-table-example.txt"
    if not opts.table:
        generate_table(path)
    from job_client import connect  # beside this file: the job's scheduler file and TLS certificate

    with connect(opts.scheduler_file) as client:
        print(client)
        ddf = read_table(client, path)
        print(ddf.head())
        print(f"{len(ddf)} rows, {len(ddf.columns)} columns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
