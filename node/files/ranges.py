"""Byte ranges a file transfer holds: sorted, disjoint, half-open ``[start, end)``.

The receiver of a file keeps one :class:`RangeSet` of what it has written; what is missing
below the file's size is what it asks for again (docs/ICD.md §5.9).  Adjacent ranges merge,
so a file received in order is one range however many chunks it took.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class RangeSet:
    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> int:
        """Hold ``[start, end)`` too; returns how many of its bytes were new."""
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return 0
        starts, ends = self._starts, self._ends
        # every range that touches or overlaps [start, end) merges with it
        lo = bisect.bisect_left(ends, start)
        hi = bisect.bisect_right(starts, end)
        held = sum(max(0, min(e, end) - max(s, start)) for s, e in zip(starts[lo:hi], ends[lo:hi], strict=True))
        merged_start = min(start, starts[lo]) if lo < hi else start
        merged_end = max(end, ends[hi - 1]) if lo < hi else end
        starts[lo:hi] = [merged_start]
        ends[lo:hi] = [merged_end]
        return (end - start) - held

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    @property
    def total(self) -> int:
        """Bytes held."""
        return sum(e - s for s, e in self)

    @property
    def contiguous(self) -> int:
        """End of the run of bytes held from offset 0 (0: not even the first byte)."""
        return self._ends[0] if self._starts and self._starts[0] == 0 else 0

    @property
    def high(self) -> int:
        """One past the highest byte held."""
        return self._ends[-1] if self._ends else 0

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def missing(self, size: int, *, limit: int | None = None) -> list[tuple[int, int]]:
        """The ranges below ``size`` not held, in order (at most ``limit`` of them)."""
        gaps: list[tuple[int, int]] = []
        at = 0
        for s, e in self:
            if s >= size:
                break
            if s > at:
                gaps.append((at, s))
            at = max(at, e)
            if limit is not None and len(gaps) >= limit:
                return gaps
        if at < size and (limit is None or len(gaps) < limit):
            gaps.append((at, size))
        return gaps

    def to_wire(self) -> list[list[int]]:
        return [[s, e] for s, e in self]

    @classmethod
    def from_wire(cls, value: Iterable[Iterable[int]]) -> RangeSet:
        out = cls()
        for pair in value:
            s, e = pair
            out.add(int(s), int(e))
        return out
