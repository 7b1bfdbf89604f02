"""``graft serve``: a FastAPI app over a trained run.

``POST /predict`` (multipart, one or more image files) answers top-k classes per image;
``GET /health``, ``GET /info`` and ``GET /`` (a page to try it). Bad input always gets a 4xx with
``{"error": ...}``: a body over the size limit (413, refused before it is read in full), a request
that is not multipart (415), no file or an empty one (400), a file that is not an image in an
allowed format (415), one that does not decode, e.g. a truncated JPEG (422), or too many pixels
(413). Concurrent requests share forward passes (:class:`~graft.serving.batcher.Batcher`).
"""

from __future__ import annotations

import asyncio
import html
import io
import socket
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from graft.data.images import load_image
from graft.errors import GraftError
from graft.serving.batcher import Batcher
from graft.serving.page import PAGE

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})


class BadImage(Exception):
    """An upload that cannot be used, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    """The JSON body of every 4xx answer."""
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, by Content-Length before
    reading, and by counting for chunked uploads that do not announce their length."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body over the {self.limit / 1e6:g} MB limit"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await error(413, message)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return event

        async def tracked_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await error(413, message)(scope, receive, send)


class _TooLarge(Exception):
    pass


def decode(data: bytes, name: str, min_size: int) -> Image.Image:
    """An uploaded file as an RGB image (EXIF orientation applied).

    Raises:
        BadImage: Empty, not an image, a format not allowed, undecodable, or too many pixels.
    """
    if not data:
        raise BadImage(400, f"{name}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
    except UnidentifiedImageError:
        raise BadImage(415, f"{name}: not an image ({', '.join(sorted(ALLOWED_FORMATS))} accepted)") from None
    except Image.DecompressionBombError:
        raise BadImage(413, f"{name}: too many pixels") from None
    except Exception as e:  # any other decoder complaint about the header
        raise BadImage(422, f"{name}: the image could not be decoded ({e})") from None
    if fmt not in ALLOWED_FORMATS:
        raise BadImage(415, f"{name}: format {fmt} not accepted ({', '.join(sorted(ALLOWED_FORMATS))})")
    try:
        return load_image(io.BytesIO(data), min_size)
    except ValueError as e:  # load_image's decompression-bomb guard
        raise BadImage(413, f"{name}: too many pixels ({e})") from None
    except Exception as e:  # truncated or corrupt data
        raise BadImage(422, f"{name}: the image could not be decoded ({e})") from None


def create_app(
    run_dir: str | Path,
    *,
    device: str = "auto",
    precision: str = "fp32",
    max_upload_mb: float = 20.0,
    max_files: int = 32,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
) -> FastAPI:
    """The app serving the run in ``run_dir``.

    Args:
        precision: Arithmetic of the forward passes (see :attr:`graft.Learner.precision`).
        max_upload_mb: Largest request body accepted.
        max_files: Most images in one request.
        max_batch: Most images per forward pass across concurrent requests.
        max_wait_ms: How long a request waits for others to share its forward pass.

    Raises:
        GraftError: A limit out of range, or the run folder is not a valid run.
    """
    from graft.training.learner import load_learner

    _check_limits(
        max_upload_mb=max_upload_mb, max_files=max_files, max_batch=max_batch, max_wait_ms=max_wait_ms
    )
    learn = load_learner(run_dir, device=device, precision=precision)
    pre = learn.preprocessing
    batcher = Batcher(learn.predict_images, max_batch=max_batch, max_wait=max_wait_ms / 1000)
    info = {
        "model": learn.spec.to_dict(),
        "classes": learn.classes,
        "preprocessing": pre.to_dict(),
        "metrics": learn.metrics,
        "precision": learn.precision,
        "limits": {
            "max_upload_mb": max_upload_mb,
            "max_files": max_files,
            "formats": sorted(ALLOWED_FORMATS),
        },
    }

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="graft", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=int(max_upload_mb * 1e6))
    app.state.batcher = batcher

    # Every error answer has the same shape: {"error": "..."} (FastAPI's default is {"detail": ...}).
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def get_info() -> dict:
        return info

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        title = f"{learn.spec.arch}: {len(learn.classes)} classes"
        classes = ", ".join(learn.classes[:20]) + (" …" if len(learn.classes) > 20 else "")
        return PAGE.replace("__TITLE__", html.escape(title)).replace("__SUBTITLE__", html.escape(classes))

    @app.post("/predict")
    async def predict(request: Request, top_k: int = 3):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, "send images as multipart/form-data (field name: file)")
        try:
            form = await request.form(max_files=max_files)
        except MultiPartException as e:
            return error(400, f"malformed multipart body: {e.message}")
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            return error(400, "no image file in the request (multipart field name: file)")
        names, images = [], []
        try:
            for upload in uploads:
                name = upload.filename or "upload"
                data = await upload.read()
                images.append(await asyncio.to_thread(decode, data, name, pre.resize_size))
                names.append(name)
        except BadImage as e:
            return error(e.status, str(e))
        finally:
            await form.close()
        probs = await batcher(images)
        k = max(1, min(top_k, len(learn.classes)))
        predictions = []
        for name, row in zip(names, probs, strict=True):
            order = row.argsort()[::-1][:k]
            top = [{"label": learn.classes[j], "prob": round(float(row[j]), 6)} for j in order]
            predictions.append(
                {"filename": name, "label": top[0]["label"], "prob": top[0]["prob"], "top": top}
            )
        return {"predictions": predictions}

    return app


def _check_limits(**limits: float) -> None:
    # (lowest, highest) of each limit: a zero or negative one would refuse or hang every request.
    ranges = {
        "max_upload_mb": (1e-3, 1e5),
        "max_files": (1, 10_000),
        "max_batch": (1, 4096),
        "max_wait_ms": (0, 1e4),
    }
    for name, value in limits.items():
        lo, hi = ranges[name]
        if not (isinstance(value, int | float) and lo <= value <= hi):
            raise GraftError(f"{name} must be from {lo:g} to {hi:g}, not {value!r}")


def check_listen(host: str, port: int) -> None:
    """Raise GraftError unless ``host:port`` can be listened on now (a port in use, out of range)."""
    if not 1 <= int(port) <= 65535:
        raise GraftError(f"port must be from 1 to 65535, not {port}")
    try:
        with socket.create_server((host, int(port))):
            pass
    except OSError as e:
        raise GraftError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[], None] | None = None,
    **kwargs,
) -> None:
    """Run the app with uvicorn until interrupted (``kwargs`` go to :func:`create_app`).

    ``on_ready`` runs once the run is loaded, the limits checked and the address found free,
    just before serving: the place to announce it.

    Raises:
        GraftError: The address cannot be listened on, a limit is out of range, or the run is invalid.
    """
    import uvicorn

    check_listen(host, port)
    app = create_app(run_dir, **kwargs)
    if on_ready is not None:
        on_ready()
    uvicorn.run(app, host=host, port=port, log_level="warning")
