"""Phase 1: train the backbone and an OFAS head end to end with straight-through gates (Section IV-A).

    python recipes/e2e_finetune.py --init runs/base --variant I --output runs/e2e
    accelerate launch --multi_gpu --num_processes 2 recipes/e2e_finetune.py --init runs/base --output runs/e2e

Flags: python recipes/e2e_finetune.py --help; the logic is ofas_wrap.training.e2e_finetune.
"""

import sys

from _cpu_launch import relaunch_cpu_processes  # noqa: I001  (next to this script; imports no torch)

if __name__ == "__main__":
    code = relaunch_cpu_processes()  # the --cpu fallback (recipes/_cpu_launch.py)
    if code is not None:
        sys.exit(code)
    from ofas_wrap.training import e2e_finetune, main_guard

    sys.exit(main_guard(e2e_finetune))
