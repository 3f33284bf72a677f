"""Rate control as a value: one :class:`RateControl` (mode + target + data range, plus
the noise model of the noise-bounded mode) used alike by the CLI, the API, the
benchmark, the container header and the codecs.

Modes live in a registry (:data:`RATE_MODES`): a new mode is one :class:`RateMode`
entry, and the CLI flags, the API keywords and the validation follow from it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InputError
from .noise import NoiseModel


@dataclass(frozen=True)
class RateMode:
    """One rate-control mode.

    ``name`` is the config/API keyword (``max_error``), ``flag`` the CLI option
    (``--max-error``), ``unit`` what the value means; ``needs_value`` is False only for
    ``lossless``; ``lower`` is the exclusive lower bound of the value; ``bounded`` marks
    modes that guarantee a per-value error bound.
    """

    name: str
    flag: str
    unit: str
    help: str
    needs_value: bool = True
    lower: float = 0.0
    bounded: bool = False


RATE_MODES: dict[str, RateMode] = {}


def register_rate_mode(mode: RateMode) -> RateMode:
    """Add a mode to the registry (the CLI and the API pick it up)."""
    RATE_MODES[mode.name] = mode
    return mode


for _mode in (
    RateMode("lossless", "--lossless", "", "bit-exact (integer data; float with zstd/blosc2/zfp)",
             needs_value=False, bounded=True),
    RateMode("max_error", "--max-error", "data units",
             "every decoded value within E of the original (absolute)", bounded=True),
    RateMode("bpp", "--bpp", "bits/value", "about B bits per value for the whole file (±10 %)"),
    RateMode("psnr", "--psnr", "dB", "at least P dB PSNR against the data range"),
    RateMode("noise", "--noise-fraction", "x sigma",
             "every value's error <= F x its quantum-noise std (Poisson model, see --gain, "
             "--read-noise, --i0); zeros and saturated values kept exactly", bounded=True),
):  # fmt: skip
    register_rate_mode(_mode)


@dataclass(frozen=True)
class RateControl:
    """A rate control: ``mode`` (a :data:`RATE_MODES` key), its ``value`` (None for
    lossless), the ``data_range`` PSNR is measured against (None: each chunk's
    max - min), and for ``mode="noise"`` the :class:`~ctpress.noise.NoiseModel`."""

    mode: str = "lossless"
    value: float | None = None
    data_range: float | None = None
    noise: NoiseModel | None = field(default=None, compare=True)

    def __post_init__(self) -> None:
        spec = RATE_MODES.get(self.mode) if isinstance(self.mode, str) else None
        if spec is None:
            raise InputError(
                f"unknown rate control {self.mode!r}; choose one of {', '.join(RATE_MODES)}"
            )
        if not spec.needs_value:
            object.__setattr__(self, "value", None)
        else:
            value = self.value
            if value is None or not _finite(value):
                raise InputError(f"rate control {self.mode!r} needs a finite value, got {value!r}")
            if not float(value) > spec.lower:
                raise InputError(f"{self.mode} must be > {spec.lower:g}, got {value}")
            object.__setattr__(self, "value", float(value))
        if self.data_range is not None:
            if not (_finite(self.data_range) and self.data_range > 0):
                raise InputError(f"data_range must be > 0, got {self.data_range!r}")
            object.__setattr__(self, "data_range", float(self.data_range))
        if self.mode == "noise":
            noise = self.noise if self.noise is not None else NoiseModel()
            if isinstance(noise, dict):
                noise = NoiseModel.from_dict(noise)
            if not isinstance(noise, NoiseModel):
                raise InputError(f"noise model must be a NoiseModel or a dict, got {noise!r:.80}")
            object.__setattr__(self, "noise", noise)
        elif self.noise is not None:
            raise InputError(f"a noise model applies to the noise rate control, not {self.mode!r}")

    @property
    def spec(self) -> RateMode:
        return RATE_MODES[self.mode]

    @property
    def lossy(self) -> bool:
        return self.mode != "lossless"

    def with_value(self, value: float | None) -> RateControl:
        return replace(self, value=value)

    def with_data_range(self, data_range: float | None) -> RateControl:
        return replace(self, data_range=data_range)

    def to_dict(self) -> dict[str, Any]:
        """The header/config form: ``{"mode", "value", "data_range"}`` (+ ``"noise"``)."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "value": self.value,
            "data_range": self.data_range,
        }
        if self.noise is not None:
            out["noise"] = self.noise.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RateControl:
        if not isinstance(data, dict):
            raise InputError(f"a rate control is an object, got {data!r:.80}")
        unknown = set(data) - {"mode", "value", "data_range", "noise"}
        if unknown:
            raise InputError(f"rate control has no field {', '.join(sorted(unknown))}")
        noise = data.get("noise")
        return cls(
            data.get("mode", "lossless"),
            data.get("value"),
            data.get("data_range"),
            None if noise is None else NoiseModel.from_dict(noise),
        )

    @classmethod
    def from_options(
        cls,
        *,
        default: str | None = "lossless",
        data_range: float | None = None,
        noise: NoiseModel | None = None,
        **values: Any,
    ) -> RateControl:
        """The one rate control among keyword options named like the modes
        (``lossless=True``, ``max_error=2``, ``bpp=0.5``, ``psnr=50``,
        ``noise_fraction=0.5``); with none given, ``default`` (InputError if None)."""
        keys = {option_name(m): m for m in RATE_MODES}
        unknown = set(values) - set(keys)
        if unknown:
            raise InputError(f"unknown rate control {', '.join(sorted(unknown))}")
        asked = [(keys[k], v) for k, v in values.items() if v is not None and v is not False]
        if len(asked) > 1:
            raise InputError(f"choose one rate control, got {', '.join(m for m, _ in asked)}")
        if not asked:
            if default is None:
                raise InputError(
                    "give a rate control: " + ", ".join(m.flag for m in RATE_MODES.values())
                )
            mode, value = default, None
        else:
            mode, value = asked[0]
        return cls(
            mode,
            None if not RATE_MODES[mode].needs_value else value,
            data_range,
            noise if mode == "noise" else None,
        )

    def __str__(self) -> str:
        if self.value is None:
            return self.mode
        return f"{self.mode}={self.value:g}"


def option_name(mode: str) -> str:
    """Keyword of a mode in the API, from its CLI flag (``--noise-fraction``:
    ``noise_fraction``)."""
    return RATE_MODES[mode].flag.removeprefix("--").replace("-", "_")


def option_names() -> dict[str, str]:
    """API keyword -> mode name, for every registered mode."""
    return {option_name(m): m for m in RATE_MODES}


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
