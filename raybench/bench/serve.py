"""Benchmark: `raybench serve` on loopback under a bounded load, beside direct `Detector.predict`.

    python -m raybench.bench.serve --dataset demo --category disc --clients 4 --requests 50

Serves `raybench-<dataset>-<category>@champion` from --tracking-uri (default $MLFLOW_TRACKING_URI,
else sqlite:///mlflow.db, as after `make demo`). With no such model and `--dataset demo`, it fits a
smoke-budget patchcore (random weights) on the category, registers it in a temporary store and
says so. Every client POSTs the category's test images (PNG bytes), one request at a time;
printed: requests, errors (any non-200), p50 / p99 latency, images/s of the endpoint, and images/s
of direct predict (one image per call, and batches of 16) on the same images in this process.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def load_test(url: str, payloads: list[bytes], clients: int = 4, requests_per_client: int = 50,
              timeout_s: float = 60.0) -> dict:
    """`clients` threads, each POSTing `requests_per_client` payloads (round robin) in sequence."""
    import requests
    latencies, errors, lock = [], [], threading.Lock()

    def client(k: int):
        session = requests.Session()
        for i in range(requests_per_client):
            body = payloads[(k * requests_per_client + i) % len(payloads)]
            start = time.perf_counter()
            try:
                r = session.post(url, data=body, timeout=timeout_s)
                ok = r.status_code == 200 and "score" in r.json()
                problem = None if ok else f"{r.status_code} {r.text[:200]}"
            except Exception as err:  # counted, reported: a load test must not stop at the first
                problem = f"{type(err).__name__}: {err}"
            with lock:
                latencies.append(time.perf_counter() - start)
                if problem:
                    errors.append(problem)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "images_per_s": len(latencies) / wall}


def direct_throughput(det, images: list[np.ndarray], batch: int) -> float:
    det.predict(images[:batch], batch_size=batch)  # warm-up
    start = time.perf_counter()
    for s in range(0, len(images), batch):
        det.predict(images[s:s + batch], batch_size=batch)
    return len(images) / (time.perf_counter() - start)


def _demo_model(category: str, uri: str) -> None:
    """A smoke-budget patchcore on the demo category, logged and registered in `uri`."""
    import torch

    from raybench.delivery import registry
    from raybench import tracking
    from raybench.config import from_dict
    from raybench.data import load_dataset
    from raybench.detector import Detector
    from raybench.evaluation.scoring import evaluate_scorer
    from raybench.methods import get_method
    spec = get_method("patchcore")
    cfg = from_dict(spec.config_cls, {"weights": "random", **spec.budgets["smoke"]})
    (cat,) = load_dataset("demo", None, [category])
    scorer = spec.fit(cfg, cat, torch.device("cpu")).scorer
    metrics = evaluate_scorer(scorer, cat, torch.device("cpu"), [])
    det = Detector("patchcore", cfg, scorer, {k: metrics.get(k) for k in ("image_threshold", "pixel_threshold")})
    c = tracking.client(uri)
    run = c.create_run(tracking.ensure_experiment(uri, tracking.experiment_name("demo")),
                       tags={"dataset": "demo", "category": category, "method": "patchcore", "checkpoint": "yes"})
    for k in ("image_auroc", "pixel_auroc"):
        c.log_metric(run.info.run_id, k, float(metrics[k]))
    with tempfile.TemporaryDirectory() as folder:
        det.save(folder)
        c.log_artifacts(run.info.run_id, folder, "detector")
    c.set_terminated(run.info.run_id, "FINISHED")
    registry.register("demo", [category], uri)


def main(argv=None) -> int:
    import ray

    from raybench.delivery import registry
    from raybench.delivery import serve
    from raybench.data import load_dataset
    from raybench.data.io import decode_image
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo")
    p.add_argument("--category", default="disc")
    p.add_argument("--data-root", default=None)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=50, help="per client")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    args = p.parse_args(argv)

    uri = serve.absolute_uri(args.tracking_uri)
    try:
        registry.load_model(args.dataset, args.category, uri)
    except LookupError:
        if args.dataset != "demo":
            raise
        uri = f"sqlite:///{tempfile.mkdtemp(prefix='raybench-bench-serve-')}/mlflow.db"
        print(f"no registered {args.dataset}/{args.category} model: fitting a smoke patchcore (random weights) into {uri}")
        _demo_model(args.category, uri)
    det = registry.load_detector(args.dataset, args.category, uri, device="cpu")
    (cat,) = load_dataset(args.dataset, args.data_root, [args.category])
    payloads = [Path(s.path).read_bytes() for s in cat.test]
    images = [decode_image(b) for b in payloads]
    print(f"model {det.meta['model_name']} v{det.meta['model_version']} ({det.method}, {det.image_size} px), "
          f"{len(payloads)} test images of {args.dataset}/{args.category}")
    direct1, direct16 = direct_throughput(det, images, 1), direct_throughput(det, images, 16)

    import os
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    serve.start(serve.build_app(uri, cpus_per_replica=args.cpus_per_replica), port=args.port)
    url = f"http://127.0.0.1:{args.port}/{args.dataset}/{args.category}"
    warm = load_test(url, payloads[:2], clients=1, requests_per_client=4)  # loads the model
    if warm["errors"]:
        raise SystemExit(f"endpoint not answering: {warm['first_errors']}")
    result = load_test(url, payloads, args.clients, args.requests)
    serve.shutdown()
    print(f"endpoint {url}: {args.clients} clients x {args.requests} requests = {result['requests']}, "
          f"errors {result['errors']}, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"{result['images_per_s']:.1f} images/s")
    print(f"direct Detector.predict (same process, CPU): {direct1:.1f} images/s one at a time, "
          f"{direct16:.1f} images/s in batches of 16")
    if result["errors"]:
        print("first errors:", *result["first_errors"], sep="\n  ")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
