"""Atomic file writes: readers (and a run killed mid-write) never see a half-written file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# mkstemp creates 0600 files; give the result the permissions a plain open() would (0666 minus the umask), so a
# model or bag written by one user stays readable by the robot's service user.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb', suffix: str = '.tmp',
                 encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file next to `path` (parents created); on success fsync it and rename it over `path`.

    On an exception the temp file is removed and `path` is left as it was. `suffix` matters to writers that pick
    the format from the file name (e.g. matplotlib: '.tmp.png').
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=suffix, dir=path.parent)
    try:
        os.fchmod(handle, _FILE_MODE)
        with os.fdopen(handle, mode, encoding=encoding) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, 'w', encoding='utf-8') as stream:
        stream.write(text)
    return Path(path)
