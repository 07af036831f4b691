"""Hostile inputs and process probes shared by the hostile-input tests (unit, integration, e2e):
image bytes that lie about themselves, a model whose every score is NaN, a raw HTTP exchange on
loopback (chunked bodies, Content-Length lies), and /proc readings of our own processes."""
from __future__ import annotations

import io
import os
import re
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, rows: int, interlace: int = 0) -> bytes:
    """A well-formed PNG (valid CRCs, a complete zlib stream, IEND) whose header declares
    width x height RGB but whose data hold only `rows` rows' worth: Pillow alone fills in the rest."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, interlace)
    data = zlib.compress((b"\x00" + b"\x7f" * (3 * width)) * rows, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def float_tiff(value: float) -> bytes:
    """A 40x30 float32 TIFF (mode F) with one pixel set to `value` (inf, -inf, NaN or a number)."""
    arr = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    arr[7, 9] = value
    return encode(arr, "TIFF")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke showpage\n"
RGB = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
VALID = encode((np.random.default_rng(5).random((48, 64, 3)) * 255).astype(np.uint8), "PNG")
GOOD = {
    "PNG": encode(RGB, "PNG"), "JPEG": encode(RGB, "JPEG"), "JPEG-progressive": encode(RGB, "JPEG", progressive=True),
    "TIFF": encode(RGB, "TIFF"), "TIFF-deflate": encode(RGB, "TIFF", compression="tiff_deflate"),
    "TIFF-lzw": encode(RGB, "TIFF", compression="tiff_lzw"), "BMP": encode(RGB, "BMP"),
    "PNG-gray16": encode(RGB[..., 0].astype(np.uint16) * 257, "PNG"), "PNG-gray8": encode(RGB[..., 1], "PNG"),
    "TIFF-float": float_tiff(0.5),
}


def nan_patchcore():
    """A tiny PatchCore whose memory bank holds NaN: every score it gives is NaN."""
    from tracked_runs import tiny_patchcore
    det = tiny_patchcore(seed=4, image_threshold=1.0)
    det.scorer.memory_bank.fill_(float("nan"))
    return det


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (our Ray: GCS, raylet, workers, Serve's actors) -> its command line."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                todo.append(child)
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raw_exchange(port: int, head: bytes, body_chunks, deadline_s: float = 30.0) -> tuple[int, bytes, int]:
    """Send `head`, then the chunks until the server answers (or all are sent), on loopback;
    -> (HTTP status or 0, the answer's first bytes, body bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline_s)
    sock.sendall(head)
    sent, answer, start = 0, b"", time.monotonic()
    try:
        sock.setblocking(False)
        for chunk in body_chunks:
            view = memoryview(chunk)
            while view and not answer:
                try:
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                try:
                    n = sock.send(view)
                    view, sent = view[n:], sent + n
                except BlockingIOError:
                    time.sleep(0.001)
                assert time.monotonic() - start < deadline_s, "no answer in time"
            if answer:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.setblocking(True)
    sock.settimeout(deadline_s)
    try:
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
        if b"\r\n\r\n" in answer and b'{"error"' not in answer:
            answer += sock.recv(65536)
    except (ConnectionResetError, socket.timeout):
        pass
    sock.close()
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return (int(match.group(1)) if match else 0), answer[:400], sent
