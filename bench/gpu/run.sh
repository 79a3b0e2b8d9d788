#!/usr/bin/env bash
# The GPU benchmark, run on the lent accelerator machine from the repository root, after
# bench/gpu/prepare.sh here, with `.gpu-carry`, `.gl` and `.whl` carried. Runs lacoot (wgpu, on
# the machine's GPU through Vulkan) and PyTorch + POT (CUDA) one after the other, and writes
# everything to $OUT (or /tmp/lacoot-gpu when unset). With `--cpu-scaling`, it also times the
# CPU training step of both at 2 and 16 threads.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/lacoot-gpu}"
mkdir -p "$out" /tmp/lacoot-bin
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
python=/opt/torch/.venv/bin/python3
[ -x "$python" ] || python=python3
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site
for packed in .gpu-carry/*.xz; do
    name=$(basename "$packed" .xz)
    xz -dc "$packed" >"/tmp/lacoot-bin/$name" && chmod +x "/tmp/lacoot-bin/$name"
done
export LACOOT_DEVICE=wgpu XDG_RUNTIME_DIR=/tmp
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
echo "== lacoot (wgpu): eval latency" | tee -a "$out/log.txt"
/tmp/lacoot-bin/eval_forward 2>&1 | tee "$out/lacoot_eval.json"
echo "== lacoot (wgpu): training step, batch 128, full width, lambda 0 and 5" | tee -a "$out/log.txt"
/tmp/lacoot-bin/train_step --bench --warm-up-time 3 --measurement-time 10 \
    "resnet18_train_step_batch128/3x32x32" 2>&1 | tee "$out/lacoot_train_step.txt"
echo "== lacoot (wgpu): max-sliced forward + backward" | tee -a "$out/log.txt"
/tmp/lacoot-bin/mswd --bench --warm-up-time 2 --measurement-time 5 \
    "max_sliced_forward_backward/16384" 2>&1 | tee "$out/lacoot_mswd.txt"
echo "== PyTorch + POT (CUDA)" | tee -a "$out/log.txt"
"$python" bench/gpu/torch_cuda.py 2>&1 | tee "$out/torch_cuda.json"
if [ "${1:-}" = "--cpu-scaling" ]; then
    for threads in 2 16; do
        echo "== CPU training step at $threads threads" | tee -a "$out/log.txt"
        LACOOT_DEVICE=cpu RAYON_NUM_THREADS=$threads /tmp/lacoot-bin/train_step --bench \
            --warm-up-time 2 --measurement-time 10 "resnet18_train_step_batch128/3x32x32_lambda0" \
            2>&1 | tee "$out/lacoot_cpu_${threads}.txt"
        "$python" bench/torch_train_step.py --threads "$threads" 2>&1 | tee "$out/torch_cpu_${threads}.json"
    done
fi
