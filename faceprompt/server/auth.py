"""Bearer tokens: checked in constant time against the SHA-256 digests of the token file, never logged."""

from __future__ import annotations

import hmac
import logging
import re

from fastapi import HTTPException, Request
from fastapi.security import HTTPBearer

from .settings import ServiceSettings, token_digest

#: Documents the scheme in OpenAPI (/docs gets an "Authorize" button); the check itself is :func:`check_token`.
bearer_scheme = HTTPBearer(
    auto_error=False, description="a token of the server's --token-file"
)

#: GET routes also take ``?token=``: a browser's EventSource and <img src> cannot send an Authorization header.
QUERY_TOKEN = "token"


def request_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.method == "GET":
        return request.query_params.get(QUERY_TOKEN, "")
    return ""


def check_token(settings: ServiceSettings, request: Request) -> str:
    """The digest of the caller's token ("" when the service runs without tokens); 401 when it is not accepted.

    Every known digest is compared (``hmac.compare_digest``, no early exit), so the time taken says nothing about
    which token, or how much of one, matched.
    """
    if not settings.auth_required:
        return ""
    token = request_token(request)
    digest = token_digest(token)
    matches = [hmac.compare_digest(digest, known) for known in settings.token_digests]
    if not token or not any(matches):
        detail = "a valid token is required: send the header 'Authorization: Bearer <token>' with a token of the "
        detail += (
            "server's --token-file"
            if token == ""
            else "server's --token-file (this one is not in it)"
        )
        raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
    return digest


_TOKEN_IN_QUERY = re.compile(rf"([?&]{QUERY_TOKEN}=)[^&\s]*")


class RedactTokens(logging.Filter):
    """Masks ``token=...`` in access-log lines (uvicorn logs the path with its query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True
