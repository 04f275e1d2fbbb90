#!/usr/bin/env bash
# Installs everything EUSVoiceLabel needs on a fresh Debian/Ubuntu machine:
# the speech engines the synthetic-cohort generator uses (Debian packages) and the
# Python package itself (editable) with its pinned torch.  Pass --test to add the
# test dependencies: the [test] extra (pytest, slicer-core: Slicer's MRML from PyPI) and
# Mesa's EGL for offscreen rendering of Slicer's slice views (the tests and
# scripts/render_slicer_views.py).  Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
apt_pkgs=(flite festival festvox-kallpc16k festvox-us-slt-hts espeak-ng)
if [[ "${1:-}" == "--test" ]]; then
  extras="[test]"
  apt_pkgs+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if (( ${#missing[@]} )); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e ".${extras}"
# pyenv keeps console scripts behind shims that need a rehash.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
