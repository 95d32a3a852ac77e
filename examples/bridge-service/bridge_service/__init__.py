"""Bridge service: syncs reservations from a PMS to a channel system."""

from bridge_service.app import create_app

__all__ = ["create_app"]
