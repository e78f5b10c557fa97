"""Timestamps as the API writes them: ISO-8601 UTC with milliseconds and a Z."""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    """The current time, formatted like the API's timestamps."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An API timestamp (or any ISO-8601 time) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
