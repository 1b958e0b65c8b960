//! The loader's random streams: an epoch's order comes from `(seed, epoch)` alone, and each
//! sample's augmentation from `(seed, epoch, sample)` alone, so no batch depends on which
//! thread made it, on batch size, or on where an epoch was resumed.
//!
//! Keys are chained through SplitMix64's output mix and seed `cnnc_runtime::Rng`
//! (xoshiro256**), whose algorithms are frozen, so a seed gives the same order and the same
//! crops in every future version; the known-answer tests below pin them.

use cnnc_runtime::Rng;
use cnnc_runtime::rng::SplitMix64;

/// Domain constants keep the order's stream apart from the augmentations' for the same seed.
const ORDER_STREAM: u64 = 0x6f72_6465_7200_0001;
const AUGMENT_STREAM: u64 = 0x6175_676d_656e_7402;

/// A new key from a key and a value; SplitMix64's step is a bijection of `key ^ value`.
fn mix(key: u64, value: u64) -> u64 {
    SplitMix64::new(key ^ value).next_u64()
}

fn order_rng(seed: u64, epoch: u64) -> Rng {
    Rng::seed_from_u64(mix(mix(seed, ORDER_STREAM), epoch))
}

/// The stream of one sample's augmentation in one epoch.
pub(crate) fn sample_rng(seed: u64, epoch: u64, sample: usize) -> Rng {
    Rng::seed_from_u64(mix(mix(mix(seed, AUGMENT_STREAM), epoch), sample as u64))
}

/// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject); 0 when `n` is 0.
pub(crate) fn below(rng: &mut Rng, n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// The order in which an epoch visits samples `0..len`: `0, 1, 2, ...` without shuffling,
/// else a Fisher-Yates shuffle drawn from `(seed, epoch)` alone.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = order_rng(seed, epoch);
        for i in (1..len).rev() {
            let j = below(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_frozen_permutations() {
        // Known answers: these must never change (a seed names a training run).
        assert_eq!(epoch_order(10, 0, 0, true), KNOWN_0_0);
        assert_eq!(epoch_order(10, 42, 3, true), KNOWN_42_3);
        assert_eq!(epoch_order(10, 42, 3, false), (0..10).collect::<Vec<_>>());
        for (len, seed, epoch) in [(0, 1, 1), (1, 1, 1), (7, 9, 0), (1000, 5, 2)] {
            let mut order = epoch_order(len, seed, epoch, true);
            assert_eq!(order, epoch_order(len, seed, epoch, true), "repeatable");
            order.sort_unstable();
            assert_eq!(order, (0..len).collect::<Vec<_>>(), "a permutation");
        }
        assert_ne!(epoch_order(100, 1, 0, true), epoch_order(100, 1, 1, true), "epochs differ");
        assert_ne!(epoch_order(100, 1, 0, true), epoch_order(100, 2, 0, true), "seeds differ");
    }

    // Computed by an independent Python transcription of SplitMix64, xoshiro256**, Lemire's
    // rejection and Fisher-Yates (from their published reference code), not by this code.
    const KNOWN_0_0: [usize; 10] = [1, 0, 9, 8, 6, 5, 4, 3, 2, 7];
    const KNOWN_42_3: [usize; 10] = [5, 6, 7, 4, 2, 3, 8, 9, 1, 0];

    #[test]
    fn below_is_in_range_and_unbiased() {
        let mut rng = Rng::seed_from_u64(3);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[below(&mut rng, 3) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 400.0, "{counts:?}");
        }
        assert_eq!(below(&mut rng, 1), 0);
        assert_eq!(below(&mut rng, 0), 0);
        assert!(below(&mut rng, u64::MAX) < u64::MAX);
    }

    #[test]
    fn sample_streams_depend_on_every_key() {
        let first = |seed, epoch, sample| sample_rng(seed, epoch, sample).next_u64();
        let base = first(1, 2, 3);
        assert_eq!(base, first(1, 2, 3));
        assert_ne!(base, first(2, 2, 3));
        assert_ne!(base, first(1, 3, 3));
        assert_ne!(base, first(1, 2, 4));
        // Swapping the epoch and the sample gives another stream.
        assert_ne!(first(1, 2, 3), first(1, 3, 2));
    }
}
