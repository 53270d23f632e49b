"""The photo manifest of the shipped default quality model: package, path, sha256, licence and split.

Every photo is read from a package installed with its ordinary client; nothing is downloaded and
the photos themselves are not part of this repository. Install them with:

    apt-get install mate-backgrounds=1.26.0-1 palapeli-data=4:22.12.3-1 enlightenment-data=0.25.4-2
    pip install --no-deps --target DIR scikit-image==0.26.0 scikit-learn==1.9.1 matplotlib==3.11.2

(or install the three Python packages into the environment itself). The sha256 of each file pins the
exact data set; `hasmap_jax.training.data.load_photo` refuses a file that differs.

Selection. All colour photographs of natural scenes at least 512x384 pixels found in these packages,
except: MATE `Storm.jpg` (deliberate motion blur over half the frame) and `Wood.jpg` (washed out,
low contrast), Enlightenment `Foggy-Trees`, `Mountain` and `Peaks` (dimmed to near black), which
would contradict the "blur / low contrast / dark = degraded" labels; Enlightenment `Dunes`,
`Flat-Fan`, `Sunset-Hills` (illustrations), `Paper-Flower`, `Flat-Stone-Pattern` (textures);
scikit-image `chelsea` (451x300, too small), `motorcycle_*` (no licence stated), `hubble_deep_field`,
`retina`, `ihc` (not natural photographs) and the greyscale images. The KDE Plasma and Lomiri
wallpaper packages are deliberately not used: they are kept for independent evaluation.

Split. By photo, never by crop: within each package, `round(0.3 * n)` photos were drawn as held out
with `numpy.random.default_rng(20240)` (packages in the order below, one permutation each); the
held-out photos are never seen in training. The shipped examples in `examples/` are held-out photos.

Licences as stated by each package (Debian `/usr/share/doc/PACKAGE/copyright`, the palapeli
`.desktop` files, scikit-image's `skimage/data/_fetchers.py` docstrings, scikit-learn's
`sklearn/datasets/images/README.txt`). Enlightenment backgrounds are `.edj` (EET) containers: the
photo is the baseline JPEG stream stored at `offset`, read as is.
"""

from __future__ import annotations

import dataclasses


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
      split: "train" or "heldout".
      offset: for a container file, the byte offset of the embedded JPEG stream; None for an image file.
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


PHOTOS: tuple[Photo, ...] = (
    Photo(
        "mate-Aqua",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/Aqua.jpg",
        "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce",
        "GPL-2+",
        "Charles Barbin",
        "train",
    ),
    Photo(
        "mate-Blinds",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/Blinds.jpg",
        "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
        "GPL-2+",
        "Lennart Poettering, Andrea Cimitan",
        "train",
    ),
    Photo(
        "mate-Dune",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/Dune.jpg",
        "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
        "GPL-2+",
        "Marco Cogoni, Hylke Bons",
        "train",
    ),
    Photo(
        "mate-FreshFlower",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/FreshFlower.jpg",
        "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e",
        "GPL-2+",
        "Jens Ansorg",
        "heldout",
    ),
    Photo(
        "mate-Garden",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/Garden.jpg",
        "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78",
        "GPL-2+",
        "Charles Barbin",
        "train",
    ),
    Photo(
        "mate-GreenMeadow",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/GreenMeadow.jpg",
        "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
        "GPL-2+",
        "Timothy Schellhase, Lapo Calamandrei",
        "heldout",
    ),
    Photo(
        "mate-LadyBird",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/LadyBird.jpg",
        "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d",
        "GPL-2+",
        "Charles Barbin",
        "train",
    ),
    Photo(
        "mate-RainDrops",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/RainDrops.jpg",
        "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
        "GPL-2+",
        "blackcombwhistler07",
        "heldout",
    ),
    Photo(
        "mate-TwoWings",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/TwoWings.jpg",
        "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
        "GPL-2+",
        "Charles Barbin, Hylke Bons",
        "train",
    ),
    Photo(
        "mate-YellowFlower",
        "debian",
        "mate-backgrounds",
        "1.26.0-1",
        "/usr/share/backgrounds/mate/nature/YellowFlower.jpg",
        "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306",
        "GPL-2+",
        "Charles Barbin",
        "train",
    ),
    Photo(
        "palapeli-castle-maintenon",
        "debian",
        "palapeli-data",
        "4:22.12.3-1",
        "/usr/share/palapeli/collection/castle-maintenon.jpg",
        "f4a6bf48b97d97715413f9ebd2d8744bd46df0e492bc8326e2513d51084f2612",
        "GFDL",
        "Eric Pouhier",
        "train",
    ),
    Photo(
        "palapeli-cincinnati-bridge",
        "debian",
        "palapeli-data",
        "4:22.12.3-1",
        "/usr/share/palapeli/collection/cincinnati-bridge.jpg",
        "09772d09318b34a5c5edd58ee86ff462bcd2907006f31cc8e0704310f8e9ab60",
        "public domain",
        "Derek Jensen",
        "heldout",
    ),
    Photo(
        "palapeli-citrus-fruits",
        "debian",
        "palapeli-data",
        "4:22.12.3-1",
        "/usr/share/palapeli/collection/citrus-fruits.jpg",
        "0cbd7154a14789803167c86705130d0358875198231269df168ea26224e70848",
        "public domain",
        "US Department of Agriculture",
        "heldout",
    ),
    Photo(
        "palapeli-european-honey-bee",
        "debian",
        "palapeli-data",
        "4:22.12.3-1",
        "/usr/share/palapeli/collection/european-honey-bee.jpg",
        "9d54ae706bddd899c91b2b801d9ca4556a5a9a399b4043f9d539df62a8cb7f27",
        "public domain",
        "John Severns",
        "train",
    ),
    Photo(
        "palapeli-panther-chameleon-female",
        "debian",
        "palapeli-data",
        "4:22.12.3-1",
        "/usr/share/palapeli/collection/panther-chameleon-female.jpg",
        "adb9e2834a8a3db40ca3817452b956ada527085e5aa2bd604c465651a3834ae4",
        "GFDL",
        "B. Navez and others",
        "train",
    ),
    Photo(
        "enlightenment-Bamboo",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Bamboo.edj",
        "53ea365cefdf42f49d68b1415a2255b74a8e4594fe78d7c39c5af60a6e897097",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "train",
        offset=7328,
    ),
    Photo(
        "enlightenment-God-Rays",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/God-Rays.edj",
        "95791b71c50280c52135b767cd8e14420b196c92e29162964badfd20968adae1",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "train",
        offset=7328,
    ),
    Photo(
        "enlightenment-Green-Maple",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Green-Maple.edj",
        "78178a3f9af4372ac532c57cb9470209658ee3c21c381ccba5f7607dca090e46",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "train",
        offset=7328,
    ),
    Photo(
        "enlightenment-Lichen-Branches",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Lichen-Branches.edj",
        "2a2f3a09e02dbfa50757444bc3100c90b91e3cb053c4cf7731334ead7d34042a",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "train",
        offset=7328,
    ),
    Photo(
        "enlightenment-Red-Maple",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Red-Maple.edj",
        "53ea5bf96fe8227c18fd2f27536cf46fea33bdb3db8c154eb412ce1127c54882",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "train",
        offset=7328,
    ),
    Photo(
        "enlightenment-Sea-of-Lanterns",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Sea-of-Lanterns.edj",
        "d880dc109bf6d4eb493feae612f61f63249ff494b3cbce9216646fe9d92109c0",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "train",
        offset=7328,
    ),
    Photo(
        "enlightenment-Snow-Trees",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Snow-Trees.edj",
        "09da5c21c6ff02628c61bb6c60e0760a0b5996d022bfddbf0bed6ef620ce5b5b",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "train",
        offset=7328,
    ),
    Photo(
        "enlightenment-Spruce-Needles",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Spruce-Needles.edj",
        "e4ba168d17daffec459e96d09835462ef137d97dbdadda6f5a4e0eef46c83cca",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "heldout",
        offset=7328,
    ),
    Photo(
        "enlightenment-Sunset-Clouds",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Sunset-Clouds.edj",
        "9b2041d7107f966e036c0fc97ed40fda657f2930d2e37360ce46fbb216211c45",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "heldout",
        offset=7328,
    ),
    Photo(
        "enlightenment-White-Flower",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/White-Flower.edj",
        "6e464125ba760eda1aed776921b8e665fece221d327710e988129ac18dc0528d",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "heldout",
        offset=7328,
    ),
    Photo(
        "enlightenment-Yellow-Flower",
        "debian",
        "enlightenment-data",
        "0.25.4-2",
        "/usr/share/enlightenment/data/backgrounds/Yellow-Flower.edj",
        "28002bd39a732f6b6a4ef4335931a25cb73d2340b1d95da51e3a8b53b735baa2",
        "BSD-2-clause",
        "Carsten Haitzler and contributors (Enlightenment)",
        "train",
        offset=7328,
    ),
    Photo(
        "skimage-astronaut",
        "pypi",
        "scikit-image",
        "0.26.0",
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "public domain",
        "NASA",
        "heldout",
    ),
    Photo(
        "skimage-coffee",
        "pypi",
        "scikit-image",
        "0.26.0",
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "CC0-1.0",
        "Rachel Michetti",
        "train",
    ),
    Photo(
        "skimage-rocket",
        "pypi",
        "scikit-image",
        "0.26.0",
        "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
        "public domain",
        "SpaceX",
        "train",
    ),
    Photo(
        "sklearn-china",
        "pypi",
        "scikit-learn",
        "1.9.1",
        "sklearn/datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
        "CC-BY-2.0",
        "danielbuechele (Flickr)",
        "heldout",
    ),
    Photo(
        "sklearn-flower",
        "pypi",
        "scikit-learn",
        "1.9.1",
        "sklearn/datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
        "CC-BY-2.0",
        "vultilion (Flickr)",
        "train",
    ),
    Photo(
        "matplotlib-grace_hopper",
        "pypi",
        "matplotlib",
        "3.11.2",
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
        "public domain",
        "US Navy",
        "train",
    ),
)


def photos(split: str | None = None) -> tuple[Photo, ...]:
    """The photos of one split ("train" or "heldout"), or all of them."""
    if split not in (None, "train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'heldout' or None")
    return tuple(p for p in PHOTOS if split is None or p.split == split)


def by_name(name: str) -> Photo:
    for p in PHOTOS:
        if p.name == name:
            return p
    raise KeyError(f"no photo named {name!r} in the manifest")
