//! A fast, deterministic 64-bit hasher for situation fingerprints and actor
//! histories: the same input gives the same hash on every run and every machine.
//!
//! std's `DefaultHasher` is deterministic too, but SipHash costs more than the rest
//! of a step; this folds each word through a 64x64->128-bit multiply (as wyhash
//! does), which mixes well enough that a collision among millions of situations is
//! vanishingly unlikely.

use std::hash::Hasher;

const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Clone, Copy, Debug, Default)]
pub struct StableHasher(u64);

impl StableHasher {
    fn mix(&mut self, word: u64) {
        let m = u128::from(self.0 ^ word ^ K) * u128::from(K.rotate_left(17) | 1);
        #[allow(clippy::cast_possible_truncation)] // folding the halves is the point
        let (lo, hi) = (m as u64, (m >> 64) as u64);
        self.0 = lo ^ hi;
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        // murmur3's finalizer, so nearby states land far apart.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// One value's hash by `StableHasher`, for a part of a situation hashed alone.
pub fn stable_hash<T: std::hash::Hash + ?Sized>(v: &T) -> u64 {
    let mut h = StableHasher::default();
    v.hash(&mut h);
    h.finish()
}

/// A "hasher" that keeps every byte fed to it: the full input of a fingerprint,
/// stored beside it when fingerprints are checked for collisions.
#[derive(Clone, Debug, Default)]
pub struct Recorder(Vec<u8>);

impl Recorder {
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl Hasher for Recorder {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        // Never used as a hash; the bytes are the point.
        let mut h = StableHasher::default();
        h.write(&self.0);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    const PINNED_42: u64 = 10_956_039_932_415_468_784;
    const PINNED_VMM_7: u64 = 3_064_934_025_678_066_618;

    fn h(v: impl Hash) -> u64 {
        let mut s = StableHasher::default();
        v.hash(&mut s);
        s.finish()
    }

    #[test]
    fn same_input_same_hash_and_small_changes_spread() {
        assert_eq!(h(("vmm", 7u64)), h(("vmm", 7u64)));
        assert_ne!(h(("vmm", 7u64)), h(("vmm", 6u64)));
        assert_ne!(h([1u8, 2]), h([1u8, 2, 0]));
        assert_ne!(h((1u64, 2u64)), h((2u64, 1u64)));
        // Pinned values: a fingerprint must not change between builds or machines.
        assert_eq!(h(42u64), PINNED_42);
        assert_eq!(h(("vmm", 7u64)), PINNED_VMM_7);
        let distinct: std::collections::BTreeSet<u64> = (0u64..10_000).map(h).collect();
        assert_eq!(distinct.len(), 10_000);
    }
}
