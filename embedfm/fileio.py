"""File I/O: atomic writes of every file embedfm writes (checkpoints, configs, histories, reports, figures,
indexes, tune outputs), and the guarded readers of the JSON and npz files it reads back (`read_json`,
`read_npz`), which turn any damaged or hostile file into one line.

A file is written to a temporary file in the same dir, flushed, fsynced and `os.replace`d into place, so a
crash leaves either the old file or the new one, never half of one. A write that fails (disk full, read-only
file system, no permission) removes its temporary file and raises `StorageError`, one line naming the file; the
previous file stays whole. Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from embedfm.errors import StorageError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as e:
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        raise StorageError(f"cannot write {path}: {e.strerror or e}{kept}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_csv(path: str | Path, rows: list[dict] | list[list], header: list[str] | None = None) -> None:
    """Rows as dicts (their keys are the header) or as lists under `header`."""
    buf = io.StringIO()
    if rows and isinstance(rows[0], dict):
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    elif header is not None or rows:
        w = csv.writer(buf)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure to PNG, written like every other file here (never half a PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str | Path, arrays: dict) -> None:
    """numpy arrays to an uncompressed .npz (float embeddings barely compress, and compressing costs seconds)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path, fix: str = "") -> object:
    """The JSON document in `path`, or one `EmbedfmError` line naming the file (unreadable, not UTF-8, not JSON,
    nested too deep) and, when given, how to `fix` it."""
    from embedfm.errors import EmbedfmError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not UTF-8, not JSON; RecursionError: too deep
        raise EmbedfmError(f"{path}: unreadable ({_first_line(e)})" + (f"; {fix}" if fix else "")) from None


def read_npz(
    path: str | Path, keys: tuple[str, ...], fix: str = "", what: str = "", optional: tuple[str, ...] = ()
) -> dict:
    """The named arrays of an .npz archive, read without pickles and without trusting its headers: every array's
    declared size must fit the bytes its archive member holds before anything is allocated, object arrays are
    refused, and any damage (zip, compression, npy header, truncation) is one `EmbedfmError` line. `optional`
    arrays are read where the archive has them."""
    import zipfile

    import numpy as np

    from embedfm.errors import EmbedfmError

    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for key in (*keys, *(k for k in optional if f"{k}.npy" in zf.namelist())):
                if f"{key}.npy" not in zf.namelist():
                    raise EmbedfmError(f"{path}: lacks {key}" + (f"; {fix}" if fix else ""))
                info = zf.getinfo(f"{key}.npy")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                        version, np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f)
                    if dtype.hasobject:
                        raise ValueError(f"{key} holds Python objects")
                    if int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size:
                        raise ValueError(f"{key}'s header claims more data than the archive holds")
                with zf.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
    except EmbedfmError:
        raise
    except Exception as e:  # zipfile, zlib/lzma, npy format, OS and memory errors all mean the same: unusable
        unreadable = f"unreadable {what}" if what else "unreadable"
        raise EmbedfmError(f"{path}: {unreadable} ({_first_line(e)})" + (f"; {fix}" if fix else "")) from None
    return out


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__
