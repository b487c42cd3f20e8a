"""The model table: everything the project knows about a model family, one row per family.

A :class:`Family` row says which transformer(s) a pipeline holds, which of their block lists are
cached with which forward pattern, whether the pipeline calls the transformer once per CFG branch
("separate CFG"), the model-specific per-block arguments (a patch functor), and, for serving, which
framework pipeline classes get this row's enabler and how a request's steps split between two
transformers. ``enable_cache`` (through :mod:`.resolve`) and ``CacheDiTBackend`` (through
:mod:`.backend`) both read this table and nothing else, so the two front doors agree.

Patterns were read off the diffusers 0.42.1 block signatures and off how each transformer's
forward loop unpacks the block outputs (``encoder_hidden_states, hidden_states = block(...)`` is
Pattern_1). Prefixes match class names with ``startswith`` in table order (cache-dit's rule), so
specific prefixes come first (``Flux2`` before ``Flux``, ``HunyuanVideo15`` before
``HunyuanVideo``).

A prefix also matches diffusers classes whose layout was not verified here (``WanAnimate…``,
``Flux3…``, ``QwenImage21…``, ``SanaVideo…``): for those the row gives no adapter and
``enable_cache`` falls back to :mod:`.inference`, which reads the transformer's forward and
refuses loops that a cached list would change. Classes of other libraries (vLLM-Omni's, SGLang's)
are trusted by prefix, as cache-dit does.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from .block_adapter import TRANSFORMER_ATTRS, BlockAdapter, PatchFunctor, is_pipeline
from .errors import UnsupportedModelError
from .functors import ChromaModulation, GlmImageKVCaches, HunyuanDiTSkips
from .patterns import HIDDEN, ForwardPattern

Pattern_0, Pattern_1, Pattern_2, Pattern_3 = (
    ForwardPattern.Pattern_0,
    ForwardPattern.Pattern_1,
    ForwardPattern.Pattern_2,
    ForwardPattern.Pattern_3,
)

# (pipeline, num_inference_steps) -> the steps each transformer of the row sees in that request.
StepSplit = Callable[[Any, int], Tuple[int, ...]]

# Wan 2.2's denoising loop switches to the low-noise expert below this fraction of the training
# timesteps when the pipeline does not set its own ratio (vLLM-Omni's and diffusers' default).
WAN22_DEFAULT_BOUNDARY_RATIO = 0.875


def wan22_step_split(pipeline: Any, num_inference_steps: int) -> Tuple[int, int]:
    """(high-noise steps, low-noise steps) from the scheduler's real timesteps for this request."""
    ratio = getattr(pipeline, "boundary_ratio", None)
    if ratio is None:
        ratio = getattr(getattr(pipeline, "config", None), "boundary_ratio", None)
    if ratio is None:
        ratio = WAN22_DEFAULT_BOUNDARY_RATIO
    scheduler = copy.deepcopy(pipeline.scheduler)  # never disturb the pipeline's own scheduler
    scheduler.set_timesteps(num_inference_steps)
    boundary = ratio * scheduler.config.num_train_timesteps
    high = int(sum(1 for t in scheduler.timesteps if float(t) >= boundary))
    return high, num_inference_steps - high


@dataclasses.dataclass(frozen=True)
class Family:
    """One row of the model table."""

    prefix: str
    # The diffusers transformer classes this layout was checked against (tests/test_models.py).
    classes: Tuple[str, ...]
    lists: Tuple[Tuple[str, ForwardPattern], ...]
    separate_cfg: bool = False
    hidden_argument: str = HIDDEN
    # Dotted pipeline attributes holding the transformers to cache (one context set each).
    transformer_attrs: Tuple[str, ...] = TRANSFORMER_ATTRS
    # One context over all lists joined (FLUX.1): the first list runs them, the others run none.
    joined: bool = False
    functor: Optional[Callable[[], PatchFunctor]] = None
    # Serving: framework pipeline classes whose enabler this row makes (backend.py), and how a
    # request's steps split between the row's transformers.
    pipelines: Tuple[str, ...] = ()
    split_steps: Optional[StepSplit] = None
    # Set on rows that exist to refuse a family, with the reason shown to the user.
    refused: Optional[str] = None
    # A reason to refuse one configuration of the family's transformer (None: cacheable).
    refuse_when: Optional[Callable[[torch.nn.Module], Optional[str]]] = None

    def pipeline_transformers(self, pipeline: Any) -> List[torch.nn.Module]:
        """The transformers this row caches in ``pipeline``, in ``transformer_attrs`` order."""
        found = []
        for attr in self.transformer_attrs:
            try:
                module = operator.attrgetter(attr)(pipeline)
            except AttributeError:
                continue
            if isinstance(module, torch.nn.Module):
                found.append(module)
        return found

    def verified(self, transformers: Sequence[torch.nn.Module]) -> bool:
        """Diffusers classes must be listed; others are trusted by prefix, as cache-dit does."""
        return all(
            type(t).__name__ in self.classes or not type(t).__module__.startswith("diffusers")
            for t in transformers
        )

    def adapter(self, obj: Any, **fields: Any) -> Optional[BlockAdapter]:
        """The BlockAdapter for a pipeline or transformer of this family (``fields`` override)."""
        if self.refused is not None:
            raise UnsupportedModelError(f"{type(obj).__name__}: {self.refused}")
        pipe = obj if is_pipeline(obj) else None
        if pipe is not None:
            _refuse_controlnet(pipe)
        transformers = [obj] if pipe is None else self.pipeline_transformers(pipe)
        if not transformers or not self.verified(transformers):
            return None  # enable_cache then infers the layout (inference.py)
        for transformer in transformers:
            reason = self.refuse_when(transformer) if self.refuse_when is not None else None
            if reason:
                raise UnsupportedModelError(f"{type(transformer).__name__}: {reason}")
        attrs = [attr for attr, _ in self.lists]
        patterns = [pattern for _, pattern in self.lists]
        if self.joined:
            groups = [[torch.nn.ModuleList([b for a in attrs for b in getattr(t, a)])] for t in transformers]
            names, patterns, dummies = [attrs[:1]], patterns[:1], attrs[1:]
        else:
            groups = [[getattr(t, attr) for attr in attrs] for t in transformers]
            names, dummies = [attrs], []
        single = len(transformers) == 1
        adapter = BlockAdapter(
            pipe=pipe,
            transformer=transformers[0] if single else transformers,
            blocks=groups[0] if single else groups,
            blocks_name=names * len(transformers),
            dummy_blocks_names=dummies,
            forward_pattern=[patterns] * len(transformers),
            has_separate_cfg=self.separate_cfg,
            # Our signature check matches parameter names; Z-Image's blocks name the hidden
            # stream `x`. None: checked for diffusers classes, which we verified.
            check_forward_pattern=None if self.hidden_argument == HIDDEN else False,
            hidden_argument=self.hidden_argument,
            patch_functor=self.functor() if self.functor is not None else None,
        )
        return dataclasses.replace(adapter, **fields) if fields else adapter


def _refuse_controlnet(pipe: Any) -> None:
    """ControlNet residuals are added per block inside the transformer loop: not cacheable as-is."""
    if getattr(pipe, "controlnet", None) is not None:
        raise UnsupportedModelError(
            f"{type(pipe).__name__} adds ControlNet residuals inside the transformer's block loop, "
            "indexed by block; a cached block list would add only the first one. Cache the "
            "pipeline without ControlNet, or pass a BlockAdapter for a transformer whose forward "
            "applies the residuals inside the blocks."
        )


# Why VACE is refused at both front doors: diffusers' WanVACETransformer3DModel and vLLM-Omni's
# (wan2_2_vace_transformer.py) both add `vace_hints[mapping[i]]` after block i, inside the loop.
# A cached list runs the loop body once, so only block 0's hint would be added, after all blocks:
# the control signal would be silently dropped. (vLLM-Omni's own cache-dit enabler caches
# Wan22VACEPipeline's `blocks` with Pattern_2 and has exactly that defect.)
def _consisid_face_adapter(transformer: torch.nn.Module) -> Optional[str]:
    """ConsisID with its face adapter adds a face cross-attention after every
    ``cross_attn_interval``-th block, indexed by block inside the loop: not cacheable as a list."""
    if getattr(transformer, "is_train_face", False):
        return (
            "its face adapter (is_train_face=True) adds the face embedding after every "
            f"{transformer.cross_attn_interval}th block, indexed by block inside the block loop; a "
            "cached block list would add it once. Only ConsisID without the face adapter is cached."
        )
    return None


WAN_VACE_REFUSAL = (
    "Wan VACE transformers add a VACE hint after specific blocks, indexed by block inside the "
    "block loop; a cached block list would apply only the first hint and drop the control "
    "signal. VACE is not cached; run the pipeline uncached, or cache a plain Wan pipeline."
)

FAMILIES: Tuple[Family, ...] = (
    # Double blocks return (encoder, hidden); single blocks get the joined stream and return it
    # (their annotation says a pair, which is why patterns are read off the forward loops).
    Family("Flux2", ("Flux2Transformer2DModel",),
           (("transformer_blocks", Pattern_1), ("single_transformer_blocks", Pattern_3))),
    # FLUX.1: both block kinds take (hidden, encoder) and return (encoder, hidden), so one context
    # runs the 19 double + 38 single blocks and Fn_compute_blocks=1 probes with double block 0.
    Family("Flux", ("FluxTransformer2DModel",),
           (("transformer_blocks", Pattern_1), ("single_transformer_blocks", Pattern_1)),
           joined=True),
    # VisualCloze pipelines run a FLUX.1 transformer: the same single context.
    Family("VisualCloze", ("FluxTransformer2DModel",),
           (("transformer_blocks", Pattern_1), ("single_transformer_blocks", Pattern_1)),
           joined=True),
    Family("Chroma", ("ChromaTransformer2DModel",),
           (("transformer_blocks", Pattern_1), ("single_transformer_blocks", Pattern_3)),
           separate_cfg=True, functor=ChromaModulation),
    Family("Mochi", ("MochiTransformer3DModel",), (("transformer_blocks", Pattern_0),)),
    Family("CogVideoX", ("CogVideoXTransformer3DModel",), (("transformer_blocks", Pattern_0),)),
    Family("CogView3Plus", ("CogView3PlusTransformer2DModel",), (("transformer_blocks", Pattern_0),)),
    Family("CogView4", ("CogView4Transformer2DModel",), (("transformer_blocks", Pattern_0),),
           separate_cfg=True),
    Family("EasyAnimate", ("EasyAnimateTransformer3DModel",), (("transformer_blocks", Pattern_0),)),
    # Before "Wan": see WAN_VACE_REFUSAL. "Wan22VACEPipeline" (vLLM-Omni) matches "Wan" by its
    # name, and its transformer then matches this row.
    Family("WanVACE", (), (), refused=WAN_VACE_REFUSAL),
    # Each expert of Wan 2.2 (`transformer`, `transformer_2`) gets its own context; the low-noise
    # expert starts counting at the switch-over, so it gets its own warmup.
    Family("Wan", ("WanTransformer3DModel",), (("blocks", Pattern_2),), separate_cfg=True,
           pipelines=("Wan22Pipeline", "Wan22I2VPipeline", "Wan22TI2VPipeline", "WanPipeline",
                      "WanImageToVideoPipeline"),
           split_steps=wan22_step_split),
    Family("ChronoEdit", ("ChronoEditTransformer3DModel",), (("blocks", Pattern_2),), separate_cfg=True),
    Family("Helios", ("HeliosTransformer3DModel",), (("blocks", Pattern_2),), separate_cfg=True),
    Family("AnyFlow", ("AnyFlowTransformer3DModel",), (("blocks", Pattern_2),)),
    # The text stream reaches every block unchanged; cache-dit says Pattern_3 for the same effect.
    Family("SkyReelsV2", ("SkyReelsV2Transformer3DModel",), (("blocks", Pattern_2),), separate_cfg=True),
    Family("HunyuanVideo15", ("HunyuanVideo15Transformer3DModel",),
           (("transformer_blocks", Pattern_0),), separate_cfg=True),
    Family("HunyuanVideo", ("HunyuanVideoTransformer3DModel",),
           (("transformer_blocks", Pattern_0), ("single_transformer_blocks", Pattern_0))),
    Family("QwenImage", ("QwenImageTransformer2DModel",), (("transformer_blocks", Pattern_1),),
           separate_cfg=True),
    Family("LTX", ("LTXVideoTransformer3DModel",), (("transformer_blocks", Pattern_2),)),
    Family("Allegro", ("AllegroTransformer3DModel",), (("transformer_blocks", Pattern_2),)),
    Family("Cosmos", ("CosmosTransformer3DModel",), (("transformer_blocks", Pattern_2),),
           separate_cfg=True),
    # The last JointTransformerBlock is context_pre_only and returns None as its encoder output.
    Family("StableDiffusion3", ("SD3Transformer2DModel",), (("transformer_blocks", Pattern_1),)),
    Family("SD3", ("SD3Transformer2DModel",), (("transformer_blocks", Pattern_1),)),
    # DiT's forward reads `transformer_blocks[0].norm1.emb` after its loop; that needs the engine's
    # stand-in for the list to expose the first block's attributes (test_dit_runs_cached).
    Family("DiT", ("DiTTransformer2DModel",), (("transformer_blocks", Pattern_3),)),
    Family("Lumina2", ("Lumina2Transformer2DModel",), (("layers", Pattern_3),), separate_cfg=True),
    Family("Lumina", ("LuminaNextDiT2DModel",), (("layers", Pattern_3),)),
    # BasicTransformerBlock takes the caption by keyword and returns only the hidden stream.
    Family("PixArt", ("PixArtTransformer2DModel",), (("transformer_blocks", Pattern_2),)),
    Family("Sana", ("SanaTransformer2DModel",), (("transformer_blocks", Pattern_3),)),
    # Only the single-stream blocks, as cache-dit: the joint blocks are few (4 of 36 in AuraFlow).
    Family("AuraFlow", ("AuraFlowTransformer2DModel",), (("single_transformer_blocks", Pattern_3),)),
    # Both Bria block kinds return (encoder, hidden); cache-dit 1.5.3 registers Pattern_0 here.
    Family("Bria", ("BriaTransformer2DModel",),
           (("transformer_blocks", Pattern_1), ("single_transformer_blocks", Pattern_1))),
    Family("PRX", ("PRXTransformer2DModel",), (("blocks", Pattern_2),)),
    Family("ZImage", ("ZImageTransformer2DModel",), (("layers", Pattern_3),), hidden_argument="x"),
    Family("OvisImage", ("OvisImageTransformer2DModel",),
           (("transformer_blocks", Pattern_1), ("single_transformer_blocks", Pattern_1)),
           separate_cfg=True),
    Family("LongCatImage", ("LongCatImageTransformer2DModel",),
           (("transformer_blocks", Pattern_1), ("single_transformer_blocks", Pattern_1)),
           separate_cfg=True, pipelines=("LongCatImagePipeline", "LongCatImageEditPipeline")),
    Family("Krea2", ("Krea2Transformer2DModel",), (("transformer_blocks", Pattern_3),),
           separate_cfg=True),
    Family("JoyImage", ("JoyImageEditTransformer3DModel",), (("double_blocks", Pattern_0),),
           separate_cfg=True),
    # Only the visual decoder blocks (the text encoder blocks run once, before them); their
    # hidden stream is `visual_embed`, and the text stream reaches every block unchanged.
    Family("Kandinsky5", ("Kandinsky5Transformer3DModel",), (("visual_transformer_blocks", Pattern_3),),
           separate_cfg=True, hidden_argument="visual_embed"),
    Family("ConsisID", ("ConsisIDTransformer3DModel",), (("transformer_blocks", Pattern_0),),
           refuse_when=_consisid_face_adapter),
    Family("GlmImage", ("GlmImageTransformer2DModel",), (("transformer_blocks", Pattern_0),),
           separate_cfg=True, functor=GlmImageKVCaches),
    # aMUSEd's UVit2DModel calls each layer through a local alias (`layer_ = layer`), which
    # inference does not follow; the layers take the caption by keyword and return the hidden stream.
    Family("Amused", ("UVit2DModel",), (("transformer_layers", Pattern_3),)),
    # HiDream's loops re-concatenate and truncate the text stream around every block, indexed by
    # block (cache-dit rewrites its forward); a cached list cannot reproduce that.
    Family("HiDream", (), (), refused=(
        "HiDream's block loops rebuild the text stream before each block (concatenating the "
        "block's own Llama layer states, indexed by block) and truncate it after; a cached block "
        "list would feed every block the first block's text stream. HiDream is not cached."
    )),
    Family("OmniGen", ("OmniGenTransformer2DModel",), (("layers", Pattern_3),)),
    # The caption goes in by keyword and is threaded through unchanged (cache-dit says Pattern_3).
    Family("StableAudio", ("StableAudioDiTModel",), (("transformer_blocks", Pattern_2),)),
    # Shap-E's pipelines hold their transformer as `prior`.
    Family("ShapE", ("PriorTransformer",), (("transformer_blocks", Pattern_3),),
           transformer_attrs=("prior",)),
    Family("HunyuanImage", ("HunyuanImageTransformer2DModel",),
           (("transformer_blocks", Pattern_0), ("single_transformer_blocks", Pattern_0)),
           separate_cfg=True),
    # PAG swaps attention processors; the layout is HunyuanDiT's (listed first: it is a longer prefix).
    Family("HunyuanDiTPAG", ("HunyuanDiT2DModel",), (("blocks", Pattern_3),), functor=HunyuanDiTSkips),
    Family("HunyuanDiT", ("HunyuanDiT2DModel",), (("blocks", Pattern_3),), functor=HunyuanDiTSkips),
    # The loop rebuilds `temb` from the same six tensors before every block; the blocks only read
    # it, so one list call with the first `temb` is exact (inference sees a changed variable).
    Family("ErnieImage", ("ErnieImageTransformer2DModel",), (("layers", Pattern_3),),
           hidden_argument="x"),
    # Third-party (not in diffusers): a dual-stream layout like HiDream's, as cache-dit registers it.
    Family("BooguImage", (), (("double_stream_layers", Pattern_0), ("single_stream_layers", Pattern_3)),
           separate_cfg=True),
    # BAGEL (vLLM-Omni): the language model's decoder layers. Their second positional slot carries
    # the KV-cache object, not an encoder tensor; the engine threads it through untouched.
    Family("Qwen2MoT", (), (("layers", Pattern_0),),
           transformer_attrs=("language_model.model",), pipelines=("BagelPipeline",)),
)


# -- the registry cache-dit users know ----------------------------------------------------------

AdapterFactory = Callable[..., Optional[BlockAdapter]]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered prefix: our table's row, or a factory registered by the user."""

    prefix: str
    factory: AdapterFactory
    has_separate_cfg: bool
    family: Optional[Family] = None


class BlockAdapterRegister:
    """Known model families, matched by class-name prefix in registration order (as cache-dit).

    The rows of :data:`FAMILIES` come first; ``register`` adds user factories
    ``factory(pipe_or_module, **kwargs) -> BlockAdapter`` (registering a prefix again replaces it).
    """

    _entries: List[ModelEntry] = [
        ModelEntry(family.prefix, family.adapter, family.separate_cfg, family)
        for family in FAMILIES
    ]

    @classmethod
    def register(
        cls, name: str, supported: bool = True, *, has_separate_cfg: bool = False
    ) -> Callable[[AdapterFactory], AdapterFactory]:
        """Decorator registering ``factory`` for class names starting with ``name``.

        ``supported=False`` leaves the factory unregistered (cache-dit's meaning).
        """

        def decorator(factory: AdapterFactory) -> AdapterFactory:
            if supported:
                entry = ModelEntry(name, factory, has_separate_cfg)
                prefixes = [e.prefix for e in cls._entries]
                if name in prefixes:
                    cls._entries[prefixes.index(name)] = entry
                else:
                    cls._entries.append(entry)
            return factory

        return decorator

    @classmethod
    def entry_for(cls, obj_or_name: Any) -> Optional[ModelEntry]:
        """The first entry whose prefix starts the class name of the object or its transformer;
        a row also matches the classes it lists (Shap-E's transformer is a ``PriorTransformer``)."""
        names = _candidate_names(obj_or_name)
        for entry in cls._entries:
            listed = () if entry.family is None else entry.family.classes + entry.family.pipelines
            if any(name.startswith(entry.prefix) or name in listed for name in names):
                return entry
        return None

    @classmethod
    def is_supported(cls, obj_or_name: Any) -> bool:
        entry = cls.entry_for(obj_or_name)
        return entry is not None and (entry.family is None or entry.family.refused is None)

    @classmethod
    def has_separate_cfg(cls, obj_or_name: Any) -> bool:
        entry = cls.entry_for(obj_or_name)
        return bool(entry and entry.has_separate_cfg)

    @classmethod
    def get_adapter(cls, pipe_or_module: Any, **kwargs: Any) -> Optional[BlockAdapter]:
        """The registered adapter (``kwargs`` set BlockAdapter fields), None if none is known."""
        entry = cls.entry_for(pipe_or_module)
        return None if entry is None else entry.factory(pipe_or_module, **kwargs)

    @classmethod
    def supported_pipelines(cls) -> Tuple[int, List[str]]:
        prefixes = [
            e.prefix for e in cls._entries if e.family is None or e.family.refused is None
        ]
        prefixes = list(dict.fromkeys(prefixes))
        return len(prefixes), prefixes


def _candidate_names(obj_or_name: Any) -> List[str]:
    if isinstance(obj_or_name, str):
        return [obj_or_name]
    names = [type(obj_or_name).__name__]
    for attr in ("transformer", "prior"):
        module = getattr(obj_or_name, attr, None)
        if isinstance(module, torch.nn.Module) and module is not obj_or_name:
            names.append(type(module).__name__)
    return names


def family_for(obj_or_name: Any) -> Optional[Family]:
    """Our table's row for a pipeline, transformer or class name (None: unknown or user-registered)."""
    entry = BlockAdapterRegister.entry_for(obj_or_name)
    return None if entry is None else entry.family


def separate_cfg(obj: Any) -> bool:
    """Whether the family of ``obj`` calls its transformer once per CFG branch."""
    return BlockAdapterRegister.has_separate_cfg(obj)


def transformer_attrs(pipeline: Any) -> Tuple[str, ...]:
    """Which attributes of ``pipeline`` may hold its transformers: its row's, then the default."""
    family = family_for(pipeline)
    own = family.transformer_attrs if family is not None else ()
    return own + tuple(attr for attr in TRANSFORMER_ATTRS if attr not in own)


def supported_pipelines() -> Tuple[int, List[str]]:
    """(count, prefixes) of the model families enable_cache knows without a BlockAdapter."""
    return BlockAdapterRegister.supported_pipelines()


def get_adapter(pipe: Any, **kwargs: Any) -> Optional[BlockAdapter]:
    """cache-dit's ``get_adapter``: the registered BlockAdapter for ``pipe``, or None."""
    return BlockAdapterRegister.get_adapter(pipe, **kwargs)
