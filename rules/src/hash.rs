//! A fast keyed hasher for the engine's path index.
//!
//! Every update costs one lookup by resource path, so the hash matters: SipHash (the std default) spends
//! more time hashing three short names than the lookup spends finding them. This is a folded-multiply hash
//! (the construction of foldhash and aHash's fallback) with keys drawn from the std `RandomState` per
//! engine, so collisions cannot be precomputed from device names.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
};

const MULTIPLIER: u64 = 0x5851_F42D_4C95_7F2D;

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a).wrapping_mul(u128::from(b));
    (full as u64) ^ ((full >> 64) as u64)
}

/// Up to 7 bytes as a word, without a variable-length copy: overlapping fixed-size reads.
#[inline]
fn tail(rest: &[u8]) -> u64 {
    let len = rest.len();
    if len >= 4 {
        let head = rest.first_chunk::<4>().map_or(0, |b| u32::from_le_bytes(*b));
        let last = rest.last_chunk::<4>().map_or(0, |b| u32::from_le_bytes(*b));
        (u64::from(head) << 32) | u64::from(last)
    } else if len > 0 {
        let byte = |i: usize| u64::from(rest.get(i).copied().unwrap_or(0));
        (byte(0) << 16) | (byte(len / 2) << 8) | byte(len - 1)
    } else {
        0
    }
}

/// Builds [`PathHasher`]s with keys chosen at random once per engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathHashBuilder {
    seed: u64,
    key: u64,
}

impl Default for PathHashBuilder {
    fn default() -> Self {
        let random = RandomState::new();
        let seed = random.hash_one(0x0123_4567_89AB_CDEFu64);
        let key = random.hash_one(0xFEDC_BA98_7654_3210u64) | 1;
        PathHashBuilder { seed, key }
    }
}

impl BuildHasher for PathHashBuilder {
    type Hasher = PathHasher;

    fn build_hasher(&self) -> PathHasher {
        PathHasher { state: self.seed, key: self.key }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathHasher {
    state: u64,
    key: u64,
}

impl PathHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.state = folded_multiply(self.state ^ word, self.key ^ MULTIPLIER);
    }
}

impl Hasher for PathHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            if let Ok(word) = <[u8; 8]>::try_from(chunk) {
                self.mix(u64::from_le_bytes(word));
            }
        }
        // The length keeps "ab" + "c" apart from "a" + "bc".
        self.mix(tail(chunks.remainder()) ^ ((bytes.len() as u64) << 56));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        folded_multiply(self.state, self.key.rotate_left(23))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn distinct_paths_hash_apart() {
        let builder = PathHashBuilder::default();
        let mut seen = HashSet::new();
        for p in 0..100 {
            for r in 0..100 {
                let path = format!("p{p}/svc/r{r}");
                assert!(seen.insert(builder.hash_one(path.as_str())), "collision on {path}");
            }
        }
        assert_ne!(builder.hash_one(("ab", "c")), builder.hash_one(("a", "bc")));
    }
}
