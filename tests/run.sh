#!/usr/bin/env bash
# The README's test command: installs what a fresh Debian machine lacks for the end-to-end tests
# (a real Mosquitto broker and its clients, OpenSSL, Python, systemd's tools, dpkg), then runs the
# whole test suite.
# Needs root (or sudo) only when something is missing. MEDLEDGER_LONG_TESTS=1 runs the long
# scenarios as well.
set -euo pipefail
cd "$(dirname "$0")/.."

# command:package pairs; a package is installed when its command is missing. systemd-analyze,
# systemd-sysusers and systemd-tmpfiles check the unit and the package (systemd need not run);
# dpkg-deb builds the package. chromium: the web page's browser tests (tests/it/web.rs).
need=()
for pkg in mosquitto:mosquitto mosquitto_pub:mosquitto-clients openssl:openssl python3:python3 \
  systemd-analyze:systemd dpkg-deb:dpkg strace:strace chromium:chromium; do
  command -v "${pkg%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pkg%%:*}" ] || need+=("${pkg##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
  # The package enables its own service; the tests start their own brokers on free ports.
  "${sudo[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

# The FHIR test (tests/it/registry.rs) validates against the R4 JSON schema with Python's
# jsonschema package: Debian's, or PyPI's where python3 is not Debian's own.
if ! python3 -c 'import jsonschema' >/dev/null 2>&1; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  { "${sudo[@]}" apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      python3-jsonschema; } || true
  python3 -c 'import jsonschema' >/dev/null 2>&1 || python3 -m pip install -q jsonschema
fi

# The power-loss tests (tests/powerloss.rs) mount a FUSE file system through /dev/fuse as root.
if [ ! -e /dev/fuse ]; then
  if [ "$(id -u)" -eq 0 ]; then modprobe fuse 2>/dev/null || true; else sudo modprobe fuse 2>/dev/null || true; fi
fi

cargo test --workspace "$@"
