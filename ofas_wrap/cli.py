"""The ``ofas-wrap`` command line: ``ofas-wrap inspect SPEC`` (more subcommands register themselves here)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from ._config import DEFAULT_CALIBRATION_IMAGES, OFASConfig, check_threshold

__all__ = ["main", "build_parser"]


def _add_inspect(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="print the surgery plan of a backbone (blocks, shortcuts, FLOPs = 2 x multiply-adds, the "
                        "head to insert)",
        description="Print what adaptify() would do to a backbone, without changing anything.",
    )
    parser.add_argument("spec", help="backbone spec: cifar:resnet38, timm:resnet50, torchvision:resnet18, ...")
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N",
                        help="H W, or C H W, or one size for square inputs (default: the model's own)")
    parser.add_argument("--variant", default=OFASConfig.variant, choices=OFASConfig.VARIANTS)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--in-chans", type=int, default=None)
    parser.add_argument("--no-gate-downsample", action="store_true",
                        help="leave blocks with a projection shortcut always on")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=_run_inspect)


def _input_size(values: Optional[Sequence[int]], channels: int) -> Optional[tuple[int, int, int]]:
    if not values:
        return None
    if len(values) == 1:
        return (channels, values[0], values[0])
    if len(values) == 2:
        return (channels, values[0], values[1])
    if len(values) == 3:
        return (values[0], values[1], values[2])
    raise SystemExit(f"--input-size takes 1, 2 or 3 numbers (S | H W | C H W), got {len(values)}")


def _run_inspect(args: argparse.Namespace) -> int:
    import json

    from ._factory import create_model

    size = _input_size(args.input_size, args.in_chans or 3)
    model = create_model(args.spec, num_classes=args.num_classes, in_chans=args.in_chans, variant=args.variant,
                         gate_downsample=not args.no_gate_downsample, input_size=size)
    if args.json:
        print(json.dumps(model.plan.to_dict(), indent=2))
    else:
        print(f"backbone: {args.spec} ({type(model.unwrap()).__name__})")
        print(model.plan.table())
    return 0


# Other modules add subcommands by appending a function that takes the subparsers object.
SUBCOMMANDS: list[Callable] = [_add_inspect]


# ------------------------------------------------------------------------------------- export / bench
_SPEC_SOURCES = ("cifar:", "timm:", "torchvision:")


def _add_source_arguments(parser) -> None:
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N",
                        help="H W, or C H W, or one size for square inputs (a backbone spec only; default: its own)")
    parser.add_argument("--num-classes", type=int, default=None, help="(a backbone spec only)")
    parser.add_argument("--in-chans", type=int, default=None, help="(a backbone spec only)")
    parser.add_argument("--threshold", type=_threshold, nargs="+", metavar="T", default=None,
                        help="threshold(s) T in [0, 1) (default: the model's own)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a saved folder whose backbone comes from your own factory (a .py file) run that "
                             "code to rebuild it")


def _threshold(text: str) -> float:
    """``--threshold`` values, checked as ``model.threshold = T`` checks them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threshold takes numbers, got {text!r}") from None
    try:
        return check_threshold(value, "--threshold")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load_source(args: argparse.Namespace, allow_torchscript: bool):
    """(model, config, kind) from a TorchScript file, a save_pretrained folder, a Hub repo id or a spec."""
    from pathlib import Path

    source = args.model
    path = Path(source)
    if path.is_file():
        if not allow_torchscript:
            raise ValueError(f"{source} is a file; export needs a save_pretrained folder, a repo id or a spec")
        from ._export import load_torchscript

        module, config = load_torchscript(path)
        return module, config, "torchscript"
    if not path.exists() and path.suffix in (".pt", ".pth", ".pt2", ".ts", ".safetensors"):
        raise ValueError(f"{source}: no such file")
    if not path.is_dir() and source.lower().startswith(_SPEC_SOURCES):
        from ._factory import create_model

        size = _input_size(args.input_size, args.in_chans or 3)
        model = create_model(source, num_classes=args.num_classes, in_chans=args.in_chans, input_size=size)
        print(f"note: {source} is built with random weights (its gates are untrained)", file=sys.stderr)
        return model.eval(), model.config, "spec"
    from ._model import OFASModel

    try:
        model = OFASModel.from_pretrained(source, trust_remote_code=getattr(args, "trust_remote_code", False))
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    return model, model.config, "pretrained"


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export an OFAS model to TorchScript (real skipping; loads with plain torch.jit.load)",
        description="Script an OFAS model (a save_pretrained folder, a Hub repo id, or a backbone spec with "
                    "random weights), check it against eager mode and write OUTPUT atomically. With "
                    "--format export: torch.export with torch.cond gates, batch of one (a .pt2 file). With "
                    "--format onnx: an ONNX If per gated block, batch of one (a .onnx file). With --prune PATTERN: "
                    "the depth-pruned network instead, the plain backbone with the blocks PATTERN removes taken "
                    "out (TorchScript, no gates), checked against the model with PATTERN forced. With --int8 "
                    "--calib-data DATASET: the INT8 ONNX graph (onnxruntime static quantization, the blocks still an "
                    "If each, the stem and the gating head float32), calibrated on --calib-images images of "
                    "DATASET's training split, never its test split.",
    )
    parser.add_argument("model", help="save_pretrained folder, Hub repo id, or backbone spec (cifar:resnet20)")
    parser.add_argument("output", help="the file to write, e.g. model.pt")
    parser.add_argument("--format", default=None, choices=["torchscript", "export", "onnx"],
                        help="default: torchscript (onnx with --int8)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch of the example input used for the check")
    parser.add_argument("--prune", type=_keep_pattern, default=None, metavar="PATTERN",
                        help="write the depth-pruned network: one 1 (keep) or 0 (remove) per gated block, in the "
                             "order `ofas-wrap inspect` lists them, e.g. 1,1,0,1 (commas optional)")
    int8 = parser.add_argument_group("INT8 (ONNX, batch of one; pip install 'ofas-wrap[onnx]')")
    int8.add_argument("--int8", action="store_true",
                      help="write the INT8 ONNX graph: onnxruntime's static quantization of the blocks (QDQ, "
                           "per-channel int8 weights, uint8 activations), each still an If, so a skipped block is "
                           "not computed; the stem and the gating head stay float32, so the gates are the float "
                           "model's decisions (checked on every calibration image)")
    int8.add_argument("--calib-data", default=None, metavar="DATASET",
                      help="the images to calibrate on, a dataset as the recipes take it (an image folder with "
                           "train/ and test/ or its .tar.gz, an IDX folder, a save_to_disk folder, a Hub id, "
                           "fashion-mnist); only its training split is read, never the test split. Normalised as "
                           "the model's config says (a run folder's recorded --image-size, --train-split and "
                           "--in-chans apply)")
    int8.add_argument("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                      help="training images picked at random (seed 0) to calibrate on")
    int8.add_argument("--per-tensor", action="store_true",
                      help="one weight scale per tensor instead of one per output channel")
    _add_source_arguments(parser)
    parser.set_defaults(func=_run_export)


def _keep_pattern(text: str) -> list[bool]:
    """``--prune`` values: 1 (keep) or 0 (remove) per gated block, comma-separated or written together."""
    digits = text.replace(",", "").replace(" ", "")
    if not digits or set(digits) - {"0", "1"}:
        raise argparse.ArgumentTypeError(f"--prune takes one 1 (keep) or 0 (remove) per gated block, e.g. 1,1,0,1; "
                                         f"got {text!r}")
    return [digit == "1" for digit in digits]


def _check_int8_flags(args: argparse.Namespace) -> None:
    """``export --int8``: every flag checked, and onnxruntime's quantization tools found, before any loading."""
    if not args.int8:
        if args.calib_data is not None or args.per_tensor:
            raise ValueError("--calib-data and --per-tensor are for --int8 (the INT8 ONNX graph); add --int8 or "
                             "leave them out")
        return
    if args.calib_data is None:
        raise ValueError("--int8 needs --calib-data DATASET: the training images to calibrate on (a few hundred "
                         "are picked from its training split, never from its test split)")
    if args.format not in (None, "onnx"):
        raise ValueError(f"--int8 writes an ONNX file (the INT8 graph with an If per gate): leave out --format "
                         f"{args.format} or give --format onnx")
    if args.prune is not None:
        raise ValueError("--int8 quantizes the adaptive ONNX graph; --prune writes the depth-pruned TorchScript "
                         "network: give one of them")
    if args.calib_images < 1:
        raise ValueError(f"--calib-images must be positive, got {args.calib_images}")
    from ._quantize import check_quantization_tools

    try:
        check_quantization_tools()
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None


def _calibration_from_dataset(args: argparse.Namespace, model):
    """``--calib-images`` images of ``--calib-data``'s training split, normalised for ``model``; a dataset whose
    images differ from the model's input in channels or size is refused."""
    import json

    from ._quantize import calibration_sample
    from .data import load_image_data

    run_args = {}
    recorded = Path(args.model) / "args.json"  # a recipe's run folder: the data flags it trained with
    if recorded.is_file():
        run_args = json.loads(recorded.read_text())
    expected = tuple(model.config["input_size"])
    in_chans = run_args.get("in_chans")
    normalization = model.config.get("normalization")
    if normalization is None:
        print("note: the model records no normalisation; the calibration images are normalised with the training "
              "split's own statistics", file=sys.stderr)
    if normalization is not None and len(normalization["mean"]) != expected[0]:
        normalization = None  # a mismatched dataset is refused below, with the channels named
    data = load_image_data(args.calib_data, in_chans=in_chans if in_chans not in (None, "auto") else "auto",
                           val_size=0, augment=False, image_size=run_args.get("image_size"),
                           train_split=run_args.get("train_split") or "train",
                           config_name=run_args.get("dataset_config"),
                           image_column=run_args.get("image_column"), label_column=run_args.get("label_column"),
                           normalization=normalization)
    info = data.info
    if info.channels != expected[0]:
        raise ValueError(f"--calib-data {args.calib_data} has {info.channels}-channel images, the model takes "
                         f"{expected[0]} channels (input {expected}); calibrate on the images it was trained on")
    if tuple(info.image_size) != tuple(expected[1:]):
        raise ValueError(f"--calib-data {args.calib_data} has {info.image_size[0]}x{info.image_size[1]} images, the "
                         f"model takes {expected[1]}x{expected[2]} (input {expected}); calibrate on the images it "
                         "was trained on")
    return calibration_sample(data.train, args.calib_images)


def _run_export(args: argparse.Namespace) -> int:
    import torch

    _check_int8_flags(args)
    if args.format is None:
        args.format = "onnx" if args.int8 else "torchscript"
    if args.prune is not None and (args.format != "torchscript" or args.threshold):
        raise ValueError("--prune writes a TorchScript file of the pruned network, which has no gates and no "
                         "threshold: leave out --format and --threshold")
    if Path(args.output).is_dir():
        raise ValueError(f"{args.output} is a folder; give the file to write, e.g. {Path(args.output) / 'model.onnx'}")
    model, config, _ = _load_source(args, allow_torchscript=False)
    if args.prune is not None:
        from ._export import export_torchscript
        from ._prune import check_keep

        if len(args.prune) != model.num_gates:
            raise ValueError(f"--prune has {len(args.prune)} values, but {args.model} has {model.num_gates} gated "
                             f"blocks ({', '.join(model.gated_block_names)}); give one 1 (keep) or 0 (remove) each")
        keep = check_keep(args.prune, model.gated_block_names)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
        example = torch.randn(args.batch_size, *model.config["input_size"], generator=torch.Generator().manual_seed(0))
        export_torchscript(model, args.output, example, prune=keep)
        removed = [name for name, kept in zip(model.gated_block_names, keep) if not kept]
        print(f"wrote {args.output} (torchscript, depth-pruned: {len(removed)} of {model.num_gates} gated blocks "
              f"removed{': ' + ', '.join(removed) if removed else ''})")
        return 0
    if args.threshold:
        if len(args.threshold) != 1:
            raise ValueError("export takes one --threshold value (it stays settable in the exported model)")
        model.threshold = args.threshold[0]
    batch = 1 if args.format in ("export", "onnx") else args.batch_size
    if batch < 1:
        raise ValueError(f"--batch-size must be positive, got {batch}")
    example = torch.randn(batch, *model.config["input_size"], generator=torch.Generator().manual_seed(0))
    if args.format == "export":
        from ._export import export_program

        program = export_program(model, example)
        torch.export.save(program, args.output)
    elif args.int8:
        from ._export import export_onnx

        calibration = _calibration_from_dataset(args, model)
        _quiet_onnxruntime()
        export_onnx(model, args.output, example, quantize="int8", calibration=calibration,
                    per_channel=not args.per_tensor)
        print(f"wrote {args.output} (onnx INT8, threshold {model.threshold:.3g}, {model.num_gates} gates; "
              f"calibrated on {len(calibration)} training images of {args.calib_data}; stem and head float32)")
        return 0
    elif args.format == "onnx":
        from ._export import export_onnx

        export_onnx(model, args.output, example)
    else:
        from ._export import export_torchscript

        export_torchscript(model, args.output, example)
    print(f"wrote {args.output} ({args.format}, threshold {model.threshold:.3g}, {model.num_gates} gates)")
    return 0


def _quiet_onnxruntime() -> None:
    """onnxruntime's warnings about unused initializers and pre-processing (while quantizing) are not the user's to
    act on: errors only, for this process (the command line's)."""
    import logging

    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="latency per threshold on this machine (torch.utils.benchmark), executed blocks, MFLOPs "
                      "(FLOPs = 2 x multiply-adds)",
        description="Measure median / p90 latency of an OFAS model at each --threshold on random inputs. MODEL "
                    "is a TorchScript file from `ofas-wrap export`, a save_pretrained folder, a Hub repo id or a "
                    "backbone spec (random weights). On real images: recipes/device_latency.py --data DIR.",
    )
    parser.add_argument("model", help="MODEL.pt, MODEL.onnx (timed with onnxruntime, batch 1), save_pretrained "
                                      "folder, Hub repo id, or backbone spec")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--torchscript", action="store_true", help="script an eager model before timing it")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--block-table", default=None, metavar="PATH.json",
                        help="instead of the threshold sweep, time what skipping each gated block saves at batch 1 "
                             "(its executed form minus its shortcut, on its recorded input) and write the table "
                             "to PATH.json: the recipes' --cost-table PATH.json then optimise what this device "
                             "pays (eager models only: a folder, Hub id or spec)")
    _add_source_arguments(parser)
    parser.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from ._bench import format_sweep, sweep_thresholds

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.block_table is not None:
        return _run_block_table(args)
    if str(args.model).lower().endswith(".onnx"):
        from ._bench import OnnxRuntimeModel

        if args.batch_size != 1 or args.device != "cpu" or args.torchscript:
            raise ValueError(".onnx files are timed with onnxruntime on the CPU at batch 1 (an ONNX If routes one "
                             "input): leave out --batch-size, --device and --torchscript")
        if not Path(args.model).is_file():
            raise ValueError(f"{args.model}: no such file")
        try:
            model = OnnxRuntimeModel(args.model, threads=args.threads)
        except ImportError:
            raise ValueError("timing an .onnx file needs onnxruntime: pip install 'ofas-wrap[onnx]'") from None
        config, kind = model.config, "onnx"
    else:
        model, config, kind = _load_source(args, allow_torchscript=True)
    if kind == "torchscript" and config.get("pruned") is not None:
        return _bench_pruned(args, model, config)
    if args.torchscript and kind != "torchscript":
        import warnings

        from ._assembly import build_config

        config = {**config, "flops": build_config(model)["flops"]}  # the scripted model has no plan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.script(model.eval())
    size = config["ofas"]["input_size"] if kind in ("torchscript", "onnx") else config["input_size"]
    example = torch.randn(args.batch_size, *size, generator=torch.Generator().manual_seed(0))
    thresholds = args.threshold or [float(model.gate_threshold)]
    results = sweep_thresholds(model, example, thresholds, runs=args.runs, warmup=args.warmup,
                               threads=args.threads, device=args.device, config=config)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        runtime = {"onnx": "onnxruntime", "torchscript": "TorchScript"}.get(kind, "TorchScript" if args.torchscript
                                                                            else "eager")
        if kind == "onnx" and model.precision == "int8":
            runtime = "onnxruntime, INT8"
        print(f"model: {args.model} ({runtime}), "
              f"input {args.batch_size}x{'x'.join(str(s) for s in size)} random normal")
        print(format_sweep(results))
    return 0


def _bench_pruned(args: argparse.Namespace, module, config: dict) -> int:
    """``ofas-wrap bench PRUNED.pt``: a depth-pruned network has no threshold, so one row: its latency, its blocks,
    its MFLOPs."""
    import json

    import torch

    from ._bench import measure_latency
    from ._plan import FLOPS_NOTE

    if args.threshold or args.torchscript:
        raise ValueError(f"{args.model} is a depth-pruned network (no gates, no threshold): leave out --threshold and "
                         "--torchscript")
    size = config["ofas"]["input_size"]
    example = torch.randn(args.batch_size, *size, generator=torch.Generator().manual_seed(0))
    result = measure_latency(module, example, runs=args.runs, warmup=args.warmup, threads=args.threads,
                             device=args.device)
    pruned = config["pruned"]
    blocks = len(config["ofas"]["blocks"])
    kept = blocks - len(pruned["removed_blocks"])
    mflops = pruned["flops"] / 1e6 if pruned.get("flops") else None
    if args.json:
        print(json.dumps({"latency": result.to_dict(), "kept_blocks": kept, "num_blocks": blocks,
                          "removed_blocks": pruned["removed_blocks"], "mflops": mflops}, indent=2))
        return 0
    print(f"model: {args.model} (TorchScript, depth-pruned: {kept} of {blocks} blocks), "
          f"input {args.batch_size}x{'x'.join(str(s) for s in size)} random normal")
    print(f"device {result.device}, {result.threads} threads, batch {result.batch_size}, {result.runs} runs after "
          f"{result.warmup} warm-up (torch {torch.__version__})")
    print(f"{'median ms':>10} {'p90 ms':>10} {'IQR ms':>9} {'ms/sample':>10} {'blocks':>9} {'MFLOPs':>9}")
    shown = f"{mflops:9.2f}" if mflops is not None else f"{'-':>9}"
    print(f"{result.median_ms:>10.3f} {result.p90_ms:>10.3f} {result.iqr_ms:>9.3f} {result.per_sample_ms:>10.3f} "
          f"{f'{kept}/{blocks}':>9} {shown}")
    if mflops is not None:
        print(f"MFLOPs: per sample; {FLOPS_NOTE}")
    return 0


def _run_block_table(args: argparse.Namespace) -> int:
    import json

    import torch

    from ._costs import measure_block_table, save_block_table

    target = Path(args.block_table)
    if args.batch_size != 1 or args.torchscript or args.threshold:
        raise ValueError("--block-table times each block at batch 1 in eager mode, at every threshold alike: leave "
                         "out --batch-size, --torchscript and --threshold")
    if target.is_dir() or not target.parent.is_dir():
        raise ValueError(f"--block-table {target}: give a file name in an existing folder")
    if str(args.model).lower().endswith((".onnx", ".pt", ".pth")):
        raise ValueError(f"{args.model}: an exported file has no separable blocks; time its save_pretrained folder "
                         "(or its backbone spec) with --block-table")
    model, config, kind = _load_source(args, allow_torchscript=False)
    example = torch.randn(1, *config["input_size"], generator=torch.Generator().manual_seed(0))
    table = measure_block_table(model, example, runs=args.runs, warmup=args.warmup, threads=args.threads,
                                device=args.device)
    save_block_table(table, target)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"model: {args.model} (eager), input 1x{'x'.join(str(s) for s in config['input_size'])}, "
          f"{table['threads']} thread(s), {table['device']}; full depth {table['full_depth_ms']:.3f} ms")
    print(f"{'gate':>4}  {'block':<28} {'run ms':>8} {'skip ms':>8} {'saved ms':>9}")
    for row in table["blocks"]:
        print(f"{row['gate']:>4}  {row['name']:<28} {row['run_ms']:>8.3f} {row['skip_ms']:>8.3f} "
              f"{row['saved_ms']:>9.3f}")
    print(f"wrote {target}: pass it to the recipes as --cost-table {target}")
    return 0


SUBCOMMANDS.extend([_add_export, _add_bench])


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="ofas-wrap", description="Once For All Skip for any ResNet.")
    parser.add_argument("--version", action="version", version=f"ofas-wrap {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ._errors import SurgeryError

    try:
        return args.func(args)
    except (ValueError, TypeError, SurgeryError) as exc:
        print(f"ofas-wrap {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
