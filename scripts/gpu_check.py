"""The GPU check: everything embedfm does on CUDA, run and measured in one go (under 8 minutes on one GPU).

    .venv/bin/python scripts/gpu_check.py [--out PATH] [--data-dir DIR] [--epochs 3] [--no-device-tests]

With CUDA it
1. runs the device tests (`pytest -m device`: training, validation, resume with --deterministic, eval's
   embedding and kNN, on `cuda:0` as well as on the shadow device);
2. trains the default recipe (CE, fastcnn) and the best-model recipe (resnet20, CE + triplet, random crops) for
   `--epochs` epochs each in bf16 autocast (what `embedfm train` runs) and in fp32, and each once more in bf16 with
   `--deterministic`: images/s, training seconds, time to 92 % validation accuracy where reached;
3. checks eval's kNN on the GPU index against the CPU index (identical predictions, and a search for more than
   faiss's GPU limit of neighbours);
4. runs `torchrun --nproc_per_node N` (N GPUs, NCCL) for one epoch when there is more than one GPU;
5. writes `artifacts/reference/gpu.json` (or `--out`): GPU model, driver, CUDA, cuDNN, NCCL, library versions,
   the CPU (`embedfm.machine.describe()`), and every figure above.
Without CUDA it says so in one line and runs the CPU equivalents on a small subset (the device tests on the shadow
device, each recipe for one epoch in fp32, the kNN on the CPU index), writing to a temp file or `--out`: never
into artifacts/reference/. Exits 1 when a check failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import embedfm
from embedfm import checkpoint, knn, machine
from embedfm.config import TrainConfig
from embedfm.data import load_fashion_mnist
from embedfm.errors import EmbedfmError
from embedfm.inference import embed
from embedfm.sampling import make_splits
from embedfm.train import train

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "artifacts" / "reference" / "gpu.json"
BUDGET_S = 450  # stop starting new parts after 7.5 minutes
TARGET_ACC = 0.92
RECIPES = {  # name: config over the defaults
    "default": {},
    "best": {"loss": "triplet", "backbone": "resnet20", "crop_pad": 2},
}
CPU_SUBSET = {"limit": 300, "val_size": 50, "batch_size": 100}  # the CPU equivalents' small subset (seconds)
quiet = lambda *a, **k: None


def versions() -> dict:
    import faiss
    import pytorch_metric_learning
    import torchvision

    cuda = torch.cuda.is_available()
    return {
        "embedfm": embedfm.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "torchvision": torchvision.__version__,
        "faiss": faiss.__version__,
        "faiss_wheels": knn.faiss_wheels(),
        "pytorch_metric_learning": pytorch_metric_learning.__version__,
        "numpy": np.__version__,
    }


def gpu_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = None
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "driver": driver,
    }


def device_tests(cuda: bool) -> dict:
    tests = ROOT / "tests"
    if not tests.is_dir():
        return {"skipped": f"{tests} not found"}
    cmd = [sys.executable, "-m", "pytest", str(tests), "-m", "device and not slow", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return {
        "command": " ".join(["python", *cmd[1:]]),
        "on": "cuda:0 and the shadow device" if cuda else "the shadow device",
        "returncode": r.returncode,
        "summary": lines[-1] if lines else r.stderr[-500:],
        "failures": [ln for ln in lines if ln.startswith("FAILED")],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def recipe_run(name, prec, deterministic, data, epochs, cuda, tmp) -> tuple[dict, str]:
    # bf16: embedfm's default on CUDA (autocast); fp32: --precision fp32 (no autocast anywhere)
    over = {**RECIPES[name], "epochs": epochs, "deterministic": deterministic, "device": "auto",
            "precision": "fp32" if prec == "fp32" else "default"}  # fmt: skip
    if not cuda:
        over.update(CPU_SUBSET)
    tag = f"{name}-{prec}{'-det' if deterministic else ''}"
    cfg = TrainConfig(**{**over, "out": str(Path(tmp) / tag)})
    t0 = time.perf_counter()
    result = train(cfg, data=data, overwrite=True, progress=False, log=quiet)
    torch.use_deterministic_algorithms(False)
    h = result["history"]
    reached = next((row for row in h if row["val_acc"] >= TARGET_ACC), None)
    return {
        "recipe": name,
        "loss": cfg.loss,
        "backbone": cfg.backbone,
        "precision": prec,
        "deterministic": deterministic,
        "epochs": epochs,
        "train_images": len(make_splits(data, cfg.val_size, cfg.limit).train_y),
        "images_per_s": round(float(np.mean([row["images_per_s"] for row in h])), 1),
        "images_per_s_by_epoch": [row["images_per_s"] for row in h],
        "train_seconds": h[-1]["train_seconds"],
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "val_acc": h[-1]["val_acc"],
        "seconds_to_92": reached["train_seconds"] if reached else None,
        "epoch_to_92": reached["epoch"] if reached else None,
    }, result["run_dir"]


def knn_check(run_dir: str, data, cuda: bool) -> dict:
    """Eval's kNN (k = 10 over the run's train split, test queries) on the GPU index against the CPU index."""
    from embedfm.config import from_dict

    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    model, ckpt = checkpoint.load_model(run_dir, device)
    cfg = from_dict(ckpt["config"])
    s = make_splits(data, cfg.val_size, cfg.limit)
    ref = embed(model, s.train_x, device).emb.numpy()
    queries = embed(model, s.test_x, device).emb.numpy()
    on_gpu, why = knn.gpu_status()
    clf = knn.KNNClassifier(k=10).fit(ref, s.train_y.numpy())
    t0 = time.perf_counter()
    _, idx_used = clf.index.search(queries, 10)
    t1 = time.perf_counter()
    _, idx_cpu = clf.cpu_index.search(queries, 10)
    t2 = time.perf_counter()
    pred_used, pred_cpu = (knn.vote(clf.labels[i], 10) for i in (idx_used, idx_cpu))
    large_k = min(4096, len(ref))
    try:
        clf.kneighbors(queries[:100], k=large_k)  # beyond GPU_MAX_K: the CPU index answers
        large = "ok"
    except Exception as e:  # a failure here is what the check is for
        large = f"failed: {e}"
    return {
        "gpu_status": why,
        "index_on_gpu": on_gpu and clf.index is not clf.cpu_index,
        "references": len(ref),
        "queries": len(queries),
        "same_predictions": bool((pred_used == pred_cpu).all()),
        "prediction_mismatches": int((pred_used != pred_cpu).sum()),
        "same_neighbours_share": round(float((idx_used == idx_cpu).mean()), 5),
        "search_seconds": {"used_index": round(t1 - t0, 4), "cpu_index": round(t2 - t1, 4)},
        f"k{large_k}_search": large,
    }


def torchrun_check(data_dir: str, tmp: str) -> dict:
    n = torch.cuda.device_count()
    if n < 2:
        return {"skipped": f"{n} GPU(s): torchrun needs more than one"}
    out = Path(tmp) / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
    cmd += ["-m", "embedfm", "train", "--loss", "triplet", "--epochs", "1", "--device", "cuda", "--no-progress"]
    cmd += ["--out", str(out), "--data-dir", data_dir, "--batch-size", str(256 * n), "--overwrite"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    row = json.loads((out / "history.json").read_text())[-1] if (out / "history.json").is_file() else {}
    return {
        "processes": n,
        "returncode": r.returncode,
        "images_per_s": row.get("images_per_s"),
        "val_acc": row.get("val_acc"),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "stderr_tail": r.stderr[-800:] if r.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help=f"JSON to write (default: {REFERENCE.relative_to(ROOT)} with CUDA, else a temp file)")
    p.add_argument("--data-dir", help="Fashion-MNIST dir (default: as embedfm finds it)")
    p.add_argument("--epochs", type=int, help="epochs of each recipe run (default 3 with CUDA, 1 without)")
    p.add_argument("--no-device-tests", action="store_true", help="skip step 1 (the test suite runs them itself)")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    # the --deterministic runs need it before cuBLAS starts, i.e. before this process's first CUDA work; every run
    # then shares one cuBLAS workspace, so the deterministic rows measure the kernels' cost alone
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    out = Path(a.out) if a.out else REFERENCE if cuda else Path(tempfile.gettempdir()) / "embedfm-gpu-check-cpu.json"
    if not cuda and out.resolve().is_relative_to(REFERENCE.parent.resolve()):
        out = Path(tempfile.gettempdir()) / "embedfm-gpu-check-cpu.json"  # CPU figures never go into the reference
    if not cuda:
        print(
            f"gpu_check: no CUDA device (torch {torch.__version__}); running the CPU equivalents on a small subset "
            f"→ {out}",
            flush=True,
        )
    epochs = a.epochs or (3 if cuda else 1)
    start = time.perf_counter()
    left = lambda: BUDGET_S - (time.perf_counter() - start)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "cuda": cuda, "machine": machine.describe()}
    report["cublas_workspace_config"] = os.environ["CUBLAS_WORKSPACE_CONFIG"]
    report["versions"] = versions()
    if cuda:
        report["gpu"] = gpu_info()
    try:
        data = load_fashion_mnist(a.data_dir)
    except EmbedfmError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    report["data"] = data.source

    print("device tests ...", flush=True)
    report["device_tests"] = {"skipped": "--no-device-tests"} if a.no_device_tests else device_tests(cuda)
    print(f"  {report['device_tests'].get('summary', report['device_tests'].get('skipped'))}", flush=True)

    report["recipes"], run_dirs, skipped = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        plan = [(r, prec, det) for r in RECIPES for prec, det in (("bf16", False), ("fp32", False), ("bf16", True))]
        if not cuda:  # bf16 autocast and deterministic CUDA kernels are CUDA-only: fp32 once per recipe
            plan = [(r, "fp32", False) for r in RECIPES]
        for name, prec, det in plan:
            if left() < 60:
                skipped.append(f"{name} {prec}{' deterministic' if det else ''}: out of time")
                continue
            try:
                row, run_dirs[name] = recipe_run(name, prec, det, data, epochs, cuda, tmp)
            except Exception as e:  # a failing recipe is a finding: recorded, the others still run
                row = {"recipe": name, "precision": prec, "deterministic": det, "error": f"{type(e).__name__}: {e}"}
                torch.use_deterministic_algorithms(False)
            report["recipes"].append(row)
            print(f"  {json.dumps(row)}", flush=True)
        if "default" in run_dirs and left() > 30:
            report["knn"] = knn_check(run_dirs["default"], data, cuda)
            print(f"  knn: {json.dumps(report['knn'])}", flush=True)
        else:
            report["knn"] = {"skipped": "no default run" if "default" not in run_dirs else "out of time"}
        if cuda and left() > 60:
            report["torchrun"] = torchrun_check(data.source, tmp)
        else:
            report["torchrun"] = {"skipped": "no CUDA" if not cuda else "out of time"}
    report["skipped"] = skipped
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = bool(
        report["device_tests"].get("returncode", 0) == 0
        and report["recipes"]
        and all("error" not in r for r in report["recipes"])
        and report["knn"].get("same_predictions", False)
        and report["torchrun"].get("returncode", 0) == 0
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s → {out}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
