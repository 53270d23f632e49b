"""What decides a protected photo's bytes: named presets and `ProtectSettings`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from hasmap_jax.attack.config import AttackConfig, default_compute_dtype
from hasmap_jax.files import DEFAULT_MAX_PIXELS, FORMATS, MIN_SIDE
from hasmap_jax.transforms.profiles import PROFILES, jpeg_profile


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named protection strength: `attack_batch`'s settings for one method and profile.

    Attributes:
      alpha: the paper's trade-off (smaller = stronger, more visible); None for the minimum-norm
        method, which finds each photo's change itself.
      steps, search_steps: optimisation steps, and searches over alpha ("cw").
      confidence: the margin kappa (protected <=> score <= threshold - kappa / 2): a wider margin
        survives more re-encoding, for a larger change.
      description: one line for the help.
      sensitivity_floor: the map raised to at least this value (`attack_batch(sensitivity_floor=)`).
    """

    alpha: float | None
    steps: int
    search_steps: int
    confidence: float
    description: str
    sensitivity_floor: float = 0.0


#: The optimisation methods of `hasmap protect --method`: "fmn", the minimum-norm method (each
#: photo's own least change; the default), and "cw", the paper's fixed-alpha method.
METHODS = ("fmn", "cw")
DEFAULT_METHOD = "fmn"

#: Named strengths, per method and robustness profile ("jpeg90" and "off" share a table; "web" has
#: its own: its loss also scores drawn JPEG / resized / blurred / cropped / flipped views, every one
#: of which must rate the photo low). What each gives with the default model is measured, not
#: promised here: docs/results.md, with the commands.
#: The margin kappa = 10 (protected <=> score <= threshold - 5) keeps the protection clear of the
#: threshold after re-encoding. The paper's method: alpha follows `attack_batch` (Table 1 spans
#: 10 ... 50); for "web" a smaller alpha, more steps and a floor under the map (without one the JND
#: map piles the large change this loss needs into texture, at a high plain-L2 cost). The
#: minimum-norm method has no alpha: its strengths are the margin and the steps.
PRESET_TABLES: dict[tuple[str, str], dict[str, Preset]] = {
    ("fmn", "jpeg90"): {
        "low": Preset(None, 50, 1, 6.0, "faintest change; the narrowest margin over JPEG's approximation"),
        "mid": Preset(None, 50, 1, 10.0, "the default balance"),
        "high": Preset(None, 100, 1, 16.0, "the widest margin: survives the most; the change is larger"),
    },
    ("fmn", "web"): {
        "low": Preset(None, 150, 1, 6.0, "faintest change; the narrowest margin", 0.5),
        "mid": Preset(None, 150, 1, 10.0, "the default balance", 0.5),
        "high": Preset(None, 150, 1, 16.0, "the widest margin: survives the most; the change is larger", 0.5),
    },
    ("cw", "jpeg90"): {
        "low": Preset(40.0, 100, 1, 10.0, "faintest change; protects the fewest photos"),
        "mid": Preset(20.0, 100, 1, 10.0, "the default balance"),
        "high": Preset(10.0, 200, 1, 10.0, "protects the most photos; the change is more often visible up close"),
    },
    ("cw", "web"): {
        "low": Preset(2.0, 300, 1, 10.0, "faintest change; protects the fewest photos", 0.5),
        "mid": Preset(1.0, 300, 1, 10.0, "the default balance", 0.5),
        "high": Preset(0.5, 300, 1, 10.0, "protects the most photos; the change is more often visible up close", 0.5),
    },
}
DEFAULT_PRESET = "mid"


def presets(robust: str = "jpeg90", method: str = DEFAULT_METHOD) -> dict[str, Preset]:
    """The named presets of a method for a `--robust` choice ("web" has its own, "off" is jpeg90's)."""
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return PRESET_TABLES[method, "web" if robust == "web" else "jpeg90"]


#: The MediaEval 2020 protocol JPEG-compresses every protected image at this quality before scoring.
PROTOCOL_JPEG_QUALITY = 90


#: `--robust` choices: the `attack_batch(robust=...)` profiles `hasmap protect` offers.
ROBUST = ("jpeg90", "web", "off")


class UsageError(ValueError):
    """The request itself is wrong (missing input, output over an input, bad settings): nothing ran."""


class SettingsMismatch(UsageError):
    """The output folder holds results made with other settings."""


@dataclasses.dataclass(frozen=True)
class ProtectSettings:
    """Everything that decides the output bytes; recorded in the manifest and compared on a rerun.

    Attributes:
      method: `attack_batch`'s method: "fmn" (the minimum-norm method, the default) or "cw" (the
        paper's fixed-alpha method).
      alpha: the paper's trade-off ("cw"; None for "fmn", which has none).
      steps, search_steps, learning_rate, threshold: passed to `attack_batch` (search_steps and
        learning_rate are the paper's method's).
      format: "png" or "jpeg" (output files .png / .jpg).
      quality: JPEG quality of JPEG output.
      robust_jpeg: JPEG quality the protection must survive after the file is saved (the MediaEval
        2020 protocol re-encodes at `PROTOCOL_JPEG_QUALITY` = 90), or None (off); "auto"
        (default): 90. The attack sees the output as it will be re-encoded
        (`attack_batch(robust_jpeg=...)`): a PNG output once at this quality, a JPEG output at its
        own `quality` and then at this one. Stored as that chain of qualities (`jpeg_chain`).
      robust: what else the protection must survive, an `attack_batch(robust=...)` profile:
        "jpeg90" (default: the JPEG chain above), "web" (`PROFILES["web"]`: re-encoding,
        downscaling, light blur, small crops and flips, judged after real Pillow operations at the
        profile's checkpoints; JPEG output is saved at `quality` first) or "off" (the paper's plain loss;
        also turns `robust_jpeg` off). Each method and profile has presets of its own
        (`presets`): `ProtectSettings.from_preset("mid", robust="web")`, as the command line
        does; the field defaults are the default method's "mid" for "jpeg90".
      confidence: the margin kappa of `attack_batch` (success needs score <= threshold - kappa/2).
      sensitivity_floor: `attack_batch(sensitivity_floor=...)`: the sensitivity map raised to at
        least this value, so the change is not piled up in texture without bound (0: the map as
        it is; the "web" presets use one).
      suffix: appended to each output's stem ("" keeps the name).
      keep_metadata: copy EXIF (orientation 1, no thumbnail) into the outputs.
      strip_icc: drop the ICC colour profile too.
      max_pixels, min_side: refuse larger / skip smaller photos (see `hasmap_jax.files`).
      view_size: `attack_batch`'s view_size ("auto", None or (height, width)).
      precision: the model's compute precision during the optimisation, "fp32" or "bf16"
        (`AttackConfig.compute_dtype`; verdicts are always float32); "auto" (default): bf16 on
        GPU/TPU, fp32 on CPU (`resolved`: `protect_paths` records the one chosen).
      model, sensitivity: identities of the models used (names, paths and digests), for the manifest.
    """

    method: str = DEFAULT_METHOD
    alpha: float | None = PRESET_TABLES[DEFAULT_METHOD, "jpeg90"][DEFAULT_PRESET].alpha
    steps: int = PRESET_TABLES[DEFAULT_METHOD, "jpeg90"][DEFAULT_PRESET].steps
    search_steps: int = PRESET_TABLES[DEFAULT_METHOD, "jpeg90"][DEFAULT_PRESET].search_steps
    learning_rate: float = 1e-2
    threshold: float = 50.0
    format: str = "png"
    quality: int = 90
    robust_jpeg: int | str | None = "auto"
    robust: str = "jpeg90"
    confidence: float = PRESET_TABLES[DEFAULT_METHOD, "jpeg90"][DEFAULT_PRESET].confidence
    sensitivity_floor: float = PRESET_TABLES[DEFAULT_METHOD, "jpeg90"][DEFAULT_PRESET].sensitivity_floor
    suffix: str = ""
    keep_metadata: bool = False
    strip_icc: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = MIN_SIDE
    view_size: Any = "auto"
    precision: str = "auto"
    model: str = "default"
    sensitivity: str = "default"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise UsageError(f"format must be one of {sorted(FORMATS)}, got {self.format!r}")
        if not 1 <= int(self.quality) <= 100:
            raise UsageError(f"JPEG quality must be in 1..100, got {self.quality}")
        if self.robust not in ROBUST:
            raise UsageError(f"robust must be one of {', '.join(ROBUST)}, got {self.robust!r}")
        if self.robust == "off":
            object.__setattr__(self, "robust_jpeg", None)
        if self.robust_jpeg == "auto":
            object.__setattr__(self, "robust_jpeg", PROTOCOL_JPEG_QUALITY)
        elif self.robust_jpeg is not None and not 1 <= int(self.robust_jpeg) <= 100:
            raise UsageError(f"robust JPEG quality must be in 1..100, got {self.robust_jpeg}")
        if self.method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "fmn":
            if self.alpha is not None:
                raise UsageError(
                    f"alpha {self.alpha:g} is the paper's trade-off; the minimum-norm method (--method fmn) finds "
                    "each photo's change itself: leave alpha out, or use --method cw"
                )
            if self.search_steps != 1:
                raise UsageError("search steps (over alpha) belong to the paper's method: use --method cw")
        elif self.alpha is None or not (np.isfinite(self.alpha) and self.alpha > 0):
            raise UsageError(f"the paper's method (--method cw) needs a positive alpha, got {self.alpha}")
        if os.sep in self.suffix or "/" in self.suffix:
            raise UsageError(f"the suffix must not contain a path separator, got {self.suffix!r}")
        if self.max_pixels < 1 or self.min_side < 1:
            raise UsageError("max_pixels and min_side must be positive")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise UsageError(f"precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}")
        if isinstance(self.view_size, list):
            object.__setattr__(self, "view_size", tuple(self.view_size))
        try:  # the attack's own settings are checked where they are defined, once
            self.attack_config()
        except ValueError as e:
            raise UsageError(str(e)) from None

    def resolved(self) -> ProtectSettings:
        """These settings as they decide the bytes on this process's backend: precision "auto"
        resolved (bf16 on GPU/TPU, fp32 on CPU), which is what the manifest records."""
        if self.precision != "auto":
            return self
        bf16 = np.dtype(default_compute_dtype()).name == "bfloat16"
        return dataclasses.replace(self, precision="bf16" if bf16 else "fp32")

    def attack_config(self) -> AttackConfig:
        """The `AttackConfig` these settings ask `attack_batch` for: the method and its settings,
        and the profile: "web" (saved first as the output JPEG, for JPEG output), or the JPEG chain
        (the saved JPEG, then the re-encoding at `robust_jpeg`)."""
        if self.robust == "web":
            robust = PROFILES["web"].saved_as(f"jpeg{int(self.quality)}") if self.format == "jpeg" else "web"
        else:
            robust = jpeg_profile(self.jpeg_chain) if self.jpeg_chain else None
        return AttackConfig(
            method=self.method,
            steps=self.steps,
            search_steps=self.search_steps,
            learning_rate=self.learning_rate,
            confidence=self.confidence,
            threshold=self.threshold,
            sensitivity_floor=self.sensitivity_floor,
            robust=robust,
            view_size=self.view_size,
            compute_dtype=self.precision,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ProtectSettings:
        """Settings of a named preset ("low", "mid", "high") for the `method` and `robust` choices
        among the overrides (`presets`), with any field overridden."""
        table = presets(overrides.get("robust") or "jpeg90", overrides.get("method") or DEFAULT_METHOD)
        if name not in table:
            raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
        p = table[name]
        preset = {
            "alpha": p.alpha,
            "steps": p.steps,
            "search_steps": p.search_steps,
            "confidence": p.confidence,
            "sensitivity_floor": p.sensitivity_floor,
        }
        return cls(**{**preset, **overrides})

    @property
    def jpeg_chain(self) -> tuple[int, ...]:
        """The JPEG round trips the output goes through before it is judged: the saved JPEG (JPEG
        output only), then the re-encoding at `robust_jpeg` (if on)."""
        saved = (int(self.quality),) if self.format == "jpeg" else ()
        return saved + (() if self.robust_jpeg is None else (int(self.robust_jpeg),))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["view_size"] = list(self.view_size) if isinstance(self.view_size, tuple) else self.view_size
        d["jpeg_chain"] = list(self.jpeg_chain)
        return d

    def output_name(self, rel: Path) -> Path:
        """Relative output path of an input at relative path `rel`."""
        return rel.parent / f"{rel.stem}{self.suffix}{FORMATS[self.format]}"


#: Settings added after manifests were first written, with the value an older manifest meant.
ADDED_LATER = {"robust": "jpeg90", "sensitivity_floor": 0.0, "method": "cw"}


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two settings dicts ("alpha: 20.0 -> 10.0"). A setting an
    older manifest did not record counts as the value it had then (`ADDED_LATER`: `robust`
    "jpeg90", `sensitivity_floor` 0, `method` "cw")."""
    old = {**{k: v for k, v in ADDED_LATER.items() if k in new}, **old}
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys if old.get(k) != new.get(k)]
