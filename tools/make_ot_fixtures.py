"""Reference values from POT for lacoot's distance tests, small enough to live in the repository.

Writes tests/fixtures/ot/case*/ (n == m, the layout and keys of POT's own examples) and
tests/fixtures/ot_unequal/ (n != m, orders p = 1, 2, 3): x.npy, y.npy, theta.npy (unit directions
as columns, POT's layout) and expected.json. Run from the repository root:
    python3 -m pip install numpy POT && python3 tools/make_ot_fixtures.py
"""

import json
import os

import numpy as np
import ot

FIXTURES = os.path.join("tests", "fixtures")

# name: (n, d, L, integer-valued points, note)
EQUAL_CASES = {
    "case0": (8, 3, 5, False, "tiny"),
    "case1": (128, 64, 50, False, "the paper's batch size and default L"),
    "case2": (8, 4100, 6, False, "wide: the projection kernels split d into pieces"),
    "case3": (100, 37, 50, True, "integer-valued points: many ties in the sort"),
}


def unit_columns(rng: np.random.Generator, d: int, count: int) -> np.ndarray:
    theta = rng.normal(size=(d, count))
    return theta / np.linalg.norm(theta, axis=0, keepdims=True)


def write(directory: str, x: np.ndarray, y: np.ndarray, theta: np.ndarray, expected: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "x.npy"), x)
    np.save(os.path.join(directory, "y.npy"), y)
    np.save(os.path.join(directory, "theta.npy"), theta)
    with open(os.path.join(directory, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


def equal_cases() -> None:
    for index, (name, (n, d, count, integer, note)) in enumerate(EQUAL_CASES.items()):
        rng = np.random.default_rng(1000 + index)
        if integer:
            x = rng.integers(-3, 4, size=(n, d)).astype(np.float64)
            y = np.maximum(rng.integers(-2, 5, size=(n, d)), 0).astype(np.float64)
        else:
            x = rng.normal(size=(n, d))
            y = np.maximum(rng.normal(loc=0.2, size=(n, d)), 0.0)
        theta = unit_columns(rng, d, count)
        per_direction = ot.wasserstein_1d(x @ theta, y @ theta, p=2)
        expected = {
            "n": n,
            "m": n,
            "d": d,
            "projections": count,
            "note": note,
            "pot_version": ot.__version__,
            "sliced_w2": float(ot.sliced_wasserstein_distance(x, y, projections=theta, p=2)),
            "max_sliced_w2": float(ot.max_sliced_wasserstein_distance(x, y, projections=theta, p=2)),
            "argmax_direction": int(np.argmax(per_direction)),
            "per_direction_w2_squared": [float(v) for v in per_direction],
        }
        write(os.path.join(FIXTURES, "ot", name), x, y, theta, expected)


def unequal_case() -> None:
    rng = np.random.default_rng(2026)
    n, m, d, count = 20, 13, 6, 10
    x = rng.normal(size=(n, d))
    y = np.maximum(rng.normal(loc=0.3, size=(m, d)), 0.0)
    theta = rng.normal(size=(d, count))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    expected = {"n": n, "m": m, "d": d, "projections": count, "pot_version": ot.__version__}
    for p in (1, 2, 3):
        per_direction = ot.wasserstein_1d(x @ theta, y @ theta, p=p)
        expected[f"p{p}"] = {
            "sliced": float(ot.sliced_wasserstein_distance(x, y, projections=theta, p=p)),
            "max_sliced": float(ot.max_sliced_wasserstein_distance(x, y, projections=theta, p=p)),
            "argmax_direction": int(np.argmax(per_direction)),
            "per_direction_wp_p": [float(v) for v in per_direction],
        }
    write(os.path.join(FIXTURES, "ot_unequal"), x, y, theta, expected)


def main() -> None:
    equal_cases()
    unequal_case()


if __name__ == "__main__":
    main()
