"""Per-app state that the request handlers share."""

from dataclasses import dataclass

from flask import current_app

from bridge_service.config import Settings
from bridge_service.metrics import Metrics
from bridge_service.store import ReservationStore

EXTENSION_KEY = "bridge_service"


@dataclass(frozen=True)
class BridgeState:
    """Settings, reservation store and metrics of one app."""

    settings: Settings
    store: ReservationStore
    metrics: Metrics


def get_state() -> BridgeState:
    """Return the state of the app that handles the current request."""
    return current_app.extensions[EXTENSION_KEY]
