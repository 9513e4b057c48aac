//! A small deterministic random number generator with a stable, documented algorithm.
//!
//! Prepared data and masks must be the same on every machine and every bertkit version for a
//! given seed, so we do not use `rand`'s `StdRng` (whose algorithm may change between releases).
//! This is SplitMix64 (Steele, Lea & Flood 2014): 64 bits of state, passes BigCrush, and a
//! state that is one `u64`, so it is trivially saved in a checkpoint. Independent streams for
//! (seed, epoch, example) come from [`Rng::derive`], which hashes the parts into a new state.

/// SplitMix64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A generator for one item of a stream, e.g. `Rng::derive(&[seed, epoch, shard, row])`.
    /// Different part lists give independent-looking streams.
    pub fn derive(parts: &[u64]) -> Self {
        let mut h = 0x243F_6A88_85A3_08D3u64; // digits of pi: any fixed start works
        for &p in parts {
            h = mix(h ^ mix(p.wrapping_add(GOLDEN)));
        }
        Rng { state: h }
    }

    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n) (Lemire's multiply-shift; the bias is below 2^-64 * n).
    /// `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform integer in [lo, hi], both inclusive, like Python's `random.randint`.
    pub fn range_inclusive(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        lo + self.below((hi - lo) as u64 + 1) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // Reference outputs of SplitMix64 seeded with 1234567 (from the public C reference).
        let mut r = Rng::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        assert_eq!(r.next_u64(), 9817491932198370423);
    }

    #[test]
    fn uniform_ranges() {
        let mut r = Rng::new(7);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            let x = r.range_inclusive(2, 6);
            counts[x - 2] += 1;
            let f = r.f64();
            assert!((0.0..1.0).contains(&f));
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn derived_streams_differ_and_repeat() {
        let a = Rng::derive(&[1, 0, 5]).next_u64();
        assert_eq!(a, Rng::derive(&[1, 0, 5]).next_u64());
        assert_ne!(a, Rng::derive(&[1, 1, 5]).next_u64());
        assert_ne!(a, Rng::derive(&[1, 5, 0]).next_u64());
        assert_ne!(a, Rng::derive(&[1, 0, 5, 0]).next_u64());
    }
}
