"""In-memory store of synced reservations."""

import threading

from bridge_service.reservations import ChannelReservation


class ReservationStore:
    """Thread-safe map of channel reservations by PMS reservation id.

    The contents live in process memory, so each gunicorn worker process would
    have its own store, and a restart empties it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reservations: dict[str, ChannelReservation] = {}

    def put(self, reservation: ChannelReservation) -> bool:
        """Insert or replace a reservation and return True if its id was new."""
        with self._lock:
            created = reservation.booking_ref not in self._reservations
            self._reservations[reservation.booking_ref] = reservation
        return created

    def get(self, reservation_id: str) -> ChannelReservation | None:
        """Return the reservation with this PMS id, or None if it was never synced."""
        with self._lock:
            return self._reservations.get(reservation_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._reservations)
