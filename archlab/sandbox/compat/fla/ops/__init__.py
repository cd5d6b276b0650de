"""fla's Triton kernels do not exist in archlab's pure-PyTorch stand-in."""

raise ImportError(
    "fla.ops: archlab's pure-PyTorch fla fallback has no fla kernels (the real fla cannot run on this "
    "device); write the recurrence in PyTorch, or guard the import with try/except ImportError"
)
