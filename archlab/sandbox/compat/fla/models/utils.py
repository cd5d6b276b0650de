"""fla.models.utils: `Cache`, which candidate files name in type annotations (fla's is the
transformers-style key/value and state cache of its HuggingFace models, fla/models/cache_utils.py).
A mixer in archlab keeps no state between calls, so this stand-in is a placeholder to annotate
with; constructing it gives an empty list of per-layer states."""


class Cache(list):
    """Placeholder for fla's generation cache: a list of per-layer states (empty)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


FLACache = Cache

__all__ = ["Cache", "FLACache"]
