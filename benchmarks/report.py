"""Writing benchmark results into docs/benchmarks.md: one section per benchmark, replaced in place."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """Cores, CPU model, memory and Python version of this machine, for the record."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kb = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return f"{os.cpu_count()} cores ({cpu}), {memory_kb / 2**20:.0f} GiB RAM, Python {platform.python_version()}"


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace the section that starts with `heading` (up to the next `## `), or append it."""
    section = f"{heading}\n\n{body.strip()}\n"
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    if heading in existing:
        before, _, rest = existing.partition(heading)
        after = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        existing = before + section + ("\n" + after if after else "")
    else:
        existing = existing.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(existing)
