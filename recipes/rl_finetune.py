"""Phase 2: RL fine-tuning of the OFAS head, Section IV-B of the paper (Eq. 5-10).

    python recipes/rl_finetune.py --init runs/e2e --output runs/rl
    accelerate launch --multi_gpu --num_processes 2 recipes/rl_finetune.py --init runs/e2e --output runs/rl

Flags: python recipes/rl_finetune.py --help; the logic is ofas_wrap.training.rl_finetune.
"""

import sys

from _cpu_launch import relaunch_cpu_processes  # noqa: I001  (next to this script; imports no torch)

if __name__ == "__main__":
    code = relaunch_cpu_processes()  # the --cpu fallback (recipes/_cpu_launch.py)
    if code is not None:
        sys.exit(code)
    from ofas_wrap.training import main_guard, rl_finetune

    sys.exit(main_guard(rl_finetune))
