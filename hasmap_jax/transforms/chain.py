"""Named image operations and chains of them ("resize0.75+jpeg75"): parsed here, and only here.

What photo sites do to an upload, by name, each with a differentiable version (for the attack's
loss) and the real operation (Pillow, for judging):

  jpegQ     JPEG round trip at quality Q (1-100): `diff_jpeg` / Pillow `save(quality=Q)`
  webpQ     WebP round trip at quality Q (0-100): Pillow only (no differentiable version)
  resizeF   downscale each side by F (0 < F <= 1), bicubic: `resize.downscale` / `Image.resize`
  lanczosF  the same with the Lanczos filter (Pillow's former ANTIALIAS)
  blurS     Gaussian blur, sigma S (0 < S <= 10): `blur.gaussian_blur` / `ImageFilter.GaussianBlur(S)`
  cropF     centre crop keeping F of each side (0 < F < 1), resized back (bicubic)
  flip      mirror left to right

A chain joins names with "+", applied left to right ("resize0.75+jpeg75": downscaled to 75 %, then
saved as JPEG 75); a list of chains is separated by commas ("jpeg50,resize0.5,blur1,flip").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import numpy as np

from hasmap_jax.transforms.blur import gaussian_blur, pillow_gaussian_blur
from hasmap_jax.transforms.geometry import center_crop_resize, hflip, pillow_center_crop_resize, pillow_hflip
from hasmap_jax.transforms.jpeg import diff_jpeg, pillow_jpeg, pillow_roundtrip
from hasmap_jax.transforms.resize import downscale, pillow_downscale, scaled_size

Array = jax.Array

# kind -> (value type, low, high, low inclusive, high inclusive); None: takes no value.
_KINDS: dict[str, tuple | None] = {
    "jpeg": (int, 1, 100, True, True),
    "webp": (int, 0, 100, True, True),
    "resize": (float, 0.0, 1.0, False, True),
    "lanczos": (float, 0.0, 1.0, False, True),
    "blur": (float, 0.0, 10.0, False, True),
    "crop": (float, 0.0, 1.0, False, False),
    "flip": None,
}

#: What `parse_chain` accepts, for error and help messages.
NAMES_HELP = (
    "jpegQ (JPEG, quality 1-100), webpQ (WebP, 0-100; judging only), resizeF (downscale each side to "
    "F in (0, 1], bicubic), lanczosF (the same, Lanczos), blurS (Gaussian blur, sigma S in (0, 10]), "
    "cropF (centre crop keeping F in (0, 1) of each side, resized back), flip (mirror); chain them "
    "with '+' (resize0.75+jpeg75), list them with ','"
)

_NAME = re.compile(r"([a-z]+)(\d+(?:\.\d*)?|\.\d+)?")


@dataclasses.dataclass(frozen=True)
class Op:
    """One named operation (hashable: a static part of compiled programs). Make them with `parse_chain`."""

    kind: str
    value: int | float | None = None

    @property
    def name(self) -> str:
        return self.kind if self.value is None else f"{self.kind}{self.value:g}"

    @property
    def differentiable(self) -> bool:
        """Whether the attack can see it through a differentiable version (all but WebP)."""
        return self.kind != "webp"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of a photo of that size after this operation."""
        if self.kind in ("resize", "lanczos"):
            return scaled_size(height, width, self.value)
        return height, width

    def apply(self, images: Array) -> Array:
        """The differentiable version, on (N, H, W, 3) float in [0, 1] (static shapes per photo size)."""
        k, v = self.kind, self.value
        if k == "jpeg":
            return diff_jpeg(images, v)
        if k in ("resize", "lanczos"):
            return downscale(images, factor=v, method="bicubic" if k == "resize" else "lanczos")
        if k == "blur":
            return gaussian_blur(images, sigma=v)
        if k == "crop":
            return center_crop_resize(images, fraction=v)
        if k == "flip":
            return hflip(images)
        raise ValueError(f"{self.name}: no differentiable version (it can judge, not guide, the attack)")

    def pillow(self, images: np.ndarray) -> np.ndarray:
        """The real operation (Pillow) on (N, H, W, 3) uint8, uint8 out."""
        k, v = self.kind, self.value
        if k == "jpeg":
            return pillow_jpeg(images, v)
        if k == "webp":
            return _pillow_webp(images, v)
        if k in ("resize", "lanczos"):
            return pillow_downscale(images, factor=v, method="bicubic" if k == "resize" else "lanczos")
        if k == "blur":
            return pillow_gaussian_blur(images, sigma=v)
        if k == "crop":
            return pillow_center_crop_resize(images, fraction=v)
        return pillow_hflip(images)


#: A chain of operations, applied left to right (a tuple: hashable).
Chain = tuple[Op, ...]


def _parse_op(text: str, whole: str) -> Op:
    m = _NAME.fullmatch(text.strip().lower())
    spec = _KINDS.get(m.group(1)) if m else None
    if m is None or m.group(1) not in _KINDS:
        raise ValueError(f"unknown operation {text.strip()!r} in {whole!r}; expected {NAMES_HELP}")
    number = m.group(2)
    if spec is None:
        if number is not None:
            raise ValueError(f"{text.strip()!r} in {whole!r}: {m.group(1)} takes no number")
        return Op(m.group(1))
    if number is None:
        raise ValueError(f"{text.strip()!r} in {whole!r}: {m.group(1)} needs a number; expected {NAMES_HELP}")
    typ, lo, hi, lo_in, hi_in = spec
    value = float(number)
    if typ is int:
        if value != int(value):
            raise ValueError(f"{text.strip()!r} in {whole!r}: {m.group(1)} takes a whole quality")
        value = int(value)
    ok = (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
    if not ok:
        rng = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
        raise ValueError(f"{text.strip()!r} in {whole!r}: {m.group(1)} must be in {rng}")
    return Op(m.group(1), value)


def parse_chain(name: str | Op | Sequence[Op]) -> Chain:
    """A chain from its name ("resize0.75+jpeg75"); an `Op` or a sequence of them is passed through.

    Raises:
      ValueError: an unknown or malformed name, or a value out of range, saying what is accepted.
    """
    if isinstance(name, Op):
        return (name,)
    if not isinstance(name, str):
        ops = tuple(name)
        if not ops or not all(isinstance(o, Op) for o in ops):
            raise ValueError(f"a chain is a name such as 'resize0.75+jpeg75' or a sequence of Ops, got {name!r}")
        return ops
    parts = name.split("+")
    if not name.strip() or any(not p.strip() for p in parts):
        raise ValueError(f"empty operation in {name!r}; expected {NAMES_HELP}")
    return tuple(_parse_op(p, name) for p in parts)


def parse_chains(names: str | Sequence) -> tuple[Chain, ...]:
    """Chains from "jpeg50,resize0.75+jpeg75,flip" or a sequence of names / chains (duplicates dropped)."""
    items = names.split(",") if isinstance(names, str) else list(names)
    if isinstance(names, str) and any(not p.strip() for p in items):
        raise ValueError(f"empty name in {names!r}; expected {NAMES_HELP}")
    if not items:
        raise ValueError("no operation given")
    out: list[Chain] = []
    for item in items:
        chain = parse_chain(item)
        if chain not in out:
            out.append(chain)
    return tuple(out)


def chain_name(chain: Chain) -> str:
    """The canonical name of a chain ("resize0.75+jpeg75")."""
    return "+".join(op.name for op in chain)


def chain_output_size(chain: Chain, height: int, width: int) -> tuple[int, int]:
    """(height, width) of a photo of that size after `chain`."""
    for op in chain:
        height, width = op.output_size(height, width)
    return height, width


def apply_chain(images: Array, chain: Chain) -> Array:
    """The differentiable chain on (N, H, W, 3) RGB float in [0, 1]; result (N, h, w, 3) on the 8-bit grid."""
    for op in chain:
        images = op.apply(images)
    return images


def pillow_chain(images: np.ndarray, chain: Chain) -> np.ndarray:
    """The real chain (Pillow) on (N, H, W, 3) uint8, uint8 out."""
    images = np.asarray(images, np.uint8)
    for op in chain:
        images = op.pillow(images)
    return images


def pillow_chains(images: np.ndarray, chains: Sequence[Chain]) -> list[np.ndarray]:
    """`pillow_chain` of each chain, sharing the work of common prefixes (jpeg85, jpeg85+jpeg90)."""
    done: dict[Chain, np.ndarray] = {(): np.asarray(images, np.uint8)}
    out = []
    for chain in chains:
        start = max((k for k in range(len(chain) + 1) if chain[:k] in done), default=0)
        cur = done[chain[:start]]
        for k in range(start, len(chain)):
            cur = chain[k].pillow(cur)
            done[chain[: k + 1]] = cur
        out.append(cur)
    return out


def model_view_size(photo_size: tuple[int, int], view_size: tuple[int, int] | None) -> tuple[int, int]:
    """The size the model sees a transformed photo at: the photo's view size, or the photo's own size
    where the model takes the photo as given (view_size None). A downscaled photo is shown to the
    model resized back up to it (`fit_view`), as `hasmap score` would show the downscaled file."""
    return tuple(int(v) for v in (view_size if view_size is not None else photo_size))


def _pillow_webp(images: np.ndarray, quality: int) -> np.ndarray:
    return pillow_roundtrip(images, "WEBP", quality)
