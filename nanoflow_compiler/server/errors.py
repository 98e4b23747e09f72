"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every failure the server reports.

OpenAI clients read `error.message` and raise by status code, so each failure picks the status OpenAI would use
(400 for anything wrong in the body, where FastAPI's default would be 422) and a message that names the field.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable_error"}


class APIError(Exception):
    """A request the server refuses, with the status, message and OpenAI `code` the client sees."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    err_type = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """Turn pydantic's first error into one sentence naming the field; JSON syntax errors get their own code."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "invalid JSON")
        return f"malformed JSON body: {detail}", None, "invalid_json"
    if not loc:  # the body itself is missing or is not an object
        return "the request body must be a JSON object", None, "invalid_body"
    field = loc[0]
    path = field + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:] if p not in _UNION_TAGS and "[" not in p)
    if err.get("type") == "missing":
        return f"'{path}' is a required field", field, "missing_field"
    return f"'{path}': {err.get('msg', 'invalid value')} (got {err.get('input')!r:.80})", field, "invalid_type"


# pydantic names the union member that failed inside the location (("prompt", "str")); users never wrote those.
_UNION_TAGS = {"str", "int", "float", "bool", "none", "literal"}


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise through `error_body`, so no client ever sees FastAPI's default shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _validation_message(exc)
        return JSONResponse(error_body(400, message, param, code), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error while serving a request")
        return JSONResponse(error_body(500, f"internal server error: {type(exc).__name__}: {exc}"), status_code=500)
