"""The example point clouds shipped in examples/clouds/: one block's input and output features.

block_input.npy: 128 samples of 256 features (Gaussian); block_output.npy: the same samples after a
residual block x + 0.3 * relu(x @ W) with a random W, so the two clouds are close but not equal.
Run from the repository root: python3 tools/make_example_clouds.py
"""

import numpy as np


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 256)).astype(np.float32)
    w = (rng.normal(size=(256, 256)) / np.sqrt(256)).astype(np.float32)
    y = x + 0.3 * np.maximum(x @ w, 0.0)
    np.save("examples/clouds/block_input.npy", x)
    np.save("examples/clouds/block_output.npy", y.astype(np.float32))


if __name__ == "__main__":
    main()
