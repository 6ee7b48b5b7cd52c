"""``python -m ofas_wrap.recipes.compare``: the installed form of ``recipes/compare.py``."""

import sys

if __name__ == "__main__":
    from ..compare import main

    sys.exit(main())
