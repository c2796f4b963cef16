//! The deterministic content `GET /blob?size=N` serves, shared by the test peer (which sends it)
//! and the tests (which compare a download against it), so both sides agree without a file.
//!
//! std only: the test peer includes this file with `#[path]`, so it must not use the library.

/// Seed of the generator; a constant so every run and every backend serves identical bytes.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// An endless stream of pseudo-random bytes (xorshift64), identical for every instance.
#[derive(Debug, Clone)]
pub struct Blob {
    state: u64,
}

impl Default for Blob {
    fn default() -> Self {
        Blob { state: SEED }
    }
}

impl Blob {
    /// Fills `buf` with the next `buf.len()` bytes. Callers must fill whole multiples of 8
    /// except for the last chunk: a partial word is discarded, not carried over.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// The first `size` bytes of the blob.
pub fn blob_bytes(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    Blob::default().fill(&mut v);
    v
}
