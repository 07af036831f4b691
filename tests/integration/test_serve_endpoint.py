"""`raybench serve` on a real local Ray, models from a real sqlite registry: answers, 4xx JSON
errors that name the problem (and the server goes on), a bounded load with zero errors."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
from PIL import Image

from raybench.delivery import registry
from raybench.bench.serve import load_test

from tracked_runs import log_detector_run, tiny_patchcore
from net import free_port


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()



_ENDPOINT_URI: list[str] = []  # the endpoint fixture's store


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, ray_local):
    from ray import serve as ray_serve

    from raybench.delivery import serve
    uri = f"sqlite:///{tmp_path_factory.mktemp('serve') / 'mlflow.db'}"
    _ENDPOINT_URI[:] = [uri]
    det = tiny_patchcore(seed=2, image_threshold=1.05, pixel_threshold=0.8)
    log_detector_run(uri, det, "demo", "disc", 0.9)
    log_detector_run(uri, tiny_patchcore(seed=3, image_threshold=1.0), "demo", "weave", 0.7)
    registry.register("demo", uri=uri)
    port = free_port()
    serve.start(serve.build_app(uri, cpus_per_replica=0.5, max_pixels=3000), port=port)
    yield f"http://127.0.0.1:{port}", det
    ray_serve.shutdown()


@pytest.mark.slow
def test_scores_each_category_as_predict_does(endpoint):
    base, det = endpoint
    rng = np.random.default_rng(0)
    images = [(rng.random((40, 50, 3)) * 255).astype(np.uint8) for _ in range(3)]
    expected, maps = det.predict(images, map_size="input")
    for fmt, image, score in zip(("PNG", "TIFF", "PNG"), images, expected):
        r = requests.post(f"{base}/demo/disc", data=_png(image, fmt), timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["score"] == pytest.approx(float(score), rel=1e-5)
        assert body["verdict"] == ("anomalous" if score >= 1.05 else "normal") and body["threshold"] == 1.05
        assert (body["model"], body["model_version"], body["method"]) == ("raybench-demo-disc", "1", "patchcore")
    r = requests.post(f"{base}/demo/disc?map=png", data=_png(images[0]), timeout=60)
    amap = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["map_png"]))))
    assert amap.shape == (40, 50)  # at the image's own size
    # black at half the pixel cut (0.8), mid-grey at it, white at 1.5 times it (Detector.map_image)
    assert np.abs(amap.astype(float) - np.clip((maps[0] - 0.4) / 0.8, 0, 1) * 255).max() <= 1.0
    other = requests.post(f"{base}/demo/weave", data=_png(images[0]), timeout=60).json()
    assert other["model"] == "raybench-demo-weave" and other["score"] != pytest.approx(expected[0])


@pytest.mark.slow
def test_bad_requests_get_4xx_json_and_the_server_goes_on(endpoint):
    base, _ = endpoint
    good = _png(np.full((40, 50, 3), 120, np.uint8))
    cases = [
        ("POST", "/demo/disc", b"plain text, not an image", 400, "not an image file"),
        ("POST", "/demo/disc", good[: len(good) // 2], 400, "truncated"),
        ("POST", "/demo/disc", _png(np.zeros((60, 60, 3), np.uint8)), 413, "over the limit of 3000"),
        ("POST", "/demo/nope", good, 404, "no model registered for demo/nope"),
        ("POST", "/demo", good, 404, "POST image bytes to /<dataset>/<category>"),
        ("GET", "/demo/disc", None, 405, "GET not allowed"),
        ("POST", "/demo/disc?method=rd", good, 409, "is a patchcore model, not rd"),
        ("POST", "/demo/disc?map=jpg", good, 400, "map='jpg' is not offered: use map=png"),
    ]
    for method, path, body, status, message in cases:
        r = requests.request(method, base + path, data=body, timeout=60)
        assert r.status_code == status and message in r.json()["error"], (path, r.status_code, r.text)
        assert requests.post(f"{base}/demo/disc", data=good, timeout=60).status_code == 200


@pytest.mark.slow
def test_the_champions_are_listed_and_loaded_at_start(endpoint):
    from ray import serve as ray_serve

    from raybench.delivery.champions import champions, warm_up
    handle = ray_serve.get_app_handle("raybench")  # the running app
    served = champions(_ENDPOINT_URI[0], "champion")
    assert served == [("demo/disc", "1", "patchcore"), ("demo/weave", "1", "patchcore")]
    said = []
    warm_up(handle, [m for m, _, _ in served] + ["demo/nope"], log=said.append)
    assert said[0].startswith("  loaded demo/disc (") and said[1].startswith("  loaded demo/weave (")
    assert "demo/nope not loaded" in said[2]


@pytest.mark.slow
def test_bounded_load_on_loopback_has_no_errors(endpoint):
    base, _ = endpoint
    rng = np.random.default_rng(1)
    payloads = [_png((rng.random((32, 32, 3)) * 255).astype(np.uint8)) for _ in range(5)]
    result = load_test(f"{base}/demo/disc", payloads, clients=4, requests_per_client=25)
    assert result["requests"] == 100 and result["errors"] == 0, result["first_errors"]
    assert 0 < result["p50_ms"] <= result["p99_ms"]
