import copy

import pytest

from bridge_service import create_app
from bridge_service.config import Settings

RESERVATION = {
    "reservation_id": "R-1001",
    "property_id": "HOTEL-7",
    "status": "confirmed",
    "arrival": "2025-06-01",
    "departure": "2025-06-04",
    "room_type": "dbl",
    "adults": 2,
    "children": 1,
    "guest": {"first_name": "Ada", "last_name": "Lovelace"},
    "total_amount": "450.00",
    "currency": "EUR",
}


@pytest.fixture
def settings():
    return Settings(channel_name="test-channel")


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def reservation():
    """Return a fresh copy of a valid PMS reservation payload."""
    return copy.deepcopy(RESERVATION)
