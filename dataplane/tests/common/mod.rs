//! Helpers shared by the dataplane's integration tests (each test crate uses some of them).
#![allow(dead_code)]

pub mod v6;

/// splitmix64: a small, fixed, deterministic source of test data, so a failing randomised
/// test reproduces exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Bytes from hexadecimal text.
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// The frame named `name` in a fixture table (`NAME HEX` per line, produced by scapy).
pub fn fixture(table: &str, name: &str) -> Vec<u8> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("fixture {name} missing"));
    hex(line
        .split_whitespace()
        .nth(1)
        .expect("a frame after the name"))
}
