"""Knowledge for the agents: a curated cognition base plus the run's experience.

    from archlab.knowledge import load_entries, KnowledgeIndex, query_for_node
    index = KnowledgeIndex(load_entries(user_dirs), experiences=[("node-12", analysis), ...])
    hits = index.search(query_for_node(node_metrics, root_metrics, node_analysis), k=5)

The CLI (`archlab knowledge list|search|show`) lives in `archlab.knowledge.cli`.
"""

from .base import BUILTIN_DIR, OPERATORS, Entry, KnowledgeError, load_entries, load_file
from .retrieval import Hit, KnowledgeIndex, embeddings_available, fts_query, query_for_node

__all__ = [
    "BUILTIN_DIR",
    "OPERATORS",
    "Entry",
    "Hit",
    "KnowledgeError",
    "KnowledgeIndex",
    "embeddings_available",
    "fts_query",
    "load_entries",
    "load_file",
    "query_for_node",
]
