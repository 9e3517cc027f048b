"""Atomic file writes: a crash or a concurrent reader never sees a half-written result.

Every file the package writes (results, plots, calibrations, embedding caches) goes through
here: a temp file in the same folder, then ``os.replace``. Permissions are the usual 0644, not
``mkstemp``'s 0600, because results and caches are meant to be shared.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as tmp_file:
            tmp_file.write(data)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(figure, path: Path, dpi: int = 100) -> Path:
    """Render a matplotlib figure to PNG and write it atomically (dpi 100: the figures are sized in
    inches for reading on a screen, 1,300-1,800 px wide; rendering time grows with dpi squared)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
