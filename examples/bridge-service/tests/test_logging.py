import json
import logging
import logging.config

import pytest

from bridge_service.logging_config import build_logging_config

CONFIGURED_LOGGERS = ("", "gunicorn.error", "gunicorn.access")


@pytest.fixture
def configure_json_logging():
    """Return a function that applies the JSON logging config until the test ends.

    The handler binds sys.stdout when configured, and capsys replaces sys.stdout
    only while the test body runs, so the test calls the function itself. The
    handlers that were there before, including pytest's, are kept alongside.
    """
    loggers = [logging.getLogger(name) for name in CONFIGURED_LOGGERS]
    saved = []
    created = []

    def configure():
        for log in loggers:
            saved.append((log, log.handlers[:], log.level, log.propagate))
        logging.config.dictConfig(build_logging_config("DEBUG"))
        for log, handlers, _, _ in saved:
            created.extend((log, handler) for handler in log.handlers)
            for handler in handlers:
                log.addHandler(handler)

    yield configure
    for log, handler in created:
        log.removeHandler(handler)
        handler.close()
    for log, _, level, propagate in saved:
        log.setLevel(level)
        log.propagate = propagate


def read_log_lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_log_line_is_json(configure_json_logging, capsys):
    configure_json_logging()

    logging.getLogger("bridge_service.test").info(
        "reservation synced", extra={"reservation_id": "R-1"}
    )

    [line] = read_log_lines(capsys)
    assert line["message"] == "reservation synced"
    assert line["level"] == "INFO"
    assert line["logger"] == "bridge_service.test"
    assert line["reservation_id"] == "R-1"
    assert "timestamp" in line


def test_request_log_has_request_id(configure_json_logging, capsys, client):
    configure_json_logging()

    client.get("/reservations/R-1", headers={"X-Request-ID": "trace-7"})

    lines = read_log_lines(capsys)
    [request_line] = [line for line in lines if line["message"] == "request handled"]
    assert request_line["request_id"] == "trace-7"
    assert request_line["route"] == "/reservations/<reservation_id>"
    assert request_line["status"] == 404
