"""Framework plugins (vLLM-Omni, SGLang), installed as ``dit_cache_backend.adapters``."""
