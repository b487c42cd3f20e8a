"""dit_cache_backend: training-free cache acceleration for Diffusion Transformers."""
