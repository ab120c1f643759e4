"""`embedfm serve RUN`: a run's embedding as an HTTP similarity-search service (FastAPI + uvicorn).

    POST   /search        an uploaded image or a catalogue id, k, optional classes → neighbours and the kNN vote
    POST   /embed         uploaded images → unit-norm embeddings
    POST   /items         uploaded images with ids (and labels) → added to the index, durable on return
    DELETE /items/{id}    removed from the index, durable on return
    GET    /health, /info liveness; run, model, index and data fingerprint
    GET    /docs          the OpenAPI page

Searches and changes go through `live.LiveIndex` (the path `embedfm search` and `Model.search` take), images
through `images.decode_image` (the decoder of `embedfm search`'s files) and `inference.embed_images`. The service
is the index dir's one writer (its lock, as for runs). Every bad request is a 4xx with one line,
{"error": "..."}; nothing a client sends stops the service. The limits below are stated in /info and the docs.

It binds to 127.0.0.1 by default. On any other address the write endpoints need a token (`--token` or
EMBEDFM_TOKEN), sent as `Authorization: Bearer TOKEN`, and the service refuses to start without one.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations, whose types are imported
# inside create_app (fastapi is an optional extra), at definition time
import hmac
import ipaddress
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import numpy as np

from embedfm import __version__
from embedfm.errors import EmbedfmError

MAX_BODY = 8 << 20  # bytes per request; more is answered 413 before it is read
MAX_PIXELS = 16_000_000  # declared pixels per uploaded image (4,000 × 4,000); more is 413, checked before decoding
MAX_IMAGES = 256  # images per /embed or /items request
TOKEN_ENV = "EMBEDFM_TOKEN"
FORMS = (b"multipart/form-data", b"application/x-www-form-urlencoded")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(host: str, token: str | None) -> str | None:
    """The write token the service runs with; a non-loopback address without one is refused (one line)."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 8:
        raise EmbedfmError("the token must be at least 8 characters")
    if token is None and not is_loopback(host):
        raise EmbedfmError(
            f"--host {host} is reachable from other machines: give a token for the write endpoints "
            f"(--token or {TOKEN_ENV}), or serve on 127.0.0.1"
        )
    return token


class Service:
    """A run's model and a writable live index: what the endpoints call."""

    def __init__(self, run_dir: str, network, run, live, token: str | None):
        self.run_dir, self.network, self.run, self.live, self.token = run_dir, network, run, live, token
        self.num_classes = run.num_classes
        self.class_names = run.class_names
        from embedfm.images import run_format

        self.format = run_format(run)  # None: Fashion-MNIST's framing of outside images

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """An upload in the run's format: Fashion-MNIST's framing, or the run's own size and channels."""
        from embedfm.images import decode_image, open_checked, pixels, to_run_format

        if self.format is None:
            return decode_image(data, name, MAX_PIXELS)
        return to_run_format(open_checked(data, name, MAX_PIXELS, pixels), self.format, self.run.config.resize)

    def embed(self, images: np.ndarray) -> np.ndarray:
        from embedfm.inference import embed_images

        return embed_images(self.network, np.ascontiguousarray(images), progress=False)

    def classes(self, text: str | None) -> list[int] | None:
        """'0,2,Shirt' → class ids."""
        if text is None or not text.strip():
            return None
        by_name = {n.lower(): i for i, n in enumerate(self.class_names)}
        out = []
        for part in text.split(","):
            p = part.strip().lower()
            if p.lstrip("-").isdigit() and 0 <= int(p) < self.num_classes:
                out.append(int(p))
            elif p in by_name:
                out.append(by_name[p])
            else:
                raise EmbedfmError(
                    f"classes: {part.strip()[:40]!r} is not a class id (0-{self.num_classes - 1}) or name"
                )
        return out

    def search(self, embedding: np.ndarray, k: int, classes, nprobe, ef_search) -> dict:
        from embedfm.live import class_vote

        hits = self.live.search(embedding[None], k, classes=classes, nprobe=nprobe, ef_search=ef_search)
        vote = class_vote(hits.labels, self.num_classes)[0]
        rows = [
            {
                "id": int(hits.ids[0, r]),
                "similarity": round(float(hits.similarities[0, r]), 6),
                "distance": round(1.0 - float(hits.similarities[0, r]), 6),
                "label": int(hits.labels[0, r]),
                "class": self.class_names[hits.labels[0, r]] if hits.labels[0, r] >= 0 else None,
                "source": str(hits.sources[0, r]),
            }
            for r in range(hits.ids.shape[1])
            if hits.slots[0, r] >= 0
        ]
        if vote is not None:
            vote = {**vote, "class": self.class_names[vote["label"]], "share": round(vote["share"], 4)}
        return {"k": k, "hits": rows, "vote": vote}

    def info(self) -> dict:
        cfg = self.run.config
        return {
            "embedfm": __version__,
            "run": str(self.run_dir),
            "model": {
                "backbone": cfg.backbone,
                "loss": cfg.loss,
                "embedding_dim": self.run.embedding_dim,
                "num_classes": self.num_classes,
                "epoch": self.run.epoch,
            },
            "index": self.live.info(),
            "data": self.run.data_fingerprint,
            "limits": {
                "max_body_bytes": MAX_BODY,
                "max_pixels": MAX_PIXELS,
                "max_images": MAX_IMAGES,
                "max_k": _max_k(),
            },
            "token_required": self.token is not None,
        }


def _max_k() -> int:
    from embedfm.live import MAX_K

    return MAX_K


def _status(e: EmbedfmError) -> int:
    from embedfm.images import ImageTooLarge
    from embedfm.live import DuplicateItem, UnknownItem

    return {UnknownItem: 404, DuplicateItem: 409, ImageTooLarge: 413}.get(type(e), 400)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": _one_line(message)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware that turns away, before the body is read: writes without the right token (401 / 403), POST
    bodies that are not forms (415) and bodies over MAX_BODY (413, by Content-Length or as they stream in)."""

    def __init__(self, app, token: str | None, max_body: int = MAX_BODY):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        headers = {k.lower(): v for k, v in scope["headers"]}
        if self.token is not None and method in ("POST", "DELETE") and path.startswith("/items"):
            auth = headers.get(b"authorization", b"")
            if not auth:
                return await _reply(send, 401, "this endpoint needs the service's token: Authorization: Bearer TOKEN")
            given = auth[7:] if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.token.encode()):
                return await _reply(send, 403, "wrong token")
        if method == "POST":
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind not in FORMS:
                return await _reply(send, 415, f"expected multipart/form-data, got {kind.decode('latin-1')[:60]!r}")
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                return await _reply(send, 413, f"request body over the {self.max_body:,}-byte limit")
        seen, refused, started = 0, False, False

        async def counted_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a body without a (true) length: stop reading it here
                    refused = True
                    if not started:
                        await _reply(send, 413, f"request body over the {self.max_body:,}-byte limit")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # the 413 went out; whatever the app says after the disconnect goes nowhere
            started = True
            await send(message)

        return await self.app(scope, counted_receive, guarded_send)


def create_app(service: Service):
    """The FastAPI app over a Service."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(
        title="embedfm",
        version=__version__,
        description="Similarity search over a Fashion-MNIST embedding. Write endpoints need "
        "`Authorization: Bearer TOKEN` when the service runs with a token. Limits: "
        f"{MAX_BODY:,}-byte bodies, {MAX_PIXELS:,} pixels an image, {MAX_IMAGES} images a request, k ≤ {_max_k()}.",
    )

    @app.exception_handler(EmbedfmError)
    async def _embedfm_error(request: Request, e: EmbedfmError):
        return JSONResponse({"error": _one_line(str(e))}, status_code=_status(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": _one_line(f"{where}: {first.get('msg', 'invalid')}")}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        return JSONResponse({"error": _one_line(str(e.detail))}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):  # a bug: one line to the client, the traceback to the log
        import traceback

        traceback.print_exception(e, file=sys.stderr)
        return JSONResponse({"error": f"internal error ({type(e).__name__})"}, status_code=500)

    def read_images(files: list[UploadFile]) -> np.ndarray:
        if not files:
            raise EmbedfmError("no images given")
        if len(files) > MAX_IMAGES:
            raise EmbedfmError(f"{len(files)} images in one request; the limit is {MAX_IMAGES}")
        return np.stack([service.decode(f.file.read(), f.filename or "upload") for f in files])

    @app.get("/health")
    def health() -> dict:
        """The service is up and answering; `size`: items in the index."""
        return {"status": "ok", "size": service.live.size}

    @app.get("/info")
    def info() -> dict:
        """The run, its model, the index (type, size, snapshot generation), the data fingerprint, the limits."""
        return service.info()

    @app.post("/search")
    def search(
        image: Annotated[UploadFile | None, File(description="a query image (PNG, JPEG, BMP, GIF, WebP, TIFF)")] = None,
        id: Annotated[int | None, Form(description="or the id of a catalogue item to search from")] = None,
        k: Annotated[int, Form(description=f"neighbours, 1..{_max_k()}")] = 10,
        classes: Annotated[
            str | None, Form(description="only items of these classes: ids or names, comma-separated")
        ] = None,
        nprobe: Annotated[int | None, Form(description="IVF lists searched (default: as saved)")] = None,
        ef_search: Annotated[int | None, Form(description="HNSW search breadth (default: as saved)")] = None,
    ) -> dict:
        """The k nearest items of a query: ids, cosine similarities and distances (1 − similarity), labels, and
        the kNN class vote over the neighbours with a known label (ties to the nearest tied class) with its share."""
        if (image is None) == (id is None):
            raise EmbedfmError("give either an image or an id")
        if image is not None:
            query, name = service.decode(image.file.read(), image.filename or "upload"), image.filename or "upload"
        else:
            query, _, _ = service.live.item(id)
            name = f"id:{id}"
        found = service.search(service.embed(query[None])[0], k, service.classes(classes), nprobe, ef_search)
        return {"query": name, **found}

    @app.post("/embed")
    def embed(images: Annotated[list[UploadFile], File(description=f"1..{MAX_IMAGES} images")]) -> dict:
        """Unit-norm embeddings of the images, in order (cosine similarity = dot product)."""
        z = service.embed(read_images(images))
        return {"dim": int(z.shape[1]), "embeddings": z.round(7).tolist()}

    @app.post("/items", status_code=201)
    def add_items(
        images: Annotated[list[UploadFile], File(description=f"1..{MAX_IMAGES} images")],
        ids: Annotated[list[int], Form(description="one new id (≥ 0) per image")],
        labels: Annotated[list[int] | None, Form(description="one class id per image (-1 = unknown)")] = None,
    ) -> dict:
        """Add items; they are in the log on disk (fsynced) and searchable when this answers. Needs the token."""
        service.live.check_add(ids, labels)  # a bad id fails before any image is decoded
        if len(ids) != len(images) or (labels is not None and len(labels) != len(images)):
            raise EmbedfmError(f"{len(images)} images, {len(ids)} ids, {len(labels or ids)} labels: give one each")
        if labels is not None and any(not -1 <= c < service.num_classes for c in labels):
            raise EmbedfmError(f"labels must be -1 (unknown) or a class id 0-{service.num_classes - 1}")
        x = read_images(images)
        added = service.live.add(ids, service.embed(x), x, labels, [f"upload:{f.filename or ''}" for f in images])
        return {"added": added, "size": service.live.size}

    @app.delete("/items/{item_id}")
    def remove_item(item_id: int) -> dict:
        """Remove an item; durable when this answers. Needs the token."""
        service.live.remove([item_id])
        return {"removed": item_id, "size": service.live.size}

    return Guard(app, service.token)


def serve(
    run_dir: str,
    index_dir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    log=print,
) -> None:
    """Serve until interrupted; the log is folded into a snapshot on the way out."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise EmbedfmError(f"embedfm serve needs {e.name}: pip install 'embedfm[serve]'") from None
    from embedfm.inference import select_device
    from embedfm.live import LiveIndex
    from embedfm.run import Run

    token = check_token(host, token)
    if not 0 < port < 65536:
        raise EmbedfmError(f"--port must be in 1..65535, got {port}")
    _check_port_free(host, port)
    import faiss
    import torch

    # one query per request: the cores are shared by concurrent requests, and faiss's or torch's own threads
    # per request would only contend with them (and, on a busy machine, wait on a descheduled thread)
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    run = Run.open(run_dir)
    network = run.model(select_device("auto"))
    d = Path(index_dir) if index_dir else Path(run_dir) / "index"
    live = LiveIndex.open(d, writable=True, command="serve", log=log)
    try:
        dim = run.embedding_dim
        if live.dim != dim:
            raise EmbedfmError(f"{d}: the index holds {live.dim}-d embeddings but this run makes {dim}-d ones")
        app = create_app(Service(str(run_dir), network, run, live, token))
        log(f"serving {d} ({live.size:,} items, {live.meta['factory']}) with {run_dir}'s model on "
            f"http://{host}:{port} (API docs: /docs){'; writes need the token' if token else ''}")  # fmt: skip
        sys.stdout.flush()
        # uvicorn stops gracefully on SIGINT / SIGTERM and then raises the signal again: let that be an exception
        # here, so the log is folded below rather than the process ending inside uvicorn
        signal.signal(signal.SIGTERM, _stop)
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        live.close()
    log(f"stopped; {d} holds {live.size:,} items")


class _Stopped(Exception):
    """SIGTERM, once uvicorn has shut down."""


def _stop(signum, frame):
    raise _Stopped


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise EmbedfmError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
