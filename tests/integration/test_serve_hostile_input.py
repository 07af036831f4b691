"""`raybench serve` under hostile input, on a real local Ray + Serve with models from a real sqlite
registry: one serve start for the module, every request on loopback, bounded in count and time
(about a minute on 2 cores). Each case gets its 4xx JSON and the server goes on; a tiny image bomb
neither costs memory nor stalls a concurrent valid request; nothing non-finite gets a verdict."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from raybench.delivery import registry

from hostile import EPS, GOOD, VALID, descendants, encode, float_tiff, nan_patchcore, png_declaring, raw_exchange, rss_mb
from net import free_port
from tracked_runs import log_detector_run, tiny_patchcore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, ray_local):
    from ray import serve as ray_serve

    from raybench.delivery import serve
    uri = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'mlflow.db'}"
    det = tiny_patchcore(seed=2, image_threshold=1.05, pixel_threshold=0.8)
    log_detector_run(uri, det, "demo", "disc", 0.7)
    log_detector_run(uri, nan_patchcore(), "demo", "nan", 0.7)
    registry.register("demo", uri=uri)
    port = free_port()
    # two models per replica, so one unknown category could evict one (it must not)
    serve.start(serve.build_app(uri, cpus_per_replica=0.5, max_bytes=8 << 20, max_models=2), port=port)
    base = f"http://127.0.0.1:{port}"
    assert requests.post(f"{base}/demo/disc", data=VALID, timeout=120).status_code == 200
    yield base, det, uri
    ray_serve.shutdown()


def post(base: str, path: str, body, timeout=60, **kw) -> requests.Response:
    return requests.post(base + path, data=body, timeout=timeout, **kw)


def still_serving(base: str) -> None:
    r = post(base, "/demo/disc", VALID)
    assert r.status_code == 200 and r.json()["verdict"] in ("normal", "anomalous"), r.text


def replica_pid() -> int:
    (pid,) = [p for p, cmd in descendants(os.getpid()).items() if "ServeReplica:raybench" in cmd]
    return pid


def test_tiny_image_bombs_cost_no_memory_and_do_not_stall_a_valid_request(endpoint):
    base, _, _ = endpoint
    bomb = png_declaring(7000, 7000, rows=1)
    assert len(bomb) <= 100
    t = time.perf_counter()
    r = post(base, "/demo/disc", bomb)
    assert r.status_code == 400 and "PNG truncated" in r.json()["error"] and time.perf_counter() - t < 1.0
    pid = replica_pid()
    still_serving(base)
    alone = []
    for _ in range(3):
        t = time.perf_counter()
        still_serving(base)
        alone.append(time.perf_counter() - t)
    before = rss_mb(pid)
    with ThreadPoolExecutor(8) as pool:  # 6 bombs and one valid request at once, 3 rounds
        for _ in range(3):
            bombs = [pool.submit(post, base, "/demo/disc", bomb) for _ in range(6)]
            t = time.perf_counter()
            valid = pool.submit(post, base, "/demo/disc", VALID).result()
            waited = time.perf_counter() - t
            assert valid.status_code == 200 and waited < min(alone) + 1.0, (waited, alone)
            assert {b.result().status_code for b in bombs} == {400}
    grown = rss_mb(pid) - before
    assert grown < 100, f"replica grew by {grown:.0f} MB"


def test_non_finite_pixels_and_scores_get_a_json_422_never_a_verdict(endpoint):
    base, _, _ = endpoint
    for value in (np.inf, -np.inf, np.nan):
        r = post(base, "/demo/disc", float_tiff(value))
        assert r.status_code == 422 and "not finite" in r.json()["error"], r.text
    r = post(base, "/demo/disc", float_tiff(0.25))  # a finite float TIFF is scored
    assert r.status_code == 200 and np.isfinite(r.json()["score"])
    r = post(base, "/demo/nan", VALID)  # a model that scores NaN
    assert r.status_code == 422 and "not a number a verdict" in r.json()["error"] and "verdict" not in r.json()
    still_serving(base)


def test_only_the_named_formats_are_decoded(endpoint):
    base, _, _ = endpoint
    for body in (EPS, encode(np.zeros((20, 20, 3), np.uint8), "GIF"), encode(np.zeros((20, 20, 3), np.uint8), "WEBP")):
        r = post(base, "/demo/disc", body)
        assert r.status_code == 400 and "not an image file of a format read here" in r.json()["error"]
    for name in ("PNG", "JPEG", "TIFF", "BMP"):
        assert post(base, "/demo/disc", GOOD[name]).status_code == 200, name


def test_a_chunked_body_over_the_limit_is_413_as_soon_as_it_passes(endpoint):
    base, _, _ = endpoint
    port = int(base.rsplit(":", 1)[1])
    total = 70 << 20  # the module's server takes 8 MiB; 70 MB are offered
    piece = b"\0" * (1 << 20)
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(total // len(piece)))
    head = b"POST /demo/disc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: image/png\r\n\r\n"
    t = time.perf_counter()
    status, answer, sent = raw_exchange(port, head, chunks)
    assert status == 413 and b"over the limit" in answer, answer
    # the replica refuses once 8 MiB have reached it; Ray Serve's HTTP proxy reads ahead of the
    # replica into a queue of its own, so how much the client got to send is Ray's (see README)
    print(f"chunked {total >> 20} MiB: 413 after {time.perf_counter() - t:.2f} s, {sent / 2**20:.0f} MiB sent")
    assert time.perf_counter() - t < 20
    r = post(base, "/demo/disc", (VALID[i:i + 1000] for i in range(0, len(VALID), 1000)))  # chunked, small: scored
    assert r.status_code == 200, r.text
    still_serving(base)


def test_content_length_lies_and_odd_requests_get_4xx_and_the_server_goes_on(endpoint):
    base, _, _ = endpoint
    port = int(base.rsplit(":", 1)[1])
    # Content-Length under the body: the image is cut, so refused
    status, answer, _ = raw_exchange(port, b"POST /demo/disc HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                                            b"Connection: close\r\n\r\n", [VALID])
    assert status == 400, answer
    # Content-Length over the limit: refused before one byte is read
    status, answer, _ = raw_exchange(port, b"POST /demo/disc HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n"
                                            b"Connection: close\r\n\r\n", [])
    assert status == 413, answer
    # Content-Length over the body, then the client goes quiet and leaves: no answer owed, server fine
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /demo/disc HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + VALID[:100])
    sock.shutdown(socket.SHUT_WR)
    time.sleep(0.5)
    sock.close()
    # an HTTP header far too large
    status, answer, _ = raw_exchange(port, b"POST /demo/disc HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 +
                                      b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", [])
    assert status == 0 or 400 <= status < 500, answer
    for path in (b"/demo/../disc", b"/../demo/disc", b"/demo/..%2Fdisc", b"//demo//disc/..", b"/demo/disc/../../x"):
        status, answer, _ = raw_exchange(port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                                          b"Connection: close\r\n\r\n" % len(VALID), [VALID])
        assert status == 404 and b'{"error"' in answer, (path, answer)
    cases = [  # (method, path, body, status, what the error says)
        ("GET", "/demo/disc", None, 405, "GET not allowed"),
        ("PUT", "/demo/disc", VALID, 405, "PUT not allowed"),
        ("DELETE", "/demo/disc", None, 405, "DELETE not allowed"),
        ("POST", "/demo/../../etc/passwd", VALID, 404, ""),  # the client folds the dots: /etc/passwd
        ("POST", "/demo/%2e%2e%2f%2e%2e%2fetc%2fpasswd", VALID, 404, ""),
        ("POST", "/demo/disc%00", VALID, 404, "no model registered"),
        ("POST", "/demo/disc", b"", 400, "empty body"),
        ("POST", "/demo/disc", png_declaring(60000, 60000, 1), 413, ""),
        ("POST", "/demo/disc?method=rd", VALID, 409, "not rd"),
    ]
    for method, path, body, status, message in cases:
        r = requests.request(method, base + path, data=body, timeout=60)
        assert r.status_code == status and message in r.json()["error"], (method, path, r.status_code, r.text)
    still_serving(base)


def test_fuzzed_bodies_get_an_answer_or_a_4xx_never_a_500(endpoint):
    base, _, _ = endpoint
    rng = np.random.default_rng(19)
    bodies = []
    for name in ("PNG", "JPEG", "TIFF", "BMP", "TIFF-float"):
        data = GOOD[name]
        bodies += [data[: len(data) // 3], data[:40]]
        for _ in range(4):
            flipped = bytearray(data)
            for pos in rng.integers(0, len(data), size=3):
                flipped[pos] ^= 1 << int(rng.integers(0, 8))
            bodies.append(bytes(flipped))
    bodies += [rng.bytes(n) for n in (1, 100, 5000)]
    t, seen = time.perf_counter(), {}
    with ThreadPoolExecutor(4) as pool:
        for r in pool.map(lambda b: post(base, "/demo/disc", b), bodies):
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code in (200, 400, 413, 422), r.text
            body = r.json()
            assert ("error" in body) == (r.status_code != 200)
            if r.status_code == 200:
                assert np.isfinite(body["score"]) and body["verdict"] in ("normal", "anomalous")
    assert seen.get(400, 0) >= 10 and time.perf_counter() - t < 90, seen
    still_serving(base)


def test_an_unknown_category_never_evicts_a_loaded_model(endpoint):
    base, det, uri = endpoint
    assert post(base, "/demo/disc", VALID).json()["model_version"] == "1"
    assert post(base, "/demo/nan", VALID).status_code == 422  # the replica's two slots: disc, nan
    # the champion moves to version 2: a replica that loaded disc again would answer with it
    log_detector_run(uri, tiny_patchcore(seed=7, image_threshold=1.05), "demo", "disc", 0.95)
    assert registry.register("demo", ["disc"], uri=uri)[0].version == "2"
    for name in ("nope", "also-nope", "disc2"):
        r = post(base, f"/demo/{name}", VALID)
        assert r.status_code == 404 and f"no model registered for demo/{name}" in r.json()["error"]
    assert post(base, "/demo/disc", VALID).json()["model_version"] == "1"  # never evicted, never reloaded


def test_every_port_of_the_local_ray_and_serve_listens_on_loopback(endpoint):
    pids = descendants(os.getpid())
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    ours = [line for line in out.splitlines() if any(int(p) in pids for p in re.findall(r"pid=(\d+)", line))]
    assert any("ServeReplica" in pids[int(re.findall(r"pid=(\d+)", line)[0])] for line in ours), ours
    addresses = [line.split()[3].rsplit(":", 1)[0] for line in ours]
    exposed = [line for line, a in zip(ours, addresses) if a not in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")]
    assert not exposed, exposed
