"""Image datasets for training and retrieval: MNIST (IDX), CIFAR-10 (pickles, an ImageFolder tree or its
.tar.gz), any ImageFolder tree, the bundled digits; with the standard query / database / train splits of
the deep-quantization papers and a validation split that is never the query set.

Images are kept as uint8 [N, C, H, W] (CIFAR-10 is 184 MB so, 737 MB as float); ``to_float`` scales a batch.
Decoded archives are cached as one ``.npz`` per source in ``cache_dir()`` (``$SQRET_CACHE`` or
``~/.cache/sqret``), outside the repository.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm")


@dataclass
class ImageSplit:
    """A retrieval benchmark over images [N, C, H, W] (uint8 or float) with int64 class labels [N].

    ``train`` is what the model learns from (the database itself in the unsupervised protocols),
    ``queries`` are searched against ``database`` for the reported mAP, ``val`` (possibly empty) is searched
    against ``database`` for model selection and is disjoint from the queries.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    database: torch.Tensor
    database_labels: torch.Tensor
    queries: torch.Tensor
    query_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    name: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.database.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.train_labels, self.database_labels, self.query_labels]).max()) + 1

    def describe(self) -> str:
        c, h, w = self.shape
        return (f"{self.name}: {c}x{h}x{w} images, train {len(self.train)}, database {len(self.database)}, "
                f"queries {len(self.queries)}, validation {len(self.val)}, {self.num_classes} classes")


def to_float(x: torch.Tensor) -> torch.Tensor:
    """A batch of images as float32 in [0, 1] (uint8 divided by 255; float passed through)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$SQRET_CACHE`` or ``~/.cache/sqret``."""
    return Path(os.environ.get("SQRET_CACHE") or Path.home() / ".cache" / "sqret")


# ---------------------------------------------------------------------------------------------- splits


def _per_class(labels: np.ndarray, count: int, rng: np.random.Generator, exclude=None) -> np.ndarray:
    """``count`` random positions of each class (sorted), skipping ``exclude``."""
    taken = np.zeros(len(labels), dtype=bool) if exclude is None else np.isin(np.arange(len(labels)), exclude)
    picks = []
    for c in np.unique(labels):
        pool = rng.permutation(np.flatnonzero((labels == c) & ~taken))
        if count > len(pool):
            raise ValueError(f"class {c} has {len(pool)} images left, fewer than the {count} asked for")
        picks.append(pool[:count])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def split_by_class(images, labels, queries_per_class: int, val_per_class: int = 0, seed: int = 0,
                   name: str = "") -> ImageSplit:
    """One labelled set split three ways: ``queries_per_class`` queries and ``val_per_class`` validation
    images per class; the rest is both the database and the training set."""
    images, labels = torch.as_tensor(images), torch.as_tensor(labels, dtype=torch.int64)
    y = labels.numpy()
    rng = np.random.default_rng(seed)
    q = _per_class(y, queries_per_class, rng)
    v = _per_class(y, val_per_class, rng, exclude=q)
    rest = np.setdiff1d(np.arange(len(y)), np.concatenate([q, v]))
    t = lambda idx: torch.from_numpy(idx)  # noqa: E731
    db, dbl = images[t(rest)], labels[t(rest)]
    return ImageSplit(db, dbl, db, dbl, images[t(q)], labels[t(q)], images[t(v)], labels[t(v)], name)


def split_train_test(train, train_labels, test, test_labels, queries_per_class: int | None = None,
                     val_per_class: int = 0, seed: int = 0, name: str = "") -> ImageSplit:
    """The protocol of datasets with an official train / test split (CIFAR-10 "I" in SPQ, HQC, MeCoQ):
    queries from the test set (``queries_per_class`` per class, or all of it), the train set as database and
    training set, less ``val_per_class`` validation images per class held out of both."""
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    train_labels = torch.as_tensor(train_labels, dtype=torch.int64)
    test_labels = torch.as_tensor(test_labels, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    if queries_per_class is not None:
        q = torch.from_numpy(_per_class(test_labels.numpy(), queries_per_class, rng))
        test, test_labels = test[q], test_labels[q]
    v = _per_class(train_labels.numpy(), val_per_class, rng)
    keep = torch.from_numpy(np.setdiff1d(np.arange(len(train_labels)), v))
    db, dbl = train[keep], train_labels[keep]
    v = torch.from_numpy(v)
    return ImageSplit(db, dbl, db, dbl, test, test_labels, train[v], train_labels[v], name)


# ---------------------------------------------------------------------------------------------- readers


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped) as a NumPy array of its stored type and shape."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in types:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(types[raw[2]])
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file ({len(raw) - start} bytes of data for shape {shape})")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def load_mnist(root: str | Path, queries_per_class: int = 100, val_per_class: int = 50, seed: int = 0) -> ImageSplit:
    """MNIST from its IDX files in ``root`` as 1 x 28 x 28 uint8 images. With the training files present:
    the train set is database and training set, ``queries_per_class`` test images per class the queries.
    With only the 10,000 test images (as in ``../shared/data/mnist``): they are split by class."""
    root = Path(root)
    ti, tl = _find(root, "t10k-images-idx3-ubyte"), _find(root, "t10k-labels-idx1-ubyte")
    if ti is None or tl is None:
        raise FileNotFoundError(f"{root}: no MNIST IDX files (t10k-images-idx3-ubyte[.gz], "
                                "t10k-labels-idx1-ubyte[.gz])")
    test, test_labels = read_idx(ti)[:, None], read_idx(tl).astype(np.int64)
    tri, trl = _find(root, "train-images-idx3-ubyte"), _find(root, "train-labels-idx1-ubyte")
    if tri is not None and trl is not None:
        return split_train_test(read_idx(tri)[:, None], read_idx(trl).astype(np.int64), test, test_labels,
                                queries_per_class, val_per_class, seed, "mnist")
    return split_by_class(test, test_labels, queries_per_class, val_per_class, seed, "mnist (test set only)")


def _decode(data: bytes, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _decode_all(items: list[tuple[str, bytes]], size, progress: bool | None) -> np.ndarray:
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        arrays = list(tqdm(pool.map(lambda it: _decode(it[1], size), items), total=len(items), desc="decoding",
                           unit="img", disable=None if progress is None else not progress))
    if not arrays:
        raise ValueError("no images found")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes {sorted(shapes)[:3]}...: pass size=(H, W) to resize them")
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


def _folder_items(source: Path):
    """(relative path, bytes) of every image file under a directory or inside a .tar[.gz] archive."""
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                yield p.relative_to(source).as_posix(), p.read_bytes()
        return
    with tarfile.open(source) as tf:
        for m in tf:
            if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                yield m.name, tf.extractfile(m).read()


def _cached(source: Path, tag: str, build):
    st = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{tag}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{source.name}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: an interrupted run leaves no half-written cache
    return arrays


def read_image_folder(source: str | Path, size: tuple[int, int] | None = None, progress: bool | None = None,
                      cache: bool = True) -> dict[str, np.ndarray]:
    """Every image of an ImageFolder tree (``[split/]class/image``), from a directory or a .tar[.gz] of
    one, decoded to RGB uint8. Returns ``{"<split>": images [n, 3, H, W], "<split>_labels": [n],
    "classes": names}`` with split ``all`` when there is no split level; classes are sorted by name."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such image folder or archive")

    def build():
        groups: dict[str, list] = {}
        for rel, data in _folder_items(source):
            parts = rel.split("/")
            parts = parts[1:] if len(parts) > 3 else parts  # a single top directory in the archive
            if len(parts) < 2:
                continue
            split, cls = (parts[0], parts[1]) if len(parts) == 3 else ("all", parts[0])
            groups.setdefault(split, []).append((cls, (rel, data)))
        if not groups:
            raise ValueError(f"{source}: no images in an ImageFolder layout (class/image or split/class/image)")
        classes = sorted({c for items in groups.values() for c, _ in items})
        out = {"classes": np.array(classes)}
        for split, items in groups.items():
            out[split] = _decode_all([it for _, it in items], size, progress)
            out[f"{split}_labels"] = np.array([classes.index(c) for c, _ in items], dtype=np.int64)
        return out

    return _cached(source, f"folder{size}", build) if cache else build()


def _cifar_pickles(root: Path) -> dict[str, np.ndarray]:
    def batch(name):
        with open(root / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        return np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(d["labels"], dtype=np.int64)

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test, test_labels = batch("test_batch")
    return {"train": np.concatenate([p[0] for p in parts]), "train_labels": np.concatenate([p[1] for p in parts]),
            "test": test, "test_labels": test_labels}


def load_cifar10(source: str | Path, queries_per_class: int | None = 1000, val_per_class: int = 100, seed: int = 0,
                 progress: bool | None = None) -> ImageSplit:
    """CIFAR-10 (3 x 32 x 32 uint8) from the official pickles (``cifar-10-batches-py``), an ImageFolder tree
    with ``train/`` and ``test/``, or a .tar.gz of one (``../shared/data/cifar10-jpeg.tar.gz``).

    Protocol "I" of SPQ / HQC / MeCoQ: 1,000 test images per class (the whole test set) are the queries and
    the 50,000 training images the database and training set, less ``val_per_class`` validation images per
    class (held out of both; 0 gives the exact paper protocol)."""
    source = Path(source)
    if (source / "data_batch_1").exists() or (source / "cifar-10-batches-py").exists():
        root = source if (source / "data_batch_1").exists() else source / "cifar-10-batches-py"
        arrays = _cifar_pickles(root)
    else:
        arrays = read_image_folder(source, progress=progress)
        if "train" not in arrays or "test" not in arrays:
            raise ValueError(f"{source}: expected train/<class>/... and test/<class>/... folders")
    return split_train_test(torch.from_numpy(arrays["train"]), torch.from_numpy(arrays["train_labels"]),
                            torch.from_numpy(arrays["test"]), torch.from_numpy(arrays["test_labels"]),
                            queries_per_class, val_per_class, seed, "cifar10")


def load_folder(source: str | Path, size: tuple[int, int] | None = None, queries_per_class: int = 100,
                val_per_class: int = 0, seed: int = 0, progress: bool | None = None) -> ImageSplit:
    """Any ImageFolder tree (or archive): with ``train/`` and ``test/`` splits, the train/test protocol;
    otherwise ``queries_per_class`` and ``val_per_class`` images per class split off."""
    arrays = read_image_folder(source, size, progress)
    t = torch.from_numpy
    if "train" in arrays and "test" in arrays:
        return split_train_test(t(arrays["train"]), t(arrays["train_labels"]), t(arrays["test"]),
                                t(arrays["test_labels"]), queries_per_class, val_per_class, seed, Path(source).name)
    if "all" not in arrays:
        raise ValueError(f"{source}: splits {sorted(k for k in arrays if not k.endswith('labels'))}; expected "
                         "class folders, or train/ and test/")
    return split_by_class(t(arrays["all"]), t(arrays["all_labels"]), queries_per_class, val_per_class, seed,
                          Path(source).name)


def load_digits_images(queries_per_class: int = 20, val_per_class: int = 10, seed: int = 0) -> ImageSplit:
    """scikit-learn's bundled digits as 1 x 8 x 8 float images in [0, 1] (the embedded default)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.data / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    return split_by_class(x, torch.from_numpy(d.target.astype(np.int64)), queries_per_class, val_per_class, seed,
                          "digits")


DATASETS = ("digits", "mnist", "cifar10", "folder")


def load_dataset(name: str, root: str | Path | None = None, seed: int = 0, **kwargs) -> ImageSplit:
    """A dataset by name: ``digits`` (bundled), ``mnist`` / ``cifar10`` / ``folder`` from ``root``
    (default: ``$SQRET_DATA`` or ``../shared/data`` for MNIST and CIFAR-10)."""
    if name == "digits":
        return load_digits_images(seed=seed, **kwargs)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if root is None:
        if name == "folder":
            raise ValueError("dataset 'folder' needs a root (an ImageFolder directory or archive)")
        base = Path(os.environ.get("SQRET_DATA") or Path.cwd().parent / "shared" / "data")
        root = base / ("mnist" if name == "mnist" else "cifar10-jpeg.tar.gz")
    loader = {"mnist": load_mnist, "cifar10": load_cifar10, "folder": load_folder}[name]
    return loader(root, seed=seed, **kwargs)
