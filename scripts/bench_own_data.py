"""A set of one's own, end to end: scikit-learn's bundled handwritten digits (1,797 images, 8×8, ten classes)
written to a PNG class folder, trained with `embedfm train --data folder:DIR` (CE and CE + triplet, 3 seeds),
evaluated with `embedfm eval`, beside a kNN on the raw pixels of the same split (the reference figure).

    .venv/bin/python scripts/bench_own_data.py [--epochs 15] [--seeds 0,1,2] [--reference]

Writes own_data_digits.json into artifacts/bench/ (or artifacts/reference/ with --reference): per method and seed
the test accuracy of the softmax and kNN classifiers, MAP@R and the training seconds; the raw-pixel kNN; the
machine. docs/own-data.md's table is generated from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from embedfm import machine, sources
from embedfm.cli import main as embedfm
from embedfm.fileio import atomic_write_json
from embedfm.knn import KNNClassifier

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"ce": ["--loss", "ce"], "triplet": ["--loss", "triplet"]}


def write_digits(root: Path) -> Path:
    """load_digits' 8×8 images (values 0-16) as 8-bit PNGs in root/<digit>/<i>.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        p = root / str(y) / f"{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).round().astype(np.uint8)).save(p)
    return root


def pixel_knn(spec: str, cache: Path, k: int = 10) -> float:
    """Test accuracy of a k-nearest-neighbour vote on the raw pixels (L2), the training split as reference."""
    data = sources.load(spec, sources.Options(cache_dir=cache, progress=False))
    flat = lambda x: x.reshape(len(x), -1).float().numpy() / 255
    knn = KNNClassifier(k=k, metric="l2", num_classes=data.num_classes).fit(flat(data.train_images),
                                                                           data.train_labels.numpy())  # fmt: skip
    return float((knn.predict(flat(data.test_images)) == data.test_labels.numpy()).mean())


def run(epochs: int, seeds: list[int], work: Path) -> dict:
    spec = f"folder:{write_digits(work / 'digits')}"
    out = {"data": "sklearn.datasets.load_digits as a PNG class folder", "epochs": epochs, "methods": {}}
    for name, flags in METHODS.items():
        rows = []
        for seed in seeds:
            d = work / f"{name}_s{seed}"
            assert embedfm(["train", "--data", spec, *flags, "--epochs", str(epochs), "--seed", str(seed),
                            "--no-progress", "--out", str(d)]) == 0  # fmt: skip
            assert embedfm(["eval", str(d), "--no-progress"]) == 0
            r = next(iter(json.loads((d / "report.json").read_text())["runs"].values()))
            rows.append({"seed": seed, "softmax_accuracy": r["classifiers"]["softmax"]["accuracy"],
                         "knn_accuracy": r["classifiers"]["knn"]["accuracy"],
                         "map_at_r": r["retrieval"]["map_at_r"], "train_seconds": r["train_seconds"]})  # fmt: skip
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0] if k != "seed"}
        std = {k: statistics.pstdev(r[k] for r in rows) for k in rows[0] if k != "seed"}
        out["methods"][name] = {"flags": " ".join(flags), "seeds": rows, "mean": mean, "std": std}
    data = sources.load(spec, sources.Options(cache_dir=work / "cache", progress=False))
    out["split"] = {"n_train": len(data.train_labels), "n_test": len(data.test_labels), "how": data.notes["test_split"]}
    out["pixel_knn_accuracy"] = pixel_knn(spec, work / "cache")
    out["machine"] = machine.describe()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--reference", action="store_true", help="write into artifacts/reference/")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.epochs, [int(s) for s in args.seeds.split(",")], Path(tmp))
    dest = ROOT / "artifacts" / ("reference" if args.reference else "bench") / "own_data_digits.json"
    atomic_write_json(dest, result)
    for name, m in result["methods"].items():
        print(f"{name}: softmax {m['mean']['softmax_accuracy']:.4f} ± {m['std']['softmax_accuracy']:.4f}, "
              f"kNN {m['mean']['knn_accuracy']:.4f}, MAP@R {m['mean']['map_at_r']:.4f}")  # fmt: skip
    print(f"raw-pixel kNN: {result['pixel_knn_accuracy']:.4f}  → {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
