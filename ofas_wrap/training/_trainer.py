"""The training loop of the recipes: the Accelerator, the loop, checkpoints, the run directory.

Every recipe (``recipes/train_backbone.py``, ``e2e_finetune.py``, ``rl_finetune.py``) builds a parser with
:func:`build_parser`, a :class:`Trainer`, and calls :meth:`Trainer.fit` with a step function. The loop:

- runs unchanged under ``python`` (one process) and ``accelerate launch --cpu --num_processes 2`` (gloo DDP):
  ``Accelerator.prepare`` shards the data and wraps the model, ``gather_for_metrics`` collects evaluations;
- drives the learning-rate schedule by the **global** optimizer step (never the step inside the epoch);
- checkpoints with ``save_state`` every ``--checkpoint-every`` steps and at each epoch end, atomically (written to
  a hidden folder, then renamed), keeps the last ``--keep-checkpoints``; ``--resume`` continues from the newest
  one with the same step count, epoch, position in the epoch, schedule, optimizer and RNG states;
- stops on a NaN/inf loss before the bad step touches the weights (:class:`NonFiniteLossError`), leaving the last
  good checkpoint; stops cleanly on SIGINT/SIGTERM at the next step with a checkpoint;
- writes ``args.json``, ``data.json``, ``metrics.json`` and the model (``save_pretrained``) into ``--output``.

Example (a complete tiny run on IDX files written on the spot):
    >>> import tempfile, numpy as np, torch
    >>> from ofas_wrap import data, training
    >>> root = tempfile.mkdtemp()
    >>> for split in ("train", "t10k"):
    ...     data.write_idx(f"{root}/{split}-images-idx3-ubyte", np.zeros((16, 8, 8), np.uint8))
    ...     data.write_idx(f"{root}/{split}-labels-idx1-ubyte", np.arange(16, dtype=np.uint8) % 2)
    >>> args = training.build_parser("demo").parse_args(
    ...     ["--dataset", root, "--output", root + "/run", "--max-steps", "2", "--batch-size", "8", "--no-progress"])
    >>> trainer = training.Trainer(args, phase="demo")
    >>> bundle = trainer.load_data()
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> def step(module, batch):
    ...     x, y = batch
    ...     logits = module(x)
    ...     return {"loss": torch.nn.functional.cross_entropy(logits, y), "logits": logits, "targets": y}
    >>> summary = trainer.fit(net, opt, step, save_fn=lambda run_dir: None)  # doctest: +ELLIPSIS
    [demo] done: 2 steps, ...
    run folder: ...
    >>> summary["global_step"]
    2
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .._atomic import write_atomic
from ..data import DataError, ImageData, load_image_data, make_loader
from ._errors import NonFiniteLossError, RunError, TrainingInterrupted
from ._runs import (
    ARGS_NAME,
    CHECKPOINTS,
    DATA_NAME,
    LATEST,
    METRICS_NAME,
    _check_replaceable,
    _fill_data_args,
    _write_json,
    latest_checkpoint,
)
from ._schedule import make_scheduler
from ._speed import (
    ChannelsLastLoader,
    as_channels_last,
    compile_in_place,
    compile_units,
    resolve_mixed_precision,
    uncompile,
)

__all__ = ["TrainState", "Trainer"]


# ------------------------------------------------------------------------------------------------ state
@dataclass
class TrainState:
    """Where the run is; registered with ``accelerator.register_for_checkpointing`` so it resumes exactly."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    history: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    resumed_from: list = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)



# ---------------------------------------------------------------------------------------------- trainer
StepFn = Callable[[nn.Module, Any], dict[str, Any]]


class Trainer:
    """One recipe run: validates the run folder, owns the Accelerator, loads data, runs the loop, saves.

    Nothing is written until :meth:`fit` starts (after the data and the model were built), so a bad flag, a
    missing dataset or an existing output folder fail before the run folder is touched.
    """

    def __init__(self, args: argparse.Namespace, phase: str, init_args: Optional[dict[str, Any]] = None,
                 find_unused_parameters: bool = False) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import set_seed

        self.args = args
        self.phase = phase
        _fill_data_args(args, init_args)
        if not args.dataset:
            raise RunError("--dataset is required (or --init a run that recorded one)")
        self.run_dir = Path(args.output)
        self.checkpoint_root = self.run_dir / CHECKPOINTS
        self.resume_from: Optional[Path] = None
        if args.resume and args.overwrite:
            raise RunError("--resume and --overwrite contradict each other")
        if args.resume:
            self.resume_from = self.latest_checkpoint()
            if self.resume_from is None:
                raise RunError(f"--resume: no checkpoint in {self.checkpoint_root} to continue from")
        elif self.run_dir.exists() and any(self.run_dir.iterdir()) and not args.overwrite:
            raise RunError(f"output folder {self.run_dir} exists and is not empty; pass --resume to continue that run, "
                           "--overwrite to replace it, or choose another --output")
        elif args.overwrite and self.run_dir.exists():
            _check_replaceable(self.run_dir, args)
        if args.stop_at_step is not None and args.max_steps is not None and args.stop_at_step > args.max_steps:
            raise RunError(f"--stop-at-step {args.stop_at_step} is beyond --max-steps {args.max_steps}")
        log_with = None if args.report_to == "none" else args.report_to
        if log_with not in (None, "all"):
            from accelerate.tracking import get_available_trackers

            if log_with not in {str(t) for t in get_available_trackers()}:
                raise RunError(f"--report-to {log_with}: that tracker's package is not installed (accelerate would "
                               f"silently log nothing); pip install {log_with}, or use --report-to none")
        cpu = args.cpu or not torch.cuda.is_available()  # so torchrun / --multi_gpu on a CPU box gives gloo DDP
        mixed_precision, precision_note = resolve_mixed_precision(getattr(args, "mixed_precision", None),
                                                                  "cpu" if cpu else "cuda")
        # routing in Python (stochastic depth) leaves some parameters without a gradient in a step
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else None
        try:
            self.accelerator = Accelerator(cpu=cpu, log_with=log_with, project_dir=str(self.run_dir / "logs"),
                                           mixed_precision=mixed_precision, kwargs_handlers=handlers,
                                           gradient_accumulation_steps=getattr(args, "gradient_accumulation_steps", 1))
        except ValueError as err:
            if "already been initialized" not in str(err):
                raise
            raise RunError(f"--mixed-precision {mixed_precision}: an earlier run in this Python process used other "
                           "Accelerate settings, and Accelerate fixes them once per process. Run this training in a "
                           "new process (python recipes/<recipe>.py ...), or keep the earlier --mixed-precision "
                           f"(Accelerate said: {err})") from None
        self.is_main = self.accelerator.is_main_process
        args.mixed_precision = mixed_precision  # recorded in args.json as what ran
        if precision_note:
            self.print(precision_note)
        set_seed(args.seed, device_specific=True)  # DDP copies rank 0's initial weights to the other ranks
        self.state = TrainState()
        self.data: Optional[ImageData] = None
        self._stop_signal: Optional[str] = None
        self.started = time.time()

    # ------------------------------------------------------------------------------------------- data
    def load_data(self, channels: Optional[int] = None,
                  normalization: Optional[dict[str, Sequence[float]]] = None) -> ImageData:
        """Load the dataset (the main process first, so a cache is built once); raises DataError early.

        ``channels`` and ``normalization`` come from an ``--init`` model: its input channels and the normalisation
        it was trained with (so every phase sees the same inputs whatever its subsets).
        """
        args = self.args
        normalization = self._normalization_flags(normalization)
        in_chans: Union[int, str] = args.in_chans
        if channels is not None:
            if in_chans not in ("auto", str(channels)):
                raise RunError(f"--in-chans {in_chans} does not match the model, which takes {channels} channels")
            in_chans = channels
        with self.accelerator.main_process_first():
            self.data = load_image_data(
                args.dataset, in_chans=in_chans, val_size=args.val_size, train_subset=args.train_subset,
                eval_subset=args.eval_subset, split_seed=args.split_seed, image_size=args.image_size,
                augment=not args.no_augment, train_split=args.train_split, test_split=args.test_split,
                image_column=args.image_column, label_column=args.label_column, config_name=args.dataset_config,
                normalization=normalization, val_from=args.val_from,
            )
        if len(self.data.val) == 0 and args.eval_every_epoch:
            self.print("note: --val-size 0, so the 'validation' numbers come from the test split")
        return self.data

    def _normalization_flags(self, recorded: Optional[dict[str, Sequence[float]]]
                             ) -> Optional[dict[str, Sequence[float]]]:
        args = self.args
        mean, std = getattr(args, "mean", None), getattr(args, "std", None)
        if mean is None and std is None:
            return recorded
        if mean is None or std is None or len(mean) != len(std) or any(v <= 0 for v in std):
            raise RunError("--mean and --std go together, one value per channel each, std > 0 "
                           "(e.g. --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225)")
        given = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        if recorded is not None and ([float(v) for v in recorded["mean"]], [float(v) for v in recorded["std"]]) != (
                given["mean"], given["std"]):
            raise RunError(f"--mean/--std differ from the normalisation the --init model was trained with "
                           f"({recorded}); leave them out")
        return given

    # ---------------------------------------------------------------------------------------- helpers
    def print(self, *parts: Any) -> None:
        self.accelerator.print(*parts)

    def latest_checkpoint(self) -> Optional[Path]:
        return latest_checkpoint(self.run_dir)

    def save_checkpoint(self) -> Path:
        """``save_state`` into a hidden folder, then rename it to ``checkpoints/step-NNNNNNNN`` (atomic)."""
        acc = self.accelerator
        name = f"step-{self.state.global_step:08d}"
        final = self.checkpoint_root / name
        staging = self.checkpoint_root / f".tmp-{name}"
        if self.is_main:
            if self.checkpoint_root.is_dir():  # leftovers of saves a kill interrupted
                for pattern in (".tmp-step-*", ".old-step-*"):
                    for stale in list(self.checkpoint_root.glob(pattern)):
                        shutil.rmtree(stale, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        # pickled state dicts, not safetensors: OFAS models share tensors between the stem / shortcut graphs
        # and the backbone's blocks, which safetensors does not round-trip
        acc.save_state(str(staging), safe_serialization=False)
        acc.wait_for_everyone()
        if self.is_main:
            if final.is_dir():  # the same step saved again (an epoch end right after a periodic save): newer wins
                stale = self.checkpoint_root / f".old-{name}"
                shutil.rmtree(stale, ignore_errors=True)
                os.replace(final, stale)
                os.replace(staging, final)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.replace(staging, final)
            write_atomic(self.checkpoint_root / LATEST, name + "\n")
            kept = sorted(p for p in self.checkpoint_root.glob("step-*") if p.is_dir())
            for old in kept[:-self.args.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _install_signal_handlers(self) -> dict:
        previous = {}

        first = [0.0]

        def handler(signum, frame):  # first signal: stop at the next step boundary; a later one: stop now
            if self._stop_signal is not None:
                if time.time() - first[0] < 2.0:  # the same Ctrl-C, delivered twice (terminal + a supervisor)
                    return
                signal.signal(signum, previous.get(signum, signal.SIG_DFL))
                raise KeyboardInterrupt
            first[0] = time.time()
            self._stop_signal = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

    def _should_stop(self, loss_finite: bool) -> tuple[bool, bool]:
        """(a loss is not finite on some process, a stop was asked on some process): every process agrees.

        The stop request goes through accelerate's ``set_trigger`` / ``check_trigger`` (one process's signal stops
        them all at the same step); a non-finite loss anywhere is summed across processes the same way."""
        acc = self.accelerator
        if self._stop_signal is not None:
            acc.set_trigger()
        stop = acc.check_trigger()
        nonfinite = not loss_finite
        if acc.num_processes > 1:
            flag = torch.tensor([0.0 if loss_finite else 1.0], device=acc.device)
            nonfinite = bool(acc.reduce(flag, reduction="sum")[0] > 0)
        return nonfinite, stop

    # -------------------------------------------------------------------------------------------- loop
    def fit(self, module: nn.Module, optimizer: torch.optim.Optimizer, step_fn: StepFn, *,
            eval_fn: Optional[Callable[[nn.Module, Any], dict[str, float]]] = None,
            save_fn: Optional[Callable[[Path], None]] = None,
            train_mode_fn: Optional[Callable[[nn.Module], None]] = None,
            extra_state: Sequence[Any] = (), config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Train ``module`` with ``optimizer``; ``step_fn(prepared_module, batch)`` returns a dict with ``loss``.

        ``step_fn`` may also return ``logits`` and ``targets`` (for the running accuracy), ``skip`` (fraction of
        gates skipped) and any float ``metrics``. ``eval_fn(unwrapped_module, val_loader)`` gives the validation
        metrics at each epoch end and at the end; ``save_fn(run_dir)`` saves the model (main process only);
        ``train_mode_fn(module)`` is called after ``module.train()`` (e.g. to freeze BatchNorm statistics).
        Returns the summary also written to ``metrics.json``.
        """
        from tqdm.auto import tqdm

        args, acc, state = self.args, self.accelerator, self.state
        if self.data is None:
            self.load_data()
        data = self.data
        train_loader = make_loader(data.train, args.batch_size, shuffle=True, seed=args.seed)
        sampler = train_loader.sampler
        val_loader = make_loader(data.val if len(data.val) else data.test, args.eval_batch_size)
        channels_last = bool(getattr(args, "channels_last", False))
        if channels_last:
            module.to(memory_format=torch.channels_last)
        module, optimizer, train_loader, val_loader = acc.prepare(module, optimizer, train_loader, val_loader)
        eval_loader = ChannelsLastLoader(val_loader) if channels_last else val_loader
        compiled: list[nn.Module] = []
        if getattr(args, "compile", False):
            compiled = compile_units(acc.unwrap_model(module))
            compile_in_place(compiled)
        batches_per_epoch = len(train_loader)
        if batches_per_epoch == 0:
            raise DataError("the training split yields no batch")
        # accelerate's accumulate syncs every K batches and at the end of the loader: ceil(batches / K) steps
        steps_per_epoch = math.ceil(batches_per_epoch / acc.gradient_accumulation_steps)
        total_steps = args.max_steps or args.epochs * steps_per_epoch
        num_epochs = math.ceil(total_steps / steps_per_epoch)
        self.total_steps = total_steps  # read by step functions whose terms follow the progress (--penalty-ramp)
        scheduler = make_scheduler(optimizer.optimizer, args.schedule, total_steps, args.warmup_steps,
                                   args.milestones)
        acc.register_for_checkpointing(scheduler, state, *extra_state)

        # ---- the run folder: written from here on
        if self.resume_from is not None:
            acc.load_state(str(self.resume_from))
            state.resumed_from.append(state.global_step)
            self.print(f"resumed {self.run_dir} from {self.resume_from.name}: step {state.global_step}/{total_steps}, "
                       f"epoch {state.epoch}, batch {state.step_in_epoch} of {batches_per_epoch}")
        elif self.is_main:
            if args.overwrite and self.run_dir.exists():
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        run_args = {**vars(args), "world_size": acc.num_processes, "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps, "num_epochs": num_epochs, **(config or {})}
        if self.is_main:
            _write_json(self.run_dir / ARGS_NAME, run_args)
            _write_json(self.run_dir / DATA_NAME, data.info.to_dict())
        if args.report_to != "none":
            hparams = {k: v for k, v in run_args.items() if isinstance(v, (int, float, str, bool))}
            acc.init_trackers(self.phase, config=hparams)

        self._stop_signal = None
        previous_handlers = self._install_signal_handlers()
        bar = tqdm(total=total_steps, initial=state.global_step, disable=not self.is_main or args.no_progress,
                   desc=self.phase, dynamic_ncols=True, mininterval=1.0)
        running = {"loss": 0.0, "correct": 0, "count": 0, "skip": 0.0, "skip_n": 0, "steps": 0}
        stop_reason = None
        try:
            while state.global_step < total_steps and stop_reason is None:
                epoch = state.epoch
                sampler.set_epoch(epoch)
                train_loader.set_epoch(epoch)
                loader = train_loader
                if state.step_in_epoch:
                    loader = acc.skip_first_batches(train_loader, state.step_in_epoch)
                    loader.set_epoch(epoch)
                module.train()
                if train_mode_fn is not None:
                    train_mode_fn(module)
                for batch in loader:
                    tick = time.perf_counter()
                    if channels_last:
                        batch = as_channels_last(batch)
                    with acc.accumulate(module):  # K = 1: every batch syncs, as without it
                        out = self._first_step_guard(step_fn, module, batch, compiled)
                        loss = out["loss"]
                        nonfinite, stop_requested = self._should_stop(bool(torch.isfinite(loss.detach()).all()))
                        if nonfinite:
                            raise NonFiniteLossError(self._nan_message(float(loss.detach()), total_steps))
                        acc.backward(loss)  # divided by K inside
                        if acc.sync_gradients and args.grad_clip > 0:
                            acc.clip_grad_norm_(module.parameters(), args.grad_clip)
                        optimizer.step()  # the prepared optimizer steps and zeroes only when gradients sync
                        optimizer.zero_grad(set_to_none=True)
                    state.train_seconds += time.perf_counter() - tick
                    state.step_in_epoch += 1
                    state.samples += int(batch[1].shape[0]) * acc.num_processes
                    self._accumulate(running, out, loss)
                    if not acc.sync_gradients:
                        continue
                    scheduler.step()
                    state.global_step += 1
                    if self.is_main:
                        bar.update(1)
                        bar.set_postfix(self._postfix(running, scheduler), refresh=False)
                    if state.global_step % args.log_every == 0 or state.global_step == total_steps:
                        self._record(running, scheduler, epoch)
                    at_end = state.global_step >= total_steps
                    if args.checkpoint_every and state.global_step % args.checkpoint_every == 0 and not at_end:
                        self.save_checkpoint()
                    if args.stop_at_step is not None and state.global_step >= args.stop_at_step and not at_end:
                        stop_reason = f"--stop-at-step {args.stop_at_step}"
                    elif stop_requested:
                        stop_reason = self._stop_signal or "a signal on another process"
                    if stop_reason or at_end:
                        break
                if stop_reason is None and (state.step_in_epoch >= batches_per_epoch
                                            or state.global_step >= total_steps):
                    # epoch end: evaluate, then checkpoint (so a resumed run does not repeat the evaluation)
                    state.epoch += 1
                    state.step_in_epoch = 0
                    if eval_fn is not None and args.eval_every_epoch:
                        metrics = eval_fn(acc.unwrap_model(module), eval_loader)
                        self._record_eval(metrics, epoch)
                        module.train()
                        if train_mode_fn is not None:
                            train_mode_fn(module)
                    self.save_checkpoint()
            if stop_reason is not None:
                self.save_checkpoint()
                raise TrainingInterrupted(
                    f"stopped by {stop_reason} at step {state.global_step}/{total_steps}; checkpoint saved in "
                    f"{self.latest_checkpoint()}; continue with the same command and --resume"
                )
        finally:
            bar.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)

        # ---- the end: final evaluation, the model, metrics.json
        final = {}
        if state.evals and state.evals[-1]["step"] == state.global_step:
            final = {k: v for k, v in state.evals[-1].items() if k not in ("step", "epoch")}
        elif eval_fn is not None:
            final = eval_fn(acc.unwrap_model(module), eval_loader)
        summary = {
            "phase": self.phase, "global_step": state.global_step, "total_steps": total_steps,
            "epochs_completed": state.epoch, "samples_seen": state.samples,
            "train_seconds": round(state.train_seconds, 2), "wall_seconds": round(time.time() - self.started, 2),
            "samples_per_second": round(state.samples / max(state.train_seconds, 1e-9), 1),
            "world_size": acc.num_processes, "resumed_from_steps": state.resumed_from,
            "final_val": final, "evals": state.evals, "history": state.history,
        }
        if args.report_to != "none":
            acc.log({f"final/{k}": v for k, v in final.items() if isinstance(v, (int, float))}, step=state.global_step)
            # not end_training(): it also destroys the process group, which the barrier below and a later fit in
            # this process (compare) still need; main_guard ends it when the recipe is done
            for tracker in acc.trackers:
                tracker.finish()
        acc.wait_for_everyone()
        # the caller's model without the mixed-precision wrapper prepare() put on its forward: with it TorchScript
        # cannot compile the model ("Can't redefine method: forward"), so compare timed the rows it had just
        # fine-tuned in bf16 eagerly (found on the ResNet-56, session 21)
        inner = acc.unwrap_model(module, keep_fp32_wrapper=False)
        if channels_last:  # back to the default layout: safetensors stores contiguous tensors only
            inner.to(memory_format=torch.contiguous_format)
        if self.is_main:
            if save_fn is not None:
                save_fn(self.run_dir)
            _write_json(self.run_dir / METRICS_NAME, summary)
        acc.wait_for_everyone()
        self.print(self._summary_text(summary))
        return summary

    def _first_step_guard(self, step_fn: StepFn, module: nn.Module, batch: Any, compiled: list) -> dict[str, Any]:
        """``step_fn`` once; with ``--compile``, a compilation failure on the first step falls back to eager."""
        if not compiled:
            return step_fn(module, batch)
        try:
            out = step_fn(module, batch)
        except Exception as exc:  # torch._dynamo / inductor errors have no common public base class
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.print(f"note: --compile failed ({type(exc).__name__}: {first_line[:200]}); training eagerly")
            uncompile(compiled)
            compiled.clear()
            return step_fn(module, batch)
        compiled.clear()  # compiled and ran: later failures are real errors
        return out

    # ------------------------------------------------------------------------------------ bookkeeping
    def _last_finite_checkpoint(self) -> Optional[Path]:
        """The newest checkpoint whose model weights are all finite (a non-finite lr poisons them silently)."""
        root = self.checkpoint_root
        found = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True) if root.is_dir() else []
        for candidate in found:
            files = sorted(candidate.glob("pytorch_model*.bin")) + sorted(candidate.glob("model*.safetensors"))
            try:
                tensors = []
                for file in files:
                    if file.suffix == ".safetensors":
                        from safetensors.torch import load_file

                        tensors += list(load_file(str(file)).values())
                    else:
                        tensors += list(torch.load(str(file), map_location="cpu", weights_only=True).values())
            except Exception:  # unreadable: not good
                continue
            if files and all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
                return candidate
        return None

    def _nan_message(self, value: float, total_steps: int) -> str:
        last = self._last_finite_checkpoint()
        where = (f"the last good checkpoint (finite weights) is {last}" if last
                 else "no checkpoint with finite weights was written yet")
        step = f"{self.state.global_step + 1}/{total_steps}"
        return (f"the loss became {value} at step {step} (epoch {self.state.epoch}); "
                f"the run stopped before this step changed the weights; {where}. Lower --lr (now {self.args.lr}) "
                "or set --grad-clip, then rerun (with --resume to start from that checkpoint)")

    @staticmethod
    def _accumulate(running: dict, out: dict, loss: Tensor) -> None:
        running["loss"] += float(loss.detach())
        running["steps"] += 1
        if "logits" in out and "targets" in out:
            running["correct"] += int((out["logits"].detach().argmax(1) == out["targets"]).sum())
            running["count"] += int(out["targets"].numel())
        if out.get("skip") is not None:
            running["skip"] += float(out["skip"])
            running["skip_n"] += 1
        for key, value in (out.get("metrics") or {}).items():
            running.setdefault(f"m:{key}", 0.0)
            running[f"m:{key}"] += float(value)

    @staticmethod
    def _means(running: dict) -> dict[str, float]:
        steps = max(running["steps"], 1)
        means = {"loss": running["loss"] / steps}
        if running["count"]:
            means["acc"] = running["correct"] / running["count"]
        if running["skip_n"]:
            means["skip"] = running["skip"] / running["skip_n"]
        for key, value in running.items():
            if key.startswith("m:"):
                means[key[2:]] = value / steps
        return means

    def _postfix(self, running: dict, scheduler) -> dict[str, str]:
        means = self._means(running)
        shown = {"loss": f"{means['loss']:.3f}"}
        if "acc" in means:
            shown["acc"] = f"{means['acc']:.3f}"
        if "skip" in means:
            shown["skip"] = f"{means['skip']:.2f}"
        shown["lr"] = f"{scheduler.get_last_lr()[0]:.2e}"
        return shown

    def _record(self, running: dict, scheduler, epoch: int) -> None:
        if not running["steps"]:
            return
        row = {"step": self.state.global_step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
               **{k: round(v, 6) for k, v in self._means(running).items()}}
        self.state.history.append(row)
        if self.args.report_to != "none":
            self.accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
        for key in list(running):
            running[key] = 0 if isinstance(running[key], int) else 0.0

    def _record_eval(self, metrics: dict[str, float], epoch: int) -> None:
        row = {"step": self.state.global_step, "epoch": epoch, **metrics}
        self.state.evals.append(row)
        if self.args.report_to != "none":
            self.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=self.state.global_step)
        text = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        self.print(f"[{self.phase}] epoch {epoch} step {self.state.global_step}: val {text}")

    def _summary_text(self, summary: dict[str, Any]) -> str:
        final = summary["final_val"]
        parts = [f"[{self.phase}] done: {summary['global_step']} steps, {summary['train_seconds']:.1f} s of training "
                 f"({summary['samples_per_second']:.0f} samples/s, {summary['world_size']} process(es))"]
        if final:
            parts.append("validation: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in final.items()))
        parts.append(f"run folder: {self.run_dir}")
        return "\n".join(parts)
