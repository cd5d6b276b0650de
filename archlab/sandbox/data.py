"""Training data: a corpus that ships with archlab (or the user's own), a byte-level
tokenizer, a fixed train/validation split and deterministic batches.

Byte-level tokens keep the vocabulary at 256 and make bits/byte exact (one token is one
byte). The split takes the last 10% of every document for validation, so both prose and
code are in both halves and a single-file corpus still splits.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made: the sandbox's parent splits text without it
    import torch

BUILTIN = Path(__file__).parent / "corpus" / "pystdlib.txt.gz"
VOCAB_SIZE = 256
VAL_FRACTION = 0.1
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text", ""}


class DataError(ValueError):
    pass


def read_documents(path: str | None) -> list[bytes]:
    """The built-in corpus (documents separated by its header lines) or the user's text."""
    if path is None:
        text = gzip.decompress(BUILTIN.read_bytes())
        return [b"### " + doc for doc in text.split(b"\n\n### ") if doc]
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    else:
        raise DataError(f"data path {path} does not exist")
    docs = [p.read_bytes() for p in files]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"data path {path} holds no text files (.txt, .md, .rst, .py)")
    return docs


@dataclass
class Corpus:
    train: torch.Tensor | None  # uint8 byte ids; None in the evaluation process
    val: torch.Tensor | None  # None in the training process

    @classmethod
    def load(cls, path: str | None = None, *, train: bool = True) -> "Corpus":
        """The corpus split 90/10 per document; train=False keeps only the validation split."""
        train_bytes, val_bytes = split(path)
        return cls(_as_tensor(train_bytes) if train else None, _as_tensor(val_bytes))

    @classmethod
    def from_train_file(cls, path: str | Path) -> "Corpus":
        return cls(_as_tensor(Path(path).read_bytes()), None)

    def train_batch(self, batch: int, seq: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        starts = torch.randint(0, len(self.train) - seq - 1, (batch,), generator=gen)
        return _windows(self.train, starts, seq)

    def val_batches(self, windows: int, batch: int, seq: int):
        """A fixed set of evenly spaced validation windows: every candidate sees the same bytes."""
        import torch

        windows = min(windows, (len(self.val) - 1) // seq)
        starts = torch.linspace(0, len(self.val) - seq - 1, windows).long()
        for i in range(0, windows, batch):
            yield _windows(self.val, starts[i : i + batch], seq)


def split(path: str | None = None) -> tuple[bytes, bytes]:
    """(training bytes, validation bytes): the last 10% of every document is validation text."""
    return _split(path, _stamp(path))


def write_train_split(path: str | None, out: str | Path) -> None:
    """The training split as raw bytes: all a training process gets (it never sees validation text)."""
    Path(out).write_bytes(split(path)[0])


def _stamp(path: str | None):
    """What makes a cached split stale: the files' names, sizes and modification times."""
    if path is None:
        return None
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=2)
def _split(path: str | None, stamp) -> tuple[bytes, bytes]:
    train_parts, val_parts = [], []
    for doc in read_documents(path):
        cut = int(len(doc) * (1 - VAL_FRACTION))
        train_parts.append(doc[:cut])
        val_parts.append(doc[cut:])
    train, val = b"\n".join(train_parts), b"\n".join(val_parts)
    if len(val) < 2 * 1024:
        raise DataError(f"corpus too small: {len(val)} validation bytes (need at least 20 kB of text)")
    return train, val


def _as_tensor(data: bytes) -> torch.Tensor:
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    idx = starts[:, None] + torch.arange(seq + 1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


# -- synthetic probes ---------------------------------------------------------------------------
# Token layout inside the 256-token byte vocabulary, shared by every probe: 0 is noise/padding,
# 1 the selective-copy separator, keys, values and copy symbols live in disjoint ranges so a
# probe model trained on a mixture of tasks can tell them apart from the tokens alone.
NOISE, SEPARATOR = 0, 1
KEY_BASE, VALUE_BASE, COPY_BASE = 64, 128, 192
IGNORE = -100  # target value that the loss and the accuracy skip


def mqar_batch(batch: int, pairs: int, seq: int, gen: torch.Generator, *, keys: int = 64, values: int = 64,
               queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall (Zoology's MQAR, simplified): `pairs` key-value pairs,
    then the keys again in a random order, each followed by its value. The target is the value
    at every query position and IGNORE elsewhere, so only recall is scored. Keys are distinct
    within a sequence; values are drawn with replacement. Padded with noise to `seq`."""
    import torch

    queries = min(pairs, queries or pairs)
    need = 2 * pairs + 2 * queries
    if need > seq or pairs > keys:
        raise ValueError(f"mqar: {pairs} pairs and {queries} queries need {need} > {seq} tokens or too few keys")
    k = torch.rand(batch, keys, generator=gen).argsort(-1)[:, :pairs] + KEY_BASE
    v = torch.randint(0, values, (batch, pairs), generator=gen) + VALUE_BASE
    order = torch.rand(batch, pairs, generator=gen).argsort(-1)[:, :queries]
    qk, qv = k.gather(1, order), v.gather(1, order)
    inputs = torch.full((batch, seq), NOISE, dtype=torch.long)
    targets = torch.full((batch, seq), IGNORE, dtype=torch.long)
    inputs[:, 0 : 2 * pairs : 2], inputs[:, 1 : 2 * pairs : 2] = k, v
    start = 2 * pairs
    inputs[:, start : start + 2 * queries : 2], inputs[:, start + 1 : start + 2 * queries : 2] = qk, qv
    targets[:, start : start + 2 * queries : 2] = qv
    return inputs, targets


def selective_copy_batch(batch: int, tokens: int, region: int, seq: int, gen: torch.Generator, *,
                         symbols: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective copying (Mamba's synthetic task): `tokens` symbols scattered at random places
    in a noise region of length `region`, then a separator, then the symbols in order (teacher
    forced). The target is the next symbol from the separator on; IGNORE elsewhere."""
    import torch

    need = region + 1 + tokens
    if need > seq or tokens > region:
        raise ValueError(f"selective copy: {tokens} symbols in a {region}-token region need {need} > {seq} tokens")
    places = torch.rand(batch, region, generator=gen).argsort(-1)[:, :tokens].sort(-1).values
    data = torch.randint(0, symbols, (batch, tokens), generator=gen) + COPY_BASE
    inputs = torch.full((batch, seq), NOISE, dtype=torch.long)
    targets = torch.full((batch, seq), IGNORE, dtype=torch.long)
    inputs.scatter_(1, places, data)
    inputs[:, region] = SEPARATOR
    inputs[:, region + 1 : region + tokens] = data[:, :-1]
    targets[:, region : region + tokens] = data
    return inputs, targets
