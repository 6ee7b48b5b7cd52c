"""Phase 3: the threshold sweep: accuracy, executed blocks, FLOPs and batch-1 TorchScript latency per T.

    python recipes/evaluate.py runs/rl --thresholds 0.3:0.8:0.05
    accelerate launch --multi_gpu --num_processes 2 recipes/evaluate.py runs/rl

Writes RUN/eval/results.csv, results.json, accuracy_vs_cost.png (the original backbone marked) and the TorchScript
model at the T chosen on the validation split. Flags: python recipes/evaluate.py --help; the logic is
ofas_wrap.training.evaluate_run.
"""

import sys

from _cpu_launch import relaunch_cpu_processes  # noqa: I001  (next to this script; imports no torch)

if __name__ == "__main__":
    code = relaunch_cpu_processes()  # the --cpu fallback (recipes/_cpu_launch.py)
    if code is not None:
        sys.exit(code)
    from ofas_wrap.training._evaluate import main

    sys.exit(main())
