"""``python -m ofas_wrap.recipes.train_backbone``: the installed form of ``recipes/train_backbone.py``."""

import sys

if __name__ == "__main__":
    from ..training import main_guard, train_backbone

    sys.exit(main_guard(train_backbone))
