"""The recipes, runnable from an installed wheel: ``python -m ofas_wrap.recipes.NAME`` (or ``accelerate launch -m
ofas_wrap.recipes.NAME``), the same functions and flags as the documented ``recipes/NAME.py`` scripts of a clone.

    python -m ofas_wrap.recipes.train_backbone --model cifar:resnet20 --dataset fashion-mnist --output runs/base
    accelerate launch --multi_gpu --num_processes 2 -m ofas_wrap.recipes.e2e_finetune --init runs/base --output runs/e2e

Each module only calls the phase's function (``ofas_wrap.training``) through
``main_guard`` (one-line errors, exit code 2); importing it runs nothing.
"""

__all__ = ["RECIPES"]

RECIPES = ("train_backbone", "e2e_finetune", "rl_finetune", "evaluate")
