"""SigV4 verification against botocore's own signer (no server, no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fastfaas.http import sigv4
from fastfaas.http.protocol import Request

CREDENTIALS = {"AKIDEXAMPLE": "the-secret"}


def signed(method: str, url: str, body: bytes, key_id: str = "AKIDEXAMPLE",
           secret: str = "the-secret") -> Request:
    aws = AWSRequest(method=method, url=url, data=body,
                     headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(key_id, secret), "lambda", "us-east-1").add_auth(aws)
    prepared = aws.prepare()
    target = prepared.url.split("127.0.0.1:9", 1)[1].encode()
    headers = {k.lower().encode(): v.encode() if isinstance(v, str) else v
               for k, v in prepared.headers.items()}
    headers[b"host"] = b"127.0.0.1:9"
    return Request(method.encode(), target, headers, body, True)


@pytest.mark.parametrize(("method", "url", "body"), [
    ("GET", "http://127.0.0.1:9/2015-03-31/functions/?MaxItems=2&Marker=a%20b", b""),
    ("POST", "http://127.0.0.1:9/2015-03-31/functions/my-fn%3A%24LATEST/invocations",
     b'{"x": 1}'),
    ("PUT", "http://127.0.0.1:9/2017-10-31/functions/f/concurrency",
     b'{"ReservedConcurrentExecutions": 3}'),
])
def test_what_botocore_signs_is_verified(method: str, url: str, body: bytes) -> None:
    assert sigv4.verify(signed(method, url, body), CREDENTIALS) == "AKIDEXAMPLE"


def test_a_changed_body_path_or_key_is_refused() -> None:
    req = signed("POST", "http://127.0.0.1:9/2015-03-31/functions/f/invocations", b"{}")
    tampered = Request(req.method, req.target, req.headers, b'{"x": 2}', True)
    with pytest.raises(sigv4.SignatureError, match="does not match"):
        sigv4.verify(tampered, CREDENTIALS)  # the body's hash is part of what was signed
    moved = Request(req.method, b"/2015-03-31/functions/g/invocations", req.headers, b"{}", True)
    with pytest.raises(sigv4.SignatureError) as caught:
        sigv4.verify(moved, CREDENTIALS)
    assert caught.value.error_type == "InvalidSignatureException"
    other = signed("GET", "http://127.0.0.1:9/2015-03-31/functions/", b"", secret="wrong")
    with pytest.raises(sigv4.SignatureError, match="does not match"):
        sigv4.verify(other, CREDENTIALS)
    unknown = signed("GET", "http://127.0.0.1:9/2015-03-31/functions/", b"", key_id="AKIDX")
    with pytest.raises(sigv4.SignatureError) as caught:
        sigv4.verify(unknown, CREDENTIALS)
    assert caught.value.error_type == "UnrecognizedClientException"


def test_an_old_or_unsigned_request_is_refused() -> None:
    req = signed("GET", "http://127.0.0.1:9/2015-03-31/functions/", b"")
    later = datetime.now(UTC) + timedelta(minutes=16)
    with pytest.raises(sigv4.SignatureError, match="expired"):
        sigv4.verify(req, CREDENTIALS, now=later)
    bare = Request(b"GET", b"/2015-03-31/functions/", {b"host": b"127.0.0.1:9"}, b"", True)
    with pytest.raises(sigv4.SignatureError) as caught:
        sigv4.verify(bare, CREDENTIALS)
    assert caught.value.error_type == "MissingAuthenticationTokenException"
