"""Calibrator configs: TaylorSeer, FoCa and DMD (cache-dit 1.5.3's classes, fields and defaults)."""

from __future__ import annotations

import dataclasses
import logging
from typing import (
    Any,
    ClassVar,
    Dict,
    FrozenSet,
    Optional,
    Tuple,
)

from ..calibrators import (
    CALIBRATOR_TYPES,
    DMD_SVD_PRECISIONS,
    Calibrator,
    accepted_kwargs,
)
from ..errors import ConfigError, UnknownKeyError
from .base import _UpdatableConfig
from .checks import (
    Checker,
    _check_bool,
    _check_dict,
    _check_real,
    _did_you_mean,
    _int_at_least,
    _int_between,
    _one_of,
)

logger = logging.getLogger(__name__)


# TaylorSeer keeps order + 1 tensors per stream; beyond a few orders the forecast only amplifies
# noise, and an unbounded order is unbounded memory at every request.
MAX_TAYLORSEER_ORDER = 8



def _check_calibrator_type(key: str, value: Any) -> None:
    if value not in CALIBRATOR_TYPES:
        raise ConfigError(
            key,
            value,
            "one of " + ", ".join(repr(name) for name in CALIBRATOR_TYPES),
            hint=_did_you_mean(value, CALIBRATOR_TYPES),
        )


def _check_non_negative_real(key: str, value: Any) -> None:
    _check_real(key, value)
    if value < 0:
        raise ConfigError(key, value, "a real number >= 0")


@dataclasses.dataclass
class CalibratorConfig(_UpdatableConfig):
    """Base calibrator settings; same fields and defaults as cache-dit's ``CalibratorConfig``.

    ``calibrator_kwargs`` are the stream's keyword arguments under cache-dit's names
    (``n_derivatives`` for TaylorSeer; ``history``, ``rank``, ``ridge``, ``svd_precision``,
    ``n_derivatives`` for DMD); the typed subclasses fill them from their own fields.
    """

    enable_calibrator: bool = False  # calibrate the hidden-states stream
    enable_encoder_calibrator: bool = False  # calibrate the encoder-hidden-states stream
    calibrator_type: str = "taylorseer"
    calibrator_cache_type: str = "residual"  # what is forecast: the M residual or M output
    calibrator_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)

    _RESET_KEEPS: ClassVar[Tuple[str, ...]] = ("calibrator_type",)
    _OPTIONAL: ClassVar[Optional[FrozenSet[str]]] = frozenset()
    _CHECKS: ClassVar[Dict[str, Checker]] = {
        "enable_calibrator": _check_bool,
        "enable_encoder_calibrator": _check_bool,
        "calibrator_type": _check_calibrator_type,
        "calibrator_cache_type": _one_of("residual", "hidden_states"),
        "calibrator_kwargs": _check_dict,
    }

    def _check_relations(self) -> None:
        if self.calibrator_type is None or self.calibrator_kwargs is None:
            return
        accepted = accepted_kwargs(self.calibrator_type)
        for key in self.calibrator_kwargs:
            if key not in accepted:
                raise UnknownKeyError(
                    key, accepted, section=f"calibrator_kwargs of {self.calibrator_type!r}"
                )

    def to_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments of this calibrator's streams (cache-dit's ``to_kwargs``)."""
        return dict(self.calibrator_kwargs or {})

    def make_calibrator(self) -> Calibrator:
        """A fresh calibrator (one CFG branch's named streams) for this config."""
        try:
            return Calibrator(self.calibrator_type, **self.to_kwargs())
        except ValueError as error:  # a value the stream refuses, e.g. n_derivatives=0
            raise ConfigError("calibrator_kwargs", self.to_kwargs(), str(error)) from error

    def strify(self) -> str:
        """``T0O0`` when no stream is calibrated, else the calibrator's tag (``T1O{order}`` ...)."""
        if not (self.enable_calibrator or self.enable_encoder_calibrator):
            return "T0O0"
        return self._tag()

    def _tag(self) -> str:
        # The base config runs its calibrator type with that type's defaults.
        tags = {"foca": "FoCa", "dmd": "DMDH6"}
        order = self.to_kwargs().get("n_derivatives", 1)
        return tags.get(self.calibrator_type, f"T1O{order}")


@dataclasses.dataclass
class TaylorSeerCalibratorConfig(CalibratorConfig):
    """TaylorSeer forecasting of cached residuals; cache-dit's defaults (both streams on, order 1).

    Note that YAML's ``enable_taylorseer: true`` leaves the encoder stream off unless
    ``enable_encoder_taylorseer: true`` is given, exactly like cache-dit's loader.
    """

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_type: str = "taylorseer"
    taylorseer_order: int = 1  # number of derivatives in the Taylor expansion

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        **CalibratorConfig._CHECKS,
        # Bounded: each cached stream keeps order + 1 tensors, allocated at every request.
        "taylorseer_order": _int_between(1, MAX_TAYLORSEER_ORDER),
    }

    def to_kwargs(self) -> Dict[str, Any]:
        return {**super().to_kwargs(), "n_derivatives": self.taylorseer_order}

    def _tag(self) -> str:
        return f"T1O{self.taylorseer_order}"


@dataclasses.dataclass
class FoCaCalibratorConfig(CalibratorConfig):
    """FoCa (forecast, then calibrate; arXiv 2508.16211); cache-dit's defaults (both streams on).

    FoCa has no hyper-parameters (cache-dit ignores ``calibrator_kwargs`` for it, and so do we).
    YAML's ``enable_foca: true`` leaves the encoder stream off unless ``enable_encoder_foca: true``.
    """

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_type: str = "foca"

    def to_kwargs(self) -> Dict[str, Any]:
        return {}

    def _tag(self) -> str:
        return "FoCa"


@dataclasses.dataclass
class DMDCalibratorConfig(CalibratorConfig):
    """Dynamic Mode Decomposition (exponential-basis) forecasting; cache-dit's fields and defaults.

    Not Distribution Matching Distillation. YAML's ``enable_dmd: true`` also turns the encoder
    stream on unless ``enable_encoder_dmd: false`` (cache-dit's loader).
    """

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_type: str = "dmd"
    dmd_history: int = 6  # computed snapshots kept per stream; the fit needs 4 equally spaced
    dmd_rank: int = 0  # SVD truncation rank; 0 drops modes below 1e-4 of the largest
    dmd_ridge: float = 1e-8  # Tikhonov term added to the inverted singular values
    dmd_svd_precision: str = "medium"  # low: randomised SVD; medium: gesdd; high: gesvd (CUDA)

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        **CalibratorConfig._CHECKS,
        "dmd_history": _int_at_least(1),
        "dmd_rank": _int_at_least(0),
        "dmd_ridge": _check_non_negative_real,
        "dmd_svd_precision": _one_of(*DMD_SVD_PRECISIONS),
    }

    def to_kwargs(self) -> Dict[str, Any]:
        return {
            **super().to_kwargs(),
            "history": self.dmd_history,
            "rank": self.dmd_rank,
            "ridge": self.dmd_ridge,
            "svd_precision": self.dmd_svd_precision,
        }

    def _tag(self) -> str:
        precision = (self.dmd_svd_precision or "medium")[0]
        return f"DMDH{self.dmd_history}" + ("" if precision == "m" else precision)
