# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Rebuild the bundled demo dataset `training/data/fashion-mnist/` from Debian's `dataset-fashion-mnist` package.

The demo (`scripts/run_demo.sh`) trains on a class-balanced subset of Fashion-MNIST (Zalando, MIT licence): the first
300 images of each class of the training set and the first 100 of each class of the test set, stored as PNG in
parquet files that `datasets.load_dataset` reads (`image` and a `label` ClassLabel with the ten class names).

    apt-get install dataset-fashion-mnist
    python training/data/build_fashion_mnist.py
"""

import argparse
import gzip
import io
import shutil
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
]  # fmt: skip
SPLITS = {"train": ("train", 300), "test": ("t10k", 100)}


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced_subset(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` examples of every class, in their original order."""
    keep = np.concatenate([np.flatnonzero(labels == label)[:per_class] for label in range(len(CLASS_NAMES))])
    return np.sort(keep)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--output_dir", default=str(Path(__file__).with_name("fashion-mnist")))
    args = parser.parse_args()
    source, output = Path(args.source_dir), Path(args.output_dir)
    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})
    (output / "data").mkdir(parents=True, exist_ok=True)
    for split, (prefix, per_class) in SPLITS.items():
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        keep = balanced_subset(labels, per_class)
        rows = {
            "image": [{"bytes": png_bytes(images[i]), "path": None} for i in keep],
            "label": [int(labels[i]) for i in keep],
        }
        Dataset.from_dict(rows, features=features).to_parquet(output / "data" / f"{split}-00000-of-00001.parquet")
        print(f"{split}: {len(keep)} images")
    shutil.copy(Path("/usr/share/doc/dataset-fashion-mnist/copyright"), output / "LICENSE")


if __name__ == "__main__":
    main()
