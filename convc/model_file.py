"""The bytes of an ONNX model file, read without the onnx package or the frontend: a warm compile
hashes them to find its cache entry and imports neither (about 1 s); a cold one parses the same
bytes (frontend/onnx/reader.py)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from convc.errors import ModelImportError

PROTOBUF_LIMIT = 2**31  # bytes: no serialized protobuf message can be this large


def read_file(path: Path) -> bytes:
    """The bytes of an ONNX file; ModelImportError naming it when it is missing, not a regular file
    (a FIFO would block), over protobuf's size limit (not read) or unreadable."""
    where = f"cannot read ONNX model {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelImportError(f"{where}: no such file") from None
    except (OSError, ValueError) as e:  # permissions, a name too long, a NUL in the name
        raise ModelImportError(f"{where}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelImportError(f"{where}: it is a directory, expected an .onnx file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise ModelImportError(f"{where}: not a regular file")
    if st.st_size >= PROTOBUF_LIMIT:  # protobuf cannot parse it: do not read it all first
        raise ModelImportError(f"{where}: {st.st_size} bytes, over protobuf's 2 GiB limit (models this large keep "
                               "their weights in external data files)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ModelImportError(f"{where}: {e.strerror or e}") from None
