"""The photo manifest of the shipped default quality model: package, path, sha256, licence and split.

Every photo is read from a package installed with its ordinary client; nothing is downloaded and
the photos themselves are not part of this repository. Install them with:

    apt-get install --no-install-recommends mate-backgrounds=1.26.0-1 palapeli-data=4:22.12.3-1 \
        enlightenment-data=0.25.4-2 gcompris-qt-data=3.1-2 digikam-data=4:7.9.0-1 \
        scribus-template=1.2.4.1-6 sddm-theme-maldives=0.19.0-5
    pip install --no-deps --target DIR scikit-image==0.26.0 scikit-learn==1.9.1 matplotlib==3.11.2 imgaug==0.4.0

(or install the Python packages into the environment itself; `INSTALL_COMMANDS` holds these, and
`UNSEEN_INSTALL_COMMANDS` the commands that unpack the unseen packages, one folder each). The
sha256 of each file pins the exact data set; `hasmap_jax.training.data.load_photo` refuses a file that differs.

Selection. All colour photographs of natural scenes at least 512x384 pixels found in these packages,
except: MATE `Storm.jpg` (deliberate motion blur over half the frame) and `Wood.jpg` (washed out,
low contrast), Enlightenment `Foggy-Trees` and `Peaks` (dimmed to near black; `Mountain`, dark by
nature, was left out with them for the "dark = degraded" labels of the first recipes and is now
trained on); Enlightenment `Dunes`,
`Flat-Fan`, `Sunset-Hills` (illustrations), `Paper-Flower`, `Flat-Stone-Pattern` (textures);
scikit-image `chelsea` (451x300, too small), `motorcycle_*` (no licence stated), `hubble_deep_field`,
`retina`, `ihc` (not natural photographs) and the greyscale images. The KDE Plasma and Lomiri
wallpaper packages are deliberately not used: they are kept for independent evaluation.
Added later (the survey in `weights/photo_survey.md`): Debian `gcompris-qt-data`'s photographs
whose licence the package states per file or per folder (world animals with Wikimedia credits, farm
animals, world music), PyPI `imgaug`'s quokka and Debian `digikam-data`'s about-page photograph;
the gcompris photos whose licence is unclear (`erase`, monuments, five world animals) are not used.
Added for issue 26 (calm photos; the survey's round 3): Debian `scribus-template`'s photographs
(public domain), `sddm-theme-maldives`' background (CC-BY-3.0) and Enlightenment's `Mountain` for
training; Debian `lxqt-themes`, `libelementary-data` and `afterstep-data` as unseen packages.

Category. Each photo is "calm" (smooth by nature: `CATEGORIES`) or "general"; the evaluation reports
each category apart, so that a model that rates smooth photos low shows it.

Split. By photo, never by crop: within each package, `round(0.3 * n)` photos were drawn as held out
with `numpy.random.default_rng(20240)` (packages in the order below, one permutation each); the
held-out photos are never seen in training (the packages added later: `default_rng(20241)`). The
shipped examples in `examples/` are held-out photos. Split "unseen": whole packages the training
reads nothing from (Debian `tuxpaint-data`'s photographic templates, `tuxtype-data`'s landscapes,
`lxqt-themes`' photographic wallpapers, `libelementary-data`'s test photos, `afterstep-data`'s rose),
so an evaluation on them also measures photos of another source, camera and processing. A photo
whose licence starts "unclear:" (tuxtype's, libelementary's, afterstep's, three of lxqt's) is only
scored, never trained on or shipped; the parser refuses one in "train". New photos of the
training's packages were split among themselves with `default_rng(20262)`.

Licences as stated by each package (Debian `/usr/share/doc/PACKAGE/copyright`, the palapeli
`.desktop` files, scikit-image's `skimage/data/_fetchers.py` docstrings, scikit-learn's
`sklearn/datasets/images/README.txt`). Enlightenment backgrounds are `.edj` (EET) containers: the
photo is the baseline JPEG stream stored at `offset`, read as is; gcompris `.rcc` files (Qt resource
bundles) store their WebP photos uncompressed, read the same way.

The manifest itself is data: `photos.toml` next to this module (shipped as package data), one
`[[photo]]` table per photo. It is read once, with `tomllib` through `importlib.resources`, and
every entry is checked (`parse_photos`); a malformed entry raises `ManifestError` naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
from importlib import resources
from typing import Any

#: The commands that install every photo of the manifest's train and heldout splits (DIR: any
#: folder, passed to the trainer as a photo root). Recommends are left out: sddm-theme-maldives
#: would bring a display manager, scribus-template Scribus.
INSTALL_COMMANDS = (
    "apt-get install --no-install-recommends mate-backgrounds=1.26.0-1 palapeli-data=4:22.12.3-1 "
    "enlightenment-data=0.25.4-2 gcompris-qt-data=3.1-2 digikam-data=4:7.9.0-1 scribus-template=1.2.4.1-6 "
    "sddm-theme-maldives=0.19.0-5",
    "pip install --no-deps --target DIR scikit-image==0.26.0 scikit-learn==1.9.1 matplotlib==3.11.2 imgaug==0.4.0",
)

#: The commands that unpack the packages of the "unseen" split, each into its own folder (one
#: `--photo-root` each), without installing them: they are evaluation data only.
UNSEEN_INSTALL_COMMANDS = (
    "apt-get download tuxpaint-data=1:0.9.28-sdl2-1 tuxtype-data=1.8.3-5.1 lxqt-themes=1.2.0-1 "
    "libelementary-data=1.26.3-1 afterstep-data=2.2.12-15",
    "dpkg-deb -x tuxpaint-data_*.deb /opt/tuxpaint",
    "dpkg-deb -x tuxtype-data_*.deb /opt/tuxtype",
    "dpkg-deb -x lxqt-themes_*.deb /opt/lxqt-themes",
    "dpkg-deb -x libelementary-data_*.deb /opt/libelementary-data",
    "dpkg-deb -x afterstep-data_*.deb /opt/afterstep-data",
)

#: The folders `UNSEEN_INSTALL_COMMANDS` unpack into, in order: the `--photo-root`s of an unseen evaluation.
UNSEEN_ROOTS = ("/opt/tuxpaint", "/opt/tuxtype", "/opt/lxqt-themes", "/opt/libelementary-data", "/opt/afterstep-data")

#: The manifest file, in this package.
MANIFEST_NAME = "photos.toml"

#: "unseen": photos of packages the training reads nothing from (whole packages held out).
SPLITS = ("train", "heldout", "unseen")
SOURCES = ("debian", "pypi")

#: What a photo shows, for evaluation per category. "calm": most of the frame is smooth by nature
#: (a large clear or softly clouded sky, still water, fog, haze or steam, a long exposure, dusk or
#: night, a small subject on a plain or out-of-focus background, one strong colour), the photos a
#: detail-based quality model can take for blurred; "general": every other photo (the default).
CATEGORIES = ("general", "calm")
DEFAULT_CATEGORY = "general"

#: A licence that starts with this is not established from the package (only a package-wide
#: fallback, or a conflicting statement): such a photo may be scored, never trained on.
UNCLEAR_PREFIX = "unclear:"

#: Debian packages kept out of training and tuning (reserved for independent evaluation): exact
#: names, and prefixes (`lomiri-wallpapers`, `lomiri-wallpapers-*`).
EXCLUDED_PACKAGES = ("plasma-workspace-wallpapers",)
EXCLUDED_PACKAGE_PREFIXES = ("lomiri-wallpapers",)

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A photo manifest that cannot be used: malformed TOML or an invalid entry (named in the message)."""


@dataclasses.dataclass(frozen=True)
class Photo:
    """One photograph of the training data.

    Attributes:
      name: a short unique id.
      source: "debian" (`path` is absolute) or "pypi" (`path` is relative to a site-packages folder).
      package, version: the package that ships the file, and the version whose file `sha256` matches.
      path: where the package installs the file.
      sha256: of the whole file as installed.
      license, credit: the photo's licence and author as the package states them.
      split: "train", "heldout" or "unseen" (a package held out whole, evaluation only).
      offset: for a container file (.edj, .rcc), the byte offset of the embedded image; None for an image file.
      category: one of `CATEGORIES` ("calm": smooth by nature; "general", the default: the rest).
    """

    name: str
    source: str
    package: str
    version: str
    path: str
    sha256: str
    license: str
    credit: str
    split: str
    offset: int | None = None
    category: str = DEFAULT_CATEGORY


_FIELDS = tuple(f.name for f in dataclasses.fields(Photo))
_REQUIRED = tuple(f.name for f in dataclasses.fields(Photo) if f.default is dataclasses.MISSING)


def is_excluded_package(package: str) -> bool:
    """Whether photos of `package` must stay out of training and tuning (`EXCLUDED_PACKAGES`)."""
    return package in EXCLUDED_PACKAGES or package.startswith(EXCLUDED_PACKAGE_PREFIXES)


def _entry(index: int, raw: Any) -> Photo:
    label = f"photo #{index + 1}"
    if not isinstance(raw, dict):
        raise ManifestError(f"{label}: expected a [[photo]] table, got {type(raw).__name__}")
    if isinstance(raw.get("name"), str):
        label += f" ({raw['name']!r})"
    unknown = [k for k in raw if k not in _FIELDS]
    if unknown:
        raise ManifestError(f"{label}: unknown field(s) {', '.join(map(repr, unknown))}; expected {list(_FIELDS)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ManifestError(f"{label}: missing field(s) {', '.join(map(repr, missing))}")
    for key in _REQUIRED:
        if not isinstance(raw[key], str) or not raw[key]:
            raise ManifestError(f"{label}: {key} must be a non-empty string, got {raw[key]!r}")
    offset = raw.get("offset")
    if offset is not None and (type(offset) is not int or offset < 0):
        raise ManifestError(f"{label}: offset must be a non-negative integer, got {offset!r}")
    if not _SHA256.fullmatch(raw["sha256"]):
        raise ManifestError(f"{label}: sha256 must be 64 lowercase hex digits, got {raw['sha256']!r}")
    if raw["split"] not in SPLITS:
        raise ManifestError(f"{label}: unknown split {raw['split']!r}; expected one of {SPLITS}")
    if "category" in raw and raw["category"] not in CATEGORIES:
        raise ManifestError(f"{label}: unknown category {raw['category']!r}; expected one of {CATEGORIES}")
    if raw["split"] == "train" and raw["license"].startswith(UNCLEAR_PREFIX):
        raise ManifestError(
            f"{label}: split 'train' with a licence that starts {UNCLEAR_PREFIX!r}; such a photo is scored, never "
            "trained on"
        )
    if raw["source"] not in SOURCES:
        raise ManifestError(f"{label}: unknown source {raw['source']!r}; expected one of {SOURCES}")
    if is_excluded_package(raw["package"]):
        raise ManifestError(
            f"{label}: package {raw['package']!r} is reserved for independent evaluation and must not be "
            "used for training or tuning"
        )
    return Photo(**raw)


def parse_photos(text: str, source: str = "<string>") -> tuple[Photo, ...]:
    """Parses and checks a photo manifest in the format of `photos.toml`.

    Args:
      text: the TOML text: `[[photo]]` tables with the fields of `Photo` (`offset` optional).
      source: how to name the text in error messages.

    Raises:
      ManifestError: the TOML does not parse, or an entry has unknown or missing fields, a wrong type,
        a sha256 that is not 64 lowercase hex digits, an unknown split or source, a package that is
        excluded from training, or a name used before. The message names the entry.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{source}: not valid TOML: {e}") from e
    extra = [k for k in data if k != "photo"]
    if extra:
        raise ManifestError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, extra))}; expected [[photo]] tables"
        )
    entries = data.get("photo", [])
    if not isinstance(entries, list):
        raise ManifestError(f"{source}: 'photo' must be an array of tables ([[photo]])")
    out: list[Photo] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(entries):
        try:
            photo = _entry(i, raw)
        except ManifestError as e:
            raise ManifestError(f"{source}: {e}") from None
        if photo.name in seen:
            raise ManifestError(
                f"{source}: photo #{i + 1} ({photo.name!r}): duplicate name, "
                f"already used by photo #{seen[photo.name] + 1}"
            )
        seen[photo.name] = i
        out.append(photo)
    trained = {p.package for p in out if p.split != "unseen"}
    mixed = sorted({p.package for p in out if p.split == "unseen"} & trained)
    if mixed:
        raise ManifestError(
            f"{source}: package(s) {', '.join(map(repr, mixed))} have 'unseen' photos and photos of the "
            "training's splits; an unseen package is held out whole"
        )
    return tuple(out)


@functools.cache
def _manifest() -> tuple[Photo, ...]:
    text = resources.files(__package__).joinpath(MANIFEST_NAME).read_text(encoding="utf-8")
    return parse_photos(text, source=MANIFEST_NAME)


@functools.cache
def _by_name() -> dict[str, Photo]:
    return {p.name: p for p in _manifest()}


def __getattr__(name: str) -> Any:
    # `PHOTOS`, every photo in manifest order, is read from photos.toml on first use.
    if name == "PHOTOS":
        return _manifest()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def photos(split: str | None = None, *, category: str | None = None) -> tuple[Photo, ...]:
    """The photos of one split ("train", "heldout" or "unseen") and/or one category, or all of them."""
    if split not in (None, *SPLITS):
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} or None")
    if category not in (None, *CATEGORIES):
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES} or None")
    return tuple(
        p for p in _manifest() if (split is None or p.split == split) and (category is None or p.category == category)
    )


def by_name(name: str) -> Photo:
    """The photo named `name`; KeyError if the manifest has none."""
    try:
        return _by_name()[name]
    except KeyError:
        raise KeyError(f"no photo named {name!r} in the manifest") from None
