"""Exceptions raised by mpitrain.

Every error that reaches a user is an :class:`MpitrainError`.  Errors found
on some ranks only are combined by :func:`mpitrain.comm.collective_check` and
raised on *every* rank as a :class:`DistributedError`, so no rank is left
waiting in a collective that the others will never reach.
"""

from __future__ import annotations

__all__ = [
    "MpitrainError",
    "UsageError",
    "DistributedError",
    "DistributedValueError",
    "DistributedTypeError",
    "DistributedMemoryError",
    "format_ranks",
]


class MpitrainError(Exception):
    """An error whose message is meant for the user (no traceback needed)."""


class UsageError(MpitrainError):
    """Options that do not fit together or do not apply (seen alike by every rank)."""


class DistributedError(MpitrainError, RuntimeError):
    """An error found on some ranks and raised identically on all of them.

    Parameters
    ----------
    message : str
        The combined message, naming the failing ranks.
    failures : dict of int to (str, str)
        For each failing rank, the exception type name and its message.
    """

    def __init__(self, message: str, failures: dict[int, tuple[str, str]]):
        super().__init__(message)
        self.failures = failures

    @property
    def ranks(self) -> list[int]:
        """The ranks on which the error was found, sorted."""
        return sorted(self.failures)


class DistributedValueError(DistributedError, ValueError):
    """A :class:`DistributedError` where every failing rank raised ValueError."""


class DistributedTypeError(DistributedError, TypeError):
    """A :class:`DistributedError` where every failing rank raised TypeError."""


class DistributedMemoryError(DistributedError, MemoryError):
    """A :class:`DistributedError` where some rank ran out of memory."""


def format_ranks(ranks: list[int], size: int) -> str:
    """Say which ranks, compactly: ``'rank 2'``, ``'ranks 0-3'``, ``'all 4 ranks'``."""
    ranks = sorted(ranks)
    if len(ranks) == size and size > 1:
        return f"all {size} ranks"
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    spans: list[str] = []
    start = prev = ranks[0]
    for r in ranks[1:] + [None]:  # type: ignore[list-item]
        if r is not None and r == prev + 1:
            prev = r
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return "ranks " + ",".join(spans)
