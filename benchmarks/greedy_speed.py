"""How much faster is ``fixed_subset``'s greedy search when each step's trials share their prefix? (session 14)

One greedy step tries closing every open gate. ``_trials_whole`` runs each trial as a whole forward with its pattern
forced (the search before session 14); ``_trials_from_shared_prefix`` runs the blocks before a tried gate once per
batch and every trial from its gate on (what ``ofas_wrap.training.greedy_path`` does on an OFASModel now). Both count
the correct predictions of every trial; the counts must be equal. Random weights and random images: only the time
and the equality mean something. Take it on a quiet machine.

Usage (from the repository root)::

    python benchmarks/greedy_speed.py                        # ResNet-38 and ResNet-110, 256 images, 2 threads
    python benchmarks/greedy_speed.py --depths 20 --images 32 # a few seconds

Session 14, 2 quiet cores: ResNet-38 (18 trials) 7.63 s -> 3.35 s (2.28x), ResNet-110 (54 trials) 80.65 s -> 31.45 s
(2.56x), equal counts.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    import ofas_wrap
    from ofas_wrap.training._controls import _trials_from_shared_prefix, _trials_whole

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[38, 110])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for depth in args.depths:
        model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(depth), input_size=(3, 32, 32), variant="II").eval()
        images, labels = torch.randn(args.images, 3, 32, 32), torch.randint(0, 10, (args.images,))
        keep = torch.ones(model.num_gates, dtype=torch.bool)
        candidates = keep.nonzero().flatten().tolist()
        with torch.no_grad():
            started = time.perf_counter()
            whole = _trials_whole(model, images, labels, keep, candidates, 256)
            middle = time.perf_counter()
            shared = _trials_from_shared_prefix(model, images, labels, keep, candidates, 256)
            ended = time.perf_counter()
        print(f"resnet{depth}: {len(candidates)} trials on {args.images} images: whole {middle - started:.2f} s, "
              f"shared prefix {ended - middle:.2f} s, {(middle - started) / (ended - middle):.2f}x, "
              f"equal counts {whole == shared}", flush=True)
        if whole != shared:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
