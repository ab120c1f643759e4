"""embedfm.serve: the real service in a subprocess on a free loopback port, every endpoint, the token rule, bad
requests, a fuzz, kill -9 during adds (the live index it serves: test_live.py)."""

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedfm.cli import main

TOKEN = "s3cret-token-for-tests"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_a_public_address_without_a_token_is_refused_in_one_line(fake_run, index_dir, capsys, monkeypatch):
    monkeypatch.delenv("EMBEDFM_TOKEN", raising=False)
    assert main(["serve", str(fake_run[0]), "--index", str(index_dir), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give a token for the write endpoints" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run: Path, index: Path, token: str | None = TOKEN):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "EMBEDFM_TOKEN": token or ""}
        cmd = [
            str(Path(sys.executable).parent / "embedfm"),
            "serve",
            str(run),
            "--index",
            str(index),
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        import httpx

        self.http = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.proc.stdout.read()}")
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("serve did not answer /health within 60 s")

    def stop(self, sig=signal.SIGTERM) -> str:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        self.http.close()
        return out


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def garment(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def search(server, **form):
    files = {"image": ("q.png", png(form.pop("image")), "image/png")} if "image" in form else None
    return server.http.post("/search", data={k: str(v) for k, v in form.items()}, files=files)


@pytest.fixture(scope="module")
def service(tmp_path_factory, fake_run):
    run, data = fake_run
    idx = tmp_path_factory.mktemp("served") / "idx"
    assert main(["index", str(run), "--data-dir", str(data), "--out", str(idx), "--no-progress"]) == 0
    server = Server(run, idx)
    yield server, run, data, idx
    server.stop()


@pytest.mark.slow
def test_every_endpoint(service):
    import embedfm

    server, run, data, idx = service
    assert server.http.get("/health").json() == {"status": "ok", "size": 300}
    info = server.http.get("/info").json()
    assert info["index"]["factory"] == "Flat" and info["index"]["size"] == 300 and info["token_required"]
    assert info["model"]["embedding_dim"] == 64 and info["data"]["n_train"] == 300
    assert server.http.get("/docs").status_code == 200 and "/search" in server.http.get("/openapi.json").json()["paths"]

    # search by upload = the Python API's search of the same image (one code path)
    img = garment(1)
    r = search(server, image=img, k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    m = embedfm.load(run, device="cpu", data_dir=data)
    (idx.parent / "q.png").write_bytes(png(img))  # the API reads the file the way the service reads the upload
    ref = m.search(str(idx.parent / "q.png"), index_dir=idx, k=5)
    assert [h["id"] for h in body["hits"]] == ref.ids[0].tolist()
    assert np.allclose([h["similarity"] for h in body["hits"]], ref.similarities[0], atol=1e-5)
    assert [h["label"] for h in body["hits"]] == ref.labels[0].tolist()
    labels = ref.labels[0]
    counts = np.bincount(labels, minlength=10)
    assert body["vote"]["share"] == pytest.approx(counts.max() / 5, abs=1e-4)
    assert counts[body["vote"]["label"]] == counts.max()

    # by catalogue id, with a class filter (by name and by id)
    r = search(server, id=7, k=3, classes="Sneaker,3").json()
    assert {h["label"] for h in r["hits"]} <= {7, 3} and r["query"] == "id:7" and r["hits"][0]["id"] == 7

    z = server.http.post("/embed", files=[("images", ("a.png", png(img))), ("images", ("b.png", png(garment(2))))])
    emb = np.array(z.json()["embeddings"])
    assert emb.shape == (2, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.allclose(emb[0], m.embed(str(idx.parent / "q.png"))[0], atol=1e-5)

    # add, find, remove
    add = server.http.post(
        "/items", files=[("images", ("n.png", png(img)))], data={"ids": ["9001"], "labels": ["4"]}, headers=AUTH
    )
    assert add.status_code == 201 and add.json() == {"added": [9001], "size": 301}
    top = search(server, image=img, k=1).json()["hits"][0]
    assert top["id"] == 9001 and top["label"] == 4 and top["similarity"] > 0.999
    assert server.http.delete("/items/9001", headers=AUTH).json() == {"removed": 9001, "size": 300}
    assert search(server, image=img, k=5).json()["hits"] == body["hits"]


BAD = [
    # (method, path, kwargs, status, words in the one-line reason)
    ("post", "/search", {"files": {"image": ("x.png", b"not an image")}}, 400, "not an image"),
    ("post", "/search", {"files": {"image": ("t.png", None)}}, 400, "readable"),  # truncated PNG, filled below
    ("post", "/search", {"files": {"image": ("big.png", None)}}, 413, "pixel limit"),  # a 5000×4000 PNG
    ("post", "/search", {"json": {"id": 3}}, 415, "multipart"),
    ("post", "/search", {"data": {"id": "3", "k": "0"}}, 400, "k must be in 1..1000"),
    ("post", "/search", {"data": {"id": "3", "k": "1001"}}, 400, "k must be in 1..1000"),
    ("post", "/search", {"data": {"id": "3", "k": "ten"}}, 422, "k"),
    ("post", "/search", {"data": {"id": "123456"}}, 404, "no item with id 123456"),
    ("post", "/search", {"data": {"k": "3"}}, 400, "either an image or an id"),
    ("post", "/search", {"data": {"id": "3", "classes": "Boots"}}, 400, "not a class"),
    ("post", "/embed", {"files": {"images": ("x.gif", b"GIF89a")}}, 400, "x.gif: not"),
    ("post", "/embed", {"files": {"images": ("huge.bin", b"\0" * (9 << 20))}}, 413, "byte limit"),
    ("post", "/items", {"data": {"ids": ["1"]}, "files": {"images": ("a.png", None)}}, 401, "token"),
    ("post", "/items", {"data": {"ids": ["1"]}, "files": {"images": ("a.png", None)}, "auth": "nope"}, 403, "wrong"),
    ("post", "/items", {"data": {"ids": ["5"]}, "files": {"images": ("a.png", None)}, "auth": TOKEN}, 409, "already"),
    ("post", "/items", {"data": {"ids": ["-3"]}, "files": {"images": ("a.png", None)}, "auth": TOKEN}, 400, "id must"),
    ("delete", "/items/77777", {"auth": TOKEN}, 404, "no item with id 77777"),
    ("delete", "/items/3", {}, 401, "token"),
    ("get", "/nowhere", {}, 404, "not found"),
]


def _fill(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    files = kwargs.get("files")
    if files:
        name, content = next(iter(files.values()))
        if content is None:
            good = png(garment(3))
            content = {"t.png": good[: len(good) // 2], "big.png": _big_png()}.get(name, good)
        kwargs["files"] = {next(iter(files)): (name, content)}
    auth = kwargs.pop("auth", None)
    if auth:
        kwargs["headers"] = {"Authorization": f"Bearer {auth}"}
    return kwargs


def _big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.slow
def test_bad_requests_are_one_line_4xx_and_a_fuzz_changes_nothing(service):
    server = service[0]
    state = server.http.get("/info").json()["index"]
    ref = search(server, image=garment(5), k=10).json()
    for method, path, kwargs, status, words in BAD:
        r = (
            getattr(server.http, method)(path, **_fill(kwargs))
            if method != "delete"
            else server.http.delete(
                path, **({"headers": {"Authorization": f"Bearer {kwargs['auth']}"}} if "auth" in kwargs else {})
            )
        )
        assert r.status_code == status, (path, kwargs.keys(), r.status_code, r.text)
        reason = r.json()["error"]
        assert "\n" not in reason and words.lower() in reason.lower(), (path, status, reason)

    # the fuzz: valid requests, mutated (bytes flipped, cut, headers swapped, fields garbled), no token
    rng = random.Random(0)
    good = png(garment(6))
    import httpx

    templates = []
    for form, files in (
        ({"k": "5"}, {"image": ("q.png", good, "image/png")}),
        ({"id": "12", "k": "3", "classes": "0,2"}, None),
        ({"ids": "77", "labels": "1"}, {"images": ("a.png", good, "image/png")}),
    ):
        req = httpx.Request("POST", f"{server.url}/search", data=form, files=files)
        templates.append((bytes(req.read()), req.headers["content-type"]))
    statuses = {}
    for i in range(500):
        body, ctype = rng.choice(templates)
        body = bytearray(body)
        how = rng.randrange(6)
        if how == 0:  # flip bytes
            for _ in range(rng.randint(1, 20)):
                body[rng.randrange(len(body))] = rng.randrange(256)
        elif how == 1:  # cut
            body = body[: rng.randrange(len(body))]
        elif how == 2:  # garble the boundary or the content type
            ctype = rng.choice(["multipart/form-data", "multipart/form-data; boundary=x", "text/plain", "", ctype[:-3]])
        elif how == 3:  # insert junk
            at = rng.randrange(len(body))
            body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif how == 4:  # swap a number
            body = body.replace(
                b"\r\n\r\n5\r\n", f"\r\n\r\n{rng.choice(['-1', '0', '99999', 'x', '1e9'])}\r\n".encode()
            )
        path = rng.choice(["/search", "/embed", "/items", "/search"])
        r = server.http.post(path, content=bytes(body), headers={"content-type": ctype} if ctype else {})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (i, how, path, r.status_code, r.text)
        if r.status_code >= 400:
            assert "\n" not in r.json()["error"]
    assert server.http.get("/health").json()["status"] == "ok"
    assert server.http.get("/info").json()["index"] == state
    assert search(server, image=garment(5), k=10).json() == ref
    assert sum(statuses.values()) == 500


@pytest.mark.slow
def test_kill_9_during_adds_loses_no_acknowledged_item(tmp_path, fake_run):
    run, data = fake_run
    idx = tmp_path / "idx"
    assert main(["index", str(run), "--data-dir", str(data), "--out", str(idx), "--no-progress"]) == 0
    server = Server(run, idx)
    acked, stop = [], threading.Event()

    def writer(first: int):
        import httpx

        with httpx.Client(base_url=server.url, timeout=10) as http:
            i = first
            while not stop.is_set():
                try:
                    r = http.post("/items", files=[("images", ("g.png", png(garment(i))))], data={"ids": [str(i)]},
                                  headers=AUTH)  # fmt: skip
                except httpx.TransportError:
                    return  # the server is gone: this add was never acknowledged
                assert r.status_code == 201, r.text
                acked.append(i)
                i += 2

    threads = [threading.Thread(target=writer, args=(10_000 + t,)) for t in range(2)]
    for t in threads:
        t.start()
    while len(acked) < 40:
        time.sleep(0.02)
    server.proc.kill()  # SIGKILL, with adds in flight
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    server.http.close()

    again = Server(run, idx)
    try:
        size = again.http.get("/health").json()["size"]
        assert size >= 300 + len(acked)
        for i in acked:
            hit = again.http.post("/search", data={"id": str(i), "k": "1"}).json()["hits"][0]
            assert hit["id"] == i
        served = [search(again, image=garment(s), k=8).json()["hits"] for s in range(3)]
    finally:
        again.stop()
    # the service folded its log on the way out; what it answered is what a fresh reader of the dir answers
    import embedfm

    m = embedfm.load(run, device="cpu", data_dir=data)
    for s, hits in enumerate(served):
        (tmp_path / "q.png").write_bytes(png(garment(s)))
        assert [h["id"] for h in hits] == m.search(str(tmp_path / "q.png"), index_dir=idx, k=8).ids[0].tolist()
    assert json.loads((idx / "index.json").read_text())["size"] == size
