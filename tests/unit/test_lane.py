"""fastfaas._lane's encoders, held to the Python ones they stand in for: the Invoke
message to wire.encoder's msgpack, the success response to encode_response's bytes."""

from __future__ import annotations

import random

import pytest

from fastfaas import _lane, wire
from fastfaas.http.protocol import encode_response

# Lengths at msgpack's size classes for str (fixstr < 32, str8 < 256, str16) and bin
# (bin8 < 256, bin16 < 65536, bin32).
ID_LENGTHS = (0, 1, 31, 32, 36, 255, 256, 70_000)
PAYLOAD_LENGTHS = (0, 1, 255, 256, 65_535, 65_536, 200_000)


@pytest.mark.parametrize("id_len", ID_LENGTHS)
@pytest.mark.parametrize("payload_len", PAYLOAD_LENGTHS)
def test_encode_invoke_is_what_wire_encodes(id_len: int, payload_len: int) -> None:
    rng = random.Random(id_len * 1_000_003 + payload_len)
    request_id = "".join(rng.choice("0123456789abcdef-é") for _ in range(id_len))
    payload = rng.randbytes(payload_len)
    deadline = rng.uniform(0, 1e7)
    data = _lane.encode_invoke(request_id, payload, deadline)
    assert data == wire.encoder.encode(wire.Invoke(request_id, payload, deadline))
    assert wire.instance_in.decode(data) == wire.Invoke(request_id, payload, deadline)


@pytest.mark.parametrize("deadline", [0.0, -1.5, 1e-300, 12345.678901, float("inf")])
def test_encode_invoke_keeps_every_bit_of_the_deadline(deadline: float) -> None:
    data = _lane.encode_invoke("r", b"{}", deadline)
    assert data == wire.encoder.encode(wire.Invoke("r", b"{}", deadline))


@pytest.mark.parametrize("body", [b"", b"{}", b'{"ok":true}', b"x" * 100_000])
@pytest.mark.parametrize(("duration_us", "server_us"), [(0, 0), (7, 150), (2**40, 2**41)])
def test_ok_response_is_what_encode_response_gives_for_the_same_headers(
        body: bytes, duration_us: int, server_us: int) -> None:
    request_id = b"6f1c2a3e-9b7d-4c1e-8f00-123456789abc"
    instance = b"ab12cd-17"
    headers = [  # NativeApi._invoke_response's, for a warm call's success
        (b"content-type", b"application/json"),
        (b"x-fastfaas-request-id", request_id),
        (b"x-fastfaas-start", b"warm"),
        (b"x-fastfaas-duration-us", b"%d" % duration_us),
        (b"x-fastfaas-server-us", b"%d" % server_us),
        (b"x-fastfaas-instance", instance),
        (b"x-fastfaas-route", b"direct"),
    ]
    assert (_lane.ok_response(request_id, instance, duration_us, server_us, body)
            == encode_response(200, headers, body, keep_alive=True))


def test_the_encoders_refuse_none_where_bytes_belong() -> None:
    for call in (lambda: _lane.encode_invoke("r", None, 1.0),  # type: ignore[arg-type]
                 lambda: _lane.encode_invoke(None, b"{}", 1.0),  # type: ignore[arg-type]
                 lambda: _lane.ok_response(None, b"i", 1, 2, b"{}"),  # type: ignore[arg-type]
                 lambda: _lane.ok_response(b"r", b"i", 1, 2, None)):  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            call()
