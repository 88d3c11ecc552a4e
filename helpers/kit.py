#!/usr/bin/env python3
"""The kit's helper commands: what the job asks (plan, env-file, tls, wait-ready, banner,
jupyter-prepare, jupyter-wait, join-check, retire), what each task asks on its node
(interface, host-memory, task-setup, gpu) and what users may ask (memory): see --help."""
import sys

from dask_pbs_kit.kit_cli import main

sys.exit(main())
