"""HTTP routes: health check and the reservation sync API."""

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import ValidationError

from bridge_service.reservations import PmsReservation, map_to_channel
from bridge_service.state import get_state

logger = logging.getLogger(__name__)

blueprint = Blueprint("api", __name__)


def error_response(
    status: int, message: str, details: list[dict[str, str]] | None = None
) -> tuple[Response, int]:
    """Build a JSON error body ``{"error": ..., "details": [...]}``."""
    body: dict[str, Any] = {"error": message}
    if details is not None:
        body["details"] = details
    return jsonify(body), status


def describe_errors(error: ValidationError) -> list[dict[str, str]]:
    """List each validation error as its field path and message.

    The input values are left out, because they can contain guest names.
    """
    details = []
    for item in error.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "reservation"
        details.append({"field": field, "message": item["msg"]})
    return details


def loggable_id(value: object) -> str | None:
    """Return an untrusted reservation id cut to 64 characters, or None if no string."""
    return value[:64] if isinstance(value, str) else None


@blueprint.get("/health")
def health() -> Response:
    """Report that the service is up and which channel it syncs to."""
    state = get_state()
    return jsonify(status="ok", channel=state.settings.channel_name)


@blueprint.post("/reservations/sync")
def sync_reservation() -> tuple[Response, int] | Response:
    """Validate a PMS reservation, map it to the channel format and store it.

    Returns 201 with a Location header for a new reservation id, 200 when an
    existing reservation was replaced, and 400 for invalid input.
    """
    state = get_state()
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        state.metrics.reservations_rejected.inc()
        logger.warning("reservation rejected: body is not a JSON object")
        return error_response(
            400,
            "request body must be a JSON object sent with "
            "Content-Type: application/json",
        )

    try:
        reservation = PmsReservation.model_validate(payload)
    except ValidationError as error:
        details = describe_errors(error)
        state.metrics.reservations_rejected.inc()
        logger.warning(
            "reservation rejected: invalid fields",
            extra={
                "reservation_id": loggable_id(payload.get("reservation_id")),
                "invalid_fields": [item["field"] for item in details],
            },
        )
        return error_response(400, "invalid reservation", details)

    channel_reservation = map_to_channel(reservation, state.settings.channel_name)
    created = state.store.put(channel_reservation)
    state.metrics.reservations_synced.labels(
        channel=channel_reservation.channel, status=channel_reservation.status
    ).inc()
    logger.info(
        "reservation synced",
        extra={
            "reservation_id": channel_reservation.booking_ref,
            "channel": channel_reservation.channel,
            "status": channel_reservation.status,
            "new_reservation": created,
        },
    )

    response = jsonify(channel_reservation.model_dump(mode="json"))
    if not created:
        return response
    response.headers["Location"] = url_for(
        ".get_reservation", reservation_id=channel_reservation.booking_ref
    )
    return response, 201


@blueprint.get("/reservations/<reservation_id>")
def get_reservation(reservation_id: str) -> tuple[Response, int] | Response:
    """Return a synced reservation in the channel format, or 404."""
    reservation = get_state().store.get(reservation_id)
    if reservation is None:
        return error_response(404, f"reservation {reservation_id} not found")
    return jsonify(reservation.model_dump(mode="json"))
