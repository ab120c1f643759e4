"""ONNX export benchmark: images/s of the embedding network in torch (embedfm's inference path) and in onnxruntime.

    .venv/bin/python scripts/bench_export.py [--run RUN] [--images 2048] [--repeats 5] [--reference]

Both sides get the same uint8 images in batches of 256 and include the uint8 → normalised float conversion:
torch runs `inference.embed` on the CPU (BN folded, channels-last, fp32, torch's default threads); onnxruntime
runs the model `embedfm export --format onnx` writes (`export.onnx_model`), CPUExecutionProvider, with as many
intra-op threads as torch uses. Each figure is the best of --repeats timed passes after one warm-up pass, the
two runtimes' passes alternating. Without --run the network is a freshly initialised fastcnn: the weights do
not change the speed. Also records the largest |onnxruntime − torch| over logits and embeddings. Writes
export.json into --out, and with --reference into artifacts/reference/. Takes well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from embedfm import machine
from embedfm.data import to_float
from embedfm.export import ONNX_INPUT, max_difference, onnx_model, onnx_session
from embedfm.fileio import atomic_write_json
from embedfm.inference import embed
from embedfm.models import build_model

ROOT = Path.cwd()  # run from the repository root: artifacts/... paths are relative to it
BATCH = 256


def best_rates(fns: dict, n: int, repeats: int) -> dict:
    """Images/s of the fastest of `repeats` calls of each fn, after one warm-up call each. The calls alternate
    between the fns, so a busy spell of a shared machine slows both sides alike rather than one of them."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: n / min(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run dir whose network to time (default: a freshly initialised fastcnn)")
    p.add_argument("--images", type=int, default=2048, help="images per timed pass")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per runtime; the best counts")
    p.add_argument("--out", default="artifacts/bench", help="where export.json goes")
    p.add_argument("--reference", action="store_true", help="also write artifacts/reference/export.json")
    args = p.parse_args()

    import onnxruntime

    t_start, load_before = time.perf_counter(), os.getloadavg()[0]
    if args.run:
        from embedfm.run import Run

        run = Run.open(args.run)
        network, backbone = run.model("cpu"), run.model_args["backbone"]
    else:
        torch.manual_seed(0)
        network, backbone = build_model("fastcnn").eval(), "fastcnn"
    t0 = time.perf_counter()
    model_bytes = onnx_model(network).SerializeToString()
    export_s = time.perf_counter() - t0
    threads = torch.get_num_threads()
    session = onnx_session(model_bytes, threads=threads)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.images, 28, 28), dtype=np.uint8))
    cpu = torch.device("cpu")

    def run_torch():
        embed(network, images, cpu, batch_size=BATCH)

    def run_onnx():
        for i in range(0, len(images), BATCH):
            session.run(None, {ONNX_INPUT: to_float(images[i : i + BATCH]).numpy()})

    rates = best_rates({"torch": run_torch, "onnxruntime": run_onnx}, len(images), args.repeats)
    torch_rate, onnx_rate = rates["torch"], rates["onnxruntime"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine.summary(machine.describe()),
        "cpu": machine.describe(),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "backbone": backbone,
        "run": args.run,
        "images": args.images,
        "batch_size": BATCH,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": threads,
        "onnxruntime": onnxruntime.__version__,
        "torch_images_per_s": round(torch_rate),
        "onnxruntime_images_per_s": round(onnx_rate),
        "onnxruntime_speedup": round(onnx_rate / torch_rate, 3),
        "max_abs_diff": max_difference(network, model_bytes),
        "onnx_bytes": len(model_bytes),
        "export_seconds": round(export_s, 2),
        "seconds": round(time.perf_counter() - t_start, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after: others' work
    }
    print(
        f"{backbone}, {args.images} images, batches of {BATCH}, best of {args.repeats}: "
        f"torch {torch_rate:,.0f} images/s, onnxruntime {onnx_rate:,.0f} images/s "
        f"(× {onnx_rate / torch_rate:.2f}); max |Δ| {result['max_abs_diff']:.1e}; {machine.summary(result['cpu'])}"
    )
    atomic_write_json(Path(args.out) / "export.json", result)
    if args.reference:
        atomic_write_json(ROOT / "artifacts" / "reference" / "export.json", result)


if __name__ == "__main__":
    main()
