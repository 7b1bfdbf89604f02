"""``graft serve``: a FastAPI app over a trained run.

``POST /predict`` (multipart, one or more image files) answers each image's labels (the top
class, or every class at or above its threshold for a multi-label model) and its top-k classes;
``GET /health``, ``GET /info`` and ``GET /`` (a page to try it). Bad input always gets a 4xx with
``{"error": ...}``: a body over the size limit (413, refused before it is read in full), a request
that is not multipart (415), no file or an empty one (400), a file that is not an image in an
allowed format (415), one that does not decode, e.g. a truncated JPEG (422), or too many pixels
(413). Concurrent requests share forward passes (:class:`~graft.serving.batcher.Batcher`).
"""

from __future__ import annotations

import asyncio
import ctypes
import html
import io
import logging
import socket
import warnings
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from graft.data.images import load_image
from graft.data.transforms import eval_transform
from graft.inference.decision import Decision, Reject
from graft.inference.predictions import decide
from graft.infrastructure.errors import GraftError
from graft.serving.batcher import Batcher
from graft.serving.budget import PixelBudget
from graft.serving.page import PAGE
from graft.serving.schema import FIELD, REQUEST_BODY, RESPONSES, Predictions

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


def probe(data: bytes, name: str) -> int:
    """Check an upload's header and return its pixel count, before any pixel is decoded.

    Raises:
        BadImage: Empty, not an image, a format not allowed, or over Pillow's hard pixel limit.
    """
    if not data:
        raise BadImage(400, f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget handles these
            with Image.open(io.BytesIO(data)) as header:
                fmt, (width, height) = header.format, header.size
    except UnidentifiedImageError:
        raise BadImage(415, f"{name}: not an image ({', '.join(sorted(ALLOWED_FORMATS))} accepted)") from None
    except Image.DecompressionBombError:
        raise BadImage(413, f"{name}: too many pixels") from None
    except Exception as e:  # any other decoder complaint about the header
        raise BadImage(422, f"{name}: the image could not be decoded ({e})") from None
    if fmt not in ALLOWED_FORMATS:
        raise BadImage(415, f"{name}: format {fmt} not accepted ({', '.join(sorted(ALLOWED_FORMATS))})")
    return width * height


def decode(data: bytes, name: str, transform: Callable[[Image.Image], torch.Tensor], min_size: int):
    """An upload as the model's input tensor: decoded at the size the model needs (see
    :func:`~graft.data.images.load_image`), then ``transform``-ed, so the full-size pixels are
    freed here and a request holds only tensors of the model's input size.

    Raises:
        BadImage: Undecodable (truncated, corrupt) or too many pixels.
    """
    try:
        return transform(load_image(io.BytesIO(data), min_size))
    except ValueError as e:  # load_image's decompression-bomb guard
        raise BadImage(413, f"{name}: too many pixels ({e})") from None
    except Exception as e:  # truncated or corrupt data
        raise BadImage(422, f"{name}: the image could not be decoded ({e})") from None


# Pixels decoded at once across all requests (see PixelBudget): one image at Pillow's hard limit
# (2 x MAX_IMAGE_PIXELS, 179 Mpx), or many smaller ones. Pillow holds at most 4 bytes a pixel
# (RGB and RGBA alike), plus a few Mpx for conversions: about 720 MB in the worst case.
DECODE_BUDGET_PIXELS = 180_000_000

log = logging.getLogger("graft.serve")


def create_app(
    run_dir: str | Path,
    *,
    device: str = "auto",
    precision: str = "fp32",
    max_upload_mb: float = 20.0,
    max_files: int = 32,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_request_mpx: float = 2000.0,
    reject: str | float = "auto",
) -> FastAPI:
    """The app serving the run in ``run_dir``.

    Args:
        precision: Arithmetic of the forward passes (see :attr:`graft.Learner.precision`).
        reject: When to answer "unknown" (``auto``, ``off`` or a score threshold; see
            :meth:`graft.Learner.predict`).
        max_upload_mb: Largest request body accepted.
        max_files: Most images in one request.
        max_batch: Most images per forward pass across concurrent requests.
        max_wait_ms: How long a request waits for others to share its forward pass.
        max_request_mpx: Most pixels (millions, as the files' headers state them) in one request.

    Raises:
        GraftError: A limit out of range, or the run folder is not a valid run.
    """
    # Long for its routes: each is a closure over the loaded learner and the shared limits.
    from graft.learner.learner import load_learner

    _check_limits(
        max_upload_mb=max_upload_mb,
        max_files=max_files,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_request_mpx=max_request_mpx,
    )
    learn = load_learner(run_dir, device=device, precision=precision)
    rule = learn.rejection(reject)
    pre = learn.preprocessing
    # With the unknown score, each row's last column is the score (split off in _answers).
    batcher = Batcher(learn.predict_images_scored, max_batch=max_batch, max_wait=max_wait_ms / 1000)
    budget = PixelBudget(DECODE_BUDGET_PIXELS)
    limits = {"max_upload_mb": max_upload_mb, "max_files": max_files, "max_request_mpx": max_request_mpx}
    info = {
        "model": learn.spec.to_dict(),
        "classes": learn.classes,
        "preprocessing": pre.to_dict(),
        "decision": learn.decision.to_dict(learn.classes),
        "reject": None if rule is None else {"threshold": rule.threshold, "label": rule.label},
        "metrics": learn.metrics,
        "precision": learn.precision,
        "limits": {**limits, "formats": sorted(ALLOWED_FORMATS)},
    }

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        budget.start()
        yield
        await batcher.stop()

    app = FastAPI(title="graft", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=int(max_upload_mb * 1e6))
    app.state.batcher, app.state.budget = batcher, budget
    _add_error_handlers(app)
    reader = _ImageReader(eval_transform(pre), pre.resize_size, budget, int(max_request_mpx * 1e6))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def get_info() -> dict:
        return info

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        n = len(learn.classes)
        title = f"{learn.spec.arch}: {n} class{'es' if n != 1 else ''}"
        classes = ", ".join(learn.classes[:20]) + (" …" if n > 20 else "")
        return PAGE.replace("__TITLE__", html.escape(title)).replace("__SUBTITLE__", html.escape(classes))

    @app.post("/predict", openapi_extra=REQUEST_BODY, responses=RESPONSES, response_model=Predictions)
    async def predict(request: Request, top_k: int = 3):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, f"send images as multipart/form-data (field name: {FIELD})")
        try:
            form = await request.form(max_files=max_files)
        except MultiPartException as e:
            return error(400, f"malformed multipart body: {e.message}")
        try:
            names, tensors = await reader.read(form)
        except BadImage as e:
            return error(e.status, str(e))
        finally:
            await form.close()
        out = await batcher(tensors)
        scores = out[:, -1] if learn.scored else None
        probs = out[:, :-1] if learn.scored else out
        return {"predictions": _answers(names, probs, learn.classes, top_k, learn.decision, scores, rule)}

    return app


class _ImageReader:
    """Turns a request's uploads into model inputs within the per-request and per-process budgets."""

    def __init__(self, transform: Callable, min_size: int, budget: PixelBudget, max_pixels: int) -> None:
        self.transform, self.min_size, self.budget, self.max_pixels = transform, min_size, budget, max_pixels

    async def read(self, form: FormData) -> tuple[list[str], list[torch.Tensor]]:
        """(file names, input tensors) of the images in the form's ``file`` field.

        Raises:
            BadImage: No image in the field, or one that cannot be used; the request's pixels over budget.
        """
        items = form.multi_items()
        uploads = [v for k, v in items if k == FIELD and isinstance(v, UploadFile)]
        if not uploads:
            got = sorted({k for k, _ in items})
            raise BadImage(
                400,
                f"no image file in the request: send each image in a multipart field named '{FIELD}'"
                + (f" (got: {', '.join(got)})" if got else ""),
            )
        names = [u.filename or "upload" for u in uploads]
        datas = [await u.read() for u in uploads]
        pixels = [probe(data, name) for data, name in zip(datas, names, strict=True)]
        if sum(pixels) > self.max_pixels:
            raise BadImage(
                413,
                f"the request's images hold {sum(pixels) / 1e6:.0f} Mpx, over the "
                f"{self.max_pixels / 1e6:g} Mpx a request may hold: send fewer or smaller images",
            )
        tensors = []
        for i, (data, name) in enumerate(zip(datas, names, strict=True)):
            async with self.budget.hold(pixels[i]):
                tensors.append(await asyncio.to_thread(decode, data, name, self.transform, self.min_size))
            datas[i] = b""  # the compressed bytes are not needed any more
        return names, tensors


def _answers(
    names: list[str],
    probs,
    classes: list[str],
    k: int,
    decision: Decision,
    scores=None,
    reject: Reject | None = None,
) -> list[dict]:
    """Each image's answered labels and its ``k`` best classes, as ``graft predict`` answers and
    orders them (both use :func:`~graft.inference.predictions.decide`; ties in class order); a
    rejected image's ``label`` is the unknown label, with ``unknown`` true."""
    answered = decide(probs, names, classes, decision, k, scores, reject)
    # Multi-label: the top-k list is the classes by probability, beside the thresholded answer.
    ranked = decide(probs, names, classes, Decision(), k) if decision.multi_label else answered
    out = []
    for name, answer, best in zip(names, answered, ranked, strict=True):
        labels = [{"label": c, "prob": round(p, 6)} for c, p in zip(answer.labels, answer.probs, strict=True)]
        top = [{"label": c, "prob": round(p, 6)} for c, p in zip(best.labels, best.probs, strict=True)]
        if not decision.multi_label:
            labels = top[:1]
        first = labels[0] if labels else {"label": "", "prob": 0.0}
        if answer.unknown:
            first = {"label": answer.unknown, "prob": first["prob"]}
        trust = {
            "unknown": bool(answer.unknown),
            "score": None if answer.score is None else round(answer.score, 6),
        }
        out.append({"filename": name, **first, "labels": labels, "top": top, **trust})
    return out


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answer has the same shape, ``{"error": "..."}`` (FastAPI's is ``{"detail": ...}``),
    keeping the headers the error came with (``Allow`` on a 405)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, _: ClientDisconnect) -> Response:
        # Nobody is left to answer; one line in the log instead of a traceback.
        what = f"{request.method} {request.url.path}"
        log.warning("graft serve: %s: the client disconnected mid-request", what)
        return Response(status_code=499)


def _check_limits(**limits: float) -> None:
    # (lowest, highest) of each limit: a zero or negative one would refuse or hang every request.
    ranges = {
        "max_upload_mb": (1e-3, 1e5),
        "max_files": (1, 10_000),
        "max_batch": (1, 4096),
        "max_wait_ms": (0, 1e4),
        "max_request_mpx": (1, 1e6),
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


def _give_back_freed_images() -> None:
    """Have glibc return every allocation of 4 MB or more to the system when freed.

    Pillow holds a decoded image in 16 MB blocks. glibc raises its mmap threshold past that size
    after the first such free, so later blocks come from per-thread arenas that keep the memory:
    a server whose decode threads took turns would grow by one large image per thread. A fixed
    threshold keeps big blocks mmapped and gives them back. Only in the ``graft serve`` process.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 4 << 20)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to tune
        pass


# mallopt's parameter number for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3


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

    _give_back_freed_images()
    check_listen(host, port)
    app = create_app(run_dir, **kwargs)
    if on_ready is not None:
        on_ready()
    uvicorn.run(app, host=host, port=port, log_level="warning")
