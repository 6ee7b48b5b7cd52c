"""``ofas_wrap.rl`` is :mod:`ofas_wrap.training.rl` (the RL equations moved into the training package): ``import
ofas_wrap.rl`` and ``from ofas_wrap.rl import gate_rewards`` keep working and give the same module object:
>>> import ofas_wrap.rl, ofas_wrap.training.rl; ofas_wrap.rl is ofas_wrap.training.rl
True
"""

import sys

from .training import rl as _rl

sys.modules[__name__] = _rl
