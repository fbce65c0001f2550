"""Errors of the memory core; each message says what was asked and what there was."""

from __future__ import annotations


class ArenaError(Exception):
    """Base of every error the memory core raises."""


class ClaimTooLargeError(ArenaError):
    """A claim that could never be granted: it is refused at once and blocks nobody."""


class OverdrawError(ArenaError):
    """A draw beyond what a reservation holds at that level."""


class ReleaseError(ArenaError):
    """Returning more than was taken, or returning the same thing twice."""


class ReservationTimeoutError(ArenaError, TimeoutError):
    """A reservation or allocation was not granted within its timeout."""


class LevelOrderError(ArenaError):
    """The level validator saw a wait that breaks the reserve discipline."""
