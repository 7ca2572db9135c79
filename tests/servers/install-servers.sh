#!/usr/bin/env bash
# Install the Debian packages of the real servers the tests start on loopback.
# The tests start and stop each server themselves, with their own configuration;
# the system services these packages install are stopped and left disabled.
set -euo pipefail

PACKAGES=(nginx-light apache2 lighttpd proftpd-core proftpd-mod-crypto openssh-server openssl)
# The distributed service tests: the broker and the shared state store.
PACKAGES+=(redis-server postgresql)
# The map page's tests: headless Chromium driven by selenium through chromedriver.
PACKAGES+=(chromium chromium-driver)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # Do not let the packages start their system services: the tests start their own.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    $SUDO rm -f /usr/sbin/policy-rc.d
fi
