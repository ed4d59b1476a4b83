"""Finding, verifying, downloading and reading the Fashion-MNIST IDX files.

The four files are looked for, in order, in:

1. an explicit directory (`--data-dir` or `FMNIST_DATA`),
2. the project's cache (`$XDG_CACHE_HOME/fmnist/fashion-mnist`, default `~/.cache/...`),
3. Keras's cache (`$KERAS_HOME/datasets/fashion-mnist`, default `~/.keras/...`),
4. Debian's package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`),
5. a download from the official mirrors into the project's cache.

Each file may be gzipped (`name.gz`) or not (`name`). Every file is verified
before use: its IDX magic number and shape, and the SHA-256 of the
decompressed payload. The payload hashes are pinned because Debian recompressed
the files: their .gz bytes differ from Zalando's, their payloads do not.

Decompressing the 26 MB training images takes a quarter of a second, so a
verified, decompressed copy of each gzipped file is kept in the project's
cache (`decoded/`), keyed by the source file's path, size and modification time,
and re-verified by hash whenever it is read (hashing costs ~30 ms).

Arrays are returned raw, as the dataset stores them: images `uint8` of shape
(n, 28, 28) with values 0-255, labels `uint8` of shape (n,) in 0-9. Scaling
happens inside the model.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import math
import os
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist import FmnistError

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IMAGE_SIZE = 28  # pixels per side


@dataclass(frozen=True)
class IdxFile:
    """One of the four dataset files, with what its payload must be."""

    name: str  # file name without .gz
    magic: int  # 0x801: uint8 vector (labels); 0x803: uint8 3-d array (images)
    count: int  # number of images or labels
    sha256: str  # of the decompressed payload, header included

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, IMAGE_SIZE, IMAGE_SIZE) if self.magic == 0x803 else (self.count,)

    @property
    def header_size(self) -> int:
        return 4 + 4 * len(self.shape)

    @property
    def payload_size(self) -> int:
        return self.header_size + int(np.prod(self.shape))


FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", 0x803, 60_000,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", 0x801, 60_000,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", 0x803, 10_000,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte", 0x801, 10_000,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}

# Zalando's own mirror first, then the copy Keras downloads from.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

HOW_TO_FIX = (
    "install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "run `fmnist data --fetch` to download it, or pass --data-dir DIR with the four IDX files"
)


@dataclass(frozen=True)
class Dataset:
    """The verified dataset, as raw arrays."""

    x_train: np.ndarray  # uint8 (60000, 28, 28)
    y_train: np.ndarray  # uint8 (60000,)
    x_test: np.ndarray  # uint8 (10000, 28, 28)
    y_test: np.ndarray  # uint8 (10000,)
    source: Path  # the directory the files came from
    description: str  # which of the searched places that directory is
    files: dict[str, Path]  # file name -> the file read
    sha256: dict[str, str]  # file name -> payload SHA-256


def cache_dir() -> Path:
    """The project's cache directory (honours XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fmnist"


def candidate_dirs(data_dir: Path | str | None = None) -> list[tuple[str, Path]]:
    """The places searched for the dataset, in order, as (description, directory)."""
    explicit = data_dir or os.environ.get("FMNIST_DATA")
    if explicit:
        # An explicit choice is the only place looked at: falling back silently
        # would train on data the user did not ask for.
        return [("--data-dir" if data_dir else "FMNIST_DATA", Path(explicit))]
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    return [
        ("the fmnist cache", cache_dir() / "fashion-mnist"),
        ("the Keras cache", keras_home / "datasets" / "fashion-mnist"),
        ("Debian's dataset-fashion-mnist", DEBIAN_DIR),
    ]


def _file_in(directory: Path, spec: IdxFile) -> Path | None:
    for candidate in (directory / spec.name, directory / f"{spec.name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find(data_dir: Path | str | None = None) -> tuple[str, Path] | None:
    """The first candidate directory that holds all four files, or None."""
    for description, directory in candidate_dirs(data_dir):
        if all(_file_in(directory, spec) for spec in FILES.values()):
            return description, directory
    return None


def _read_payload(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise FmnistError(f"{path}: cannot read ({error.strerror}); {HOW_TO_FIX}") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise FmnistError(
            f"{path}: truncated or corrupt gzip data ({error}); {HOW_TO_FIX}"
        ) from None


def verify_payload(path: Path, spec: IdxFile, payload: bytes) -> np.ndarray:
    """Check an IDX payload against its spec and return it as an array."""
    if len(payload) < spec.header_size:
        raise FmnistError(
            f"{path}: {len(payload)} bytes is too short for an IDX file; {HOW_TO_FIX}"
        )
    magic = int.from_bytes(payload[:4], "big")
    if magic != spec.magic:
        raise FmnistError(
            f"{path}: IDX magic number is 0x{magic:08x}, expected 0x{spec.magic:08x} "
            f"(uint8, {len(spec.shape)}-d); this is not {spec.name}; {HOW_TO_FIX}"
        )
    shape = tuple(
        int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(spec.shape))
    )
    if shape != spec.shape:
        raise FmnistError(
            f"{path}: header says shape {shape}, expected {spec.shape}; "
            f"this is not {spec.name}; {HOW_TO_FIX}"
        )
    if len(payload) != spec.payload_size:
        raise FmnistError(
            f"{path}: {len(payload)} bytes of data, expected {spec.payload_size} "
            f"(truncated or padded); {HOW_TO_FIX}"
        )
    array = np.frombuffer(payload, np.uint8, offset=spec.header_size).reshape(spec.shape)
    if spec.magic == 0x801 and array.max() >= len(CLASS_NAMES):
        raise FmnistError(
            f"{path}: label {int(array.max())} is out of range 0-{len(CLASS_NAMES) - 1}; {HOW_TO_FIX}"
        )
    digest = hashlib.sha256(payload).hexdigest()
    if digest != spec.sha256:
        raise FmnistError(
            f"{path}: SHA-256 of the data is {digest[:16]}..., expected {spec.sha256[:16]}...; "
            "the file is not the Fashion-MNIST original (MNIST digits have the same format "
            f"and sizes); {HOW_TO_FIX}"
        )
    return array


def _decoded_copy(spec: IdxFile) -> tuple[Path, Path]:
    decoded = cache_dir() / "decoded"
    return decoded / spec.name, decoded / f"{spec.name}.source.json"


def _stamp(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)


def read_file(path: Path, spec: IdxFile) -> np.ndarray:
    """Read and verify one dataset file, using the decoded cache for .gz files."""
    if path.suffix != ".gz":
        return verify_payload(path, spec, _read_payload(path))
    copy, stamp_file = _decoded_copy(spec)
    stamp = _stamp(path)
    try:
        if json.loads(stamp_file.read_text()) == stamp:
            return verify_payload(copy, spec, copy.read_bytes())
    except (OSError, ValueError, FmnistError):
        pass  # no usable copy: decode the source again below
    payload = _read_payload(path)
    array = verify_payload(path, spec, payload)
    try:
        _atomic_write(copy, payload)
        _atomic_write(stamp_file, json.dumps(stamp).encode())
    except OSError:
        pass  # a read-only cache only costs speed
    return array


def load(data_dir: Path | str | None = None, download: bool = True) -> Dataset:
    """Find, verify and read the dataset; download it if it is nowhere and `download`."""
    found = find(data_dir)
    if found is None:
        searched = "; ".join(f"{d} ({p})" for d, p in candidate_dirs(data_dir))
        if data_dir or os.environ.get("FMNIST_DATA") or not download:
            raise FmnistError(f"Fashion-MNIST not found in {searched}; {HOW_TO_FIX}")
        found = ("a download into the fmnist cache", fetch())
    description, directory = found
    arrays: dict[str, np.ndarray] = {}
    files: dict[str, Path] = {}
    for key, spec in FILES.items():
        path = _file_in(directory, spec)
        assert path is not None
        try:
            arrays[key], files[spec.name] = read_file(path, spec), path
        except FmnistError as error:
            if directory == cache_dir() / "fashion-mnist":  # --fetch would not replace it
                raise FmnistError(
                    f"{error}; it is in the fmnist cache: delete it, then run `fmnist data --fetch`"
                ) from None
            raise
    return Dataset(
        x_train=arrays["train_images"],
        y_train=arrays["train_labels"],
        x_test=arrays["test_images"],
        y_test=arrays["test_labels"],
        source=directory,
        description=description,
        files=files,
        sha256={spec.name: spec.sha256 for spec in FILES.values()},
    )


def fetch(mirrors: Sequence[str] = MIRRORS, directory: Path | None = None) -> Path:
    """Download the missing files into the cache, verified; never overwrite a file.

    Each file is downloaded to a temporary name, verified, and only then renamed
    into place, so a partial or wrong download never becomes a cached file.
    """
    directory = directory or cache_dir() / "fashion-mnist"
    directory.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        existing = _file_in(directory, spec)
        if existing is not None:
            try:
                verify_payload(existing, spec, _read_payload(existing))
            except FmnistError as error:  # never overwritten: the user decides what to do with it
                raise FmnistError(
                    f"{error}; fetch never replaces a file: delete {existing} to download it again"
                ) from None
            continue
        target = directory / f"{spec.name}.gz"
        partial = target.with_name(target.name + ".part")
        errors = []
        for mirror in mirrors:
            url = mirror + target.name
            try:
                verify_payload(Path(url), spec, _download(url, partial))
            except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError, FmnistError) as error:
                errors.append(f"{url}: {getattr(error, 'reason', error)}")
                partial.unlink(missing_ok=True)
                continue
            os.replace(partial, target)
            break
        else:
            raise FmnistError(
                f"could not download {target.name} ({'; '.join(errors)}); "
                "check the network, or install Debian's package dataset-fashion-mnist, "
                "or pass --data-dir DIR with the four IDX files"
            )
    return directory


def _download(url: str, partial: Path) -> bytes:
    """Download `url` into the file `partial` with a progress bar; return the payload."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with open(partial, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=partial.name.removesuffix(".part"),
            file=sys.stderr, disable=None,
        ) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))
    try:
        return gzip.decompress(partial.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"not valid gzip data ({error})") from None


def split(
    x: np.ndarray, y: np.ndarray, validation_split: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out the last `validation_split` of the images, as Keras's `validation_split` does.

    The split is the same for every seed, so validation scores of different
    seeds and models are comparable. Returns (x_fit, y_fit, x_val, y_val);
    with `validation_split` 0, every image is for fitting and x_val is empty.
    """
    cut = int(math.ceil(len(x) * (1.0 - validation_split)))  # Keras's own formula
    n_val = len(x) - cut
    if not (0 < n_val or validation_split == 0) or not n_val < len(x):
        raise FmnistError(
            f"validation_split={validation_split} of {len(x)} images leaves no images to "
            "train or to validate on"
        )
    return x[:cut], y[:cut], x[cut:], y[cut:]
