"""Reference values from POT for clouds of different sizes (n != m), which ../shared/fixtures lacks.

Writes tests/fixtures/ot_unequal/{x,y,theta}.npy and expected.json. Run from the repository root:
    python3 -m pip install numpy POT && python3 tools/make_ot_fixtures.py
"""

import json
import os

import numpy as np
import ot

OUT = os.path.join("tests", "fixtures", "ot_unequal")


def main() -> None:
    rng = np.random.default_rng(2026)
    n, m, d, n_projections = 20, 13, 6, 10
    x = rng.normal(size=(n, d))
    y = np.maximum(rng.normal(loc=0.3, size=(m, d)), 0.0)
    theta = rng.normal(size=(d, n_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    os.makedirs(OUT, exist_ok=True)
    np.save(os.path.join(OUT, "x.npy"), x)
    np.save(os.path.join(OUT, "y.npy"), y)
    np.save(os.path.join(OUT, "theta.npy"), theta)
    expected = {"n": n, "m": m, "d": d, "projections": n_projections, "pot_version": ot.__version__}
    for p in (1, 2, 3):
        per_direction = ot.wasserstein_1d(x @ theta, y @ theta, p=p)
        expected[f"p{p}"] = {
            "sliced": float(ot.sliced_wasserstein_distance(x, y, projections=theta, p=p)),
            "max_sliced": float(ot.max_sliced_wasserstein_distance(x, y, projections=theta, p=p)),
            "argmax_direction": int(np.argmax(per_direction)),
            "per_direction_wp_p": [float(v) for v in per_direction],
        }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
