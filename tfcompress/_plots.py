"""matplotlib, when installed, for the PNG plots of the demo report and sensitivity scans."""

from __future__ import annotations

import pathlib
from typing import Any, Optional

from tfcompress._io import PathLike, atomic_file


def pyplot() -> Optional[Any]:
    """matplotlib's pyplot on the file-only Agg backend, or ``None`` if not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: PathLike, dpi: int = 110) -> pathlib.Path:
    """Lays out ``figure``, writes it to ``path`` as PNG (atomically) and closes it."""
    import matplotlib.pyplot as plt

    try:
        figure.tight_layout()
        with atomic_file(path) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    return pathlib.Path(path)
