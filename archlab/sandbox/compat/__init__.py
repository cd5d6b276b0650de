"""Pure-PyTorch stand-ins for the flash-linear-attention (`fla`) pieces candidate files import.

Designs written for other systems (ASI-Arch's, fla's own layers) import a few small fla modules:
`fla.modules.ShortConvolution`, `RMSNorm`, `FusedRMSNormGated`, `fla.modules.l2norm.l2norm`,
`fla.layers.utils.get_unpad_data / index_first_axis / pad_input` and `fla.models.utils.Cache`.
fla implements them with Triton kernels, which need a GPU: on a CPU machine (or where fla is not
installed) they cannot run. The directory next to this file holds a package named `fla` with
the same import paths, signatures and numerics, in plain PyTorch; the model server (server.py)
puts this directory first on sys.path before it loads the candidate whenever the real fla cannot
run on its device. It has no `fla.ops` kernels: importing one raises ImportError (a candidate
that guards such an import with try/except then takes its own pure-PyTorch path).
"""

import importlib.util
import sys
from pathlib import Path

DIRECTORY = str(Path(__file__).resolve().parent)  # holds the stand-in package `fla`
FALLBACK = "fallback"


def real_fla_version() -> str | None:
    """The installed flash-linear-attention's version (None: not installed). Reads package metadata
    only: importing fla itself imports Triton and costs seconds."""
    from importlib import metadata

    if importlib.util.find_spec("fla") is None:
        return None
    for dist in ("flash-linear-attention", "fla-core"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def provide_fla(device_type: str) -> str:
    """Before a candidate is loaded: keep the real fla where it can run (installed, with Triton, on
    a CUDA device), else put the stand-ins first on sys.path. Returns what a candidate's `import fla`
    gets, for the evaluation's environment: the real fla's version, or "fallback"."""
    if "fla" not in sys.modules and device_type == "cuda" and importlib.util.find_spec("triton") is not None:
        version = real_fla_version()
        if version is not None:
            return version
    if DIRECTORY not in sys.path:
        sys.path.insert(0, DIRECTORY)
    for name in [m for m in sys.modules if m == "fla" or m.startswith("fla.")]:  # a real fla imported already
        if not (getattr(sys.modules[name], "__file__", None) or "").startswith(DIRECTORY):
            del sys.modules[name]
    return FALLBACK
