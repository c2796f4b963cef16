#!/usr/bin/env bash
# Builds the Debian package target/debian/oxlb_<version>_<arch>.deb with nothing but cargo,
# binutils and dpkg-deb (no debhelper): release binaries, the systemd unit, the config and
# defaults files (conffiles) and the maintainer scripts, staged in a temporary tree.
# Usage: bash deploy/debian/build.sh   (prints the path of the package on its last line)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$repo/deploy/debian"
target=${CARGO_TARGET_DIR:-$repo/target}

for tool in cargo dpkg-deb dpkg strip objdump; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: $tool not found; run deploy/setup.sh (binutils, dpkg) and install the Rust toolchain" >&2
        exit 1
    fi
done

cd "$repo"
cargo build --release -p oxlb -p oxlbctl

oxlb="$target/release/oxlb"
oxlbctl="$target/release/oxlbctl"
version=$("$oxlb" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
out="$target/debian"
deb="$out/oxlb_${version}_${arch}.deb"

mkdir -p "$out"
stage=$(mktemp -d "$out/stage.XXXXXX")
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$oxlb" "$stage/usr/bin/oxlb"
install -D -m 0755 "$oxlbctl" "$stage/usr/bin/oxlbctl"
# Debug info is most of the size; the symbol table stays, so panics still name functions.
strip --strip-debug "$stage/usr/bin/oxlb" "$stage/usr/bin/oxlbctl"
install -D -m 0644 "$repo/deploy/systemd/oxlb.service" "$stage/lib/systemd/system/oxlb.service"
install -D -m 0644 "$here/oxlb.toml" "$stage/etc/oxlb/oxlb.toml"
install -D -m 0644 "$here/default" "$stage/etc/default/oxlb"
install -D -m 0644 "$repo/README.md" "$stage/usr/share/doc/oxlb/README.md"
install -D -m 0644 "$here/copyright" "$stage/usr/share/doc/oxlb/copyright"

install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
printf '/etc/oxlb/oxlb.toml\n/etc/default/oxlb\n' >"$stage/DEBIAN/conffiles"

# What the binaries link (ldd: libelf and zlib for the vendored libxdp/libbpf, libgcc_s, libc),
# libc at the newest symbol version they use.
glibc=$(objdump -T "$oxlb" "$oxlbctl" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: oxlb
Version: $version
Architecture: $arch
Maintainer: oxlb developers <oxlb@localhost>
Installed-Size: $installed_size
Depends: libc6 (>= $glibc), libgcc-s1, libelf1, zlib1g
Section: net
Priority: optional
Description: L4 service load balancer (XDP + AF_XDP)
 oxlb steers the packets of load-balanced services (VIPs) from an XDP program to AF_XDP
 sockets, where per-core workers do NAT, connection tracking and endpoint selection. It is
 configured over a REST API compatible with loxilb's /netlox/v1, or with oxlbctl.
 .
 The systemd unit oxlb.service serves the interfaces named in /etc/default/oxlb.
CONTROL

dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
