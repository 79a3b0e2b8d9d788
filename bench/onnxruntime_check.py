#!/usr/bin/env python3
"""ONNX Runtime on models written by `lacoot export --format onnx --dynamic-batch`.

For each model: runs the ONNX checker (`onnx.checker.check_model(full_check=True)`) when the
`onnx` package is installed, checks ONNX Runtime's logits on the reference batch lacoot wrote beside it
(NAME.reference.safetensors) against lacoot's (within --atol + --rtol * max |logits|), then measures latency at batch 1 and 64 (inputs
drawn once; warm-up runs, then the median and quartiles of --repeats timed runs, the models timed
in interleaved rounds so that machine noise hits them alike). The first model is the baseline that
speed-ups are quoted against.

Needs onnxruntime, numpy and safetensors (pip install onnxruntime numpy safetensors).

    python3 bench/onnxruntime_check.py runs/x/full-best.onnx runs/x/collapse/model.onnx --threads 2
"""

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file


def session(path: pathlib.Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check(path: pathlib.Path, model: ort.InferenceSession, atol: float, rtol: float) -> float:
    reference = load_file(path.with_suffix(".reference.safetensors"))
    (logits,) = model.run(None, {model.get_inputs()[0].name: reference["input"]})
    difference = np.abs(logits - reference["logits"])
    if not np.all(difference <= atol + rtol * np.abs(reference["logits"]).max()):
        raise SystemExit(f"error: {path}: ONNX Runtime's logits differ from lacoot's by {difference.max():.3g}")
    return float(difference.max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=pathlib.Path, nargs="+", help=".onnx files; the first is the baseline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model and batch size")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()

    try:
        import onnx

        for path in args.models:
            onnx.checker.check_model(onnx.load(str(path)), full_check=True)
            print(f"{path}: the ONNX checker (onnx {onnx.__version__}, full check) passes")
    except ImportError:
        print("(the onnx package is not installed: the ONNX checker is skipped)")
    sessions = [session(path, args.threads) for path in args.models]
    print(f"ONNX Runtime {ort.__version__}, {args.threads} threads")
    for path, model in zip(args.models, sessions):
        print(f"{path}: logits match lacoot's (max |difference| {check(path, model, args.atol, args.rtol):.3g})")

    rng = np.random.default_rng(0)
    for batch in (1, 64):
        shape = [batch] + [int(d) for d in sessions[0].get_inputs()[0].shape[1:]]
        x = rng.standard_normal(shape, dtype=np.float32)
        feeds = [{model.get_inputs()[0].name: x} for model in sessions]
        for model, feed in zip(sessions, feeds):
            for _ in range(args.warmup):
                model.run(None, feed)
        times = [[] for _ in sessions]
        for _ in range(args.repeats):
            for index, (model, feed) in enumerate(zip(sessions, feeds)):
                start = time.perf_counter()
                model.run(None, feed)
                times[index].append(1000 * (time.perf_counter() - start))
        baseline = statistics.median(times[0])
        for path, samples in zip(args.models, times):
            q1, median, q3 = statistics.quantiles(samples, n=4)
            print(
                f"batch {batch:>2} {path}: median {statistics.median(samples):.2f} ms "
                f"(IQR {q1:.2f}-{q3:.2f}), x{baseline / statistics.median(samples):.2f} vs the first"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
