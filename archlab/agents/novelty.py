"""The novelty gate: is a proposal too close to something already tried?

A proposal is its motivation plus the lines its code changes relative to the parent. With the
optional bundled embedding model the texts are compared by cosine similarity; without it, by
the sequence ratio on whitespace-normalised text. Both the diff and the ratio take bounded time
whatever the proposal's size (archlab.text): the driver waits on them.
"""

from archlab import text
from archlab.knowledge.retrieval import embedder


def change_text(motivation: str, code: str, parent_code: str) -> str:
    return motivation + "\n" + "\n".join(text.changed_lines(parent_code, code))


def similarity(a: str, b: str) -> float:
    encode = embedder()
    if encode is not None:
        vectors = encode([a, b])
        return float(vectors[0] @ vectors[1])
    return text.similarity(a, b)


def unchanged(code: str, parent_code: str) -> bool:
    return code.strip() == parent_code.strip()


def too_similar(
    motivation: str, code: str, parent_code: str, known: list[tuple[int, str]], threshold: float
) -> tuple[int, float] | None:
    """(node id, similarity) of the closest known change above the threshold, else None."""
    if unchanged(code, parent_code):
        return (-1, 1.0)  # no change at all
    text = change_text(motivation, code, parent_code)
    scored = [(node_id, similarity(text, other)) for node_id, other in known]
    best = max(scored, key=lambda s: s[1], default=None)
    return best if best is not None and best[1] >= threshold else None
