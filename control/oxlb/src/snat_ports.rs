//! The SNAT port range of one-arm and full-NAT flows: parsing the flag, and keeping the kernel
//! from handing out the same ports for the host's own connections.
//!
//! The XDP program steers every packet to our addresses with a destination port in the range
//! to the workers; a host connection using such a port as its source would lose its replies.
//! `net.ipv4.ip_local_reserved_ports` (per network namespace) makes the kernel skip them for
//! ephemeral ports.

use oxlb_dataplane::snapshot::PortRange;

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Parses `FIRST-LAST`.
pub fn parse(text: &str) -> Result<PortRange, String> {
    let bad = || {
        format!("--snat-ports {text:?}: expected FIRST-LAST, e.g. 40000-49999, with 1024 <= FIRST <= LAST <= 65535")
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let first: u16 = a.trim().parse().map_err(|_| bad())?;
    let last: u16 = b.trim().parse().map_err(|_| bad())?;
    if first < 1024 || first > last {
        return Err(bad());
    }
    Ok(PortRange { first, last })
}

/// Adds the range to the kernel's reserved ports (keeping what is there).
pub fn reserve(range: PortRange) -> Result<(), String> {
    let current =
        std::fs::read_to_string(RESERVED).map_err(|e| format!("cannot read {RESERVED}: {e}"))?;
    let ours = format!("{}-{}", range.first, range.last);
    let mut parts: Vec<&str> = current
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .collect();
    if parts.contains(&ours.as_str()) {
        return Ok(());
    }
    parts.push(&ours);
    std::fs::write(RESERVED, parts.join(","))
        .map_err(|e| format!("cannot reserve ports {ours} in {RESERVED}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_parses_and_nonsense_is_refused_with_an_example() {
        assert_eq!(
            parse("40000-49999"),
            Ok(PortRange {
                first: 40000,
                last: 49999
            })
        );
        for bad in ["", "40000", "5-10", "50000-40000", "a-b", "40000-70000"] {
            assert!(
                parse(bad).unwrap_err().contains("e.g. 40000-49999"),
                "{bad}"
            );
        }
    }
}
