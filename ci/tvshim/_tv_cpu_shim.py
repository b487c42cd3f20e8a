"""CI-only import hook: lets PyPI's CUDA-built torchvision import beside a CPU-only torch.

torchvision's meta-kernel registrations assume its compiled ops exist; when the extension cannot
load (no CUDA libraries), this defines just the two op schemas they need, so the pure-Python part of
torchvision imports. It does nothing where the extension loads. Installed as a .pth file, it also
acts in the worker processes that vLLM-Omni and SGLang spawn.
"""

import importlib.abc
import importlib.util
import os
import sys

_LIBRARIES = []


class _TorchvisionCpuShim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            spec = importlib.util.find_spec("torchvision")
            if spec is None or spec.origin is None:
                return None
            import torch

            extension = os.path.join(os.path.dirname(spec.origin), "_C.so")
            try:
                torch.ops.load_library(extension)
            except (OSError, RuntimeError):
                library = torch.library.Library("torchvision", "DEF")
                library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _LIBRARIES.append(library)
        except Exception:
            pass
        return None


sys.meta_path.insert(0, _TorchvisionCpuShim())
