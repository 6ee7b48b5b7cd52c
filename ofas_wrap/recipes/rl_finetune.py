"""``python -m ofas_wrap.recipes.rl_finetune``: the installed form of ``recipes/rl_finetune.py``."""

import sys

if __name__ == "__main__":
    from ..training import main_guard, rl_finetune

    sys.exit(main_guard(rl_finetune))
