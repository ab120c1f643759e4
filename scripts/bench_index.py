"""Index benchmark: approximate FAISS indexes against exact search, on real and synthetic embeddings.

    .venv/bin/python scripts/bench_index.py [--run artifacts/demo/triplet] [--synthetic 1000000] [--reference]

For each index type (faiss factory strings, the ones `embedfm index --type` takes) and search setting:
build time, index size (bytes per vector), queries/s, recall@10 against exact search (share of the
exact 10 nearest found), and on the real embeddings precision@10 by label (share of the 10 neighbours
with the query's class: how "same-class" search results are).

- real: the run's 55 000 train-split embeddings as catalogue, its 10 000 test embeddings as queries
  (from `embeddings.npz`, written by `embedfm eval RUN`);
- synthetic: N 64-d vectors drawn from a Gaussian per class fitted to the real train embeddings
  (same class means and covariances), unit-normalised, with 2 000 queries from the same mixture.
Prints a table; writes bench_index.json / .md into --out, and with --reference a copy of the JSON to
artifacts/reference/bench_index.json. Threads: all cores (faiss's default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from embedfm import machine
from embedfm.index import index_bytes, make_index, set_search_params
from embedfm.markdown import md_table

ROOT = Path.cwd()  # run from the repository root: artifacts/... paths are relative to it


def index_types(n: int) -> list[tuple[str, list[dict]]]:
    """(factory, search settings) scaled to the catalogue: ~4·sqrt(n) IVF lists, as faiss's guide advises."""
    nlist = 1 << round(np.log2(4 * np.sqrt(n)))
    return [
        ("Flat", [{}]),
        (f"IVF{nlist},Flat", [{"nprobe": 4}, {"nprobe": 16}, {"nprobe": 64}]),
        ("HNSW32", [{"ef_search": 16}, {"ef_search": 64}, {"ef_search": 256}]),
        (f"IVF{nlist},PQ16np", [{"nprobe": 16}, {"nprobe": 64}]),
        (f"IVF{nlist},PQ32np", [{"nprobe": 16}, {"nprobe": 64}]),
    ]


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)]))


def synthetic_like(emb: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n unit vectors from a per-class Gaussian fitted to (emb, labels), classes in equal shares."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    parts = []
    for i, c in enumerate(classes):
        x = emb[labels == c].astype(np.float64)
        m = n // len(classes) + (i < n % len(classes))
        parts.append(rng.multivariate_normal(x.mean(0), np.cov(x, rowvar=False), size=m, method="cholesky"))
    out = np.concatenate(parts).astype(np.float32)
    rng.shuffle(out)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def bench(name: str, base: np.ndarray, queries: np.ndarray, k: int = 10, base_labels=None, query_labels=None):
    rows = []
    exact = None
    for factory, settings in index_types(len(base)):
        t0 = time.perf_counter()
        index = make_index(base, factory)
        build = time.perf_counter() - t0
        size = index_bytes(index)
        for s in settings:
            set_search_params(index, s.get("nprobe"), s.get("ef_search"))
            index.search(queries[:100], k)  # warm-up
            t0 = time.perf_counter()
            _, ids = index.search(queries, k)
            secs = time.perf_counter() - t0
            if exact is None:
                exact = ids  # Flat comes first: the ground truth
            r = {
                "data": name,
                "n": len(base),
                "factory": factory,
                **s,
                "build_s": round(build, 2),
                "bytes_per_vector": round(size / len(base), 1),
                "index_mib": round(size / 2**20, 1),
                "qps": round(len(queries) / secs),
                "recall_at_10": round(recall_at(ids, exact), 4),
            }
            if base_labels is not None:
                r["precision_at_10"] = round(float((base_labels[ids] == query_labels[:, None]).mean()), 4)
            rows.append(r)
            setting = " ".join(f"{k}={v}" for k, v in s.items()) or "exact"
            extra = f", precision@10 {r['precision_at_10']:.4f}" if "precision_at_10" in r else ""
            print(
                f"[{name}] {factory:<18} {setting:<14} build {build:7.1f} s  {r['bytes_per_vector']:6.1f} B/vec  "
                f"{r['qps']:>9} q/s  recall@10 {r['recall_at_10']:.4f}{extra}",
                flush=True,
            )
        del index
    return rows


def sizing(n: int = 100_000_000, dim: int = 64) -> list[dict]:
    """Memory arithmetic for n vectors (faiss's layouts): codes + 8-byte ids (IVF) or links (HNSW)."""
    nlist = 65536
    kinds = [
        ("Flat", 4 * dim, "exact; float32 vectors"),
        (f"IVF{nlist},Flat", 4 * dim + 8, "float32 vectors + 8-byte id per list entry"),
        ("HNSW32", 4 * dim + 2 * 32 * 4 * 1.05, "vectors + 64 level-0 links × 4 B, ~5 % upper levels"),
        (f"IVF{nlist},PQ32", 32 + 8, "32-byte code + id"),
        (f"IVF{nlist},PQ16", 16 + 8, "16-byte code + id"),
    ]
    return [
        {"factory": f, "bytes_per_vector": round(b, 1), "total_gib": round(n * b / 2**30, 1), "layout": why}
        for f, b, why in kinds
    ]


def markdown(result: dict) -> str:
    lines = [
        f"Index benchmark, {result['date']}, {result['machine']}, faiss {result['faiss']}, "
        f"{result['threads']} threads. Command: `{result['command']}`",
        "",
    ]
    rows = []
    for r in result["rows"]:
        setting = " ".join(f"{k}={r[k]}" for k in ("nprobe", "ef_search") if k in r) or "exact"
        rows.append(
            [r["data"], f"{r['n']:,}", r["factory"], setting, r["build_s"], r["bytes_per_vector"], f"{r['qps']:,}",
             f"{r['recall_at_10']:.4f}", r.get("precision_at_10", "–")]
        )  # fmt: skip
    head = ["data", "n", "index", "search", "build s", "B/vector", "queries/s", "recall@10", "precision@10"]
    lines += [md_table(head, rows), "", f"Sizing for {result['sizing_n']:,} × 64-d (arithmetic):", ""]
    sizing = [[s["factory"], s["bytes_per_vector"], s["total_gib"], s["layout"]] for s in result["sizing"]]
    lines.append(md_table(["index", "bytes/vector", "total GiB", "layout"], sizing))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="artifacts/demo/triplet", help="run dir with embeddings.npz (embedfm eval)")
    p.add_argument("--synthetic", type=int, default=1_000_000, help="synthetic catalogue size (0 = skip)")
    p.add_argument("--queries", type=int, default=2000, help="synthetic queries")
    p.add_argument("--out", default="artifacts/bench", help="where bench_index.json / .md go")
    p.add_argument("--reference", action="store_true", help="also copy the JSON to artifacts/reference/")
    args = p.parse_args()

    npz = Path(args.run) / "embeddings.npz"
    if not npz.is_file():
        sys.exit(f"bench_index: {npz} not found; run `embedfm eval {args.run}` first")
    z = np.load(npz)
    base, base_y = z["train_embeddings"].astype(np.float32), z["train_labels"]
    queries, query_y = z["test_embeddings"].astype(np.float32), z["test_labels"]
    t_start = time.perf_counter()
    rows = bench("real", base, queries, base_labels=base_y, query_labels=query_y)
    if args.synthetic:
        t0 = time.perf_counter()
        syn = synthetic_like(base, base_y, args.synthetic, seed=0)
        syn_q = synthetic_like(base, base_y, args.queries, seed=1)
        print(f"[synthetic] drew {len(syn):,} vectors in {time.perf_counter() - t0:.1f} s", flush=True)
        rows += bench("synthetic", syn, syn_q)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine.summary(machine.describe()),
        "cpu": machine.describe(),
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "run": args.run,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
        "sizing_n": 100_000_000,
        "sizing": sizing(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_index.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench_index.md").write_text(markdown(result))
    print(markdown(result))
    if args.reference:
        ref = ROOT / "artifacts" / "reference"
        ref.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "bench_index.json", ref / "bench_index.json")
        shutil.copy(out / "bench_index.md", ref / "bench_index.md")


if __name__ == "__main__":
    main()
