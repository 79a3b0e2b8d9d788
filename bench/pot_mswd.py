"""Reference timings of POT's max-sliced Wasserstein distance, for BENCHMARKS.md.

Times ot.sliced.max_sliced_wasserstein_distance at n = 128 points, L = 50 random directions, p = 2,
for d in {2048, 16384, 65536}, on the same kind of clouds as benches/mswd.rs (a Gaussian input and a
ReLU'd Gaussian output):
- numpy backend: forward only (numpy has no gradients);
- torch backend (when torch is installed): forward + backward to the gradients of both clouds.
Each case: 3 warm-up runs, then the median of 20. Prints one JSON object.

    python3 -m pip install numpy POT torch
    python3 bench/pot_mswd.py --threads 2
"""

import argparse
import json
import platform
import statistics
import time

import numpy as np
import ot

POINTS, DIRECTIONS, DIMS = 128, 50, (2048, 16384, 65536)


def median_ms(run, warmup: int = 3, repeats: int = 20) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="threads for torch")
    args = parser.parse_args()
    results = {"points": POINTS, "directions": DIRECTIONS, "pot": ot.__version__,
               "numpy": np.__version__, "machine": platform.processor() or platform.machine()}
    rng = np.random.default_rng(0)
    try:
        import torch

        torch.set_num_threads(args.threads)
        results["torch"] = torch.__version__
    except ImportError:
        torch = None
    for d in DIMS:
        x = rng.normal(size=(POINTS, d)).astype(np.float32)
        y = np.maximum(rng.normal(size=(POINTS, d)), 0.0).astype(np.float32)
        row = {"numpy_forward_ms": median_ms(
            lambda: ot.sliced.max_sliced_wasserstein_distance(x, y, n_projections=DIRECTIONS, p=2))}
        if torch is not None:
            xt = torch.from_numpy(x).requires_grad_()
            yt = torch.from_numpy(y).requires_grad_()

            def forward_backward():
                xt.grad = None
                yt.grad = None
                value = ot.sliced.max_sliced_wasserstein_distance(
                    xt, yt, n_projections=DIRECTIONS, p=2)
                value.backward()

            row["torch_forward_backward_ms"] = median_ms(forward_backward)
        results[f"d{d}"] = row
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
