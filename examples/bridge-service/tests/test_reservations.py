import pytest


def sync(client, payload):
    return client.post("/reservations/sync", json=payload)


def test_sync_new_returns_201(client, reservation):
    response = sync(client, reservation)

    assert response.status_code == 201
    assert response.headers["Location"] == "/reservations/R-1001"


def test_sync_maps_to_channel_format(client, reservation, settings):
    body = sync(client, reservation).json

    assert body["channel"] == settings.channel_name
    assert body["booking_ref"] == "R-1001"
    assert body["hotel_code"] == "HOTEL-7"
    assert body["status"] == "booked"
    assert body["guest_name"] == "Ada Lovelace"
    assert body["check_in"] == "2025-06-01"
    assert body["check_out"] == "2025-06-04"
    assert body["nights"] == 3
    assert body["room_code"] == "DBL"
    assert body["occupancy"] == {"adults": 2, "children": 1}
    assert body["total"] == {"amount": "450.00", "currency": "EUR"}
    assert body["synced_at"].endswith("Z")


def test_sync_cancelled_maps_status(client, reservation):
    reservation["status"] = "cancelled"

    body = sync(client, reservation).json

    assert body["status"] == "cancelled"


def test_sync_formats_amount_in_cents(client, reservation):
    reservation["total_amount"] = 199.5

    body = sync(client, reservation).json

    assert body["total"]["amount"] == "199.50"


def test_sync_again_replaces(client, reservation):
    sync(client, reservation)
    reservation["departure"] = "2025-06-06"

    response = sync(client, reservation)

    assert response.status_code == 200
    assert "Location" not in response.headers
    assert client.get("/reservations/R-1001").json["nights"] == 5


def test_sync_ignores_unknown_fields(client, reservation):
    reservation["pms_internal_flags"] = ["vip", "late-arrival"]

    response = sync(client, reservation)

    assert response.status_code == 201
    assert "pms_internal_flags" not in response.json


def test_get_returns_synced(client, reservation):
    synced = sync(client, reservation).json

    response = client.get("/reservations/R-1001")

    assert response.status_code == 200
    assert response.json == synced


def test_get_unknown_returns_404(client):
    response = client.get("/reservations/R-404")

    assert response.status_code == 404
    assert response.json["error"] == "reservation R-404 not found"


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("not json", "text/plain"),
        ("{broken", "application/json"),
        ("[1, 2]", "application/json"),
    ],
)
def test_sync_rejects_non_object(client, data, content_type):
    response = client.post(
        "/reservations/sync", data=data, content_type=content_type
    )

    assert response.status_code == 400
    assert "JSON object" in response.json["error"]


INVALID_FIELDS = [
    ("reservation_id", "R 1001", "reservation_id"),
    ("status", "pending", "status"),
    ("arrival", "2025-13-01", "arrival"),
    ("room_type", "", "room_type"),
    ("adults", 0, "adults"),
    ("children", -1, "children"),
    ("total_amount", "12.345", "total_amount"),
    ("total_amount", "-1.00", "total_amount"),
    ("currency", "eur", "currency"),
    ("guest", {"first_name": "Ada", "last_name": " "}, "guest.last_name"),
]


@pytest.mark.parametrize(("key", "value", "field"), INVALID_FIELDS)
def test_sync_rejects_invalid_field(client, reservation, key, value, field):
    reservation[key] = value

    response = sync(client, reservation)

    assert response.status_code == 400
    assert response.json["error"] == "invalid reservation"
    assert [item["field"] for item in response.json["details"]] == [field]


def test_sync_rejects_missing_field(client, reservation):
    del reservation["guest"]

    response = sync(client, reservation)

    assert response.status_code == 400
    assert response.json["details"][0]["field"] == "guest"
    assert response.json["details"][0]["message"] == "Field required"


def test_sync_rejects_reversed_stay(client, reservation):
    reservation["departure"] = reservation["arrival"]

    response = sync(client, reservation)

    assert response.status_code == 400
    assert response.json["details"][0]["field"] == "reservation"
    assert "departure must be after arrival" in response.json["details"][0]["message"]


def test_rejected_is_not_stored(client, reservation):
    reservation["currency"] = "euro"
    sync(client, reservation)

    response = client.get("/reservations/R-1001")

    assert response.status_code == 404


def test_error_omits_input_values(client, reservation):
    reservation["guest"]["first_name"] = ""
    reservation["guest"]["last_name"] = "Lovelace" * 20

    response = sync(client, reservation)

    assert "Lovelace" not in response.get_data(as_text=True)
