"""AWS Signature Version 4 verification for the Lambda API (sans-IO: a Request in, a verdict out).

What a client signs (as botocore does for a non-S3 service): the canonical
request (method, the path URI-encoded once more, the sorted and encoded query,
the signed headers lower-cased with values trimmed, the names of the signed
headers, the payload's SHA-256), then the string to sign (algorithm,
X-Amz-Date, the credential scope, the canonical request's hash), with a key
derived from the secret, the date, the region and the service.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl, quote

from fastfaas.http.protocol import Request

ALGORITHM: Final = "AWS4-HMAC-SHA256"
MAX_SKEW_S: Final = 15 * 60  # what AWS allows between the client's clock and the server's
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,\s*"
    r"SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})")


class SignatureError(Exception):
    """A refused signature: `error_type` is the Lambda error's (what boto3 raises)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def canonical_request(req: Request, signed: list[str], payload_hash: str) -> str:
    raw_path = req.target.partition(b"?")[0].decode("latin-1") or "/"
    path = quote(raw_path, safe="/~")
    pairs = parse_qsl(req.query.decode("latin-1"), keep_blank_values=True)
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                     for k, v in sorted(pairs))
    headers = "".join(
        f"{name}:{' '.join(req.header(name.encode()).decode('latin-1').split())}\n"
        for name in signed)
    return "\n".join([req.method.decode(), path, query, headers, ";".join(signed),
                      payload_hash])


def verify(req: Request, credentials: dict[str, str], now: datetime | None = None) -> str:
    """The access key id of a correctly signed request; raises SignatureError otherwise."""
    auth = req.header(b"authorization").decode("latin-1")
    match = _AUTH.fullmatch(auth.strip())
    if match is None:
        raise SignatureError("MissingAuthenticationTokenException" if not auth else
                             "IncompleteSignatureException",
                             "the request must be signed with AWS Signature Version 4")
    key_id, date, region, service, signed_names, signature = match.groups()
    secret = credentials.get(key_id)
    if secret is None:
        raise SignatureError("UnrecognizedClientException",
                             "The security token included in the request is invalid.")
    signed = signed_names.split(";")
    if "host" not in signed:
        raise SignatureError("IncompleteSignatureException", "the Host header must be signed")
    amz_date = req.header(b"x-amz-date").decode("latin-1")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("IncompleteSignatureException",
                             "X-Amz-Date is missing or malformed") from None
    if not amz_date.startswith(date):
        raise SignatureError("InvalidSignatureException",
                             "the credential's date is not X-Amz-Date's")
    now = now or datetime.now(UTC)
    if abs((now - when).total_seconds()) > MAX_SKEW_S:
        raise SignatureError("InvalidSignatureException",
                             "Signature expired: X-Amz-Date is more than 15 minutes away"
                             " from the server's time")
    payload_hash = req.header(b"x-amz-content-sha256").decode("latin-1")
    actual = hashlib.sha256(req.body).hexdigest()
    if payload_hash and payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != actual:
        raise SignatureError("InvalidSignatureException", "the payload's hash does not match")
    scope = f"{date}/{region}/{service}/aws4_request"
    canonical = canonical_request(req, signed, payload_hash or actual)
    to_sign = "\n".join([ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    expected = hmac.new(signing_key(secret, date, region, service), to_sign.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("InvalidSignatureException",
                             "The request signature we calculated does not match the"
                             " signature you provided.")
    return key_id
