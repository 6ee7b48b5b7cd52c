"""Phase 0: train a backbone with plain supervised learning (only when no trained weights exist).

    python recipes/train_backbone.py --model cifar:resnet20 --dataset fashion-mnist --in-chans 1 --output runs/base
    accelerate launch --multi_gpu --num_processes 2 recipes/train_backbone.py --dataset DATA --output runs/base

Flags: python recipes/train_backbone.py --help; the logic is ofas_wrap.training.train_backbone.
"""

import sys

from _cpu_launch import relaunch_cpu_processes  # noqa: I001  (next to this script; imports no torch)

if __name__ == "__main__":
    code = relaunch_cpu_processes()  # the --cpu fallback (recipes/_cpu_launch.py)
    if code is not None:
        sys.exit(code)
    from ofas_wrap.training import main_guard, train_backbone

    sys.exit(main_guard(train_backbone))
