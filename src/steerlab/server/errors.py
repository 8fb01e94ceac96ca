"""Errors in the OpenAI shape, {"error": {"message", "type", "param", "code"}}, for every failure path."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable",
    500: "server_error",
}


class ApiError(Exception):
    """A request the server refuses; `message` names the field and what to change.

    Text quoted from the request may hold lone surrogates, which UTF-8 cannot encode: they are written as
    `\\udXXX` escapes, so an error can always be sent.
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        message = _sendable(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = None if param is None else _sendable(param)
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _sendable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _location(loc: tuple) -> str:
    parts = [p for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def invalid_text(where: str, at: int | None = None) -> ApiError:
    """The 400 for text that is not valid Unicode: JSON can spell a lone surrogate (`"\\ud800"`), UTF-8 cannot."""
    what = f"character {at} is a lone surrogate" if at is not None else "it holds a lone surrogate"
    return ApiError(
        400,
        f"{where}: not valid Unicode: {what}; send UTF-8 text (in JSON, a \\u escape above U+FFFF is a pair "
        "of surrogates, high then low)",
        param=where,
        code="invalid_text",
    )


def lone_surrogate(text: str) -> int | None:
    """Where the first lone surrogate in `text` is, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem pydantic found, said as 'field: what is wrong'."""
    first = exc.errors()[0]
    where = _location(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field; see the API docs for the accepted fields"
    elif first.get("type") == "string_unicode":  # a checked field (a length, a pattern) met a lone surrogate
        given = first.get("input")
        return invalid_text(where, lone_surrogate(given) if isinstance(given, str) else None)
    elif first.get("type") == "json_invalid":
        where, message = "body", f"not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    return ApiError(400, f"{where}: {message}", param=where, code=str(first.get("type")))


def install_handlers(app: FastAPI) -> None:
    """Route every error (ours, validation, unknown path) to the OpenAI error shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(bad := exc.__cause__, UnicodeDecodeError):  # FastAPI could not decode the body
            return ApiError(
                400,
                f"body: not valid UTF-8 (byte {bad.object[bad.start]:#04x} at offset {bad.start}); send JSON as UTF-8",
                param="body",
                code="invalid_text",
            ).response()
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").response()
