#!/usr/bin/env bash
# There, on the GPU machine (no package index, no TensorFlow; numpy, onnx, a CPU onnxruntime and
# NVIDIA's CUDA 13 pip packages): gather the onnxruntime-gpu wheel's parts over several device
# calls, join and install it, check that ONNX Runtime really puts CUDA first, and run the check.
#
#   bash scripts/gpu_remote.sh receive [--from gpu-wheel]   copy the parts this call brought (each
#                                   checked against SHA256SUMS) to $GPU_STATE_DIR; list what is there
#   bash scripts/gpu_remote.sh install [--dry-run]          join the parts, check the wheel's sha256,
#                                   pip install --no-deps --target $GPU_STATE_DIR/site
#   bash scripts/gpu_remote.sh run [--dry-run] [--out DIR]  install if needed, then with that folder
#                                   first on PYTHONPATH: preload_dlls, CUDAExecutionProvider first or
#                                   stop, then scripts/gpu_check.py --provider cuda --out DIR
#                                   (default: $OUT where the device tool sets it, else docs)
#
# $GPU_STATE_DIR (default /tmp/focalgraph-gpu) lies outside the repo's copy, which each call
# replaces. --dry-run joins and checks but installs and runs nothing: it prints those commands.
set -euo pipefail
state=${GPU_STATE_DIR:-/tmp/focalgraph-gpu}
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)

fail() { echo "gpu_remote.sh: error: $*" >&2; exit 1; }
wanted_parts() { grep '  parts/' "$state/SHA256SUMS" | sed 's|.*  parts/||'; }
wheel_name() { grep -v '  parts/' "$state/SHA256SUMS" | head -n 1 | sed 's|.*  ||'; }
hash_of() { sha256sum < "$1" | cut -d' ' -f1; }
expected_hash() { grep "  $1\$" "$state/SHA256SUMS" | head -n 1 | cut -d' ' -f1; }

receive() {
    local from="gpu-wheel" bad=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --from) from="${2:?--from: expected a folder}"; shift 2 ;;
            *) echo "gpu_remote.sh receive: error: unknown argument $1 (expected --from)" >&2; exit 2 ;;
        esac
    done
    [ -f "$from/SHA256SUMS" ] || fail "receive: $from/SHA256SUMS is missing (carry it with every part)"
    mkdir -p "$state/parts"
    if [ -f "$state/SHA256SUMS" ] && ! cmp -s "$from/SHA256SUMS" "$state/SHA256SUMS"; then
        fail "receive: $from/SHA256SUMS is not the one the parts already held belong to ($state/SHA256SUMS); empty $state to start over"
    fi
    cp "$from/SHA256SUMS" "$state/SHA256SUMS"
    for part in "$from"/parts/*.part-*; do
        [ -f "$part" ] || continue
        local name; name=$(basename "$part")
        if [ "$(hash_of "$part")" != "$(expected_hash "parts/$name")" ]; then
            echo "gpu_remote.sh: error: receive: $name: sha256 differs from SHA256SUMS (damaged in transit?); not kept" >&2
            bad=1
            continue
        fi
        cp "$part" "$state/parts/$name.partial" && mv "$state/parts/$name.partial" "$state/parts/$name"
    done
    local missing=()
    echo "held in $state/parts:"
    for name in $(wanted_parts); do
        if [ -f "$state/parts/$name" ]; then echo "  $name $(stat -c %s "$state/parts/$name") bytes"; else missing+=("$name"); fi
    done
    echo "still missing: ${missing[*]:-none}"
    return $bad
}

install() {
    local dry_run=0
    [ "${1:-}" = "--dry-run" ] && dry_run=1
    [ -f "$state/SHA256SUMS" ] || fail "install: no parts received yet ($state/SHA256SUMS is missing)"
    local wheel; wheel=$(wheel_name)
    local missing=()
    for name in $(wanted_parts); do [ -f "$state/parts/$name" ] || missing+=("$name"); done
    [ ${#missing[@]} -eq 0 ] || fail "install: parts missing from $state/parts: ${missing[*]}"
    if [ ! -f "$state/$wheel" ]; then
        for name in $(wanted_parts); do cat "$state/parts/$name"; done > "$state/$wheel.partial"
        if [ "$(hash_of "$state/$wheel.partial")" != "$(expected_hash "$wheel")" ]; then
            rm -f "$state/$wheel.partial"
            fail "install: the joined $wheel's sha256 differs from SHA256SUMS"
        fi
        mv "$state/$wheel.partial" "$state/$wheel"
    fi
    echo "$wheel: sha256 OK"
    if [ $dry_run = 1 ]; then
        echo "would run: $python -m pip install --no-deps --target $state/site --no-index --no-compile $state/$wheel"
        return 0
    fi
    # into a folder of its own first: a failed install leaves no half-filled site/ behind
    rm -rf "$state/site.partial"
    "$python" -m pip install --quiet --no-deps --target "$state/site.partial" --no-index --no-compile "$state/$wheel"
    rm -rf "$state/site"
    mv "$state/site.partial" "$state/site"
    echo "installed into $state/site"
}

# Run with the installed onnxruntime-gpu first on the path: it must be the one imported, its
# CUDA provider must come first in a real session, or nothing else is worth running.
read -r -d '' PROVIDER_CHECK <<'PYTHON' || true
import sys
import onnxruntime
site = sys.argv[1]
print("onnxruntime", onnxruntime.__version__, "from", onnxruntime.__file__)
if not onnxruntime.__file__.startswith(site):
    sys.exit(f"gpu_remote.sh: error: onnxruntime was imported from {onnxruntime.__file__}, not from {site}")
onnxruntime.preload_dlls()  # CUDA and cuDNN from the nvidia-* pip packages
print("available providers:", onnxruntime.get_available_providers())
session = onnxruntime.InferenceSession(sys.argv[2], providers=[("CUDAExecutionProvider", {"use_tf32": "0"}),
                                                               "CPUExecutionProvider"])
print("session providers:", session.get_providers())
if session.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit("gpu_remote.sh: error: CUDAExecutionProvider is not first; ONNX Runtime fell back to the CPU")
PYTHON

run() {
    local dry_run=0 out="${OUT:+$OUT}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) dry_run=1; shift ;;
            --out) out="${2:?--out: expected a folder}"; shift 2 ;;
            *) echo "gpu_remote.sh run: error: unknown argument $1 (expected --dry-run or --out)" >&2; exit 2 ;;
        esac
    done
    out=${out:-docs}
    if [ ! -d "$state/site/onnxruntime" ]; then
        if [ $dry_run = 1 ]; then install --dry-run; else install; fi
    fi
    local path="$state/site:$repo${PYTHONPATH:+:$PYTHONPATH}"
    if [ $dry_run = 1 ]; then
        echo "would run: PYTHONPATH=$path $python -c '<import onnxruntime from $state/site; preload_dlls(); CUDAExecutionProvider first>'"
        echo "would run: PYTHONPATH=$path PROVIDER=cuda $python scripts/gpu_check.py --provider cuda --out $out"
        return 0
    fi
    cd "$repo"
    PYTHONPATH="$path" "$python" -c "$PROVIDER_CHECK" "$state/site" tests/data/identity.onnx
    PYTHONPATH="$path" PROVIDER=cuda PYTHONUNBUFFERED=1 "$python" scripts/gpu_check.py --provider cuda --out "$out"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    receive) receive "$@" ;;
    install) install "$@" ;;
    run) run "$@" ;;
    *) echo "gpu_remote.sh: error: expected receive, install or run (got '${command}')" >&2; exit 2 ;;
esac
