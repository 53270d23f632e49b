"""Reading and writing real photo files safely: any mode to 8-bit RGB, limits, atomic writes.

What `read_image` does with each kind of input (each case adds a note to `LoadedImage.notes`, or
raises `ImageReadError` with a message that names the file and what to do):

  kind                          behaviour
  ----------------------------  -------------------------------------------------------------------
  RGB, 8 bits                   used as is
  EXIF orientation 2..8         pixels rotated / flipped upright (as viewers show them); the EXIF
                                kept with --keep-metadata says orientation 1
  greyscale (L, 1), YCbCr, LAB  converted to 8-bit RGB (note); the output is RGB
  palette (P)                   converted to RGB, or RGBA when the palette has transparency (note)
  16-bit (I;16*, I, 48-bit RGB) scaled to 8 bits per channel (v / 257, rounded) (note)
  32-bit float (F)              read as [0, 1] when its maximum is <= 1, else as 0..255; clipped (note)
  CMYK                          converted to sRGB through its ICC profile when it has one (LittleCMS),
                                else with Pillow's plain conversion (note); the CMYK profile is dropped
  RGBA / LA / PA                colour protected, alpha kept aside in `alpha` (note): `protect`
                                re-attaches it to PNG output and composites on white for JPEG output
  animated / multi-frame        the first frame only, with a warning note; the output is a still image
  smaller than `min_side` px    ImageReadError(kind="too-small", skip=True): skipped, not an error of
    (default 32) on a side      the file, but it gets no output
  more than `max_pixels`        ImageReadError(kind="too-large") before any pixel is decoded, from
    (default 40 MP)             the header, whatever Pillow's own limit (the message quotes ours)
  Pillow decompression bomb     while decoding, its DecompressionBombWarning is an error here
                                (kind="too-large"); Pillow's limit is raised to `max_pixels` only
                                while decoding
  not an image / empty          ImageReadError(kind="not-an-image")
  truncated or corrupt          ImageReadError(kind="corrupt"): never decoded with Pillow's
                                LOAD_TRUNCATED_IMAGES, so no half-grey photo is protected

Writing: `atomic_output` (a file) and `atomic_directory` (a folder, e.g. a checkpoint) stage the
new content next to its destination and move it into place in one step, so a reader (or a crash, or
Ctrl-C) never sees a partial file; the staging copy is removed on any error. `write_image` encodes a
photo through `atomic_output`. `sha256_file` is the one file digest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

#: Extensions that folder walks pick up (case-insensitive). Files named explicitly are tried whatever
#: their extension.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".ppm", ".pgm", ".pnm"}
)
#: Photos with a side shorter than this are skipped (the sensitivity model needs 32x32, and an
#: upscaled thumbnail tells the quality model nothing).
MIN_SIDE = 32
#: Default refusal limit in pixels (40 MP: a 7300x5500 photo). The memory a photo needs grows with
#: its pixels (`hasmap_jax.protect.memory`, measured by benchmarks/protect_memory.py).
DEFAULT_MAX_PIXELS = 40_000_000
#: zlib level of PNG outputs (pixels are the same at every level; only size and time differ).
PNG_COMPRESS_LEVEL = 1
#: Output formats and their file extensions.
FORMATS = {"png": ".png", "jpeg": ".jpg"}

_ORIENTATION = 0x0112
_TMP_MARK = ".hasmap-tmp"
_pillow_limit_lock = threading.Lock()


class ImageReadError(ValueError):
    """A file that cannot be protected, with a message meant for the person who owns it.

    Attributes:
      kind: "not-an-image", "corrupt", "too-large", "too-small" or "unsupported".
      skip: True when the file is skipped by design (too small) rather than broken.
    """

    def __init__(self, message: str, *, kind: str, skip: bool = False):
        super().__init__(message)
        self.kind = kind
        self.skip = skip


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """A photo read by `read_image`, upright and in 8-bit RGB.

    Attributes:
      rgb: (H, W, 3) uint8.
      alpha: (H, W) uint8 transparency, or None.
      notes: what was converted or dropped, one sentence each (for the per-file message).
      exif: the EXIF block (bytes, orientation set to 1, no thumbnail), or None.
      icc_profile: the ICC colour profile of the RGB pixels, or None (dropped for CMYK sources).
      format: Pillow's format name ("JPEG", "PNG", ...).
      mode: Pillow's mode of the file ("RGB", "P", "I;16", ...).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    notes: tuple[str, ...] = ()
    exif: bytes | None = None
    icc_profile: bytes | None = None
    format: str | None = None
    mode: str = "RGB"

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.rgb.shape[:2]

    @property
    def judged(self) -> np.ndarray:
        """The pixels a quality model is shown, by every command (`protect`, `evaluate`, `score`):
        the RGB planes as stored, transparency ignored, as Pillow's `convert("RGB")` gives them to
        most pipelines. (A JPEG output holds the photo composited on white, and is judged as such.)"""
        return self.rgb


@contextlib.contextmanager
def _pillow_limits(max_pixels: int | None):
    """Turns Pillow's decompression-bomb warning into an error, at a limit no lower than ours;
    `max_pixels=None` turns Pillow's check off inside (for `_open`, which checks the size itself)."""
    with _pillow_limit_lock:
        old = Image.MAX_IMAGE_PIXELS
        if max_pixels is None:
            Image.MAX_IMAGE_PIXELS = None
        elif old is not None and max_pixels > old:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _open(path: Path, max_pixels: int, min_side: int) -> Image.Image:
    """Opens an image file (header only) and applies the size limits to the size it declares."""
    name = str(path)
    try:
        # Pillow's own guard is off while the header is read: its refusal would quote Pillow's limit
        # (89.5 MP), not --max-pixels; the header's size is checked against ours just below, before
        # any pixel is decoded, and Pillow's guard is back on for decoding (`_decoding`).
        with _pillow_limits(None):
            im = Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file Pillow can read", kind="not-an-image") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name}: a directory, not an image file", kind="not-an-image") from None
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file", kind="not-an-image") from None
    except PermissionError as e:
        raise ImageReadError(f"{name}: cannot open ({e.strerror})", kind="not-an-image") from None
    except OSError as e:
        if e.errno is None:  # Pillow's own OSError about the data, not the system's about the file
            raise ImageReadError(f"{name}: corrupt image header (OSError: {e})", kind="corrupt") from None
        raise ImageReadError(f"{name}: cannot read ({e.strerror})", kind="not-an-image") from None
    except Exception as e:  # Pillow raises many kinds on broken headers (SyntaxError, struct.error, ...)
        raise ImageReadError(f"{name}: corrupt image header ({type(e).__name__}: {e})", kind="corrupt") from None
    try:
        _check_size(name, im.size[1], im.size[0], max_pixels, min_side)  # orientation only swaps the sides
    except ImageReadError:
        im.close()
        raise
    return im


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) without decoding pixels where the format allows it."""
    try:
        if im.format == "PNG" and im.tile:
            # PngImageFile.getexif decodes the whole image to look for an eXIf chunk after the pixel
            # data; before decoding, only an eXIf chunk ahead of the pixels counts.
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(_ORIENTATION, 1))
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is not worth refusing the photo for
        return 1


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """(height, width) after EXIF orientation."""
    w, h = im.size
    return (w, h) if _orientation(im) in (5, 6, 7, 8) else (h, w)


def _check_size(name: str, h: int, w: int, max_pixels: int, min_side: int) -> None:
    if h * w > max_pixels:
        raise ImageReadError(
            f"{name}: {w}x{h} = {h * w / 1e6:.1f} MP is above the limit of {max_pixels / 1e6:.1f} MP "
            f"(--max-pixels {max_pixels}); downscale it, or raise the limit: --max-pixels {h * w}",
            kind="too-large",
        )
    if min(h, w) < min_side:
        raise ImageReadError(
            f"{name}: {w}x{h} is too small to protect (each side must be at least {min_side} px); skipped",
            kind="too-small",
            skip=True,
        )


def probe_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE):
    """(height, width) of a photo, upright, from its header only (no pixel is decoded).

    Raises:
      ImageReadError: not an image, too large or too small (see the module docstring).
    """
    path = Path(path)
    with _open(path, max_pixels, min_side) as im:
        return _upright_size(im)


def _to_rgb(
    im: Image.Image, icc: bytes | None, notes: list[str]
) -> tuple[Image.Image, np.ndarray | None, bytes | None]:
    """(RGB image, alpha or None, ICC profile of the RGB pixels) from any Pillow mode."""
    mode = im.mode
    alpha = None
    if mode == "P":
        has_alpha = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
        im = im.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette image converted to RGB")
        mode = im.mode
    if mode in ("LA", "PA", "La", "RGBa", "RGBA"):
        if mode != "RGBA":
            if mode in ("LA", "PA"):
                notes.append("greyscale image converted to RGB")
            im = im.convert("RGBA")
        alpha = np.asarray(im.getchannel("A"))
        im = im.convert("RGB")
        notes.append("transparency (alpha) kept aside: re-attached in PNG output, composited on white in JPEG output")
        return im, alpha, icc
    if mode == "CMYK":
        converted = None
        if icc:
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                converted = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            except Exception:  # a broken profile: fall back to the plain conversion below
                converted = None
        if converted is not None:
            notes.append("CMYK image converted to sRGB through its colour profile")
            return converted, None, None
        notes.append("CMYK image converted to RGB (no usable colour profile: colours are approximate)")
        return im.convert("RGB"), None, None
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        # Pillow reads 16-bit greyscale as I;16; "I" (32-bit) only holds 16-bit data in practice.
        if mode == "I" and a.max(initial=0) <= 255:
            notes.append("32-bit integer greyscale with 8-bit values converted to RGB")
            g = np.clip(a, 0, 255)
        else:
            notes.append("16-bit greyscale converted to 8-bit RGB")
            g = np.clip(a, 0, 65535) / 257.0
        g = np.round(g).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=-1)), None, icc
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, np.float64))
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        notes.append(f"32-bit float image read as {'[0, 1]' if scale > 1 else '0..255'} and converted to 8-bit RGB")
        g = np.round(np.clip(a * scale, 0, 255)).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=-1)), None, icc
    if mode in ("L", "1"):
        notes.append("greyscale image converted to RGB")
    elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
    return (im if mode == "RGB" else im.convert("RGB")), None, icc


@contextlib.contextmanager
def _decoding(name: str, max_pixels: int):
    """Decoding inside: Pillow's bomb limit at `max_pixels`, and its errors as `ImageReadError`."""
    try:
        with _pillow_limits(max_pixels):
            yield
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: refused by the decompression-bomb guard ({e})", kind="too-large") from None
    except Exception as e:  # truncated data, broken compression streams, ...
        raise ImageReadError(
            f"{name}: truncated or corrupt image data ({type(e).__name__}: {e})", kind="corrupt"
        ) from None


def read_image(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE
) -> LoadedImage:
    """Reads a photo file as upright 8-bit RGB (+ alpha), with its metadata, refusing what it must.

    Args:
      path: an image file of any format Pillow reads.
      max_pixels: refuse photos with more pixels (checked before decoding).
      min_side: skip photos with a shorter side.

    Returns:
      A `LoadedImage`; see the module docstring for what each kind of input becomes.

    Raises:
      ImageReadError: with `kind` and a message for the person (see the module docstring).
    """
    path = Path(path)
    name = str(path)
    notes: list[str] = []
    with _open(path, max_pixels, min_side) as im:
        fmt, file_mode = im.format, im.mode
        # Pillow decodes 48/64-bit RGB(A) PNG to 8 bits itself; only the tile's raw mode tells.
        if im.mode in ("RGB", "RGBA") and any(";16" in str(t[3]) for t in im.tile):
            notes.append("16 bits per channel reduced to 8 bits")
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            notes.append(f"warning: {frames} frames (animated or multi-page); only the first frame is protected")
            im.seek(0)
        with _decoding(name, max_pixels):
            im.load()
            exif = im.getexif()
            orientation = _orientation(im)
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im
            if upright is not im:
                notes.append(f"EXIF orientation {orientation} applied (pixels turned upright)")
            icc = im.info.get("icc_profile") or None
            rgb_im, alpha, icc = _to_rgb(upright, icc, notes)
            rgb = np.array(rgb_im.convert("RGB"), dtype=np.uint8)
        exif_bytes = None
        if len(exif):
            try:
                exif[_ORIENTATION] = 1
                exif_bytes = exif.tobytes()  # IFD0, Exif, GPS, Interop; never IFD1 (the old thumbnail)
            except Exception:
                notes.append("EXIF block unreadable; not kept")
    return LoadedImage(rgb, alpha, tuple(notes), exif_bytes, icc, fmt, file_mode)


@contextlib.contextmanager
def open_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE):
    """Yields an image file decoded and upright (EXIF orientation applied) in the file's own Pillow
    mode, with `read_image`'s refusals (size limits, decompression bombs, truncated data).

    For readers that need what `read_image` converts away (the bit depth of a greyscale map, say);
    photos go through `read_image`. Only the first frame of a multi-frame file is decoded.

    Raises:
      ImageReadError: as `read_image`.
    """
    path = Path(path)
    name = str(path)
    with _open(path, max_pixels, min_side) as im:
        with _decoding(name, max_pixels):
            im.load()
            upright = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
        yield upright


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex (`hashlib.file_digest`: read in chunks, not into memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is a temporary file left by `write_image` (only after a hard kill)."""
    return _TMP_MARK in Path(path).name


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", *, replace: bool = True):
    """Opens a temporary file next to `path`; on success it becomes `path` in one step.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `path` is left
    as it was. Creates missing parent folders. The one way this package writes a file.

    Args:
      path: the file to write.
      mode: "wb" or "w" (text, UTF-8).
      replace: True replaces an existing `path` (`os.replace`); False never does: the file is
        committed with a hard link, which fails if `path` exists (where the file system has no
        hard links: checked, then renamed).

    Raises:
      FileExistsError: `replace=False` and `path` exists (before anything is written, or at the
        commit if it appeared meanwhile; nothing is left behind either way).
    """
    path = Path(path)
    if not replace and path.exists():
        raise FileExistsError(f"{path} already exists; not overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_MARK)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if replace:
            os.replace(tmp, path)
        else:
            _commit_new(Path(tmp), path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _commit_new(tmp: Path, target: Path) -> None:
    """Gives `tmp` the name `target` without ever replacing an existing file."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(f"{target} already exists; not overwritten") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if target.exists():  # no hard links here: check, then rename (a narrow race remains)
            raise FileExistsError(f"{target} already exists; not overwritten") from None
        os.rename(tmp, target)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False):
    """Yields a new, empty staging folder next to `path`; on success it becomes `path` in one rename.

    On any exception the staging folder is removed and `path` is left as it was.

    Args:
      path: the folder to create.
      replace: False refuses an existing `path` (before anything is written); True swaps the new
        folder in (the old one is renamed aside, the new one renamed into place, then the old one
        removed), so a reader sees the old folder or the new one, never a mix.

    Raises:
      FileExistsError: `replace=False` and `path` exists.
    """
    target = Path(path).expanduser().absolute()
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists; choose a new output path (nothing was written)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=_TMP_MARK))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if target.exists():
            if not replace:
                raise FileExistsError(f"{target} already exists; not overwritten")
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old.", suffix=_TMP_MARK))
            os.rename(target, old / "x")
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def encode_image(
    f: IO[bytes],
    rgb: np.ndarray,
    *,
    format: str = "png",
    quality: int = 90,
    alpha: np.ndarray | None = None,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
) -> None:
    """Writes an (H, W, 3) uint8 image to a binary file object as PNG or JPEG.

    JPEG uses Pillow's defaults besides `quality` (4:2:0 chroma subsampling, baseline), as
    `Image.save(quality=q)` does in the MediaEval 2020 protocol, so a file written here decodes to the
    same pixels as `hasmap_jax.transforms.jpeg.pillow_jpeg(rgb, quality)`. `alpha` is attached to PNG output
    and composited on white for JPEG.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    kwargs: dict[str, Any] = {}
    if exif:
        kwargs["exif"] = exif
    if icc_profile:
        kwargs["icc_profile"] = icc_profile
    if format == "png":
        im = Image.fromarray(rgb)
        if alpha is not None:
            im.putalpha(Image.fromarray(np.asarray(alpha, np.uint8)))
        # zlib level 1: protected photos are noisy, and level 1 encodes them much faster than
        # Pillow's default 6 for a slightly larger file (docs/results.md, "PNG compression level").
        im.save(f, format="PNG", compress_level=PNG_COMPRESS_LEVEL, **kwargs)
    else:
        if alpha is not None:
            rgb = composite_on_white(rgb, alpha)
        Image.fromarray(rgb).save(f, format="JPEG", quality=int(quality), **kwargs)


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 `rgb` seen through `alpha` (H, W) over a white background, rounded to uint8."""
    a = np.asarray(alpha, np.float32)[..., None] / 255.0
    return np.round(rgb.astype(np.float32) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def write_image(path: str | os.PathLike, rgb: np.ndarray, **kwargs) -> Path:
    """Writes `rgb` to `path` atomically (see `atomic_output`); keyword arguments as `encode_image`.

    The format is taken from `kwargs["format"]`, else from the extension (.png, .jpg / .jpeg).
    """
    path = Path(path)
    if "format" not in kwargs:
        ext = path.suffix.lower()
        kwargs["format"] = "jpeg" if ext in (".jpg", ".jpeg") else "png"
    with atomic_output(path) as f:
        encode_image(f, rgb, **kwargs)
    return path


def real_path(path: str | os.PathLike) -> Path:
    """`path` absolute, with symbolic links resolved as far as they go; never raises on a link loop.

    (`Path.resolve` raises RuntimeError on a loop in Python 3.11-3.12; one bad link in a folder must
    not stop the walk over the rest: reading the looping entry fails later, for that entry alone.)
    """
    return Path(os.path.realpath(path))


def find_images(
    root: str | os.PathLike,
    *,
    exclude: tuple[Path, ...] = (),
    skip: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """Image files under a folder, recursively, sorted; hidden files and folders are left out.

    Hidden names (".*") cover `write_image`'s temporary files and macOS "._*" resource forks. Folders
    in `exclude` (e.g. the output folder), and folders below `root` for which `skip(folder)` is
    true, are not entered. Symbolic links to folders are not followed; a link loop is listed like
    a file (reading it fails, alone).
    """
    root = Path(root)
    excluded = {real_path(p) for p in exclude}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(
            n
            for n in dirnames
            if not n.startswith(".") and real_path(d / n) not in excluded and not (skip is not None and skip(d / n))
        )
        for n in sorted(filenames):
            if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(d / n)
    return found


def remove_temporaries(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Removes the temporary files `atomic_output` left in `folders` (not below them) when its
    process was killed (SIGKILL, power loss: no handler ran); returns them, sorted. Only for folders
    this process holds (e.g. under `hasmap_jax.protect.lock.FolderLock`): a live writer's file would
    go too. A folder that is not there is passed over, and so is a file that cannot be removed.
    """
    removed: list[Path] = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for n in names:
            p = Path(folder) / n
            if n.startswith(".") and n.endswith(_TMP_MARK) and p.is_file() and not p.is_symlink():
                try:
                    p.unlink()
                except OSError:
                    continue
                removed.append(p)
    return sorted(removed)
