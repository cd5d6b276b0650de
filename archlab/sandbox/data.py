"""Training data: a corpus that ships with archlab (or the user's own), a byte-level
tokenizer, a fixed train/validation split and the batches. Trusted side only (numpy, no
torch): the scorer draws every batch and sends it to a model server, which never holds a
data file.

Byte-level tokens keep the vocabulary at 256 and make bits/byte exact (one token is one
byte). The built-in corpus is Python's reference documentation and standard-library
sources; its validation text is the last 35% of every documentation topic only, because the
sources are on every Python installation's disk, where a model server could look them up.
The documentation is not: the sandbox hides the standard library's `pydoc_data`. A user's
corpus holds out the last 10% of every document (and is never visible inside the sandbox).
Validation windows do not overlap and are separated by gaps of at least their length, so no
window reveals the text that follows another.
"""

from __future__ import annotations

import functools
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN = Path(__file__).parent / "corpus" / "pystdlib.txt.gz"
VOCAB_SIZE = 256
VAL_FRACTION = 0.1  # of every document of a user's corpus
DOC_VAL_FRACTION = 0.35  # of every documentation topic of the built-in corpus (its sources only train)
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text", ""}


class DataError(ValueError):
    pass


def read_documents(path: str | None) -> list[bytes]:
    """The built-in corpus (documents separated by its header lines) or the user's text."""
    if path is None:
        text = gzip.decompress(BUILTIN.read_bytes())
        # Documents are joined by a blank line before their header line (tools/build_corpus.py). Only the
        # two header forms start a document: sources have comment lines "### ..." after blank lines too.
        return [doc for doc in re.split(rb"\n\n(?=### (?:doc|file): )", text) if doc]
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
    train: np.ndarray  # uint8 byte ids
    val: np.ndarray

    @classmethod
    def load(cls, path: str | None = None) -> "Corpus":
        train_bytes, val_bytes = split(path)
        return cls(np.frombuffer(train_bytes, dtype=np.uint8), np.frombuffer(val_bytes, dtype=np.uint8))

    def train_batch(self, batch: int, seq: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        starts = rng.integers(0, len(self.train) - seq - 1, batch)
        return _windows(self.train, starts, seq)

    def val_windows(self, count: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed set of `count` validation windows (fewer if the text is short), every candidate
        the same bytes; consecutive windows are at least `seq` bytes apart."""
        count = max(1, min(count, (len(self.val) - 1) // (2 * seq)))
        starts = np.linspace(0, len(self.val) - seq - 1, count).astype(np.int64)
        return _windows(self.val, starts, seq)


def split(path: str | None = None) -> tuple[bytes, bytes]:
    """(training bytes, validation bytes)."""
    return _split(path, _stamp(path))


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
        if path is None and doc.startswith(b"### file:"):  # a standard-library source: training only
            train_parts.append(doc)
            continue
        cut = int(len(doc) * (1 - (VAL_FRACTION if path is not None else DOC_VAL_FRACTION)))
        train_parts.append(doc[:cut])
        val_parts.append(doc[cut:])
    train, val = b"\n".join(train_parts), b"\n".join(val_parts)
    if len(val) < 2 * 1024:
        raise DataError(f"corpus too small: {len(val)} validation bytes (need at least 20 kB of text)")
    return train, val


def _windows(tokens: np.ndarray, starts: np.ndarray, seq: int) -> tuple[np.ndarray, np.ndarray]:
    chunk = tokens[starts[:, None] + np.arange(seq + 1)].astype(np.int64)
    return chunk[:, :-1], chunk[:, 1:]


# -- synthetic probes ---------------------------------------------------------------------------
# Token layout inside the 256-token byte vocabulary, shared by every probe: 0 is noise/padding,
# 1 the selective-copy separator, keys, values and copy symbols live in disjoint ranges so a
# probe model trained on a mixture of tasks can tell them apart from the tokens alone.
NOISE, SEPARATOR = 0, 1
KEY_BASE, VALUE_BASE, COPY_BASE = 64, 128, 192
IGNORE = -100  # target value that the loss and the accuracy skip


def mqar_batch(
    batch: int,
    pairs: int,
    seq: int,
    rng: np.random.Generator,
    *,
    keys: int = 64,
    values: int = 64,
    queries: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-query associative recall (Zoology's MQAR, simplified): `pairs` key-value pairs,
    then the keys again in a random order, each followed by its value. The target is the value
    at every query position and IGNORE elsewhere, so only recall is scored. Keys are distinct
    within a sequence; values are drawn with replacement. Padded with noise to `seq`."""
    queries = min(pairs, queries or pairs)
    need = 2 * pairs + 2 * queries
    if need > seq or pairs > keys:
        raise ValueError(f"mqar: {pairs} pairs and {queries} queries need {need} > {seq} tokens or too few keys")
    k = rng.random((batch, keys)).argsort(-1)[:, :pairs] + KEY_BASE
    v = rng.integers(0, values, (batch, pairs)) + VALUE_BASE
    order = rng.random((batch, pairs)).argsort(-1)[:, :queries]
    qk, qv = np.take_along_axis(k, order, 1), np.take_along_axis(v, order, 1)
    inputs = np.full((batch, seq), NOISE, dtype=np.int64)
    targets = np.full((batch, seq), IGNORE, dtype=np.int64)
    inputs[:, 0 : 2 * pairs : 2], inputs[:, 1 : 2 * pairs : 2] = k, v
    start = 2 * pairs
    inputs[:, start : start + 2 * queries : 2], inputs[:, start + 1 : start + 2 * queries : 2] = qk, qv
    targets[:, start : start + 2 * queries : 2] = qv
    return inputs, targets


def selective_copy_batch(
    batch: int, tokens: int, region: int, seq: int, rng: np.random.Generator, *, symbols: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Selective copying (Mamba's synthetic task): `tokens` symbols scattered at random places
    in a noise region of length `region`, then a separator, then the symbols in order (teacher
    forced). The target is the next symbol from the separator on; IGNORE elsewhere."""
    need = region + 1 + tokens
    if need > seq or tokens > region:
        raise ValueError(f"selective copy: {tokens} symbols in a {region}-token region need {need} > {seq} tokens")
    places = np.sort(rng.random((batch, region)).argsort(-1)[:, :tokens], -1)
    data = rng.integers(0, symbols, (batch, tokens)) + COPY_BASE
    inputs = np.full((batch, seq), NOISE, dtype=np.int64)
    targets = np.full((batch, seq), IGNORE, dtype=np.int64)
    np.put_along_axis(inputs, places, data, 1)
    inputs[:, region] = SEPARATOR
    inputs[:, region + 1 : region + tokens] = data[:, :-1]
    targets[:, region : region + tokens] = data
    return inputs, targets


def probe_batch(p, batch: int, rng: np.random.Generator, task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A batch of the probe mixture (tiers.Probes `p`), or of one task: 'mqar{n}' / 'copy'."""
    if task is not None:
        if task == "copy":
            return selective_copy_batch(batch, p.copy_tokens, p.seq_len - p.copy_tokens - 1, p.seq_len, rng)
        return mqar_batch(batch, int(task[4:]), p.seq_len, rng, keys=p.keys, values=p.values)
    tasks = probe_tasks(p)
    share = max(1, batch // len(tasks))
    parts = [
        probe_batch(p, share if i < len(tasks) - 1 else batch - share * (len(tasks) - 1), rng, t)
        for i, t in enumerate(tasks)
    ]
    return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])


def probe_tasks(p) -> list[str]:
    return [f"mqar{n}" for n in p.pairs] + ["copy"]
