"""Scale-out sections of a cache-dit config, handed to the engines that implement them.

* ``parallelism_config`` -> diffusers' native context parallelism (:mod:`.parallelism`);
* ``quantize_config`` -> torchao's ``quantize_`` (:mod:`.quantization`);
* ``attention_backend`` -> diffusers' ``set_attention_backend`` (:mod:`.attention`);
* ``set_compile_configs`` -> dynamo/inductor settings (:mod:`.compile`).

:class:`ScaleOutPlan` checks them together and applies them in cache-dit's order.
"""

from .compile import set_compile_configs
from .plan import ScaleOutPlan

__all__ = ["ScaleOutPlan", "set_compile_configs"]
