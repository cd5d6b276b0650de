"""Messages between the trusted scorer and a candidate's model server.

A message is a JSON header and, optionally, named arrays serialised with safetensors (never
pickle: reading a message runs no code of the sender's). On a pipe each message is framed as
`MAGIC, header length (u32), arrays length (u64), header, arrays`. Both sides use this module;
the scorer reads arrays with numpy, the server with torch (`torch.from_numpy`, no copy), so the
trusted side never imports torch. Whatever the candidate's side sends is checked here for
framing and size and by the scorer for shape, dtype and finiteness: a malformed reply is a
`crash` rejection of that candidate, never a fault of the run.
"""

import json
import os
import struct

import numpy as np
from safetensors.numpy import load as _load_arrays
from safetensors.numpy import save as _save_arrays

MAGIC = b"ALW1"
_FRAME = struct.Struct("<4sIQ")
MAX_HEADER = 1 << 20


class WireError(Exception):
    """The other side sent something that is not a well-formed message (or nothing at all)."""


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    head = json.dumps(header, allow_nan=False).encode()
    blob = _save_arrays({k: np.ascontiguousarray(v) for k, v in arrays.items()}) if arrays else b""
    return _FRAME.pack(MAGIC, len(head), len(blob)) + head + blob


def send(fd: int, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    data = memoryview(encode(header, arrays))
    while data:
        data = data[os.write(fd, data) :]


def read_exactly(fd: int, n: int, wait=None) -> bytes:
    """n bytes from fd; `wait(fd)` (if given) blocks until fd is readable or raises."""
    parts, got = [], 0
    while got < n:
        if wait is not None:
            wait(fd)
        chunk = os.read(fd, min(n - got, 1 << 22))
        if not chunk:
            raise WireError(f"the pipe closed after {got} of {n} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def receive(fd: int, max_bytes: int, wait=None) -> tuple[dict, dict[str, np.ndarray]]:
    """One message: (header, arrays). Raises WireError for anything malformed or too large."""
    magic, head_len, blob_len = _FRAME.unpack(read_exactly(fd, _FRAME.size, wait))
    if magic != MAGIC or head_len > MAX_HEADER or blob_len > max_bytes:
        raise WireError(f"not a message (magic {magic!r}, header {head_len} bytes, arrays {blob_len} bytes)")
    try:
        header = json.loads(read_exactly(fd, head_len, wait))
    except ValueError as e:
        raise WireError(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError("the header is not a JSON object")
    arrays = {}
    if blob_len:
        try:
            arrays = _load_arrays(read_exactly(fd, blob_len, wait))
        except WireError:
            raise
        except Exception as e:  # safetensors raises its own error types for a damaged buffer
            raise WireError(f"the arrays are not safetensors: {type(e).__name__}: {e}"[:300]) from None
    return header, arrays
