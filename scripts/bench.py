"""embedfm benchmark: every stage measured side by side with what users would otherwise run.

    .venv/bin/python scripts/bench.py [--runs artifacts/demo] [--out artifacts/bench] [--quick]

Sections (each prints absolute figures and the ratio, all measured in this one process run):
  1. time to accuracy   wall time of training until val accuracy first reaches 90 / 91 / 92 %, read from
                        the per-epoch history of the demo runs (`--runs DIR` holding ce/ and triplet/;
                        trained here with the demo defaults when missing), beside their test accuracy
  2. training step      images/s of the default backbone, CE and CE + triplet, and CE under --precision bf16;
                        achieved GFLOP/s (MACs × 2 × 3) as a fraction of torch.mm's fp32 / bf16 ceiling
                        measured in the same run
  3. input pipeline     embedfm's uint8 batch augmentation vs torchvision FashionMNIST + PIL transforms
                        through a DataLoader with 2 workers; and training images/s fed by each
  4. kNN                FAISS vs scikit-learn KNeighborsClassifier (brute, and its default algorithm) on the
                        same embeddings and k; agreement; GFLOP/s; 64-d embeddings vs 784-d raw pixels
  5. eval and viz       `embedfm eval` of one run (wall, peak RSS) and `embedfm viz` of two runs with a
                        cold and a warm numba cache
  6. speed run          (only with `--only speedrun`: about an hour) validation accuracy against training
                        seconds, every quarter epoch, of `--recipe fast`, the demo recipe and the ResNet-20
                        30-epoch recipe (its first 5 minutes), trained one after the other in this run; per
                        seed the seconds to 92 / 93 / 94 % validation, the final test accuracy and the training
                        seconds. Writes speedrun.json and speedrun.png (not bench.json / bench.md) into the
                        output dir
  7. threads            (only with `--only threads`: about 2 minutes) one epoch of the ResNet-20 CE + triplet
                        recipe on 8,000 images (2,000 with --quick): one process with 2 torch threads against
                        two processes with 1 thread each, side by side (as `embedfm study run studies/best.py`
                        trains two methods at once, `--threads 1` each): training images/s of each and in all
Writes bench.json (and bench.md) into --out, or artifacts/reference/ with `--reference`. `--only knn` (etc.)
re-measures some sections and updates their rows and fields in the existing files, noting the date of each
section in "section_dates".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embedfm import machine
from embedfm.config import TrainConfig
from embedfm.data import FILES, data_files, find_data_dir, load_fashion_mnist, to_float
from embedfm.knn import KNNClassifier, vote
from embedfm.markdown import md_table
from embedfm.models import build_model, count_macs
from embedfm.objectives import build_objective
from embedfm.sampling import augment, make_splits
from embedfm.train import make_optimizer, prepare_batch, train_step

ROOT = Path.cwd()  # run from the repository root: paths below (artifacts/...) are relative to it
CPU = torch.device("cpu")

ROWS: list[tuple[str, str, str]] = []  # (section, what, figures)


def row(section: str, what: str, figures: str) -> None:
    ROWS.append((section, what, figures))
    print(f"[{section}] {what}: {figures}", flush=True)


def matmul_ceiling(n: int = 4096, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of torch.mm n×n in `dtype`, best of `reps` (the machine is shared: best = least disturbed)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------------------ 1


def ensure_demo_runs(runs_dir: Path) -> None:
    """Train the demo's ce/ and triplet/ runs (embedfm's defaults) where they are missing or unfinished."""
    for loss in ("ce", "triplet"):
        run = runs_dir / loss
        if not (run / "DONE").exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "embedfm",
                    "train",
                    "--loss",
                    loss,
                    "--out",
                    str(run),
                    "--overwrite",
                    "--no-progress",
                ],
                check=True,
                cwd=ROOT,
            )


def time_to_accuracy(runs_dir: Path, results: dict) -> None:
    ensure_demo_runs(runs_dir)
    for loss in ("ce", "triplet"):
        run = runs_dir / loss
        hist = json.loads((run / "history.json").read_text())
        reached = {}
        for thr in (0.90, 0.91, 0.92):
            first = next((h for h in hist if h["val_acc"] >= thr), None)
            reached[thr] = first["train_seconds"] if first else None
        test_acc = None
        rep = runs_dir / "report.json"
        if rep.exists():
            r = json.loads(rep.read_text())["runs"].get(loss)
            test_acc = r and r["classifiers"]["softmax"]["accuracy"]
        fmt = ", ".join(
            f"{int(t * 100)} %: " + (f"{s:.0f} s" if s is not None else "not reached") for t, s in reached.items()
        )
        row(
            "1 time to accuracy",
            f"{loss} (demo config, {len(hist)} epochs, val acc per epoch)",
            f"{fmt}; final val {hist[-1]['val_acc']:.4f}" + (f", test {test_acc:.4f}" if test_acc else ""),
        )
        results[f"time_to_accuracy_{loss}"] = {str(k): v for k, v in reached.items()}
        results[f"final_test_acc_{loss}"] = test_acc
    results["time_to_91_s"] = results["time_to_accuracy_ce"]["0.91"]


# ------------------------------------------------------------------------------------------------ 2


def _step_on(cfg: TrainConfig, steps: int):
    """The package's model, optimizer + schedule and objective for `cfg`, and a function doing one training step
    of it (`embedfm.train.train_step`, the step `embedfm train` runs) on a prepared batch."""
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.embedding_dim, 10).to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg, steps)
    objective = build_objective(cfg)
    return lambda x, y: train_step(model, objective, opt, sched, x, y, CPU, precision=cfg.precision)


def train_throughput(loss: str, steps: int, batch_size: int = 256, precision: str = "fp32") -> float:
    """Training images/s of the default recipe on random uint8 batches: augmentation + step, as in training."""
    cfg = TrainConfig(loss=loss, batch_size=batch_size, precision=precision)
    step = _step_on(cfg, steps + 3)
    g = torch.Generator().manual_seed(0)
    x_all = torch.randint(0, 256, (batch_size * 4, 28, 28), dtype=torch.uint8)
    y = torch.arange(batch_size) % 10  # every class in every batch, as the balanced sampler makes them
    t0 = None
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        step(*prepare_batch(x_all[(i % 4) * batch_size : (i % 4 + 1) * batch_size], y, cfg, g, CPU))
    return steps * batch_size / (time.perf_counter() - t0)


def training_step(results: dict, steps: int) -> None:
    ceiling = matmul_ceiling()
    # bf16 without AMX / AVX-512 BF16 is emulated, and slow: a smaller product then (its GFLOP/s are no lower)
    ceiling_bf16 = matmul_ceiling(4096 if machine.native_bf16() else 1024, dtype=torch.bfloat16)
    macs = count_macs(build_model())
    ce = train_throughput("ce", steps)
    trip = train_throughput("triplet", steps)
    ce_bf16 = train_throughput("ce", steps if machine.native_bf16() else max(2, steps // 4), precision="bf16")
    gflops, gflops_bf16 = ce * macs * 6 / 1e9, ce_bf16 * macs * 6 / 1e9
    native = "native" if machine.native_bf16() else "emulated: no AMX or AVX-512 BF16"
    row("2 training step", "torch.mm 4096² fp32 ceiling", f"{ceiling:.0f} GFLOP/s")
    n = 4096 if machine.native_bf16() else 1024
    row("2 training step", f"torch.mm {n}² bf16 ceiling ({native})", f"{ceiling_bf16:.0f} GFLOP/s")
    row(
        "2 training step",
        f"fastcnn CE ({macs / 1e6:.1f} M MACs/img)",
        f"{ce:.0f} img/s = {gflops:.0f} GFLOP/s = {gflops / ceiling:.0%} of ceiling",
    )
    row("2 training step", "fastcnn CE + triplet", f"{trip:.0f} img/s; cost per epoch ×{ce / trip:.2f} of CE")
    row(
        "2 training step",
        "fastcnn CE, --precision bf16",
        f"{ce_bf16:.0f} img/s (×{ce_bf16 / ce:.2f} of fp32) = {gflops_bf16:.0f} GFLOP/s"
        + (
            f" = {gflops_bf16 / ceiling_bf16:.0%} of the bf16 ceiling"
            if machine.native_bf16()
            else " (no fraction: the emulated torch.mm is no ceiling for oneDNN's bf16 convolutions)"
        ),
    )
    results.update(
        matmul_gflops_bf16=ceiling_bf16,
        train_images_per_s_bf16=ce_bf16,
        train_peak_fraction_bf16=gflops_bf16 / ceiling_bf16,
        matmul_gflops=ceiling,
        train_images_per_s=ce,
        train_gflops=gflops,
        train_peak_fraction=gflops / ceiling,
        triplet_images_per_s=trip,
        triplet_cost_ratio=ce / trip,
    )


# ------------------------------------------------------------------------------------------------ 3


def torchvision_loader(tmp: Path, batch_size: int, workers: int = 2):
    """The pipeline a user would write: torchvision dataset + PIL transforms + DataLoader."""
    import gzip

    from torchvision import datasets, transforms

    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, path in data_files(find_data_dir(None)).items():  # torchvision reads the un-gzipped files
        b = path.read_bytes()
        (raw / FILES[key].removesuffix(".gz")).write_bytes(gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b)
    tf = transforms.Compose(
        [
            transforms.RandomCrop(28, padding=2),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.2860,), (0.3530,)),
        ]
    )
    ds = datasets.FashionMNIST(str(tmp), train=True, download=False, transform=tf)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=True
    )


def input_pipeline(results: dict, n_images: int, train_steps: int) -> None:
    data = load_fashion_mnist()
    s = make_splits(data, 5000)
    g = torch.Generator().manual_seed(0)
    B = 256
    # embedfm: index → gather crop + flip on uint8 → float, for whole batches
    t = time.perf_counter()
    seen = 0
    while seen < n_images:
        idx = torch.randint(0, len(s.train_y), (B,), generator=g)
        to_float(augment(s.train_x[idx], 2, True, g))
        seen += B
    ours = seen / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        loader = torchvision_loader(Path(tmp), B)
        it = iter(loader)
        next(it)  # workers started
        t = time.perf_counter()
        seen = 0
        while seen < n_images // 4:
            try:
                _, y = next(it)
            except StopIteration:
                it = iter(loader)
                continue
            seen += len(y)
        theirs = seen / (time.perf_counter() - t)
        # end to end: CE training steps fed by each pipeline
        e2e_tv = _train_from(lambda: next(it), train_steps)
    e2e_ours = _train_from(
        lambda: (
            to_float(augment(s.train_x[(idx := torch.randint(0, len(s.train_y), (B,), generator=g))], 2, True, g)),
            s.train_y[idx],
        ),
        train_steps,
    )
    row("3 input pipeline", "embedfm uint8 batch crop+flip (1 process)", f"{ours:,.0f} img/s")
    row("3 input pipeline", "torchvision PIL transforms, DataLoader 2 workers", f"{theirs:,.0f} img/s")
    row("3 input pipeline", "speed-up", f"×{ours / theirs:.0f}")
    row(
        "3 input pipeline",
        "training fed by embedfm vs torchvision",
        f"{e2e_ours:.0f} vs {e2e_tv:.0f} img/s (×{e2e_ours / e2e_tv:.2f})",
    )
    results.update(
        pipeline_images_per_s=ours,
        torchvision_images_per_s=theirs,
        pipeline_speedup=ours / theirs,
        train_e2e_embedfm=e2e_ours,
        train_e2e_torchvision=e2e_tv,
    )


def _train_from(next_batch, steps: int) -> float:
    """Training images/s of the default CE step fed by `next_batch()` → (float (B, 1, 28, 28), labels)."""
    step = _step_on(TrainConfig(), steps + 2)
    t0, seen = None, 0
    for i in range(steps + 2):
        if i == 2:
            t0, seen = time.perf_counter(), 0
        x, y = next_batch()
        step(x.contiguous(memory_format=torch.channels_last), y)
        seen += len(y)
    return seen / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ 4


def _timed(f, reps: int = 3):
    """(result, best wall time of `reps` calls): best-of-N, as for the matmul ceiling, on both sides."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return out, best


def knn_section(results: dict, runs_dir: Path, n_queries: int) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    ceiling = results.get("matmul_gflops") or results.get("knn_matmul_gflops") or matmul_ceiling()
    z = np.load(runs_dir / "ce" / "embeddings.npz")
    ref, ref_y = z["train_embeddings"].astype(np.float32), z["train_labels"]
    q, q_y = z["test_embeddings"][:n_queries].astype(np.float32), z["test_labels"][:n_queries]
    k = 10
    # embedfm's default metric is cosine (inner product on unit vectors), which ranks exactly like L2 there, so
    # scikit-learn's Euclidean brute force is the like-for-like baseline; both use sklearn's tie rule (smallest
    # class id) here, embedfm's default tie rule is compared separately below
    knn = KNNClassifier(k=k).fit(ref, ref_y)
    fit = lambda metric: KNNClassifier(k=k, metric=metric, ties="smallest").fit(ref, ref_y)
    same, t_faiss = _timed(lambda: fit("cosine").predict(q))
    _, t_l2 = _timed(lambda: fit("l2").predict(q))
    _, t_search = _timed(lambda: knn.kneighbors(q))
    # where the rest of the ceiling goes: the same (Q, D) @ (D, N) product with no top-k, through numpy's BLAS
    # (OpenBLAS, as in the faiss wheel) in the 4096-query blocks faiss uses; a 64-deep product moves ~1 byte per FLOP
    qn, rn = q / np.linalg.norm(q, axis=1, keepdims=True), ref / np.linalg.norm(ref, axis=1, keepdims=True)
    _, t_gemm = _timed(lambda: [qn[i : i + 4096] @ rn.T for i in range(0, len(qn), 4096)])
    brute, t_brute = _timed(lambda: KNeighborsClassifier(k, algorithm="brute").fit(ref, ref_y).predict(q))
    auto, t_auto = _timed(lambda: KNeighborsClassifier(k).fit(ref, ref_y).predict(q))
    agree = float((same == brute).mean())
    nl = ref_y[knn.kneighbors(q)[1]]  # (Q, k) neighbour labels, nearest first
    ours = vote(nl, 10)  # embedfm's default: a tie goes to the class of the nearest tied neighbour
    counts = np.stack([np.bincount(r, minlength=10) for r in nl])
    tied = (counts == counts.max(1, keepdims=True)).sum(1) > 1
    flops = 2 * len(q) * len(ref) * ref.shape[1]
    gf = lambda t: f"{t:.2f} s, {flops / t / 1e9:.0f} GFLOP/s = {flops / t / 1e9 / ceiling:.0%} of ceiling"
    row(
        "4 kNN",
        f"{len(q)} queries × {len(ref)} refs × {ref.shape[1]}-d, k={k}, best of 3: FAISS "
        "(embedfm default: cosine, incl. index build and vote)",
        gf(t_faiss),
    )
    row("4 kNN", "FAISS with the L2 metric", gf(t_l2))
    row("4 kNN", "FAISS search only (no index build, no vote)", gf(t_search))
    row(
        "4 kNN",
        "the same-shape GEMM alone (numpy BLAS, no top-k): what a 64-deep product reaches here",
        f"{gf(t_gemm)}; FAISS search at {t_gemm / t_search:.0%} of it",
    )
    row(
        "4 kNN",
        "scikit-learn brute (same tie rule)",
        f"{t_brute:.2f} s (FAISS ×{t_brute / t_faiss:.1f} faster), identical predictions {agree:.4%}",
    )
    row(
        "4 kNN",
        "scikit-learn default algorithm",
        f"{t_auto:.2f} s (FAISS ×{t_auto / t_faiss:.1f} faster), identical {float((same == auto).mean()):.4%}",
    )
    row(
        "4 kNN",
        "embedfm's default tie rule (nearest tied neighbour) vs scikit-learn's",
        f"identical {float((ours == brute).mean()):.4%}; {tied.mean():.2%} of queries tie, of which "
        f"{float((ours == q_y)[tied].mean()):.1%} right vs {float((brute == q_y)[tied].mean()):.1%}",
    )
    results.update(
        knn_faiss_s=t_faiss,
        knn_faiss_l2_s=t_l2,
        knn_faiss_search_s=t_search,
        knn_gemm_s=t_gemm,
        knn_gemm_peak_fraction=flops / t_gemm / 1e9 / ceiling,
        knn_sklearn_brute_s=t_brute,
        knn_sklearn_auto_s=t_auto,
        knn_speedup=t_brute / t_faiss,
        knn_agreement=agree,
        knn_agreement_default_tie_rule=float((ours == brute).mean()),
        knn_tied_share=float(tied.mean()),
        knn_tied_acc_nearest=float((ours == q_y)[tied].mean()),
        knn_tied_acc_smallest=float((brute == q_y)[tied].mean()),
        knn_peak_fraction=flops / t_faiss / 1e9 / ceiling,
        knn_acc_embeddings=float((ours == q_y).mean()),
    )
    data = load_fashion_mnist()
    s = make_splits(data, 5000)
    px_ref = s.train_x.reshape(len(s.train_x), -1).float().numpy() / 255
    px_q = s.test_x[:n_queries].reshape(n_queries, -1).float().numpy() / 255
    px_pred, t_px = _timed(lambda: KNNClassifier(k=k, metric="l2").fit(px_ref, s.train_y.numpy()).predict(px_q), 1)
    px_acc = float((px_pred == s.test_y[:n_queries].numpy()).mean())
    row(
        "4 kNN",
        "64-d embeddings vs 784-d raw pixels (FAISS)",
        f"{t_faiss:.2f} s vs {t_px:.2f} s; accuracy {results['knn_acc_embeddings']:.4f} vs {px_acc:.4f}",
    )
    results.update(knn_pixels_s=t_px, knn_acc_pixels=px_acc)


# ------------------------------------------------------------------------------------------------ 5


def _run_measured(cmd: list[str], env=None) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of a child process."""
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - t, max(rss, before) / 2**20


def eval_viz_section(results: dict, runs_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wall, rss = _run_measured(
            [sys.executable, "-m", "embedfm", "eval", str(runs_dir / "ce"), "--out", tmp, "--no-progress"]
        )
        row(
            "5 eval and viz",
            "embedfm eval of one run (embed 60 k train+test, kNN, retrieval, report)",
            f"{wall:.1f} s, peak RSS {rss:.2f} GiB",
        )
        results.update(eval_seconds=wall, eval_peak_rss_gib=rss)
        runs = [str(runs_dir / "ce"), str(runs_dir / "triplet")]
        cold_env = {**os.environ, "NUMBA_CACHE_DIR": str(Path(tmp) / "numba-cold")}
        cold, _ = _run_measured([sys.executable, "-m", "embedfm", "viz", *runs, "--out", tmp], env=cold_env)
        warm, _ = _run_measured([sys.executable, "-m", "embedfm", "viz", *runs, "--out", tmp], env=cold_env)
        row(
            "5 eval and viz",
            "embedfm viz of two runs (10 k points each)",
            f"cold numba cache {cold:.1f} s, warm {warm:.1f} s",
        )
        results.update(viz_seconds=warm, viz_cold_seconds=cold)


# ------------------------------------------------------------------------------------------------ 6

TARGETS = (0.92, 0.93, 0.94)
# (name, what it is, settings over the defaults, seeds, training-seconds budget or None). Trained one after the
# other in this order; the ResNet-20 recipe (the study's best, 30 epochs: over an hour here) only for its first
# 5 minutes, to put its curve beside the others (its full-length figures are in the study).
RACE: list[tuple[str, str, dict, tuple[int, ...], float | None]] = [
    ("fast", "--recipe fast", {"recipe": "fast"}, (0, 1, 2), None),
    ("fast_short", "--recipe fast --epochs 4", {"recipe": "fast", "epochs": 4}, (0, 1, 2), None),
    ("demo", "the demo recipe (defaults, 3 epochs)", {}, (0,), None),
    (
        "resnet20",
        "--backbone resnet20 --epochs 30 --crop-pad 2 (its first 300 s)",
        {"backbone": "resnet20", "epochs": 30, "crop_pad": 2},
        (0,),
        300.0,
    ),
    (
        "fast_short_triplet",
        "--recipe fast --epochs 4 --loss triplet",
        {"recipe": "fast", "epochs": 4, "loss": "triplet"},
        (0,),
        None,
    ),
]


def speedrun_section(results: dict, out: Path, quick: bool, data_dir: str | None = None, race_plan=None) -> None:
    """Train every RACE entry (a `--quick` run: 1 epoch on 5,000 images each), write speedrun.json + .png.

    Each finished (entry, seed) is appended to speedrun.partial.jsonl in `out` at once, and a run that finds that
    file skips what it holds: an interrupted race resumes (delete the file to start over)."""
    from embedfm.config import from_dict, with_recipe
    from embedfm.trajectory import run

    out.mkdir(parents=True, exist_ok=True)
    partial = out / "speedrun.partial.jsonl"
    have = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            have[(r["name"], r["seed"])] = r["trajectory"]
    data = load_fashion_mnist(data_dir)
    race = {"date": results["date"], "machine": results["cpu"], "targets": list(TARGETS), "entries": []}
    for name, what, settings, seeds, budget in race_plan or RACE:
        entry = {"name": name, "what": what, "settings": settings, "budget_s": budget, "seeds": {}}
        for seed in seeds[:1] if quick else seeds:
            if (name, seed) not in have:
                quick_settings = {"epochs": 1, "limit": 5000} if quick else {}
                cfg = from_dict(with_recipe({**settings, **quick_settings, "seed": seed}))
                traj = run(cfg, data, checks=4, budget_s=budget, test=True)
                have[(name, seed)] = traj.to_dict(TARGETS)
                with partial.open("a") as f:
                    f.write(json.dumps({"name": name, "seed": seed, "trajectory": have[(name, seed)]}) + "\n")
            t = entry["seeds"][str(seed)] = have[(name, seed)]
            reached = ", ".join(
                f"{target:.0%}: " + (f"{r['train_s']:.0f} s" if r else "—")
                for target, r in zip(TARGETS, t["time_to"].values())
            )
            test = f", test {t['test_acc']:.4f}" if t["test_acc"] is not None else " (stopped at its budget)"
            row("6 speed run", f"{name} seed {seed}", f"{reached}; {t['train_s']:.0f} s, val {t['val_acc']:.4f}{test}")
        race["entries"].append(entry)
    (out / "speedrun.json").write_text(json.dumps(race, indent=1) + "\n")
    plot_speedrun(race, out / "speedrun.png")
    partial.unlink()


def plot_speedrun(race: dict, png: Path) -> None:
    """Validation accuracy against training minutes, one line per seed, one colour per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, entry in enumerate(race["entries"]):
        for j, traj in enumerate(entry["seeds"].values()):
            xs = [p["train_s"] / 60 for p in traj["points"]]
            ys = [100 * p["val_acc"] for p in traj["points"]]
            ax.plot(xs, ys, color=f"C{i}", alpha=0.8, lw=1.2, label=entry["name"] if j == 0 else None)
    for t in race["targets"]:
        ax.axhline(100 * t, color="grey", lw=0.6, ls=":")
    ax.set(xlabel="training minutes (validation excluded)", ylabel="validation accuracy, %", ylim=(78, 95.5))
    m = race["machine"]
    ax.set_title(f"Time to accuracy, {m.get('cpu_model', 'CPU')}, {m.get('cores', '?')} cores", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ 7

# The best study's recipe (studies/best.py), one epoch: small convolutions that a second thread speeds up poorly.
THREADS_RECIPE = ["--backbone", "resnet20", "--crop-pad", "2", "--loss", "triplet", "--epochs", "1"]


def _train(out: Path, threads: int, seed: int, limit: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "embedfm", "train", *THREADS_RECIPE, "--limit", str(limit), "--threads", str(threads)]
    cmd += ["--seed", str(seed), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)


def _images_per_s(proc: subprocess.Popen, out: Path) -> float:
    if proc.wait() != 0:
        raise RuntimeError(f"embedfm train into {out} failed")
    return float(json.loads((out / "history.json").read_text())[-1]["images_per_s"])


def threads_section(results: dict, quick: bool) -> None:
    """Training images/s (training steps only: history.json's images_per_s) of one 2-thread process, then of two
    1-thread processes started together on the same work."""
    limit = 2_000 if quick else 8_000
    with tempfile.TemporaryDirectory() as tmp:
        alone = _images_per_s(_train(Path(tmp) / "alone", 2, 0, limit), Path(tmp) / "alone")
        pair = [(_train(Path(tmp) / f"pair{s}", 1, s, limit), Path(tmp) / f"pair{s}") for s in (0, 1)]
        each = [_images_per_s(proc, out) for proc, out in pair]
    what = f"ResNet-20 CE + triplet, 1 epoch of {limit:,} images"
    row("7 threads", f"{what}: one process, 2 threads", f"{alone:.0f} img/s")
    row(
        "7 threads",
        f"{what}: two processes side by side, 1 thread each",
        f"{each[0]:.0f} + {each[1]:.0f} = {sum(each):.0f} img/s (×{sum(each) / alone:.2f} of one 2-thread process)",
    )
    results.update(threads_alone_ips=alone, threads_pair_ips=each, threads_limit=limit)


SECTIONS = ("time", "step", "pipeline", "knn", "evalviz", "speedrun", "threads")  # --only names, in row order
DEFAULT_SECTIONS = SECTIONS[:5]  # the speed run (about an hour) and the threads section only when asked for


def run_sections(
    only: set[str], runs_dir: Path, results: dict, steps: int, n_img: int, queries: int, out: Path, quick: bool
) -> None:
    if "time" in only:
        time_to_accuracy(runs_dir, results)
    if only & {"knn", "evalviz"} and not (runs_dir / "ce" / "embeddings.npz").exists():
        ensure_demo_runs(runs_dir)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "embedfm",
                "eval",
                str(runs_dir / "ce"),
                str(runs_dir / "triplet"),
                "--out",
                str(runs_dir),
                "--no-progress",
            ],
            check=True,
            cwd=ROOT,
        )
    if "step" in only:
        training_step(results, steps)
    if "pipeline" in only:
        input_pipeline(results, n_img, steps)
    if "knn" in only:
        knn_section(results, runs_dir, queries)
    if "evalviz" in only:
        eval_viz_section(results, runs_dir)
    if "speedrun" in only:
        speedrun_section(results, out, quick)
    if "threads" in only:
        threads_section(results, quick)


def write_outputs(out: Path, results: dict, only: set[str]) -> list[str]:
    """bench.json / bench.md in `out`. A partial run (--only) updates the sections it re-measured and keeps
    the others from the previous files, recording per section the date it was measured."""
    out.mkdir(parents=True, exist_ok=True)
    partial = only != set(DEFAULT_SECTIONS)
    old = json.loads((out / "bench.json").read_text()) if partial and (out / "bench.json").exists() else {}
    dates = {
        **old.get("section_dates", {sec: old.get("date") for sec in DEFAULT_SECTIONS if old.get("date")}),
        **{sec: results["date"] for sec in only},
    }
    # each section keeps the machine it was measured on: a partial run may land on another CPU model
    machines = {
        **{sec: old["machine"] for sec in dates if "machine" in old},
        **old.get("section_machines", {}),
        **{sec: results["machine"] for sec in only},
    }
    merged = {**old, **results, "section_dates": dates, "section_machines": machines}
    if partial:
        merged["date"] = old.get("date", results["date"])
        merged["section_cpu"] = {**old.get("section_cpu", {}), **{sec: results["cpu"] for sec in only}}
        merged["machine"] = old.get("machine", results["machine"])
        if "cpu" in old:
            merged["cpu"] = old["cpu"]
        else:  # lscpu's figures of the full run were not recorded: section_cpu has the partial runs'
            merged.pop("cpu", None)
    (out / "bench.json").write_text(json.dumps(merged, indent=2) + "\n")
    redone = {str(SECTIONS.index(sec) + 1) for sec in only}
    kept = []
    if partial and (out / "bench.md").exists():
        kept = [ln for ln in (out / "bench.md").read_text().splitlines()[2:] if ln.split()[1] not in redone]
    header, rule, *new = md_table(["section", "measurement", "figures"], ROWS).split("\n")
    body = sorted(kept + new, key=lambda ln: ln.split()[1])  # stable: keeps each section's row order
    md = [header, rule, *body]
    (out / "bench.md").write_text("\n".join(md) + "\n")
    return md


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", default="artifacts/demo", help="dir with the demo's ce/ and triplet/ runs")
    p.add_argument("--out", default="artifacts/bench", help="where bench.json / bench.md go")
    p.add_argument("--reference", action="store_true", help="write into artifacts/reference/ (instead of --out)")
    p.add_argument("--quick", action="store_true", help="fewer steps and queries (a smoke run)")
    p.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        metavar="S[,S]",
        help=f"re-measure only these sections ({', '.join(SECTIONS)}) and update the others' "
        "figures in place from the existing bench.json / bench.md; default: all but speedrun",
    )
    args = p.parse_args()
    only = set(args.only.split(","))
    if not only or only - set(SECTIONS):
        p.error(f"--only takes a comma-separated list of {', '.join(SECTIONS)}")
    runs_dir = (ROOT / args.runs) if not Path(args.runs).is_absolute() else Path(args.runs)
    steps, n_img, queries = (5, 5_000, 1_000) if args.quick else (30, 50_000, 10_000)
    cpu = machine.describe()
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine.summary(cpu), "cpu": cpu}
    print(f"embedfm bench — {results['machine']}", flush=True)
    if only & {"knn"} and not only & {"step"}:
        results["knn_matmul_gflops"] = matmul_ceiling()  # kNN's ratios are against the ceiling of this run
        row(
            "4 kNN",
            "torch.mm 4096² fp32 ceiling, measured in this partial run",
            f"{results['knn_matmul_gflops']:.0f} GFLOP/s",
        )
    out = ROOT / "artifacts" / "reference" if args.reference else ROOT / args.out
    run_sections(only, runs_dir, results, steps, n_img, queries, out, args.quick)
    if only - {"speedrun"}:  # the speed run's figures live in speedrun.json, not in bench.json / bench.md
        print("\n".join(write_outputs(out, results, only - {"speedrun"})))


if __name__ == "__main__":
    main()
