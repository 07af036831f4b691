"""`raybench serve`: one Ray Serve deployment answering for every registered category.

POST an image file's bytes (PNG, JPEG, TIFF, BMP) to `/<dataset>/<category>`; the answer is JSON
{score, verdict, threshold, model, model_version, method, run_id}, plus `map_png` (base64 PNG of
the anomaly map at the image's size: black 0, mid-grey at the pixel threshold) with `?map=png`.
The model is `raybench-<dataset>-<category>@champion` from the MLflow Model Registry, loaded on
first use and kept per replica (`@serve.multiplexed`, least recently used out); concurrent
requests are scored together (`@serve.batch`, grouped per model).

Bad requests get a 4xx JSON {"error": ...} naming the problem and the server keeps serving: 400
bytes that are not an image / a truncated file, 413 more pixels (or bytes) than the limits,
404 an unknown dataset/category, 405 anything but POST, 409 `?method=X` when the registered
model is another method.
"""
from __future__ import annotations

import asyncio
import base64
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from raybench.data.io import MAX_PIXELS
from raybench.errors import ImageInputError

MAX_BYTES = 64 << 20  # a request body larger than this is refused unread
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def absolute_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db: replicas may run in another folder."""
    from raybench.tracking import tracking_uri
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    return uri


def map_png(det, amap: np.ndarray) -> str:
    """An anomaly map as base64 PNG on `raybench predict --out`'s scale (Detector.map_image)."""
    buf = io.BytesIO()
    det.map_image(amap).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


MAP_FORMATS = ("png",)  # ?map=png; any other value is a 400


def _access_logged(handler):
    """The route in the access log (Serve's own says `POST /` for every route, its prefix) and
    the query checks that are not about the image: an unknown `map` value is a 400."""
    import functools
    import logging
    import time
    log = logging.getLogger("ray.serve")

    @functools.wraps(handler)
    async def wrapper(self, request: Request):
        start = time.perf_counter()
        wanted = request.query_params.get("map")
        if wanted is not None and wanted not in MAP_FORMATS:
            response = _error(400, f"map={wanted!r} is not offered: use map=png (or no map)")
        else:
            response = await handler(self, request)
        log.warning("%s %s %s %.1fms", request.method, request.url.path, response.status_code,
                    1000 * (time.perf_counter() - start))
        return response
    return wrapper


class CategoryScorer:
    """The deployment (see the module docstring). `max_models`: models kept per replica."""

    def __init__(self, tracking_uri: str, alias: str = "champion", max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_BYTES, device: str | None = None):
        self.tracking_uri, self.alias, self.device = tracking_uri, alias, device
        self.max_pixels, self.max_bytes = max_pixels, max_bytes

    @serve.multiplexed(max_num_models_per_replica=8)
    async def get_model(self, model_id: str):
        from raybench.delivery.registry import load_detector
        dataset, category = model_id.split("/", 1)
        # loading reads the store and the weights: off the event loop, other requests go on
        return await asyncio.to_thread(load_detector, dataset, category, self.tracking_uri, self.alias, self.device)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score(self, items: list[tuple[str, np.ndarray, bool]]) -> list[dict]:
        """(model_id, image (H, W, 3), want_map) for each request -> its answer; one predict per model."""
        groups = defaultdict(list)
        for i, (model_id, _, _) in enumerate(items):
            groups[model_id].append(i)
        out: list[dict] = [{} for _ in items]
        for model_id, idx in groups.items():
            det = await self.get_model(model_id)
            want_maps = any(items[i][2] for i in idx)
            scores, maps = await asyncio.to_thread(
                det.predict, [items[i][1] for i in idx], len(idx), "input" if want_maps else "model")
            for k, i in enumerate(idx):
                score = float(scores[k])
                answer = {"score": score, "verdict": det.verdict(score), "threshold": det.image_threshold, "model": det.meta.get("model_name"),
                          "model_version": det.meta.get("model_version"), "method": det.method,
                          "run_id": det.meta.get("run_id")}
                if items[i][2]:
                    answer.update(map_png=map_png(det, maps[k]), pixel_threshold=det.pixel_threshold)
                out[i] = answer
        return out

    async def warm(self, model_id: str) -> str:
        """Load a model now (raybench.delivery.champions.warm_up at start)."""
        det = await self.get_model(model_id)
        return det.method

    @_access_logged
    async def __call__(self, request: Request):
        from raybench.data.io import decode_image
        parts = [p for p in request.url.path.split("/") if p]
        if len(parts) != 2:
            return _error(404, f"no route {request.url.path!r}: POST image bytes to /<dataset>/<category>")
        if request.method != "POST":
            return _error(405, f"{request.method} not allowed: POST the image file's bytes", Allow="POST")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            return _error(413, f"body of {length} bytes is over the limit of {self.max_bytes}")
        model_id = "/".join(parts)
        try:
            det = await self.get_model(model_id)
        except LookupError:  # the store's address stays on the server
            return _error(404, f"no model registered for {model_id} (raybench-{parts[0]}-{parts[1]}@{self.alias})")
        method = request.query_params.get("method")
        if method and method != det.method:
            return _error(409, f"{det.meta.get('model_name')} version {det.meta.get('model_version')} "
                               f"is a {det.method} model, not {method}")
        try:
            image = decode_image(await request.body(), self.max_pixels)
        except ImageInputError as err:
            return _error(err.status, err.problem)
        want_map = request.query_params.get("map") == "png"
        return JSONResponse({"dataset": parts[0], "category": parts[1], **await self.score((model_id, image, want_map))})


def build_app(tracking_uri: str | None = None, alias: str = "champion", replicas: int = 1,
              cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, max_pixels: int = MAX_PIXELS,
              max_bytes: int = MAX_BYTES):
    device = "cuda" if gpus_per_replica > 0 else "cpu"  # a replica without a GPU share never picks one up
    deployment = serve.deployment(CategoryScorer, name="raybench", num_replicas=replicas,
                                  max_ongoing_requests=64,  # >= the batch size, or batches never fill
                                  logging_config={"enable_access_log": False},  # ours names the route
                                  ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    return deployment.bind(absolute_uri(tracking_uri), alias, max_pixels, max_bytes, device)


def start(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, address: str | None = None):
    """Ray (local, on loopback, unless `address`), Serve's HTTP proxy on host:port, the app at /."""
    import ray
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:  # private to this machine, as a local sweep's Ray (loopback, token auth)
            from raybench.local_ray import start_local_ray
            start_local_ray(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name="raybench", route_prefix="/")


def shutdown() -> None:
    serve.shutdown()
