"""The benchmark's PROGRAM: write the time it ends to the file named by argv[1]."""
import sys
import time

with open(sys.argv[1], "w") as fh:
    fh.write(repr(time.time()))
