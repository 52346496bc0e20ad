#!/usr/bin/env bash
# Builds the Debian package of MedLedger from an already built binary, with dpkg-deb only (no
# cargo-deb: it takes minutes to install), and writes a CycloneDX SBOM beside it.
#
#   systemd/build-deb.sh [--bin target/release/medledger] [--out target/debian]
#                        [--version V] [--compress xz|gzip|none]
#
# Writes OUT/medledger_<version>_<arch>.deb and OUT/medledger_<version>_<arch>.cdx.json and
# prints the package's path. The version defaults to the binary's own (`medledger --version`).
#
# What the package does: /usr/bin/medledger, the unit in /lib/systemd/system, sysusers.d and
# tmpfiles.d snippets, a commented example config /etc/medledger/gateway.toml (a conffile: an
# upgrade never overwrites the site's edits). postinst creates the user and the state
# directory and enables the unit but does not start it: an unconfigured gateway stays down
# (the unit's ConditionPathExists= also keeps it down at boot until `medledger ca init`).
# Removing the package stops the gateway; purging it keeps /var/lib/medledger (the ledger is
# never deleted by a package manager).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="$root/target/release/medledger"
out="$root/target/debian"
version=""
compress="xz"

die() { echo "build-deb: $*" >&2; exit 64; }

while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="${2:?--bin needs a path}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --version) version="${2:?--version needs a value}"; shift 2 ;;
    --compress) compress="${2:?--compress needs xz, gzip or none}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done

[ -x "$bin" ] || die "binary $bin: not found or not executable (cargo build --release -p medledger-gateway)"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
case "$compress" in xz|gzip|none) ;; *) die "--compress $compress: must be xz, gzip or none" ;; esac
if [ -z "$version" ]; then
  # `medledger 1.2.3`
  version="$("$bin" --version | awk '{print $2}')"
fi
[[ "$version" =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || die "version '$version': not a Debian version"
arch="$(dpkg --print-architecture)"

# Runtime dependencies of the binary: dpkg-shlibdeps where dpkg-dev is installed, otherwise the
# newest glibc symbol version it uses (it links only libc, libm and libgcc_s).
depends=""
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
  shl="$(mktemp -d)"
  mkdir -p "$shl/debian"
  printf 'Source: medledger\n\nPackage: medledger\nArchitecture: any\n' >"$shl/debian/control"
  depends="$(cd "$shl" && dpkg-shlibdeps -O -e "$bin" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')" || depends=""
  rm -rf "$shl"
fi
if [ -z "$depends" ]; then
  glibc="$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -n1)"
  depends="libc6 (>= ${glibc:-2.34}), libgcc-s1"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pkg"

install_file() { # mode source destination-inside-the-package
  install -D -m "$1" "$2" "$pkg/$3"
}
install_file 0755 "$bin" usr/bin/medledger
install_file 0644 "$here/medledger-gateway.service" lib/systemd/system/medledger-gateway.service
# the broker's CRL hook: shipped, not enabled (only where the site broker runs on this machine)
install_file 0644 "$here/medledger-broker-crl.path" lib/systemd/system/medledger-broker-crl.path
install_file 0644 "$here/medledger-broker-crl.service" lib/systemd/system/medledger-broker-crl.service
install_file 0644 "$here/medledger.sysusers.conf" usr/lib/sysusers.d/medledger.conf
install_file 0644 "$here/medledger.tmpfiles.conf" usr/lib/tmpfiles.d/medledger.conf
install_file 0644 "$here/gateway.toml" etc/medledger/gateway.toml
for doc in README.md docs/operations.md docs/identity.md docs/ledger-format.md; do
  [ -f "$root/$doc" ] && install_file 0644 "$root/$doc" "usr/share/doc/medledger/$(basename "$doc")"
done
cat >"$stage/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: medledger

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
 The licenses of the Rust crates linked into /usr/bin/medledger are listed in the
 CycloneDX SBOM published beside this package.
EOF
install_file 0644 "$stage/copyright" usr/share/doc/medledger/copyright

mkdir -p "$pkg/DEBIAN"
installed_kb="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
cat >"$pkg/DEBIAN/control" <<EOF
Package: medledger
Version: $version
Architecture: $arch
Maintainer: MedLedger maintainers <maintainers@medledger.invalid>
Installed-Size: $installed_kb
Depends: $depends, systemd | adduser
Section: misc
Priority: optional
Description: verifiable maintenance ledger for hospital medical devices
 MedLedger is an edge gateway that records calibrations, repairs, preventive
 maintenance and firmware updates of medical devices in a replicated,
 signed, append-only ledger (Merkle tree, Raft between gateways), fed by
 MQTT and Modbus telemetry and by staff over mutual TLS.
 .
 The package installs the medledger-gateway systemd unit enabled but not
 started; it starts once /etc/medledger/gateway.toml is set and
 "medledger ca init" has written the gateway's certificate.
EOF
echo "/etc/medledger/gateway.toml" >"$pkg/DEBIAN/conffiles"

cat >"$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# medledger postinst: the user and the state directory, then enable (never start) the unit.
set -e
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers /usr/lib/sysusers.d/medledger.conf
    elif ! getent passwd medledger >/dev/null; then
        adduser --system --group --home /var/lib/medledger --no-create-home \
            --gecos "MedLedger gateway" medledger
    fi
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/medledger.conf
    else
        install -d -m 0700 -o medledger -g medledger /var/lib/medledger
    fi
fi
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] || [ "$1" = abort-remove ]; then
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper unmask medledger-gateway.service >/dev/null || true
        # Enabled on a first install, as the admin left it on upgrades. Not started: see the
        # unit's ConditionPathExists= and docs/operations.md.
        if deb-systemd-helper --quiet was-enabled medledger-gateway.service; then
            deb-systemd-helper enable medledger-gateway.service >/dev/null || true
        else
            deb-systemd-helper update-state medledger-gateway.service >/dev/null || true
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        # An upgrade restarts a gateway that was running (and only one that was running).
        if [ -n "$2" ]; then
            deb-systemd-invoke try-restart medledger-gateway.service >/dev/null || true
        fi
    fi
fi
exit 0
EOF
cat >"$pkg/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# medledger prerm: stop the gateway when the package is removed (SIGTERM: it drains first).
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop medledger-gateway.service >/dev/null || true
fi
exit 0
EOF
cat >"$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# medledger postrm. Purging keeps /var/lib/medledger and the user: the ledger and the node's
# key are the site's records, never deleted by a package manager.
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper mask medledger-gateway.service >/dev/null || true
fi
if [ "$1" = purge ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper purge medledger-gateway.service >/dev/null || true
    deb-systemd-helper unmask medledger-gateway.service >/dev/null || true
fi
exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums"
# Directories 0755 whatever the caller's umask.
find "$pkg" -type d -exec chmod 0755 {} +

mkdir -p "$out"
deb="$out/medledger_${version}_${arch}.deb"
level=()
[ "$compress" = none ] || level=(-z6)
dpkg-deb --root-owner-group -Z"$compress" "${level[@]}" --build "$pkg" "$deb" >/dev/null
python3 "$here/sbom.py" --version "$version" --deb "$deb" >"$out/medledger_${version}_${arch}.cdx.json"
echo "$deb"
