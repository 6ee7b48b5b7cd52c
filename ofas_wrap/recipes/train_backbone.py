"""``python -m ofas_wrap.recipes.train_backbone``: the installed form of ``recipes/train_backbone.py``."""

import sys

if __name__ == "__main__":
    from .._recipes import train_backbone
    from .._training import main_guard

    sys.exit(main_guard(train_backbone))
