"""Which torch releases load and run a TorchScript file that ofas-wrap exported (issue 13 item 2)?

Exports ``cifar:resnet20`` with OFAS (seeded random weights; the threshold set so that some blocks are skipped)
with the torch installed here, then, for each ``--versions`` release, makes a throw-away virtualenv under
``--venvs`` with that torch from the package index (with its dependencies: the PyPI wheels load their CUDA
libraries at import even on a CPU, so each release costs one to a few GB; ``--wheels DIR`` reuses downloaded
torch wheels), loads the file there with ``torch.jit.load``, runs it on a deterministic
input (no random generator, so every version sees the same numbers) at the exported threshold and at T = 0, and
compares the outputs with the exporter's. Not part of the test suite.

    python benchmarks/torchscript_compat.py --versions 1.13.1 2.0.1 2.2.2 2.4.1 2.6.0 2.8.0
    python benchmarks/torchscript_compat.py --versions 2.8.0 --venvs ../runs/torch-venvs --out /tmp/o

Writes ``OUT/torchscript_compat.{md,json}``: exporter version x loader version x result (``ok``, ``mismatch``,
``load error``, ``run error``, ``install error``) with the error's first line.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
DEPENDENCIES = ["numpy<2"]
INPUT_SHAPE = (2, 3, 32, 32)

# run inside the old torch's interpreter: no ofas-wrap there, only torch
LOADER = r"""
import json, sys, torch
path, shape = sys.argv[1], [int(v) for v in sys.argv[2].split(",")]
count = 1
for size in shape:
    count *= size
x = ((torch.arange(count, dtype=torch.float32) % 17) / 17.0 - 0.5).reshape(shape)
result = {"torch": torch.__version__}
def first_line(exc):
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
try:
    module = torch.jit.load(path, map_location="cpu")
except Exception as exc:
    print(json.dumps({**result, "status": "load error", "error": first_line(exc)}))
    sys.exit(0)
try:
    outputs = {}
    threshold = float(module.gate_threshold)
    with torch.no_grad():
        for value in (threshold, 0.0):
            module.gate_threshold.fill_(value)
            outputs[repr(value)] = module(x).tolist()
    print(json.dumps({**result, "status": "ran", "outputs": outputs}))
except Exception as exc:
    print(json.dumps({**result, "status": "run error", "error": first_line(exc)}))
"""


def deterministic_input(shape=INPUT_SHAPE):
    import torch

    count = 1
    for size in shape:
        count *= size
    return ((torch.arange(count, dtype=torch.float32) % 17) / 17.0 - 0.5).reshape(shape)


def export(path: Path) -> dict[str, list]:
    """The exported file and the exporter's own outputs at its threshold and at T = 0."""
    import torch

    import ofas_wrap

    torch.manual_seed(0)
    model = ofas_wrap.create_model("cifar:resnet20", input_size=(3, 32, 32)).eval()
    x = deterministic_input()
    with torch.no_grad():
        _, probs = model.gate_probabilities(x)
    model.threshold = float(probs.median())  # about half of the gates closed
    ofas_wrap.export_torchscript(model, path)
    outputs = {}
    with torch.no_grad():
        for value in (model.threshold, 0.0):
            model.threshold = value
            outputs[repr(float(torch.tensor(value, dtype=torch.float32)))] = model(x).tolist()
    return outputs


def ensure_venv(root: Path, version: str, wheels: Optional[Path] = None) -> Optional[str]:
    """A virtualenv with torch==version (cached under root; from a wheel already in ``wheels`` when there is one);
    None when it is ready, else the install error."""
    venv = root / f"torch-{version}"
    python = venv / "bin" / "python"
    if (venv / ".ready").is_file():
        return None
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    local = ["--find-links", str(wheels)] if wheels is not None else []
    # with its dependencies: the PyPI wheels load their CUDA libraries (nvidia-* packages) at import, even on a CPU
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--only-binary", ":all:", *local,
                           f"torch=={version}", *DEPENDENCIES], capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["pip failed"])[-1][:300]
    (venv / ".ready").write_text(version + "\n")
    return None


def check(root: Path, version: str, path: Path, expected: dict[str, list], atol: float,
          wheels: Optional[Path] = None) -> dict[str, Any]:
    import torch

    error = ensure_venv(root, version, wheels)
    if error is not None:
        return {"loader": version, "status": "install error", "error": error}
    python = root / f"torch-{version}" / "bin" / "python"
    done = subprocess.run([str(python), "-c", LOADER, str(path), ",".join(map(str, INPUT_SHAPE))],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"loader": version, "status": "run error", "error": f"interpreter failed: {tail}"}
    result = json.loads(lines[-1])
    row = {"loader": version, "loader_reported": result.get("torch"), "status": result["status"],
           "error": result.get("error")}
    if result["status"] == "ran":
        worst = 0.0
        for key, values in expected.items():
            got = result["outputs"].get(key)
            if got is None:  # thresholds print differently across versions: match by value
                got = next(v for k, v in result["outputs"].items() if abs(float(k) - float(key)) < 1e-6)
            worst = max(worst, float((torch.tensor(got) - torch.tensor(values)).abs().max()))
        row.update({"status": "ok" if worst <= atol else "mismatch", "max_abs_diff": worst})
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["| exporter torch | loader torch | result | max abs diff | error |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        diff = "-" if row.get("max_abs_diff") is None else f"{row['max_abs_diff']:.2e}"
        lines.append(f"| {meta['exporter']} | {row['loader']} | {row['status']} | {diff} | {row.get('error') or ''} |")
    lines += ["", f"Model: {meta['model']}", f"Machine: {meta['machine']}", f"Command: `{meta['command']}`"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", nargs="+", required=True, help="torch releases to load the file with")
    parser.add_argument("--venvs", default=str(REPO.parent / "runs" / "torch-venvs"),
                        help="where the throw-away virtualenvs go (reused)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--wheels", default=None, help="a folder of torch wheels already downloaded (pip download)")
    args = parser.parse_args(argv)
    root = Path(args.venvs)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "resnet20_ofas.pt"
        expected = export(path)
        rows = []
        for version in args.versions:
            rows.append(check(root, version, path, expected, args.atol, Path(args.wheels) if args.wheels else None))
            print(f"[torchscript_compat] torch {version}: {rows[-1]['status']} {rows[-1].get('error') or ''}",
                  flush=True)
    meta = {"exporter": torch.__version__.split("+")[0],
            "model": "cifar:resnet20 + OFAS, seeded random weights, T at the median head output (about half of the "
                     "gates closed) and T = 0, input 2 x 3 x 32 x 32",
            "machine": f"{platform.machine()}, Python {platform.python_version()}",
            "command": "python benchmarks/torchscript_compat.py "
                       + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "torchscript_compat.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "torchscript_compat.md").write_text(markdown(rows, meta) + "\n")
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
