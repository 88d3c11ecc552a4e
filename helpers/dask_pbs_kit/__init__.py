"""dask-pbs-kit helpers: standard library only, Python 3.9+ (`retire` and dask_start import
distributed when they run, in the job's own Python).

Modules: errors (the one error class and the exit codes), args (tiny CLI parsing),
kit_cli (`kit.py COMMAND`, each command's module loaded only when it runs), pbs_sizes (PBS
sizes, memory division), schedfile (scheduler.json, dashboard URL, SSH tunnel, worker
counts), dashboard_cli (`dashboard_url.py`), envfile (job environment for pbsdsh tasks,
per-host variables kept), qstat_reader (a job's attributes from qstat: JSON, the released
encoders' invalid JSON, folded text), job_resources (the job: chunks, what each got,
node-file lines, walltime), plan (the launch plan, a pure function of the job and the
knobs), tls_files (the job's CA and certificates), ready (waiting for every worker),
banner (where the cluster is), netif (INTERFACE=auto), host_memory (a worker's memory
limit on its host), dask_start (a task's Dask process in one Python, and task-setup), gpus
(a GPU worker's device on its host, dask-cuda or not), jupyter (JUPYTER=yes), grow
(join-check, retire: worker-only jobs).
"""
