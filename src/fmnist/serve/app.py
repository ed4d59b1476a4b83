"""The FastAPI app: a web page and a REST API over one trained run.

    GET  /                     the web page (plain HTML/CSS/JS, works offline)
    POST /v1/predict           an image (multipart field `file`, or raw bytes with an
                               image content type), or JSON {"pixels": 28x28} / {"instances": [...]}
    GET  /v1/model             the model card as JSON
    GET  /v1/model/confusion_matrix.png
    GET  /v1/gallery           a few real test images per class; /v1/gallery/{n}.png each
    GET  /v2/health/live       200 once the process is up (KServe V2 shape)
    GET  /v2/health/ready      200 once the model is loaded, 503 before
    GET  /docs, /openapi.json

Every error is JSON {"error": "..."} with the status that says what was wrong;
nothing a client sends gives a 500. The model is called through a compiled
function warmed at start-up, never `model.predict` per request.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from fmnist import __version__, preprocess
from fmnist.predict import Predictor
from fmnist.serve.limits import BodyLimit

STATIC = Path(__file__).with_name("static")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif", "image/tiff")
MAX_INSTANCES = 256  # 28x28 arrays in one JSON request
GALLERY_PER_CLASS = 3
STATUS_OF_IMAGE_ERROR = {"too_large": 413, "unsupported": 415, "unreadable": 400, "unusable": 422}


@dataclass(frozen=True)
class Settings:
    run_dir: Path
    max_body_bytes: int = 10 * 1024 * 1024  # the largest request body accepted
    body_timeout_seconds: float = 15.0  # a request body must arrive within this time
    default_top_k: int = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# Response and request models: they are what /openapi.json documents.
class Ranked(BaseModel):
    label: str
    index: int
    probability: float


class PredictionOut(BaseModel):
    label: str = Field(description="the most probable class")
    index: int
    probability: float
    top_k: list[Ranked]
    seen: str | None = Field(None, description="with ?explain=true: the 28x28 image the model saw, as a PNG data URL")


class ModelSummary(BaseModel):
    run: str
    model: str
    backend: str
    test_accuracy: float | None


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]
    model: ModelSummary


class PixelsRequest(BaseModel):
    pixels: list[list[float]] = Field(description="one 28x28 image, values 0-255, light garment on black")


class InstancesRequest(BaseModel):
    instances: list[list[list[float]]] = Field(description=f"up to {MAX_INSTANCES} 28x28 images, values 0-255")


class ErrorOut(BaseModel):
    error: str


class ClassAccuracy(BaseModel):
    label: str
    accuracy: float
    precision: float
    f1: float


class ModelCard(BaseModel):
    run: str
    model: str
    trained_backend: str
    serving_backend: str
    created: str
    parameters: int | None
    test_accuracy: float | None
    test_images: int | None
    validation_accuracy: float | None
    per_class: list[ClassAccuracy]
    class_names: list[str]
    confusion_matrix_url: str | None
    config: dict[str, Any]


class GalleryItem(BaseModel):
    label: str
    index: int
    url: str


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


ERRORS = {status: {"model": ErrorOut} for status in (400, 408, 413, 415, 422, 503)}


class State:
    """What the app holds: the predictor once loaded, and the gallery images."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.gallery: list[tuple[str, int, bytes]] | None = None  # (label, class index, PNG), made on first use
        self.gallery_lock = threading.Lock()
        self.load_error: str | None = None


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _load(state: State, settings: Settings) -> None:
    """Load the model and warm its compiled function (in a thread, at start-up)."""
    try:
        predictor = Predictor.from_run(settings.run_dir)
        predictor.warm()
    except Exception as error:  # reported by /v2/health/ready; the process stays up
        state.load_error = str(error)
        return
    state.predictor = predictor


def _gallery(state: State, class_names: list[str]) -> list[tuple[str, int, bytes]]:
    """A few test images per class, as PNGs, made once; none if the dataset is not installed."""
    with state.gallery_lock:  # requests arrive in several threads; the first one builds it
        if state.gallery is None:
            images: list[tuple[str, int, bytes]] = []
            try:
                from fmnist import data

                dataset = data.load(download=False)
            except Exception:  # the gallery is a convenience; the API works without the dataset
                dataset = None
            for index, name in enumerate(class_names if dataset is not None else []):
                for position in np.flatnonzero(dataset.y_test == index)[:GALLERY_PER_CLASS]:
                    images.append((name, index, _png(dataset.x_test[position])))
            state.gallery = images
        return state.gallery


def create_app(settings: Settings, predictor: Predictor | None = None) -> FastAPI:
    """The app for `settings.run_dir`; pass `predictor` to skip loading (tests)."""
    state = State()
    state.predictor = predictor

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if predictor is None:
            # Load in the background: /v2/health/live answers at once, /ready once loaded.
            threading.Thread(target=_load, args=(state, settings), daemon=True).start()
        yield

    app = FastAPI(
        title="fmnist",
        version=__version__,
        description="Fashion-MNIST classifier: a web page and a REST API over one trained run.",
        lifespan=lifespan,
    )
    app.state.fmnist = state
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, timeout_seconds=settings.body_timeout_seconds
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    def ready_predictor() -> Predictor:
        if state.predictor is None:
            raise ApiError(503, state.load_error or "the model is still loading; try again shortly")
        return state.predictor

    def summary(model: Predictor) -> ModelSummary:
        metadata = model.metadata
        return ModelSummary(
            run=settings.run_dir.name,
            model=metadata["model"],
            backend=_serving_backend(),
            test_accuracy=metadata.get("metrics", {}).get("test", {}).get("accuracy"),
        )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        summary="Classify one image, or a batch of 28x28 arrays",
        openapi_extra={"requestBody": _request_body_schema()},
    )
    async def predict(
        request: Request,
        top_k: int = Query(settings.default_top_k, ge=1, le=10, description="how many classes to rank"),
        explain: bool = Query(False, description="include the 28x28 image the model saw"),
        model: Predictor = Depends(ready_predictor),
    ) -> PredictResponse:
        content_type, body = await _read_body(request)
        # Decoding and inference run in a worker thread, so that the event loop
        # keeps answering other requests (and health probes) meanwhile.
        images, probabilities = await run_in_threadpool(_score, model, content_type, body)
        predictions = []
        for image, prediction in zip(images, model.top_k(probabilities, top_k)):
            seen = "data:image/png;base64," + base64.b64encode(_png(image)).decode() if explain else None
            predictions.append(PredictionOut(**prediction.to_dict(), seen=seen))
        return PredictResponse(predictions=predictions, model=summary(model))

    @app.get("/v1/model", response_model=ModelCard, responses={503: {"model": ErrorOut}})
    async def model_card(model: Predictor = Depends(ready_predictor)) -> ModelCard:
        metadata = model.metadata
        test = metadata.get("metrics", {}).get("test", {})
        has_matrix = (settings.run_dir / "confusion_matrix.png").is_file()
        return ModelCard(
            run=settings.run_dir.name,
            model=metadata["model"],
            trained_backend=metadata.get("backend", "unknown"),
            serving_backend=_serving_backend(),
            created=metadata.get("created", "unknown"),
            parameters=metadata.get("parameters"),
            test_accuracy=test.get("accuracy"),
            test_images=test.get("images"),
            validation_accuracy=metadata.get("metrics", {}).get("validation", {}).get("accuracy"),
            per_class=[
                ClassAccuracy(label=c["class"], accuracy=c["recall"], precision=c["precision"], f1=c["f1"])
                for c in test.get("per_class", [])
            ],
            class_names=model.class_names,
            confusion_matrix_url="/v1/model/confusion_matrix.png" if has_matrix else None,
            config=metadata.get("config", {}),
        )

    @app.get(
        "/v1/model/confusion_matrix.png",
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}},
    )
    async def confusion_matrix() -> FileResponse:
        path = settings.run_dir / "confusion_matrix.png"
        if not path.is_file():
            raise ApiError(404, "this run has no confusion matrix image")
        return FileResponse(path, media_type="image/png")

    @app.get("/v1/gallery", response_model=list[GalleryItem], responses={503: {"model": ErrorOut}})
    async def gallery(model: Predictor = Depends(ready_predictor)) -> list[GalleryItem]:
        return [
            GalleryItem(label=label, index=index, url=f"/v1/gallery/{number}.png")
            for number, (label, index, _) in enumerate(await run_in_threadpool(_gallery, state, model.class_names))
        ]

    @app.get(
        "/v1/gallery/{number}.png",
        responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}, 503: {"model": ErrorOut}},
        response_class=Response,
    )
    async def gallery_image(number: int, model: Predictor = Depends(ready_predictor)) -> Response:
        images = await run_in_threadpool(_gallery, state, model.class_names)
        if not 0 <= number < len(images):
            raise ApiError(404, f"no gallery image {number}; there are {len(images)}")
        return Response(images[number][2], media_type="image/png")

    @app.get("/v2/health/live", response_model=Live)
    async def live() -> Live:
        return Live(live=True)

    @app.get("/v2/health/ready", response_model=Ready, responses={503: {"model": Ready}})
    async def ready() -> Any:
        if state.predictor is None:
            return JSONResponse({"ready": False}, status_code=503)
        return Ready(ready=True)

    return app


def _serving_backend() -> str:
    import keras

    return keras.backend.backend()


async def _read_body(request: Request) -> tuple[str, bytes]:
    """The request's content type and the image or JSON bytes in it; ApiError for a malformed body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=4)
        except (ValueError, KeyError, AssertionError) as error:
            raise ApiError(400, f"malformed multipart body: {error}") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "the multipart body needs an image in a field named 'file'")
        return "image", await upload.read()
    if content_type in IMAGE_TYPES or content_type == "application/octet-stream":
        return "image", await request.body()
    if content_type == "application/json":
        return "json", await request.body()
    accepted = ", ".join(("multipart/form-data", *IMAGE_TYPES, "application/json"))
    raise ApiError(415, f"unsupported content type {content_type or '(none)'!r}; send one of: {accepted}")


def _score(model: Predictor, kind: str, body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Dataset-format images (n, 28, 28) from the body, and the model's probabilities for them."""
    if kind == "json":
        images = _json_images(body)
    else:
        try:
            images = preprocess.to_dataset_format(body, name="upload")[None]
        except preprocess.ImageError as error:
            raise ApiError(STATUS_OF_IMAGE_ERROR.get(error.kind, 400), str(error)) from None
    return images, model.probabilities(images)


def _json_images(body: bytes) -> np.ndarray:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the JSON body must be UTF-8") from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, f"the body is not valid JSON: {str(error) or type(error).__name__}") from None
    if "true" in text or "false" in text:  # the only strings allowed are the two keys, so these are booleans
        raise ApiError(422, "every value must be a number within 0-255, not a boolean")
    if isinstance(document, dict) and set(document) == {"pixels"}:
        arrays = [document["pixels"]]
    elif isinstance(document, dict) and set(document) == {"instances"}:
        arrays = document["instances"]
        if not isinstance(arrays, list) or not 1 <= len(arrays) <= MAX_INSTANCES:
            raise ApiError(422, f"'instances' must be a list of 1 to {MAX_INSTANCES} 28x28 arrays")
    else:
        raise ApiError(422, 'expected {"pixels": [[...28 rows of 28 values...]]} or {"instances": [...]}')
    try:
        values = np.asarray(arrays)
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged or absurd nesting
        values = None
    if values is None or values.shape[1:] != (28, 28) or values.ndim != 3:
        raise ApiError(422, "every image must be 28 rows of 28 values")
    if values.dtype.kind not in "iuf":  # strings, booleans, nulls, or numbers too large for a float
        raise ApiError(422, "every value must be a number within 0-255")
    if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 255):
        raise ApiError(422, "every value must be a finite number within 0-255")
    return np.rint(values).astype(np.uint8)


def _request_body_schema() -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            **{media: binary for media in IMAGE_TYPES},
            "application/json": {
                "schema": {"oneOf": [PixelsRequest.model_json_schema(), InstancesRequest.model_json_schema()]}
            },
        },
    }


def app_from_environment() -> FastAPI:
    """The uvicorn factory used by `fmnist serve` (its workers read the run from the environment)."""
    import os

    from fmnist import models, runs

    run_dir = Path(os.environ["FMNIST_SERVE_RUN"])
    # Each worker process sets up its backend as the parent did (before Keras is imported there).
    models.select_backend(runs.read_metadata(run_dir)["model"], os.environ.get("KERAS_BACKEND"), training=False)
    return create_app(Settings(run_dir=run_dir))

