#!/usr/bin/env bash
# Builds the Debian package target/debian/oxlb_<version>_<arch>.deb with nothing but cargo,
# binutils and dpkg-deb (no debhelper): release binaries, the systemd unit, the config and
# defaults files (conffiles), the maintainer scripts, md5sums and a changelog, staged in a
# temporary tree. deploy/debian/postinst says what installing does (and does not: start oxlb).
# Usage: bash deploy/debian/build.sh   (prints the path of the package on its last line)
set -euo pipefail
# The staged tree's modes are the installed modes: directories 0755 whatever the caller's umask.
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$repo/deploy/debian"
target=${CARGO_TARGET_DIR:-$repo/target}
# Whoever distributes the package. The default is a placeholder, which lintian reports
# (bogus-mail-host) until OXLB_MAINTAINER="Name <address>" names a real one.
maintainer=${OXLB_MAINTAINER:-oxlb developers <oxlb@localhost>}

for tool in cargo dpkg-deb dpkg strip objdump gzip md5sum; do
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
install -D -m 0644 "$here/lintian-overrides" "$stage/usr/share/lintian/overrides/oxlb"
# Debian wants a changelog with every package (changelog.gz: a native package, no Debian
# revision); this one names the build, dated by the last commit (or SOURCE_DATE_EPOCH) so that
# rebuilding the same tree gives the same package.
when=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
{
    printf 'oxlb (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Built from the oxlb repository (%s).\n\n' \
        "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo 'no git')"
    printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$when")"
} | gzip -9n >"$stage/usr/share/doc/oxlb/changelog.gz"
chmod 0644 "$stage/usr/share/doc/oxlb/changelog.gz"

install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
printf '/etc/oxlb/oxlb.toml\n/etc/default/oxlb\n' >"$stage/DEBIAN/conffiles"
# dpkg --verify checks the installed files against these (conffiles have their own sums).
(cd "$stage" && find usr lib -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) \
    >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/conffiles"

# What the binaries link (ldd: libelf and zlib for the vendored libxdp/libbpf, libgcc_s, libc),
# libc at the newest symbol version they use. deb-systemd-invoke, which the maintainer scripts
# call, is in init-system-helpers, an Essential package (not named in Depends).
glibc=$(objdump -T "$oxlb" "$oxlbctl" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: oxlb
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: libc6 (>= $glibc), libgcc-s1, libelf1, zlib1g
Section: net
Priority: optional
Description: L4 service load balancer (XDP + AF_XDP)
 oxlb steers the packets of load-balanced services (VIPs) from an XDP program
 to AF_XDP sockets, where per-core workers do NAT, connection tracking and
 endpoint selection. It is configured over a REST API compatible with
 loxilb's /netlox/v1, or with oxlbctl.
 .
 The systemd unit oxlb.service serves the interfaces named in
 /etc/default/oxlb. Installing the package starts nothing.
CONTROL

dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
