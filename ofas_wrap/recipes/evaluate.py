"""``python -m ofas_wrap.recipes.evaluate``: the installed form of ``recipes/evaluate.py``."""

import sys

if __name__ == "__main__":
    from ..training._evaluate import main

    sys.exit(main())
