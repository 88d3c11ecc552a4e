#!/usr/bin/env python3
"""Print the dashboard URL of a Dask scheduler from its scheduler.json (see --help)."""
import sys

from dask_pbs_kit.dashboard_cli import main

sys.exit(main())
