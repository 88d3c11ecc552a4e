"""dask-pbs-kit helpers: standard library only, Python 3.9+, no dask import.

Modules: errors (the one error class), pbs_sizes (PBS sizes, memory division),
schedfile (scheduler.json, dashboard URL, SSH tunnel), envfile (job environment
for pbsdsh tasks, per-host variables kept), qstat_reader (a job's attributes from qstat:
JSON, the released encoders' invalid JSON, folded text), job_resources (the job: chunks,
what each got, node-file lines, walltime), plan (the launch plan, a pure function of the
job and the knobs), gpus (a GPU worker's device on its host, dask-cuda or not), args (tiny
CLI parsing).
"""
