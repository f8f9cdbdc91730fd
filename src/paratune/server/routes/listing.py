"""Paging through the adapters a server can serve: OpenAI's list pagination (``limit``, ``after``; the answer
says ``has_more``, ``first_id``, ``last_id``), over every adapter that exists (an adapter folder holds thousands),
each with where it is now (``resident``: "device", "host" or null)."""

from __future__ import annotations

import bisect

from ..errors import ApiError

MAX_LIMIT = 10_000


def page(names: list[str], limit: int | None, after: str | None, default: int | None) -> tuple[list[str], bool]:
    """The sorted ``names`` after ``after`` (exclusive), at most ``limit`` (``default`` when None; None: all)."""
    limit = default if limit is None else limit
    check_limit(limit)
    start = bisect.bisect_right(names, after) if after is not None else 0
    chosen = names[start:] if limit is None else names[start: start + limit]
    return chosen, start + len(chosen) < len(names)


def check_limit(limit: int | None) -> None:
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be between 1 and {MAX_LIMIT}, got {limit}", param="limit")


def listed(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
