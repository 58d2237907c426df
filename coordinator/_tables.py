"""Plain-text tables for terminals (the CLI, chaos programs and benchmarks print them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def text_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Rows of equal keys as aligned columns, with a header line and a rule."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [[str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [" | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True)) for cs in cells]
    return "\n".join(line.rstrip() for line in lines)
