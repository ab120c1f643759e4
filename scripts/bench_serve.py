"""Load test of `embedfm serve`: throughput and p50 / p95 / p99 latency of POST /search at 1, 8 and 32 concurrent
clients, with and without a client adding items meanwhile, for Flat and HNSW32 indexes of the 60,000 Fashion-MNIST
training images and of 1,000,000 synthetic vectors; beside them the in-process `Model.search` latency of the same
queries, measured in the same run.

    .venv/bin/python scripts/bench_serve.py --run RUN [--requests 300] [--seconds 6] [--reference]

Each cell sends at most --requests searches or runs at most --seconds, whichever ends first (the counts are
recorded). Clients are threads in this process, each with its own HTTP connection, on loopback only; the
service is a real `embedfm serve` subprocess. Queries are test images as PNG uploads (decoded and embedded by
the service); the in-process figure embeds the same 28 × 28 arrays and searches (`embedfm.load(RUN).search`).
The 1,000,000 synthetic vectors are real train embeddings plus Gaussian noise, renormalised (blank images).
Writes bench_serve.json and bench_serve.md to artifacts/reference/ with --reference, else to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123"
CONCURRENCY = (1, 8, 32)


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)}


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_index(d: Path, x: np.ndarray, labels: np.ndarray, images: np.ndarray, factory: str, run: str) -> float:
    from embedfm import index

    t0 = time.perf_counter()
    idx = index.make_index(x, factory)
    build = time.perf_counter() - t0
    meta = {"run_dir": run, "catalogue": "bench", "factory": factory, "metric": "inner_product", "n": len(x),
            "dim": x.shape[1], **index.state_names(1, snapshot=False)}  # fmt: skip
    sources = (
        np.array([f"train:{i}" for i in range(len(x))])
        if len(x) < 100_000
        else np.array([f"s{i}" for i in range(len(x))])
    )
    index.save(d, idx, {"images": images, "labels": labels, "sources": sources}, meta)
    return build


class Server:
    def __init__(self, run: str, d: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = str(Path(sys.executable).parent / "embedfm")
        env = {**os.environ, "EMBEDFM_TOKEN": TOKEN}
        self.proc = subprocess.Popen([exe, "serve", run, "--index", str(d), "--port", str(self.port)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        t0 = time.time()
        with httpx.Client(base_url=self.url) as http:
            while time.time() - t0 < 600:
                if self.proc.poll() is not None:
                    raise SystemExit(f"serve exited: {self.proc.stdout.read()}")
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
        self.start_s = time.time() - t0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=600)


def run_cell(url: str, queries: list[bytes], clients: int, adds: bool, max_requests: int, seconds: float, next_id):
    import httpx

    lat, errors, lock = [], [], threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + seconds
    stop = threading.Event()
    add_lat = []

    def client(c: int):
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = http.post("/search", data={"k": "10"}, files={"image": ("q.png", queries[i % len(queries)])})
                ms = (time.perf_counter() - t) * 1e3
                with lock:
                    (lat if r.status_code == 200 else errors).append(ms)

    def adder():
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            while not stop.is_set():
                i = next_id()
                t = time.perf_counter()
                r = http.post(
                    "/items", data={"ids": [str(i)]}, files=[("images", ("a.png", queries[i % len(queries)]))]
                )
                if r.status_code != 201:
                    raise SystemExit(f"add failed: {r.text}")
                add_lat.append((time.perf_counter() - t) * 1e3)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    writer = threading.Thread(target=adder) if adds else None
    t0 = time.perf_counter()
    if writer:
        writer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    if writer:
        writer.join()
    cell = {"clients": clients, "concurrent_adds": adds, "requests": len(lat), "errors": len(errors),
            "seconds": round(wall, 2), "searches_per_s": round(len(lat) / wall, 1), **percentiles(lat)}  # fmt: skip
    if adds:
        cell.update(adds=len(add_lat), adds_per_s=round(len(add_lat) / wall, 1),
                    add_p50_ms=round(float(np.median(add_lat)), 2) if add_lat else None)  # fmt: skip
    return cell


def in_process(run: str, d: Path, images: np.ndarray, data_dir, n: int) -> dict:
    """Model.search of one image at a time, with one faiss and one torch thread, as the service runs them."""
    import faiss
    import torch

    import embedfm

    threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    try:
        m = embedfm.load(run, device="cpu", data_dir=data_dir)
        m.search(images[0], index_dir=d, k=10)  # opens the index (checked once)
        ms = []
        for i in range(n):
            t = time.perf_counter()
            m.search(images[i % len(images)], index_dir=d, k=10)
            ms.append((time.perf_counter() - t) * 1e3)
    finally:  # the next index builds with every core again
        faiss.omp_set_num_threads(threads[0])
        torch.set_num_threads(threads[1])
    return {"requests": n, **percentiles(ms)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="trained run dir whose model the service uses")
    p.add_argument("--data-dir", help="Fashion-MNIST dir (default: where the run was trained)")
    p.add_argument("--requests", type=int, default=300, help="searches per cell at most")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per cell at most")
    p.add_argument("--synthetic", type=int, default=1_000_000, help="synthetic vectors")
    p.add_argument("--in-process", type=int, default=200, help="in-process Model.search calls per index")
    p.add_argument("--train-limit", type=int, help="index only the first N train images (a quick check)")
    p.add_argument("--reference", action="store_true", help="write to artifacts/reference/")
    p.add_argument("--out", default=".", help="where the JSON and Markdown go without --reference")
    args = p.parse_args(argv)

    import faiss
    import torch

    import embedfm
    from embedfm import machine
    from embedfm.inference import embed_images

    t_all = time.perf_counter()
    m = embedfm.load(args.run, device="cpu", data_dir=args.data_dir)
    train_x, train_y = m.split("train")
    test_x, _ = m.split("test")
    data = None
    if len(train_x) < 60_000:  # the run trained on a subset or with a validation split: index the whole train set
        from embedfm.data import load_fashion_mnist

        data = load_fashion_mnist(args.data_dir or m.config.data_dir)
        train_x, train_y = data.train_images.numpy(), data.train_labels.numpy().astype(np.int64)
    if args.train_limit:
        train_x, train_y = train_x[: args.train_limit], train_y[: args.train_limit]
    t0 = time.perf_counter()
    emb = embed_images(m.network, train_x, progress=False)
    embed_s = time.perf_counter() - t0
    print(f"embedded {len(train_x):,} train images in {embed_s:.0f} s", flush=True)
    queries_x = test_x[:256]
    queries = [png(q) for q in queries_x]

    rng = np.random.default_rng(0)
    src = rng.integers(0, len(emb), args.synthetic)
    syn = emb[src] + rng.normal(0, 0.15, (args.synthetic, emb.shape[1])).astype(np.float32)
    syn /= np.linalg.norm(syn, axis=1, keepdims=True)
    sets = [
        ("Fashion-MNIST train", emb, train_y, train_x),
        ("synthetic", syn, train_y[src], np.zeros((args.synthetic, 28, 28), np.uint8)),
    ]
    cpu = machine.describe()
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine.summary(cpu), "cpu": cpu,
               "faiss": faiss.__version__, "run": args.run, "max_requests_per_cell": args.requests,
               "max_seconds_per_cell": args.seconds, "k": 10, "query": "PNG upload of a test image, k=10",
               "load_average_1min": [round(os.getloadavg()[0], 2)], "indexes": []}  # fmt: skip
    ids = iter(range(10**9, 2 * 10**9))
    id_lock = threading.Lock()

    def next_id():
        with id_lock:
            return next(ids)

    with tempfile.TemporaryDirectory() as tmp:
        for name, x, y, imgs in sets:
            for factory in ("Flat", "HNSW32"):
                d = Path(tmp) / f"{name[:4]}-{factory}"
                build = write_index(d, x, y, imgs, factory, args.run)
                print(f"{name} {len(x):,} {factory}: built in {build:.0f} s", flush=True)
                local = in_process(args.run, d, queries_x, args.data_dir, args.in_process)
                server = Server(args.run, d)
                cells = []
                for c in CONCURRENCY:
                    for adds in (False, True):
                        cell = run_cell(server.url, queries, c, adds, args.requests, args.seconds, next_id)
                        tag = " + adds" if adds else ""
                        print(f"  {c:>2} clients{tag}: {cell['searches_per_s']:.1f}/s, p50 {cell['p50_ms']:.1f} "
                              f"p95 {cell['p95_ms']:.1f} p99 {cell['p99_ms']:.1f} ms", flush=True)  # fmt: skip
                        cells.append(cell)
                server.stop()
                one = next(c for c in cells if c["clients"] == 1 and not c["concurrent_adds"])
                results["indexes"].append({"data": name, "n": len(x), "factory": factory, "build_s": round(build, 1),
                                           "serve_start_s": round(server.start_s, 1), "in_process": local,
                                           "served_over_in_process_p50": round(one["p50_ms"] / local["p50_ms"], 2),
                                           "cells": cells})  # fmt: skip
                print(f"  in-process p50 {local['p50_ms']:.1f} ms; served/in-process "
                      f"{results['indexes'][-1]['served_over_in_process_p50']:.2f}", flush=True)  # fmt: skip
    results["torch_threads"] = torch.get_num_threads()  # the bench process's clients and in-process searches: 1
    results["load_average_1min"].append(round(os.getloadavg()[0], 2))
    results["seconds"] = round(time.perf_counter() - t_all)
    out = REPO / "artifacts" / "reference" if args.reference else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serve.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench_serve.md").write_text(markdown(results))
    print(f"→ {out / 'bench_serve.json'} ({results['seconds']} s)")
    return 0


def rows(b: dict) -> list[list[str]]:
    out = []
    for ix in b["indexes"]:
        for c in ix["cells"]:
            out.append([ix["data"], f"{ix['n']:,}", ix["factory"], str(c["clients"]),
                        f"yes ({c['adds_per_s']:.0f}/s)" if c["concurrent_adds"] else "no", f"{c['requests']:,}",
                        f"{c['searches_per_s']:,.0f}", f"{c['p50_ms']:.1f}", f"{c['p95_ms']:.1f}", f"{c['p99_ms']:.1f}",
                        f"{ix['in_process']['p50_ms']:.1f} (× {ix['served_over_in_process_p50']:.2f})"
                        if c["clients"] == 1 and not c["concurrent_adds"] else ""])  # fmt: skip
    return out


HEADER = ["data", "n", "index", "clients", "adds meanwhile", "searches", "searches/s", "p50 ms", "p95 ms", "p99 ms",
          "in-process p50 ms (served ×)"]  # fmt: skip


def markdown(b: dict) -> str:
    from embedfm.markdown import md_table

    return (f"# embedfm serve under load\n\n{md_table(HEADER, rows(b))}\n\n{b['query']}; at most "
            f"{b['max_requests_per_cell']} searches or {b['max_seconds_per_cell']:g} s a cell. {b['date']}, "
            f"{b['machine']}, faiss {b['faiss']}; {b['seconds']} s in all.\n")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
