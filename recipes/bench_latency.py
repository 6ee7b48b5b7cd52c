#!/usr/bin/env python
"""Deprecated: the old name of device_latency.py (the latency tool for the device), kept for scripts that call it.

Runs device_latency.py from this folder with the same arguments; copy that file to the device beside this one.
"""

import os
import runpy
import sys

NEW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device_latency.py")

sys.stderr.write("DeprecationWarning: bench_latency.py is renamed device_latency.py; call that (this name goes "
                 "in a later release)\n")
if not os.path.isfile(NEW):
    sys.exit(f"error: {NEW} is missing: bench_latency.py only runs it; copy device_latency.py beside it")
if __name__ == "__main__":
    sys.argv[0] = NEW
    runpy.run_path(NEW, run_name="__main__")
else:  # imported as a module: the new script's functions (main, parse_args, ...)
    globals().update({k: v for k, v in runpy.run_path(NEW).items() if not k.startswith("__")})
