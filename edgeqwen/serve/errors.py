"""The error every server layer raises: an HTTP status with an OpenAI-shaped body (Ollama routes reshape it)."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def payload(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 naming the request field at fault."""
    return ApiError(400, message, "invalid_request_error", param=param, code=code)


def busy(message: str, code: str = "server_busy") -> ApiError:
    return ApiError(503, message, "server_error", code=code, headers={"Retry-After": "1"})
