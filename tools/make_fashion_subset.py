"""The Fashion-MNIST subset embedded in lacoot (data/fashion-mnist-subset/).

A stratified subset of Debian's full copy (apt-get install dataset-fashion-mnist): the first 500
images of each class from the training set and the first 100 of each class from the test set, in the
original IDX format, gzip-compressed. Run from the repository root: python3 tools/make_fashion_subset.py
"""

import gzip
import os
import struct

import numpy as np

SOURCE = "/usr/share/datasets/fashion-mnist"
OUT = os.path.join("data", "fashion-mnist-subset")
PER_CLASS = {"train": 500, "t10k": 100}


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    _, _, dtype, rank = struct.unpack(">BBBB", data[:4])
    assert dtype == 0x08, "unsigned bytes expected"
    dims = struct.unpack(">" + "I" * rank, data[4 : 4 + 4 * rank])
    return np.frombuffer(data[4 + 4 * rank :], dtype=np.uint8).reshape(dims)


def write_idx(path: str, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for split, per_class in PER_CLASS.items():
        images = read_idx(os.path.join(SOURCE, f"{split}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(SOURCE, f"{split}-labels-idx1-ubyte.gz"))
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
        write_idx(os.path.join(OUT, f"{split}-images-idx3-ubyte.gz"), images[keep])
        write_idx(os.path.join(OUT, f"{split}-labels-idx1-ubyte.gz"), labels[keep])


if __name__ == "__main__":
    main()
