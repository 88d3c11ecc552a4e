#!/usr/bin/env python3
"""The templates' helper commands: plan, env-file, memory (see --help)."""
import sys

from dask_pbs_kit.kit_cli import main

sys.exit(main())
