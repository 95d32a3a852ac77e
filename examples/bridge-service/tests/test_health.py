def test_health_returns_ok(client, settings):
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["channel"] == settings.channel_name


def test_unknown_route_returns_json_404(client):
    response = client.get("/no-such-route")

    assert response.status_code == 404
    assert response.is_json
    assert "not found" in response.json["error"].lower()


def test_wrong_method_returns_405(client):
    response = client.delete("/health")

    assert response.status_code == 405
    assert response.is_json
    assert "GET" in response.headers["Allow"]


def test_request_id_is_echoed(client):
    response = client.get("/health", headers={"X-Request-ID": "pms-batch-42.7"})

    assert response.headers["X-Request-ID"] == "pms-batch-42.7"


def test_invalid_request_id_is_replaced(client):
    response = client.get("/health", headers={"X-Request-ID": "not an id"})

    request_id = response.headers["X-Request-ID"]
    assert request_id != "not an id"
    assert len(request_id) == 32
