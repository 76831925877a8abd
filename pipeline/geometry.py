"""Plane geometry for zones and lines, in frame-fraction coordinates (x right, y down)."""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]


def point_in_polygon(point: Point, polygon: Sequence[Point]) -> bool:
    """Return True when ``point`` lies inside ``polygon`` (even-odd rule; points on an edge may go either way)."""
    x, y = point
    inside = False
    count = len(polygon)
    for index in range(count):
        x1, y1 = polygon[index]
        x2, y2 = polygon[(index + 1) % count]
        if (y1 > y) != (y2 > y):
            crossing_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < crossing_x:
                inside = not inside
    return inside


def polygon_area(polygon: Sequence[Point]) -> float:
    """Return the area enclosed by ``polygon`` (shoelace formula), whatever the order of its vertices."""
    count = len(polygon)
    twice = sum(
        polygon[index][0] * polygon[(index + 1) % count][1]
        - polygon[(index + 1) % count][0] * polygon[index][1]
        for index in range(count)
    )
    return abs(twice) / 2


def polygon_crosses_itself(polygon: Sequence[Point]) -> bool:
    """Return True when two edges that do not share a vertex cross each other."""
    count = len(polygon)
    edges = [(polygon[index], polygon[(index + 1) % count]) for index in range(count)]
    for first in range(count):
        for second in range(first + 2, count):
            if first == 0 and second == count - 1:
                continue  # the first and last edges share the first vertex
            (a1, a2), (b1, b2) = edges[first], edges[second]
            if (
                side_of_line(a1, b1, b2) * side_of_line(a2, b1, b2) < 0
                and side_of_line(b1, a1, a2) * side_of_line(b2, a1, a2) < 0
            ):
                return True
    return False


def side_of_line(point: Point, start: Point, end: Point) -> float:
    """Return the cross product sign of ``point`` against the directed line ``start -> end``.

    With y pointing down, a positive value means the point is on the right of someone
    standing on ``start`` and facing ``end``; negative means left; zero means on the line.
    """
    return (end[0] - start[0]) * (point[1] - start[1]) - (end[1] - start[1]) * (point[0] - start[0])


def segments_intersect(a1: Point, a2: Point, b1: Point, b2: Point) -> bool:
    """Return True when the step ``a1 -> a2`` crosses from one side of segment ``b1-b2`` to the other.

    A point exactly on the line counts as being on its left, so a step onto the line
    and the next step off it make one crossing, not zero.
    """
    d1 = side_of_line(a1, b1, b2)
    d2 = side_of_line(a2, b1, b2)
    d3 = side_of_line(b1, a1, a2)
    d4 = side_of_line(b2, a1, a2)
    return (d1 > 0) != (d2 > 0) and d3 * d4 <= 0
