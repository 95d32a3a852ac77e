"""Application factory and the hooks that time and log every request."""

import json
import logging
import re
import time
import uuid

from flask import Flask, Response, g, request
from prometheus_client import make_wsgi_app
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from bridge_service import api
from bridge_service.config import Settings
from bridge_service.metrics import Metrics
from bridge_service.state import EXTENSION_KEY, BridgeState, get_state
from bridge_service.store import ReservationStore

logger = logging.getLogger(__name__)

# A caller's X-Request-ID is kept only if it looks like an id, so that log
# fields stay short. Any other value is replaced by a new UUID.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"


def create_app(settings: Settings | None = None) -> Flask:
    """Create the Flask app, reading settings from the environment if none given.

    ``/metrics`` is served by prometheus-client's own WSGI app, mounted in front
    of Flask, so scrapes are neither counted nor logged as requests.
    """
    settings = settings or Settings()
    metrics = Metrics()
    app = Flask(__name__)
    app.extensions[EXTENSION_KEY] = BridgeState(
        settings=settings, store=ReservationStore(), metrics=metrics
    )
    logging.getLogger("bridge_service").setLevel(settings.log_level)

    app.register_blueprint(api.blueprint)
    app.before_request(start_request)
    app.after_request(finish_request)
    app.register_error_handler(HTTPException, render_http_error)
    app.wsgi_app = DispatcherMiddleware(
        app.wsgi_app, {"/metrics": make_wsgi_app(registry=metrics.registry)}
    )

    logger.info("app created", extra={"channel": settings.channel_name})
    return app


def start_request() -> None:
    g.started = time.perf_counter()
    request_id = request.headers.get("X-Request-ID", "")
    if not REQUEST_ID_PATTERN.fullmatch(request_id):
        request_id = uuid.uuid4().hex
    g.request_id = request_id


def finish_request(response: Response) -> Response:
    """Count, time and log the request, and return its id in X-Request-ID."""
    duration = time.perf_counter() - g.started
    route = request.url_rule.rule if request.url_rule else UNMATCHED_ROUTE
    metrics = get_state().metrics
    metrics.http_requests.labels(
        method=request.method, route=route, status=str(response.status_code)
    ).inc()
    metrics.http_request_duration.labels(method=request.method, route=route).observe(
        duration
    )
    response.headers["X-Request-ID"] = g.request_id

    # Health checks repeat at a fixed interval (30 s in the image), so they are
    # logged at DEBUG to keep INFO for real traffic.
    level = logging.DEBUG if route == "/health" else logging.INFO
    logger.log(
        level,
        "request handled",
        extra={
            "method": request.method,
            "route": route,
            "status": response.status_code,
            "duration_ms": round(duration * 1000, 3),
        },
    )
    return response


def render_http_error(error: HTTPException) -> Response:
    """Turn an HTTP error such as 404 or 405 into a JSON body."""
    response = error.get_response()
    response.data = json.dumps({"error": error.description})
    response.content_type = "application/json"
    return response
