"""Shared helper: each benchmark owns one section of ``benchmarks/RESULTS.md``.

Every section records where and from what its numbers came: :func:`stamp` gives one line
(date, commit, machine) and :func:`commit` the commit alone, for per-row records.
:func:`write_section` may be called by several benchmark scripts at the same time: each
read-modify-write of RESULTS.md holds an exclusive lock.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import pathlib
import platform
import re
import subprocess
import tempfile

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
_ROOT = RESULTS.parents[1]
_HEADER = ("# Benchmark results\n\n"
           "Written by the scripts in `benchmarks/`; rerun a script to refresh its section.\n")


def host() -> str:
    import tensorflow as tf

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}")


def today() -> str:
    """The date as recorded in RESULTS.md (ISO, local time of the machine)."""
    return datetime.date.today().isoformat()


def machine() -> str:
    """One line describing where the numbers were measured (ends with the date)."""
    return f"{host()}, {today()}"


def _git(*args: str) -> str:
    done = subprocess.run(["git", "--no-optional-locks", *args], cwd=_ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


#: Files the benchmarks themselves write: a run that rewrites them is still a clean run.
OUTPUTS = ("benchmarks/RESULTS.md", "benchmarks/zoo.json", "benchmarks/zoo_keras3.json",
           "benchmarks/zoo_patterns.json")


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when tracked files other than the benchmarks'
    own outputs (:data:`OUTPUTS`) differ from it.

    ``unknown`` outside a git checkout. Untracked files do not count as dirty.
    """
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    excluded = [f":(exclude){path}" for path in OUTPUTS]
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    return head + ("+dirty" if dirty else "")


def stamp() -> str:
    """One line for a section header: date, commit and machine of this run."""
    return f"Measured {today()} on commit `{commit()}`, {host()}"


def write_section(name: str, markdown: str) -> pathlib.Path:
    """Replaces (or appends) the section ``name`` of RESULTS.md with ``markdown``.

    Safe against concurrent writers of other sections: the read-modify-write holds an
    exclusive ``flock`` on the ``benchmarks/`` folder (a stable inode, unlike RESULTS.md,
    which is replaced atomically through a uniquely named temporary file).
    """
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    folder = os.open(RESULTS.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        text = RESULTS.read_text() if RESULTS.exists() else _HEADER
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        handle, tmp = tempfile.mkstemp(prefix=".RESULTS.", suffix=".tmp", dir=RESULTS.parent)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, RESULTS)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        os.close(folder)  # closing the descriptor releases the lock
    return RESULTS
