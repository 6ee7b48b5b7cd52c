"""A fallback for ``accelerate launch --multi_gpu --num_processes N recipes/X.py``: start the N processes it asked for.

The supported ways to run N gloo processes on CPUs are ``accelerate launch --multi_gpu --num_processes N`` (on a
machine without GPU the recipes use the CPU) and ``torchrun --nproc_per_node N``; the Makefile and the docs use the
first. This module stays only for users who type ``--cpu``, with a loud warning, and refuses a multi-machine launch
(it would give every machine the ranks 0..N-1).

``accelerate launch --cpu`` uses accelerate's *simple launcher*: it sets ``MASTER_ADDR`` / ``MASTER_PORT`` and
expects ``mpirun`` to start the processes; without an MPI hostfile it starts **one** process (accelerate 1.x,
huggingface/accelerate#2741), which would then train alone while the user believes in N. The recipes call
:func:`relaunch_cpu_processes` first (this module sits next to them and imports nothing heavy, so the supervising
process stays small): when they see exactly that situation (the CPU flag, a master address, no
rank information), they read N from the ``accelerate launch`` command line of their parent process and start N
workers with the ``torch.distributed`` environment (``RANK``, ``WORLD_SIZE``, ...), which ``Accelerator`` turns
into a gloo process group. The current process only supervises: it waits, forwards SIGINT/SIGTERM, stops the
other workers when one fails, and exits with the workers' exit code.

``torchrun --nproc_per_node N recipes/X.py`` and ``accelerate launch --multi_gpu --num_processes N`` on a machine
without GPU need none of this (the recipes use the CPU when no GPU is present).

Example:
    >>> _num_processes_from_argv(["accelerate", "launch", "--cpu", "--num_processes", "2", "x.py", "--num_processes=9"])
    2
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Optional

__all__ = ["relaunch_cpu_processes", "SPAWNED_ENV"]

SPAWNED_ENV = "OFAS_WRAP_SPAWNED_RANK"
_RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                   "PMI_RANK")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "y", "on")


def _num_processes_from_argv(argv: Sequence[str], flag: str = "num_processes") -> Optional[int]:
    """``--num_processes N`` (or another integer ``flag``) of an ``accelerate launch`` command line (the flags
    before the script only)."""
    for index, item in enumerate(argv):
        if item.endswith(".py") and index > 1:
            break
        for name in (f"--{flag}", f"--{flag.replace('_', '-')}"):
            if item == name and index + 1 < len(argv):
                value = argv[index + 1]
            elif item.startswith(name + "="):
                value = item.split("=", 1)[1]
            else:
                continue
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _parent_argv() -> list[str]:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def relaunch_cpu_processes(argv: Optional[Sequence[str]] = None) -> Optional[int]:
    """Start the N CPU workers ``accelerate launch --multi_gpu --num_processes N`` asked for; ``None`` if not needed.

    Returns the exit code to leave with when this process supervised the workers, or ``None`` when the caller
    should simply run (one process, or already one of several).
    """
    if not _flag("ACCELERATE_USE_CPU") or "MASTER_ADDR" not in os.environ:
        return None
    if any(name in os.environ for name in _RANK_VARIABLES) or SPAWNED_ENV in os.environ:
        return None
    parent = _parent_argv()
    count = _num_processes_from_argv(parent)
    if count is None or count <= 1:
        if count is None:
            print("ofas-wrap: WARNING: `accelerate launch --cpu` starts one process and the number asked for could "
                  "not be read; running ONE process. For N gloo processes use `accelerate launch --multi_gpu "
                  "--num_processes N` or `torchrun --nproc_per_node N`", file=sys.stderr)
        return None
    machines = _num_processes_from_argv(parent, "num_machines")
    if machines is not None and machines > 1:
        print("ofas-wrap: error: `accelerate launch --cpu --num_machines > 1` is not supported by this fallback (each "
              "machine would start ranks 0..N-1); use `accelerate launch --multi_gpu --num_machines M "
              "--machine_rank R ...` or `torchrun --nnodes M ...`", file=sys.stderr)
        return 2
    host = os.environ.get("MASTER_ADDR") or "127.0.0.1"
    port = int(os.environ.get("MASTER_PORT") or 29500)
    if not _port_free(host, port):
        port = _free_port(host)
    command = [sys.executable, *(sys.argv if argv is None else argv)]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // count))
    workers: list[subprocess.Popen] = []
    for rank in range(count):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(count),
                   LOCAL_WORLD_SIZE=str(count), MASTER_ADDR=host, MASTER_PORT=str(port), OMP_NUM_THREADS=threads)
        env[SPAWNED_ENV] = str(rank)
        workers.append(subprocess.Popen(command, env=env))
    print(f"ofas-wrap: WARNING: `accelerate launch --cpu` starts one process (accelerate#2741); started {count} "
          f"workers here (gloo, port {port}). Prefer `accelerate launch --multi_gpu --num_processes {count}` or "
          f"`torchrun --nproc_per_node {count}`", file=sys.stderr)

    def forward(signum, frame):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = 0
        while True:
            codes = [worker.poll() for worker in workers]
            failed = [c for c in codes if c not in (None, 0)]
            if failed and code == 0:
                code = failed[0]
                deadline = time.time() + 30  # let the others stop by themselves, then terminate them
                while time.time() < deadline and any(w.poll() is None for w in workers):
                    time.sleep(0.2)
                for worker in workers:
                    if worker.poll() is None:
                        worker.terminate()
            if all(c is not None for c in (worker.poll() for worker in workers)):
                break
            time.sleep(0.2)
        return code or max((worker.returncode or 0) for worker in workers)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
