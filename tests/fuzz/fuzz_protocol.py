"""libFuzzer (atheris) harness for the sans-IO HTTP/1.1 connection (fastfaas/http/protocol.py).

    python -m tests.fuzz.fuzz_protocol [libFuzzer flags] [CORPUS_DIR ...]

An input is a 6-byte prefix, then the bytes a peer sends: byte 0 is the body
limit, bytes 1-2 the header limit, bytes 3-4 seed the cuts into reads, bit 0
of byte 5 says whether EOF follows. The checks (`http_checks`) turn anything
but a deliberate refusal into a crash, and so is a parse in reads that differs
from the parse in one piece. `--write-seeds DIR` writes a small seed corpus.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["fastfaas.http.protocol"]):
    from fastfaas.http.protocol import encode_response

from fastfaas.http.server import error_response
from tests.fuzz.http_checks import (
    check_error_body,
    check_same_outcome,
    feed,
    split_answers,
)

PREFIX = 6
SEED_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/functions/f/invoke?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /a%20b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /3 HTTP/1.1\r\n",
    b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 99999\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nHost: a\r\nHost: b\r\n\r\n",
]


def chunks_of(stream: bytes, seed: int) -> list[bytes]:
    """`stream` cut into reads of pseudo-random sizes (1 byte to all of it) from `seed`."""
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(stream):
        size = rng.choice((1, 2, 7, 64, len(stream)))
        chunks.append(stream[at:at + size])
        at += size
    return chunks


def test_one_input(data: bytes) -> None:
    if len(data) < PREFIX:
        return
    body_limit = data[0]
    max_header_bytes = 16 + int.from_bytes(data[1:3], "little") % 1024
    seed = int.from_bytes(data[3:5], "little")
    eof = bool(data[5] & 1)
    stream = data[PREFIX:]
    limits = {"body_limit": body_limit, "max_header_bytes": max_header_bytes, "eof": eof}
    chunked = feed(chunks_of(stream, seed), **limits)
    whole = feed([stream], **limits)
    check_same_outcome(chunked, whole)
    if whole.error is not None:  # the refusal the server would send, as bytes
        response = error_response(whole.error.status, "BadRequest", whole.error.message)
        [answer] = split_answers(encode_response(response.status, response.headers,
                                                 response.body, keep_alive=False))
        assert answer.status == whole.error.status
        check_error_body(answer)


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, request in enumerate(SEED_REQUESTS):
        prefix = bytes([16, 0, 1, i, 0, i & 1])
        (directory / f"seed-{i}").write_bytes(prefix + request)


def main() -> None:
    if sys.argv[1:2] == ["--write-seeds"]:
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
