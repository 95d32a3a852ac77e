"""Prometheus metrics of the service."""

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)


class Metrics:
    """Collectors of one app, kept in their own registry.

    A registry per app lets tests create many apps in one process without
    duplicate-metric errors from the global default registry.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The standard process, Python and GC metrics that the default
        # registry would carry.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.http_requests = Counter(
            "bridge_http_requests",
            "HTTP requests handled, by method, route and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "bridge_http_request_duration_seconds",
            "Time to handle an HTTP request, in seconds.",
            ["method", "route"],
            registry=self.registry,
        )
        self.reservations_synced = Counter(
            "bridge_reservations_synced",
            "Reservations mapped and stored for the channel, by channel and status.",
            ["channel", "status"],
            registry=self.registry,
        )
        self.reservations_rejected = Counter(
            "bridge_reservations_rejected",
            "Reservation sync requests rejected as invalid.",
            registry=self.registry,
        )
