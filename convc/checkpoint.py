"""The Trainer's checkpoint file: a .npz holding a JSON header (format, version, settings, the
arrays' names, shapes and dtypes) and the arrays "a0", "a1", ... in that order. No pickled
objects: a checkpoint from elsewhere is data, read with allow_pickle=False."""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from convc.errors import InputError

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "convc-trainer-checkpoint", 1
_HEADER_KEY = "header"  # the JSON header's entry in the .npz; the arrays are "a0", "a1", ...


class CheckpointError(InputError):
    """A checkpoint file is damaged, or was saved by a Trainer of another model or setup (the message
    names what differs); the Trainer's state is unchanged."""


def identity() -> dict[str, Any]:
    """The header fields that say what the file is."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}


def write(path: str | os.PathLike, header: dict[str, Any], arrays: list[tuple[str, np.ndarray]]) -> None:
    """Write the header (with the arrays' names, shapes and dtypes added) and the arrays, atomically."""
    header = {**header, "arrays": [[n, list(a.shape), a.dtype.str] for n, a in arrays]}
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name without it
            np.savez(f, **{_HEADER_KEY: np.array(json.dumps(header))},
                     **{f"a{i}": a for i, (_, a) in enumerate(arrays)})
        os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint as it was
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays by name) of a checkpoint; CheckpointError naming the file when it is missing,
    damaged, of another format or version, or its arrays disagree with its header."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z[_HEADER_KEY][()]))
            if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{path}: not a convc Trainer checkpoint (no {CHECKPOINT_FORMAT} header)")
            if header.get("version") != CHECKPOINT_VERSION:
                raise CheckpointError(f"{path}: checkpoint format version {header.get('version')!r}, this convc "
                                      f"reads version {CHECKPOINT_VERSION}")
            arrays = {}
            for i, (name, shape, dtype) in enumerate(header["arrays"]):
                a = z[f"a{i}"]
                if list(a.shape) != shape or a.dtype.str != dtype:
                    raise CheckpointError(f"{path}: array {name!r} is {a.dtype} {a.shape}, its header says "
                                          f"{np.dtype(dtype)} {tuple(shape)}: the file is damaged")
                arrays[name] = a
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: damaged or not a convc checkpoint ({type(e).__name__}: {e})") from None
    return header, arrays
