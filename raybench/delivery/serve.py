"""`raybench serve`: one Ray Serve deployment answering for every registered category.

POST an image file's bytes (PNG, JPEG, TIFF, BMP) to `/<dataset>/<category>`; the answer is JSON
{score, verdict, threshold, model, model_version, method, run_id}, plus `map_png` (base64 PNG of
the anomaly map at the image's size: black 0, mid-grey at the pixel threshold) with `?map=png`.
The model is `raybench-<dataset>-<category>@champion` from the MLflow Model Registry, loaded on
first use and kept per replica (`@serve.multiplexed`, least recently used out); concurrent
requests are scored together (`@serve.batch`, grouped per model).

Bad requests get a 4xx JSON {"error": ...} naming the problem and the server keeps serving: 400
bytes that are not a PNG/JPEG/TIFF/BMP image, or a truncated one, 413 a body over `max_bytes`
(counted as it arrives, chunked or not) or an image over the pixel or decoded-byte limits, 422
pixels or a score that are not finite (no verdict can be given), 404 an unknown dataset/category
(checked in the registry before the model cache is touched, so it never evicts a loaded model),
405 anything but POST, 409 `?method=X` when the registered model is another method.

Cost per request is bounded: the body is read with a running count, decoding (raybench.data.io:
only the named formats, the header checked before any pixel, data that cannot fill the image
refused) runs in a thread, at most `max_decodes` at once per replica, so the event loop keeps
answering while a large image decodes.
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

from raybench.data.io import MAX_DECODED_BYTES, MAX_PIXELS
from raybench.errors import ImageInputError

MAX_BYTES = 64 << 20  # a request body larger than this is refused (unread if its length says so)
MAX_DECODES = 2  # images decoded at once per replica; the rest wait their turn off the event loop
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
    """The deployment (see the module docstring); build_app gives it `get_model`, multiplexed with
    its `max_models` (models kept per replica, least recently used out)."""

    def __init__(self, tracking_uri: str, alias: str = "champion", max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_BYTES, device: str | None = None, max_decodes: int = MAX_DECODES,
                 max_decoded_bytes: int = MAX_DECODED_BYTES):
        from raybench.local_ray import keep_replica_on_loopback
        keep_replica_on_loopback()  # before Serve opens this replica's ports
        self.tracking_uri, self.alias, self.device = tracking_uri, alias, device
        self.max_pixels, self.max_bytes, self.max_decoded_bytes = max_pixels, max_bytes, max_decoded_bytes
        self._decodes = asyncio.Semaphore(max_decodes)
        self._registered: set[str] = set()  # model ids found in the registry (or loaded) by this replica

    async def load(self, model_id: str):
        from raybench.delivery.registry import load_detector
        dataset, category = model_id.split("/", 1)
        # loading reads the store and the weights: off the event loop, other requests go on
        det = await asyncio.to_thread(load_detector, dataset, category, self.tracking_uri, self.alias, self.device)
        self._registered.add(model_id)
        return det

    async def is_registered(self, model_id: str) -> bool:
        """Whether the registry has the model, asked before the multiplexed cache is: loading an
        unknown id there would first evict the least recently used model."""
        if model_id not in self._registered:
            from raybench.delivery.registry import is_registered
            dataset, category = model_id.split("/", 1)
            if await asyncio.to_thread(is_registered, dataset, category, self.tracking_uri, self.alias):
                self._registered.add(model_id)
        return model_id in self._registered

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
                if not np.isfinite(score):  # never a verdict: NaN >= cut is False, i.e. "normal"
                    out[i] = {"error": f"the model's score for this image is {score}, not a number a verdict "
                                       f"can be given on", "status": 422}
                    continue
                answer = {"score": score, "verdict": det.verdict(score), "threshold": det.image_threshold,
                          "model": det.meta.get("model_name"),
                          "model_version": det.meta.get("model_version"), "method": det.method,
                          "run_id": det.meta.get("run_id")}
                if items[i][2]:
                    answer.update(map_png=map_png(det, maps[k]), pixel_threshold=det.pixel_threshold)
                out[i] = answer
        return out

    async def read_body(self, request: Request) -> bytes:
        """The body, counted as it arrives: ImageInputError(413) as soon as it passes max_bytes,
        whatever Content-Length said (a chunked upload has none)."""
        length = request.headers.get("content-length")
        if length is not None and not length.strip().isdigit():
            raise ImageInputError(f"Content-Length {length[:40]!r} is not a number")
        if length is not None and int(length) > self.max_bytes:
            raise ImageInputError(f"body of {int(length)} bytes is over the limit of {self.max_bytes}", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise ImageInputError(f"body is over the limit of {self.max_bytes} bytes (refused after "
                                      f"{size} had arrived)", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def decode(self, body: bytes) -> np.ndarray:
        """decode_image in a thread, at most max_decodes at once: the event loop goes on answering."""
        from raybench.data.io import decode_image
        async with self._decodes:
            return await asyncio.to_thread(decode_image, body, self.max_pixels, self.max_decoded_bytes)

    async def warm(self, model_id: str) -> str:
        """Load a model now (raybench.delivery.champions.warm_up at start)."""
        det = await self.get_model(model_id)
        return det.method

    @_access_logged
    async def __call__(self, request: Request):
        parts = [p for p in request.url.path.split("/") if p]
        if len(parts) != 2:
            return _error(404, f"no route {request.url.path!r}: POST image bytes to /<dataset>/<category>")
        if request.method != "POST":
            return _error(405, f"{request.method} not allowed: POST the image file's bytes", Allow="POST")
        model_id = "/".join(parts)
        missing = _error(404, f"no model registered for {model_id} (raybench-{parts[0]}-{parts[1]}@{self.alias})")
        if not await self.is_registered(model_id):
            return missing
        try:
            det = await self.get_model(model_id)
        except LookupError:  # the store's address stays on the server
            return missing
        method = request.query_params.get("method")
        if method and method != det.method:
            return _error(409, f"{det.meta.get('model_name')} version {det.meta.get('model_version')} "
                               f"is a {det.method} model, not {method}")
        try:
            image = await self.decode(await self.read_body(request))
        except ImageInputError as err:
            return _error(err.status, err.problem)
        want_map = request.query_params.get("map") == "png"
        answer = await self.score((model_id, image, want_map))
        if "error" in answer:
            return _error(answer["status"], answer["error"])
        return JSONResponse({"dataset": parts[0], "category": parts[1], **answer})


def scorer_class(max_models: int = 8):
    """CategoryScorer with its multiplexed model cache of `max_models` per replica."""
    class RaybenchScorer(CategoryScorer):
        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def get_model(self, model_id: str):
            return await self.load(model_id)
    return RaybenchScorer


class ProxyBodyLimit:
    """ASGI middleware for Ray Serve's HTTP proxy: a request body over `max_bytes` (by its
    Content-Length, or counted as it arrives when chunked) gets a 413 from the proxy itself, which
    then stops reading it. The replica counts too (read_body), but Serve's proxy and the replica's
    receive plumbing read ahead of the app into queues of their own: without this they took in a
    whole 150 MB chunked upload before the replica's 413."""

    def __init__(self, app, max_bytes: int = MAX_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"").strip()
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, f"body of {int(length)} bytes is over the limit of {self.max_bytes}")
        state = {"seen": 0, "over": False, "started": False}

        async def counted_receive():
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True  # to Serve, the client has gone: the replica's request is cancelled
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                if state["over"]:
                    return
                state["started"] = True
            elif state["over"] and not state["started"]:
                return
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
        if state["over"] and not state["started"]:
            await self._refuse(send, f"body is over the limit of {self.max_bytes} bytes (refused after "
                                     f"{state['seen']} had arrived)")

    @staticmethod
    async def _refuse(send, message: str) -> None:
        import json
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """What RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=raybench.delivery.serve:proxy_middlewares gives Serve's
    HTTP proxy (start() sets it before the local Ray starts, so the proxy's process has it): the
    body limit, from RAYBENCH_SERVE_MAX_BYTES."""
    import os

    from starlette.middleware import Middleware
    return [Middleware(ProxyBodyLimit, max_bytes=int(os.environ.get("RAYBENCH_SERVE_MAX_BYTES", MAX_BYTES)))]


def build_app(tracking_uri: str | None = None, alias: str = "champion", replicas: int = 1,
              cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, max_pixels: int = MAX_PIXELS,
              max_bytes: int = MAX_BYTES, max_decodes: int = MAX_DECODES,
              max_decoded_bytes: int = MAX_DECODED_BYTES, max_models: int = 8):
    device = "cuda" if gpus_per_replica > 0 else "cpu"  # a replica without a GPU share never picks one up
    deployment = serve.deployment(scorer_class(max_models), name="raybench", num_replicas=replicas,
                                  max_ongoing_requests=64,  # >= the batch size, or batches never fill
                                  logging_config={"enable_access_log": False},  # ours names the route
                                  ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    return deployment.bind(absolute_uri(tracking_uri), alias, max_pixels, max_bytes, device, max_decodes,
                           max_decoded_bytes)


def start(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, address: str | None = None,
          max_bytes: int = MAX_BYTES):
    """Ray (local, on loopback, unless `address`), Serve's HTTP proxy on host:port (its body limit:
    ProxyBodyLimit, when this call starts the Ray), the app at /."""
    import os

    import ray
    if not ray.is_initialized():  # the proxy's process inherits these from the Ray started here
        os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = "raybench.delivery.serve:proxy_middlewares"
        os.environ["RAYBENCH_SERVE_MAX_BYTES"] = str(max_bytes)
        if address:
            from raybench.local_ray import init_ray
            init_ray(address=address)
        else:  # private to this machine, as a local sweep's Ray (loopback, token auth)
            from raybench.local_ray import start_local_ray
            start_local_ray(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name="raybench", route_prefix="/")


def shutdown() -> None:
    """Drain, then stop: the app is deleted first, so its replicas finish the requests they took
    (up to Serve's graceful_shutdown_timeout_s, 20 s) while the proxy still carries the answers
    back; serve.shutdown() alone closes the proxy under them."""
    try:
        serve.delete("raybench")
    finally:
        serve.shutdown()
