"""The zoo tests write RESULTS.md sections with the benchmarks' own writer."""

import importlib.util
import pathlib

BENCHMARKS = pathlib.Path(__file__).parents[2] / "benchmarks"


def results_writer():
    """``benchmarks/_results.py`` as a module (``write_section``, ``stamp``, ``commit``)."""
    spec = importlib.util.spec_from_file_location("_results", BENCHMARKS / "_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
