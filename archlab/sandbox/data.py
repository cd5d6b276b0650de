"""Training data: a corpus that ships with archlab (or the user's own), a byte-level
tokenizer, a fixed train/validation split and deterministic batches.

Byte-level tokens keep the vocabulary at 256 and make bits/byte exact (one token is one
byte). The split takes the last 10% of every document for validation, so both prose and
code are in both halves and a single-file corpus still splits.
"""

import gzip
from dataclasses import dataclass
from pathlib import Path

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
    train: torch.Tensor  # uint8 byte ids
    val: torch.Tensor

    @classmethod
    def load(cls, path: str | None = None) -> "Corpus":
        train, val = [], []
        for doc in read_documents(path):
            cut = int(len(doc) * (1 - VAL_FRACTION))
            train.append(doc[:cut])
            val.append(doc[cut:])
        corpus = cls(_as_tensor(b"\n".join(train)), _as_tensor(b"\n".join(val)))
        if len(corpus.val) < 2 * 1024:
            raise DataError(f"corpus too small: {len(corpus.val)} validation bytes (need at least 20 kB of text)")
        return corpus

    def train_batch(self, batch: int, seq: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.train) - seq - 1, (batch,), generator=gen)
        return _windows(self.train, starts, seq)

    def val_batches(self, windows: int, batch: int, seq: int):
        """A fixed set of evenly spaced validation windows: every candidate sees the same bytes."""
        windows = min(windows, (len(self.val) - 1) // seq)
        starts = torch.linspace(0, len(self.val) - seq - 1, windows).long()
        for i in range(0, windows, batch):
            yield _windows(self.val, starts[i : i + batch], seq)


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(seq + 1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]
