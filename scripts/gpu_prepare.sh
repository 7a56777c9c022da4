#!/usr/bin/env bash
# Here, where the package index is: the onnxruntime-gpu wheel for the GPU machine (Python 3.12,
# manylinux x86-64), at the version pyproject.toml pins, split into parts small enough to travel
# with one device command each (at most 64 MiB of files per command, the repo included), and
# SHA256SUMS for the wheel and every part. docs/gpu-check.md says how the parts travel and
# scripts/gpu_remote.sh joins them there.
#
#   scripts/gpu_prepare.sh [--wheel FILE] [--part-size 60m] [--dest gpu-wheel]
#
# --wheel: split FILE instead of downloading (a wheel fetched before, or a stand-in for tests).
# --part-size: as split -b takes it. --dest: the folder (git-ignored); its parts/ and SHA256SUMS
# are replaced, nothing else in it is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

wheel="" part_size="60m" dest="gpu-wheel"
while [ $# -gt 0 ]; do
    case "$1" in
        --wheel) wheel="${2:?--wheel: expected a file}"; shift 2 ;;
        --part-size) part_size="${2:?--part-size: expected a size such as 60m}"; shift 2 ;;
        --dest) dest="${2:?--dest: expected a folder}"; shift 2 ;;
        *) echo "gpu_prepare.sh: error: unknown argument $1 (expected --wheel, --part-size or --dest)" >&2; exit 2 ;;
    esac
done

if [ -z "$wheel" ]; then
    # the requirement exactly as pyproject.toml pins it: pip picks the newest release inside the range
    requirement=$(grep -o '"onnxruntime-gpu[^"]*"' pyproject.toml | tr -d '"')
    [ -n "$requirement" ] || { echo "gpu_prepare.sh: error: no onnxruntime-gpu requirement in pyproject.toml" >&2; exit 1; }
    python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
    mkdir -p "$dest/download"
    # pip matches each manylinux tag exactly: name the ones onnxruntime-gpu wheels carry
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dest/download" "$requirement"
    wheel=$(ls -t "$dest"/download/onnxruntime_gpu-*cp312*.whl | head -n 1)
fi
[ -f "$wheel" ] || { echo "gpu_prepare.sh: error: --wheel: $wheel is not a file" >&2; exit 2; }
name=$(basename "$wheel")

mkdir -p "$dest/parts"
find "$dest/parts" -maxdepth 1 -type f -name '*.part-*' -delete  # the parts an earlier run wrote
split -b "$part_size" -d -a 2 "$wheel" "$dest/parts/$name.part-"
{
    echo "$(sha256sum < "$wheel" | cut -d' ' -f1)  $name"
    (cd "$dest" && sha256sum parts/*)
} > "$dest/SHA256SUMS.partial"
mv "$dest/SHA256SUMS.partial" "$dest/SHA256SUMS"

echo "$name: $(stat -c %s "$wheel") bytes in $(ls "$dest/parts" | wc -l) parts under $dest/parts"
echo "device calls (docs/gpu-check.md), one per part, back to back (the machine keeps files about 30 s after a call):"
parts=("$dest"/parts/*)
for index in "${!parts[@]}"; do
    part=${parts[$index]}
    if [ "$index" -lt $((${#parts[@]} - 1)) ]; then
        echo "  carry [\"$dest/SHA256SUMS\", \"$part\"]  command: bash scripts/gpu_remote.sh receive --from $dest"
    else
        echo "  carry [\"$dest/SHA256SUMS\", \"$part\", \"artifacts\"]  command: bash scripts/gpu_remote.sh receive --from $dest && bash scripts/gpu_remote.sh run --out \"\$OUT\""
    fi
done
