"""PMS and channel reservation formats, and the mapping between them."""

from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Code = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
    ),
]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)
]

# The channel format has only these two states. A modified booking is synced
# again with status "confirmed", and the new copy replaces the stored one.
CHANNEL_STATUS = {"confirmed": "booked", "cancelled": "cancelled"}

CENT = Decimal("0.01")


class PmsGuest(BaseModel):
    """Guest block of a PMS reservation."""

    first_name: Name
    last_name: Name


class PmsReservation(BaseModel):
    """Reservation as the property management system (PMS) sends it.

    Unknown fields are ignored, because PMS payloads carry many fields that the
    channel system does not take.
    """

    model_config = ConfigDict(extra="ignore")

    reservation_id: Code
    property_id: Code
    status: Literal["confirmed", "cancelled"]
    arrival: date
    departure: date
    room_type: Code
    adults: int = Field(ge=1)
    children: int = Field(default=0, ge=0)
    guest: PmsGuest
    total_amount: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")

    @model_validator(mode="after")
    def _check_stay(self) -> "PmsReservation":
        if self.departure <= self.arrival:
            raise ValueError("departure must be after arrival")
        return self


class Occupancy(BaseModel):
    """Number of guests in the room."""

    adults: int
    children: int


class Money(BaseModel):
    """Amount in a currency, serialized as a decimal string with two places."""

    amount: Decimal
    currency: str


class ChannelReservation(BaseModel):
    """Reservation in the format that the channel system accepts."""

    channel: str
    booking_ref: str
    hotel_code: str
    status: Literal["booked", "cancelled"]
    guest_name: str
    check_in: date
    check_out: date
    nights: int
    room_code: str
    occupancy: Occupancy
    total: Money
    synced_at: datetime


def map_to_channel(
    reservation: PmsReservation, channel: str, now: datetime | None = None
) -> ChannelReservation:
    """Map a validated PMS reservation to the channel format.

    ``now`` sets ``synced_at`` and defaults to the current UTC time.
    """
    guest = reservation.guest
    return ChannelReservation(
        channel=channel,
        booking_ref=reservation.reservation_id,
        hotel_code=reservation.property_id,
        status=CHANNEL_STATUS[reservation.status],
        guest_name=f"{guest.first_name} {guest.last_name}",
        check_in=reservation.arrival,
        check_out=reservation.departure,
        nights=(reservation.departure - reservation.arrival).days,
        room_code=reservation.room_type.upper(),
        occupancy=Occupancy(adults=reservation.adults, children=reservation.children),
        total=Money(
            amount=reservation.total_amount.quantize(CENT),
            currency=reservation.currency,
        ),
        synced_at=now or datetime.now(timezone.utc),
    )
