"""``python -m ofas_wrap.recipes.e2e_finetune``: the installed form of ``recipes/e2e_finetune.py``."""

import sys

if __name__ == "__main__":
    from ..training import e2e_finetune, main_guard

    sys.exit(main_guard(e2e_finetune))
