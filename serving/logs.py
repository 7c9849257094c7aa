"""Log lines an operator can parse and follow: text or JSON (`WENLV_LOG_FORMAT`), each carrying the request id of
the request it was written for, and the access log on or off (`WENLV_ACCESS_LOG`).

The request id lives in a context variable that the metrics middleware sets for the request's task (threads that
serve it get a copy of the context), so any logger called on a request's behalf is tagged without passing it around.
A JSON line holds time, level, logger, message and request_id; an exception logged with `exc_info` adds its
traceback frames and type, never its message (which may quote request data).
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import time
import traceback

ACCESS_LOGGER = "wenlv.serving.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("wenlv_request_id", default=None)


def accepted_request_id(header: str | None) -> str:
    """The caller's X-Request-ID when it is a short safe string (letters, digits, '.', '_', '-'; ≤ 64), else a new one:
    an id is echoed and logged, so it must not carry anything else."""
    if header and _SAFE_ID.match(header):
        return header
    return secrets.token_hex(16)


def traceback_without_data(exc: BaseException) -> str:
    """Where `exc` was raised (file, line, function, code) and its type: no message, no local values."""
    frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    return f"Traceback (most recent call last):\n{frames}{type(exc).__module__}.{type(exc).__qualname__}"


class RequestIdFilter(logging.Filter):
    """Put the current request id (or None) on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                "request_id": getattr(record, "request_id", None)}
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = traceback_without_data(record.exc_info[1])
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain format, with `[request <id>]` appended on lines written for a request; tracebacks without messages."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        exc_info, record.exc_info, record.exc_text = record.exc_info, None, None
        try:
            text = super().format(record)
        finally:
            record.exc_info = exc_info
        rid = getattr(record, "request_id", None)
        if rid:
            text += f" [request {rid}]"
        if exc_info and exc_info[1] is not None:
            text += "\n" + traceback_without_data(exc_info[1])
        return text


def configure_logging(level: int, fmt: str = "text", access_log: bool = False, stream=None,
                      force: bool = True) -> logging.Handler | None:
    """The root logger's handler, in `fmt` ("text" or "json"); the access log muted unless `access_log`.
    Without `force`, like `logging.basicConfig`: nothing is changed when someone else (a test runner, an embedding
    application) already put handlers on the root logger. A handler of an earlier call is replaced."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "wenlv_handler", False)]
    if not force and len(ours) < len(root.handlers):
        return None
    for old in root.handlers[:] if force else ours:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.wenlv_handler = True
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.WARNING)
    return handler
