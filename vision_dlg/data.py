"""Images for the victim: files, real photos shipped by scikit-image, dataset files parsed in numpy, and
``datasets`` (hub names when a hub is reachable, local ``imagefolder`` directories).

Every loader returns float images ``(C, S, S)`` in [0, 1] at the model's input size: centre-cropped to a
square, resized with antialiasing, converted to the model's channels. Dataset files are parsed as raw
bytes (MNIST IDX, CIFAR binary): nothing is ever unpickled.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nlp_dlg.engine.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

# real photos bundled with scikit-image (no download): the embedded default and the demo
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "camera", "coins")
HUB_NAMES = {"mnist": ("ylecun/mnist", None, "image", "label"),
             "cifar100": ("uoft-cs/cifar100", None, "img", "fine_label"),
             "cifar10": ("uoft-cs/cifar10", None, "img", "label"),
             "svhn": ("ufldl-stanford/svhn", "cropped_digits", "image", "label"),
             "lfw": ("vishnupriyavr/lfw-dataset", None, "image", "label")}
BUILTIN = ("skimage", "lfw-subset", "digits")


def to_model_input(image: np.ndarray | torch.Tensor, *, channels: int = 3, size: int = 32) -> torch.Tensor:
    """``(H, W)``, ``(H, W, C)`` (uint8 or float in [0, 1]) to ``(channels, size, size)`` float in [0, 1]."""
    x = torch.as_tensor(np.array(image))                                           # a writable copy
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise InputDataError(f"image: expected (H, W) or (H, W, C), got shape {tuple(x.shape)}")
    x = x.permute(2, 0, 1)[:4]                                                    # (C, H, W)
    if x.shape[0] == 4:                                                           # drop alpha
        x = x[:3]
    h, w = x.shape[1:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top:top + side, left:left + side]
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=side > size, align_corners=False)[0]
    if channels == 1 and x.shape[0] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    elif channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] != channels:
        raise InputDataError(f"image: {x.shape[0]} channels cannot be converted to {channels}")
    return x.clamp(0, 1).contiguous()


def load_image(path: str | Path, *, channels: int = 3, size: int = 32) -> torch.Tensor:
    """An image file (PNG, JPEG, … via Pillow) as model input."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputDataError(f"{path}: not a readable image ({exc})") from exc
    return to_model_input(array, channels=channels, size=size)


def skimage_photo(name: str, *, channels: int = 3, size: int = 32) -> torch.Tensor:
    """A real photo bundled with scikit-image by name (see :data:`SKIMAGE_PHOTOS`)."""
    import skimage.data

    if name not in SKIMAGE_PHOTOS:
        raise InputDataError(f"skimage photo: expected one of {', '.join(SKIMAGE_PHOTOS)}, got {name!r}")
    return to_model_input(getattr(skimage.data, name)(), channels=channels, size=size)


# --- dataset files, parsed as bytes ----------------------------------------------------------------
def _open_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise InputDataError(f"{path}: no such file")
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format: magic 0x0000 | dtype | ndim, big-endian sizes, data)."""
    path = Path(path)
    raw = _open_bytes(path)
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise InputDataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(dtypes[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise InputDataError(f"{path}: IDX header says {dims} ({expected} bytes), file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def read_cifar_binary(path: str | Path, *, label_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR binary batch: records of label byte(s) + 3072 pixel bytes (3x32x32, channel-major).
    CIFAR-10 has 1 label byte, CIFAR-100 2 (coarse, fine; the fine label is returned). ``label_bytes``
    None: inferred from the record size."""
    path = Path(path)
    raw = _open_bytes(path)
    if label_bytes is None:
        label_bytes = 1 if len(raw) % 3073 == 0 else 2 if len(raw) % 3074 == 0 else 0
    record = 3072 + label_bytes
    if label_bytes not in (1, 2) or len(raw) == 0 or len(raw) % record:
        raise InputDataError(f"{path}: not a CIFAR binary file ({len(raw)} bytes is not a multiple of 3073 or 3074)")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)   # (N, 32, 32, 3)
    return images, rows[:, label_bytes - 1].astype(np.int64)


def _idx_pair(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    images = read_idx(path)
    name = path.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    if name == path.name:
        return images, None
    stem = name.removesuffix(".gz")
    found = [p for p in (path.with_name(stem), path.with_name(stem + ".gz")) if p.is_file()]
    return images, read_idx(found[0]).astype(np.int64) if found else None


def dataset_image(name: str, index: int, *, channels: int = 3, size: int = 32) -> tuple[torch.Tensor, int | None]:
    """Image ``index`` of a dataset and its label (None where the dataset has none).

    ``name`` is one of: ``skimage`` (the bundled photos, :data:`SKIMAGE_PHOTOS`), ``lfw-subset`` (the 200
    25x25 LFW crops bundled with scikit-image), ``digits`` (scikit-learn's 8x8 handwritten digits); a
    file: MNIST IDX (``*-images-idx3-ubyte[.gz]``, labels read from the matching ``labels-idx1`` file) or a
    CIFAR binary batch (``*.bin``); a local directory (``datasets``' ``imagefolder``: one sub-folder per
    class); or a hub name (:data:`HUB_NAMES` or ``owner/name``), when a hub or its cache is reachable.
    """
    if not isinstance(index, int) or index < 0:
        raise ConfigError(f"index: expected a non-negative integer, got {index!r}")
    label: int | None
    if name == "skimage":
        if index >= len(SKIMAGE_PHOTOS):
            raise InputDataError(f"skimage: index {index} out of range (it has {len(SKIMAGE_PHOTOS)} photos)")
        return skimage_photo(SKIMAGE_PHOTOS[index], channels=channels, size=size), None
    if name == "lfw-subset":
        import skimage.data

        faces = skimage.data.lfw_subset()                                          # (200, 25, 25) in [0, 1]
        _check_index(name, index, len(faces))
        return to_model_input(faces[index], channels=channels, size=size), None
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        _check_index(name, index, len(digits.images))
        return to_model_input(digits.images[index] / 16.0, channels=channels, size=size), int(digits.target[index])
    path = Path(name)
    if path.is_file():
        if "idx" in path.name:
            images, labels = _idx_pair(path)
        elif path.suffix == ".bin":
            images, labels = read_cifar_binary(path)
        else:
            raise InputDataError(f"{path}: expected an MNIST IDX file or a CIFAR binary batch (.bin)")
        _check_index(str(path), index, len(images))
        label = None if labels is None else int(labels[index])
        return to_model_input(images[index], channels=channels, size=size), label
    return _datasets_image(name, index, channels=channels, size=size)


def _check_index(name: str, index: int, n: int) -> None:
    if index >= n:
        raise InputDataError(f"{name}: index {index} out of range (it has {n} images)")


def _datasets_image(name: str, index: int, *, channels: int, size: int) -> tuple[torch.Tensor, int | None]:
    import datasets

    path = Path(name)
    try:
        if path.is_dir():
            table = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
            image_key, label_key = "image", "label"
        else:
            hub, config, image_key, label_key = HUB_NAMES.get(name.lower(), (name, None, "image", "label"))
            table = datasets.load_dataset(hub, config, split="test")
    except Exception as exc:  # datasets raises many types: unreachable hub, malformed folder, …
        raise InputDataError(f"dataset {name!r}: cannot load ({str(exc).splitlines()[0]}); offline, use "
                             f"{', '.join(BUILTIN)}, a local image folder, or an MNIST IDX / CIFAR binary "
                             "file") from exc
    _check_index(name, index, len(table))
    row = table[index]
    image_key = image_key if image_key in row else next((k for k in ("image", "img") if k in row), None)
    if image_key is None:
        raise InputDataError(f"dataset {name!r}: no image column among {list(row)}")
    label = row.get(label_key)
    return (to_model_input(np.asarray(row[image_key].convert("RGB")), channels=channels, size=size),
            None if label is None else int(label))
