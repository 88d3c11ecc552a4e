"""PROGRAM of the GPU test's job: ask every worker which devices the CUDA driver shows it.

python3 probe_devices.py OUT.json: connects with the job's scheduler file
($DASK_SCHEDULER_FILE), and writes to OUT.json, for each worker: its name, its
resources, its CUDA_VISIBLE_DEVICES and what cuda_driver.cuda_devices() says there; and
on which worker a task submitted with resources={"GPU": 1} ran.
"""
import json
import os
import sys

import cloudpickle
from dask.distributed import Client, get_worker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_driver  # noqa: E402

cloudpickle.register_pickle_by_value(cuda_driver)  # the workers do not have this folder


def probe():
    uuids, why = cuda_driver.cuda_devices()
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "uuids": uuids, "why": why}


def where():
    return get_worker().name


def main(out: str) -> None:
    with Client(scheduler_file=os.environ["DASK_SCHEDULER_FILE"]) as client:
        seen = client.run(probe)
        info = client.scheduler_info(n_workers=-1)["workers"]
        ran = client.gather([client.submit(where, pure=False, resources={"GPU": 1})
                             for _ in range(4)])
        report = {
            "workers": {address: {"name": str(info[address]["name"]),
                                  "resources": info[address].get("resources", {}), **seen[address]}
                        for address in seen},
            "gpu_tasks_ran_on": [str(name) for name in ran],
        }
    with open(out, "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
