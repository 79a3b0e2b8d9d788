#!/usr/bin/env bash
# Times several builds of one criterion benchmark alternately, round after round, so that a noisy
# machine slows each build alike; prints one line per run: round, build, criterion's estimates.
#
#   bench/alternate.sh ROUNDS FILTER BENCH_BINARY...
#
# BENCH_BINARY: a copy of `target/release/deps/<bench>-<hash>` for each build (`cargo bench --bench
# train_step --no-run` prints the path). FILTER selects one benchmark, e.g.
# `swin_t_train_step_batch128/3x32x32_lambda0`. Each run warms up for 20 s, past the allocator's
# page-fault transient at the start of a process (BENCHMARKS.md, "CPU speed, session 19"), then
# measures for 15 s.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: bench/alternate.sh ROUNDS FILTER BENCH_BINARY..." >&2
    exit 2
fi
rounds=$1
filter=$2
shift 2
for binary in "$@"; do
    if [ ! -x "$binary" ]; then
        echo "bench/alternate.sh: $binary is not an executable bench binary" >&2
        exit 2
    fi
done
for round in $(seq 1 "$rounds"); do
    for binary in "$@"; do
        # awk reads the whole output: a reader that stopped at the first match would end the
        # benchmark with SIGPIPE, and `pipefail` would end this script without a word.
        estimate=$("$binary" --bench --warm-up-time 20 --measurement-time 15 "$filter" 2>&1 |
            awk '/time:/ && !found { sub(/.*time: */, ""); print; found = 1 }')
        if [ -z "$estimate" ]; then
            echo "bench/alternate.sh: $binary ran no benchmark matching $filter" >&2
            exit 1
        fi
        echo "$round $binary $estimate"
    done
done
