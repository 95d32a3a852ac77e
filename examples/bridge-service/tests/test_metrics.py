from prometheus_client.parser import text_string_to_metric_families

from bridge_service import create_app


def scrape(client):
    """Return every sample of /metrics as {(name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_use_text_format(client):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")


def test_metrics_include_python_info(client):
    names = {name for name, _ in scrape(client)}

    assert "python_info" in names


def test_metrics_count_requests(client):
    client.get("/health")
    client.get("/health")

    samples = scrape(client)

    key = (
        "bridge_http_requests_total",
        (("method", "GET"), ("route", "/health"), ("status", "200")),
    )
    assert samples[key] == 2


def test_metrics_time_requests(client):
    client.get("/reservations/R-1")

    samples = scrape(client)

    key = (
        "bridge_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/reservations/<reservation_id>")),
    )
    assert samples[key] == 1


def test_metrics_count_synced(client, reservation, settings):
    client.post("/reservations/sync", json=reservation)
    reservation["reservation_id"] = "R-1002"
    reservation["status"] = "cancelled"
    client.post("/reservations/sync", json=reservation)

    samples = scrape(client)

    channel = ("channel", settings.channel_name)
    booked = ("bridge_reservations_synced_total", (channel, ("status", "booked")))
    cancelled = ("bridge_reservations_synced_total", (channel, ("status", "cancelled")))
    assert samples[booked] == 1
    assert samples[cancelled] == 1


def test_metrics_count_rejected(client):
    client.post("/reservations/sync", json={"reservation_id": "R-1"})

    samples = scrape(client)

    assert samples[("bridge_reservations_rejected_total", ())] == 1


def test_metrics_apps_are_separate(app, settings, reservation):
    app.test_client().post("/reservations/sync", json=reservation)

    other = create_app(settings).test_client()

    samples = scrape(other)
    channel = ("channel", settings.channel_name)
    key = ("bridge_reservations_synced_total", (channel, ("status", "booked")))
    assert key not in samples
