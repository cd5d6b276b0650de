"""Read what W&B wrote offline: a run's `run-ID.wandb` file, record by record.

W&B's Python package no longer ships a reader (its Go core writes the file), so this is the
file's documented layout, read as it is: a 7-byte header (":W&B", magic, version), then
LevelDB-log blocks of 32 KiB whose records (crc32, length, type) carry serialized
`wandb_internal_pb2.Record` protobufs, long ones split FIRST/MIDDLE.../LAST.
"""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")
RECORD = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def chunks(path: Path):
    data = Path(path).read_bytes()
    ident, _magic, _version = HEADER.unpack_from(data)
    assert ident == b":W&B", f"{path} is not a W&B transaction log"
    pos, parts = HEADER.size, b""
    while pos + RECORD.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD.size:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = RECORD.unpack_from(data, pos)
        if kind == 0:  # zero-filled: the rest of the block is empty
            pos += left
            continue
        body = data[pos + RECORD.size : pos + RECORD.size + length]
        pos += RECORD.size + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            parts = body
        elif kind == MIDDLE:
            parts += body
        elif kind == LAST:
            yield parts + body
            parts = b""


def read_run(path: Path) -> dict:
    """{'run': Run record, 'config': {...}, 'summary': {...}, 'history': [{...}, ...]} of one .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"run": None, "config": {}, "summary": {}, "history": []}
    for chunk in chunks(path):
        record = pb.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update(_items(record.run.config.update))
        elif kind == "config":
            out["config"].update(_items(record.config.update))
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
        elif kind == "history":
            out["history"].append(_items(record.history.item))
    return out


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
