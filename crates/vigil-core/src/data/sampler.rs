//! Minibatches drawn from a pool of indices, cycling through it and reshuffling at each pass:
//! how the attacks' trigger searches draw batches, and how MAD-FA's sampler cycles its
//! sampling set.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// An endless source of batches over `pool`: each pass is a fresh seeded permutation; a batch
/// never straddles two passes (the tail of a pass shorter than a batch is skipped).
#[derive(Debug, Clone)]
pub struct CycledShuffle {
    pool: Vec<usize>,
    cursor: usize,
    rng: StdRng,
}

impl CycledShuffle {
    /// Batches over `pool`, shuffled with a generator seeded by `seed`.
    pub fn new(pool: Vec<usize>, seed: u64) -> Self {
        let cursor = pool.len();
        Self {
            pool,
            cursor,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next batch of `size` indices (fewer only if the pool itself is smaller).
    pub fn next_batch(&mut self, size: usize) -> &[usize] {
        let size = size.min(self.pool.len());
        if self.cursor + size > self.pool.len() {
            self.pool.shuffle(&mut self.rng);
            self.cursor = 0;
        }
        let start = self.cursor;
        self.cursor += size;
        &self.pool[start..self.cursor]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pass_is_a_permutation_and_seeds_repeat() {
        let mut a = CycledShuffle::new((0..10).collect(), 3);
        let mut seen: Vec<usize> = Vec::new();
        for _ in 0..5 {
            seen.extend_from_slice(a.next_batch(2));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let mut b = CycledShuffle::new((0..10).collect(), 3);
        let mut c = CycledShuffle::new((0..10).collect(), 3);
        assert_eq!(b.next_batch(4).to_vec(), c.next_batch(4).to_vec());
        // 10 = 4 + 4 + (2 skipped): the third batch starts a new pass.
        b.next_batch(4);
        let third = b.next_batch(4).to_vec();
        assert_eq!(third.len(), 4);
        assert!(CycledShuffle::new(vec![1, 2], 0).next_batch(5).len() == 2);
    }
}
