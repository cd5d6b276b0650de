"""archlab's pure-PyTorch stand-in for flash-linear-attention (`fla`): the few modules candidate
files import, with fla's import paths, signatures and numerics, for machines where the real fla
cannot run (not installed, or no GPU for its Triton kernels). See archlab/sandbox/compat/__init__.py.
Written for archlab from fla's published semantics (fla-core / flash-linear-attention 0.6.0, MIT);
no kernels: `fla.ops` raises ImportError."""

__version__ = "archlab-fallback"
ARCHLAB_FALLBACK = True
