"""What should I deploy? OFAS beside depth pruning, channel pruning, early exit and smaller networks, at one budget,
timed as deployed, with a verdict per latency target.

    python recipes/compare.py --init runs/base --dataset DATA --budget-epochs 5 --targets 0.75 0.6 \
        --static resnet20=cifar:resnet20@r20.safetensors --output runs/compare
    accelerate launch --num_processes 1 recipes/compare.py ...      (one process: its timings need the machine)

Writes OUTPUT/compare.json, compare.md and compare.png. Flags: python recipes/compare.py --help; the logic is
ofas_wrap.compare.compare (docs/compare.md).
"""

import sys

if __name__ == "__main__":
    from ofas_wrap.compare import main

    sys.exit(main())
