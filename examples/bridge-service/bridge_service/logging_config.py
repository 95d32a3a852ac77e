"""Logging setup that writes one JSON object per line to stdout."""

import logging
from typing import Any

from flask import g, has_request_context

JSON_FORMATTER = "pythonjsonlogger.json.JsonFormatter"


class RequestIdFilter(logging.Filter):
    """Add the current request's id as ``request_id`` to each log record.

    Records logged outside a request, such as gunicorn's own, get None.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = None
        if has_request_context():
            request_id = g.get("request_id")
        record.request_id = request_id
        return True


def build_logging_config(level: str) -> dict[str, Any]:
    """Build a ``logging.config.dictConfig`` schema for JSON lines on stdout.

    Gunicorn accepts the same schema as ``logconfig_dict``, so its own start, stop
    and worker messages come out as JSON lines too. Values passed in ``extra=``
    become fields of the JSON object.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
        },
        "formatters": {
            "json": {
                "()": JSON_FORMATTER,
                "fmt": "%(levelname)s %(name)s %(message)s",
                "rename_fields": {"levelname": "level", "name": "logger"},
                "timestamp": True,
            },
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "json",
                "filters": ["request_id"],
            },
        },
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {
                "level": level,
                "handlers": ["stdout"],
                "propagate": False,
            },
            # The app writes one JSON line per request with its route and
            # request id, so gunicorn's access lines would only repeat it.
            "gunicorn.access": {
                "level": "WARNING",
                "handlers": ["stdout"],
                "propagate": False,
            },
        },
    }
