"""Reference timings of POT's max-sliced Wasserstein distance, for BENCHMARKS.md.

Times ot.sliced.max_sliced_wasserstein_distance at n = 128 points, L = 50 random directions, p = 2,
for d in {2048, 16384, 65536}, on the same kind of clouds as benches/mswd.rs (a Gaussian input and a
ReLU'd Gaussian output):
- numpy backend: forward only (numpy has no gradients);
- torch backend (when torch is installed): forward + backward to the gradients of both clouds.
Each case: 3 warm-up runs, then the median of 20. Prints one JSON object.

When lacoot's criterion bench has just run, its medians (read from `target/criterion`) are added
beside POT's with the speed-up, so that both sides of each ratio come from the same run:

    python3 -m pip install numpy POT torch
    cargo bench --bench mswd -- --warm-up-time 1 --measurement-time 4 max_sliced_forward_backward
    python3 bench/pot_mswd.py --threads 2
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import ot

POINTS, DIRECTIONS, DIMS = 128, 50, (2048, 16384, 65536)
# The group and function names `benches/mswd.rs` gives criterion, and where cargo puts its results.
CRITERION_GROUP = "sliced_w2_n128_L50/max_sliced_forward_backward"
CRITERION_DIR = Path(__file__).resolve().parent.parent / "target" / "criterion"


def median_ms(run, warmup: int = 3, repeats: int = 20) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def lacoot_median(criterion_dir: Path, d: int) -> tuple[float, float] | None:
    """The median (ms) of lacoot's last `cargo bench --bench mswd` run at dimension d and the age
    of that result (s), if there is one."""
    estimates = criterion_dir / CRITERION_GROUP / str(d) / "new" / "estimates.json"
    if not estimates.is_file():
        return None
    median_ns = json.loads(estimates.read_text())["median"]["point_estimate"]
    return median_ns / 1e6, time.time() - estimates.stat().st_mtime


def processor() -> str:
    """The processor's model name (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="threads for torch")
    parser.add_argument("--criterion-dir", type=Path, default=CRITERION_DIR,
                        help="where cargo bench left lacoot's results")
    args = parser.parse_args()
    results = {"points": POINTS, "directions": DIRECTIONS, "pot": ot.__version__,
               "numpy": np.__version__, "machine": processor()}
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
            lacoot = lacoot_median(args.criterion_dir, d)
            if lacoot is not None:
                lacoot_ms, age_s = lacoot
                row["lacoot_forward_backward_ms"] = lacoot_ms
                row["lacoot_result_age_s"] = round(age_s)
                row["speedup_vs_torch"] = row["torch_forward_backward_ms"] / lacoot_ms
        results[f"d{d}"] = row
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
