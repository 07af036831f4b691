"""ProxyBodyLimit, the ASGI middleware raybench gives Ray Serve's HTTP proxy, driven in-process the
way uvicorn drives it: a body over the limit (by Content-Length, or counted as chunks arrive) gets a
JSON 413 and is read no further; bodies within it pass through untouched."""
from __future__ import annotations

import asyncio
import json

from raybench.delivery.serve import ProxyBodyLimit


def run(middleware, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """-> (messages sent to the client, number of body chunks read from the client)."""
    sent, read = [], [0]
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        if pending:
            read[0] += 1
            return pending.pop(0)
        await asyncio.sleep(3600)  # the client says nothing more

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/demo/disc", "headers": headers}
    asyncio.run(asyncio.wait_for(middleware(scope, receive, send), 10))
    return sent, read[0]


async def echo_app(scope, receive, send):
    """Stands for Serve's proxy: reads the whole body (as it does, ahead of the replica), answers 200,
    or says nothing when the client has gone."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def test_a_chunked_body_over_the_limit_is_413_and_read_no_further():
    sent, read = run(ProxyBodyLimit(echo_app, max_bytes=10_000), [], [b"x" * 4096] * 50)
    assert sent[0]["status"] == 413 and read == 3  # 12 288 bytes > 10 000: the 47 chunks after stay unread
    assert "over the limit of 10000 bytes" in json.loads(sent[1]["body"])["error"]
    assert (b"connection", b"close") in sent[0]["headers"]


def test_a_declared_length_over_the_limit_is_413_before_any_byte():
    sent, read = run(ProxyBodyLimit(echo_app, max_bytes=10_000), [(b"content-length", b"999999")], [b"x"])
    assert sent[0]["status"] == 413 and read == 0
    assert "body of 999999 bytes" in json.loads(sent[1]["body"])["error"]


def test_bodies_within_the_limit_pass_untouched():
    sent, read = run(ProxyBodyLimit(echo_app, max_bytes=10_000), [(b"content-length", b"10000")], [b"x" * 5000] * 2)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"10000" and read == 2
    sent, _ = run(ProxyBodyLimit(echo_app, max_bytes=10_000), [], [b""])
    assert sent[0]["status"] == 200
