"""The REST API: every endpoint, every kind of bad request, the body limits, and fuzzing."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="serving needs the serve extra")

import schemathesis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from fmnist import data, photos  # noqa: E402
from fmnist.predict import Predictor  # noqa: E402
from fmnist.serve.app import Settings, create_app  # noqa: E402
from fmnist.serve.limits import BodyLimit  # noqa: E402


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    loaded = Predictor.from_run(trained_run)
    loaded.warm()
    return loaded


@pytest.fixture(scope="module")
def app(trained_run: Path, predictor: Predictor):
    return create_app(Settings(run_dir=trained_run, max_body_bytes=1_000_000), predictor=predictor)


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def test_images(real_data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    dataset = data.load(real_data_dir)
    return dataset.x_test[:32], dataset.y_test[:32]


def test_the_model_loads_in_the_background_and_ready_says_so(trained_run: Path) -> None:
    with TestClient(create_app(Settings(run_dir=trained_run))) as fresh:
        assert fresh.get("/v2/health/live").json() == {"live": True}
        for _ in range(200):
            response = fresh.get("/v2/health/ready")
            if response.status_code == 200:
                break
            assert response.status_code == 503 and response.json() == {"ready": False}
            time.sleep(0.05)
        assert response.json() == {"ready": True}
        assert len(fresh.get("/v1/gallery").json()) == 30


def test_multipart_upload(client: TestClient, test_images, predictor: Predictor) -> None:
    images, _ = test_images
    response = client.post("/v1/predict", files={"file": ("shoe.png", png(images[0]), "image/png")})
    assert response.status_code == 200
    body = response.json()
    (prediction,) = body["predictions"]
    expected = int(predictor.probabilities(images[:1]).argmax())
    assert prediction["index"] == expected and prediction["label"] == data.CLASS_NAMES[expected]
    assert len(prediction["top_k"]) == 5 and prediction["seen"] is None
    assert body["model"]["model"] == "mlp" and body["model"]["backend"] == "jax"


def test_raw_image_bytes_with_explain(client: TestClient, test_images) -> None:
    photo = photos.make_photo(test_images[0][1], np.random.default_rng(1), encoding=("JPEG", "RGB"))
    response = client.post(
        "/v1/predict?explain=true&top_k=3", content=photo.data, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200
    prediction = response.json()["predictions"][0]
    assert len(prediction["top_k"]) == 3 and prediction["seen"].startswith("data:image/png;base64,")


def test_json_pixels_and_a_batch_of_instances(client: TestClient, test_images, predictor: Predictor) -> None:
    images, _ = test_images
    expected = predictor.probabilities(images).argmax(axis=1).tolist()
    single = client.post("/v1/predict", json={"pixels": images[0].tolist()})
    assert single.status_code == 200 and single.json()["predictions"][0]["index"] == expected[0]
    batch = client.post("/v1/predict", json={"instances": images.tolist()})
    assert batch.status_code == 200
    assert [p["index"] for p in batch.json()["predictions"]] == expected


def bad_png() -> bytes:
    full = png(np.random.default_rng(0).integers(0, 255, (100, 100), dtype=np.uint8))
    return full[: len(full) // 2]


@pytest.mark.parametrize(
    "content, content_type, status, words",
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "not valid JSON"),
        (json.dumps({"pixels": [[True] + [5] * 27] * 28}).encode("utf-16"), "application/json", 400, "UTF-8"),
        (b'{"pixels": [' + b",".join([b"[true" + b",5" * 27 + b"]"] * 28) + b"]}", "application/json", 422,
         "boolean"),
        (json.dumps({"pixels": [[0] * 28] * 27}).encode(), "application/json", 422, "28 rows of 28"),
        (json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 27]}).encode(), "application/json", 422, "28 rows of 28"),
        (json.dumps({"pixels": [["1"] * 28] * 28}).encode(), "application/json", 422, "must be a number"),
        (json.dumps({"pixels": [[True] * 28] * 28}).encode(), "application/json", 422, "must be a number"),
        (json.dumps({"pixels": [[300] * 28] * 28}).encode(), "application/json", 422, "within 0-255"),
        (b'{"pixels": [' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}",
         "application/json", 422, "finite"),
        (json.dumps({"instances": []}).encode(), "application/json", 422, "1 to 256"),
        (json.dumps({"image": 1}).encode(), "application/json", 422, "expected"),
        (b"hello", "text/plain", 415, "unsupported content type"),
        (b"hello", "", 415, "unsupported content type"),
        (b"%PDF-1.4 not an image", "image/png", 415, "not an image"),
        (bad_png(), "image/png", 400, "truncated or corrupt"),
        (png(np.full((30, 40), 200, np.uint8)), "image/png", 422, "no garment"),
        (b"", "image/png", 400, "empty"),
    ],
)
def test_bad_requests_get_json_errors_with_the_right_status(
    client: TestClient, content: bytes, content_type: str, status: int, words: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/predict", content=content, headers=headers)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_multipart_without_a_file_field(client: TestClient) -> None:
    response = client.post("/v1/predict", data={"image": "x"}, files={"other": ("a.txt", b"x", "text/plain")})
    assert response.status_code == 400 and "field named 'file'" in response.json()["error"]


def test_query_values_out_of_range(client: TestClient, test_images) -> None:
    response = client.post("/v1/predict?top_k=0", json={"pixels": test_images[0][0].tolist()})
    assert response.status_code == 422 and "top_k" in response.json()["error"]


def test_declared_and_chunked_bodies_over_the_limit_are_413(client: TestClient) -> None:
    declared = client.post("/v1/predict", content=b"x" * 1_000_001, headers={"content-type": "image/png"})
    assert declared.status_code == 413 and "limit" in declared.json()["error"]

    def chunks():
        for _ in range(20):
            yield b"x" * 100_000  # 2 MB in all, sent without a Content-Length

    chunked = client.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"})
    assert chunked.status_code == 413
    assert client.get("/v2/health/live").status_code == 200  # and the server goes on


def test_a_slow_body_times_out_with_408() -> None:
    async def app(scope, receive, send):  # reads the body, then answers 200
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def slow_receive():
        await asyncio.sleep(0.5)
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-type", b"image/png")]}
    asyncio.run(BodyLimit(app, max_bytes=100, timeout_seconds=0.2)(scope, slow_receive, send))
    assert sent[0]["status"] == 408
    assert "did not arrive" in json.loads(sent[1]["body"])["error"]


def test_model_card_gallery_and_pages(client: TestClient, trained_run: Path) -> None:
    card = client.get("/v1/model").json()
    metadata = json.loads((trained_run / "metadata.json").read_text())
    assert card["test_accuracy"] == metadata["metrics"]["test"]["accuracy"]
    assert len(card["per_class"]) == 10 and card["serving_backend"] == "jax"
    matrix = client.get(card["confusion_matrix_url"])
    assert matrix.status_code == 200 and matrix.headers["content-type"] == "image/png"
    gallery = client.get("/v1/gallery").json()
    first = client.get(gallery[0]["url"])
    assert Image.open(io.BytesIO(first.content)).size == (28, 28)
    assert client.get("/v1/gallery/9999.png").status_code == 404
    assert "<canvas" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/model", "/v2/health/live", "/v2/health/ready"} <= set(paths)
    assert set(paths["/v1/predict"]["post"]["requestBody"]["content"]) >= {
        "multipart/form-data", "image/png", "application/json"
    }


def test_fuzz_every_operation_of_the_openapi_schema(app) -> None:
    """Schemathesis generates requests from the app's own /openapi.json: no 5xx, every answer as documented."""
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            case.call_and_validate(checks=checks)

        fuzz()


CONTENT_TYPES = st.sampled_from(
    ["image/png", "image/jpeg", "application/json", "multipart/form-data; boundary=xyz", "text/plain", "",
     "application/octet-stream", "image/gif"]
)


@given(body=st.binary(max_size=4096), content_type=CONTENT_TYPES)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_bytes_never_cause_a_server_error(client: TestClient, body: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/predict", content=body, headers=headers)
    assert response.status_code < 500, response.text
    assert "error" in response.json() or response.status_code == 200


@given(
    array=st.integers(1, 300).flatmap(
        lambda w: st.integers(1, 300).map(lambda h: (w, h))
    ),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA", "I;16", "CMYK"]),
    file_format=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_images_never_cause_a_server_error(
    client: TestClient, array: tuple[int, int], mode: str, file_format: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (array[1], array[0], 3), dtype=np.uint8))
    try:
        converted = photos._convert(picture, mode)
        buffer = io.BytesIO()
        converted.save(buffer, format=file_format)
    except (OSError, ValueError, KeyError):
        return  # this format cannot hold this mode; nothing to send
    response = client.post("/v1/predict", files={"file": ("x", buffer.getvalue(), "application/octet-stream")})
    assert response.status_code in (200, 422), response.text
    assert client.get("/v2/health/live").status_code == 200
