#!/usr/bin/env bash
# Installs everything anygpt-jax needs on a fresh Debian/Ubuntu machine or TPU VM:
# system packages (audio I/O, speech synthesis and MIDI rendering for the demo corpus, a
# headless browser for the chat page's tests),
# then this package with its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium and its WebDriver: the serving tests drive the chat page in a headless browser.
SYSTEM_PACKAGES=(libsndfile1 espeak-ng fluidsynth fluid-soundfont-gm chromium chromium-driver)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The demo runs the fluidsynth command itself; its package enables a per-user synth service
# (a sound server in every login session) that nothing here uses.
if [ -e /etc/systemd/user/default.target.wants/fluidsynth.service ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO rm -f /etc/systemd/user/default.target.wants/fluidsynth.service
fi

# torch is pinned to the CPU build these machines install offline; see setup.py.
python -m pip install -q -e ".[test]"
# See NO_DEPS_REQUIRE in setup.py: these must not pull torchvision (and with it another torch).
python -m pip install -q --no-deps "speechtokenizer==1.0.1" "timm>=1.0,<2" "diffusers>=0.30,<1" \
  "soundstorm-pytorch==0.6.1" "hyper-connections==0.1.15" \
  "open_clip_torch==3.3.0" "laion_clap==1.1.7"
