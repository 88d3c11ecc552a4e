"""dask-pbs-kit helpers: standard library only, Python 3.9+, no dask import.

Modules: errors (the one error class), pbs_sizes (PBS sizes, memory division),
schedfile (scheduler.json, dashboard URL, SSH tunnel), envfile (job environment
for pbsdsh tasks), job_resources (chunks, node file, walltime), args (tiny CLI parsing).
"""
