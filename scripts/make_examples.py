"""Writes the shipped example photos `examples/*.png` and `examples/LICENSES.md` from held-out photos.

Each example is a held-out photo of the default quality model's manifest (never used in training),
resized to just cover 512x384 (WxH) with Pillow's Lanczos filter and centre-cropped, as the
MediaEval 2020 Pixel Privacy protocol prepares its images. Needs the photo packages installed (see
`hasmap_jax.training.photos`):

    python scripts/make_examples.py [--photo-root DIR] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from hasmap_jax.training import data as quality_data
from hasmap_jax.training import photos

ROOT = Path(__file__).resolve().parent.parent

#: file name -> (manifest name, what it shows)
EXAMPLES = {
    "bridge.png": ("palapeli-cincinnati-bridge", "the Roebling suspension bridge, Cincinnati, at night"),
    "citrus.png": ("palapeli-citrus-fruits", "slices of citrus fruits"),
    "astronaut.png": ("skimage-astronaut", "astronaut Eileen Collins (NASA portrait)"),
    "summer_palace.png": ("sklearn-china", "a pagoda of the Summer Palace, Beijing"),
    "white_flower.png": ("enlightenment-White-Flower", "a frangipani flower among leaves"),
    "moose.png": ("gcompris-world-moose", "a bull moose lying in heather, a forest behind"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo-root", action="append", default=[], help="pip --target folder or Debian prefix")
    p.add_argument("--out", type=Path, default=ROOT / "examples")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fname, (name, what) in EXAMPLES.items():
        photo = photos.by_name(name)
        if photo.split != "heldout":
            raise ValueError(f"{name} is a training photo; examples must be held out")
        path = args.out / fname
        if path.exists() and not args.force:
            print(f"{path} exists; pass --force to overwrite", file=sys.stderr)
            return 2
        view = quality_data.center_view(quality_data.load_photo(photo, args.photo_root))
        Image.fromarray(view).save(path, optimize=True)
        where = f"`{photo.path}`" + (f" (image stream at byte {photo.offset})" if photo.offset is not None else "")
        rows.append(
            f"| `{fname}` | {what} | {photo.credit} | {photo.license} | "
            f"{photo.source} package `{photo.package}` {photo.version}, {where} |"
        )
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    (args.out / "LICENSES.md").write_text(LICENSES_HEADER + "\n".join(rows) + "\n" + LICENSES_FOOTER)
    print(f"wrote {args.out / 'LICENSES.md'}")
    return 0


LICENSES_HEADER = """# Example photos: sources and licences

Six photographs for trying the library and the command line, each resized to just cover 512x384
pixels (WxH, Lanczos) and centre-cropped, saved as PNG (the MediaEval 2020 Pixel Privacy format).
All six are held-out photos of the default quality model (`weights/default`): it never saw them in
training. They are made by `scripts/make_examples.py` from files that the packages named below
install; the licence is the one the package states for the photo. Each file here is a modified
(resized and cropped) version of the original.

| file | shows | author / credit | licence | from |
| --- | --- | --- | --- | --- |
"""

LICENSES_FOOTER = """
Licence notes:
- public domain: works of the US federal government (NASA, the US Fish and Wildlife Service) and
  photos their authors placed in the public domain, as stated by palapeli-data
  (`/usr/share/palapeli/collection/*.desktop`, from Wikimedia Commons), scikit-image
  (`skimage/data/_fetchers.py`, `astronaut`) and gcompris-qt-data
  (`/usr/share/doc/gcompris-qt-data/copyright`, the stanza for `animals/moose.jpg`).
- CC-BY-2.0: Creative Commons Attribution 2.0, https://creativecommons.org/licenses/by/2.0/ ;
  credit as in scikit-learn's `sklearn/datasets/images/README.txt` (Flickr user danielbuechele).
- BSD-2-clause: the Enlightenment backgrounds, (c) Carsten Haitzler and the Enlightenment
  contributors, per Debian's `/usr/share/doc/enlightenment-data/copyright`: redistribution and use,
  with or without modification, are permitted provided the copyright notice, this list of
  conditions and the disclaimer are retained (full text in that file).
"""


if __name__ == "__main__":
    raise SystemExit(main())
