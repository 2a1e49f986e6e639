"""Shared helper: each benchmark owns one section of ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import datetime
import pathlib
import platform
import re

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
_HEADER = "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; rerun a script to refresh its section.\n"


def machine() -> str:
    """One line describing where the numbers were measured."""
    import os

    import tensorflow as tf

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, {datetime.date.today().isoformat()}")


def write_section(name: str, markdown: str) -> pathlib.Path:
    """Replaces (or appends) the section ``name`` of RESULTS.md with ``markdown``."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(RESULTS)
    return RESULTS
