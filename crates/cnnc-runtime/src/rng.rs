//! A small, frozen pseudo-random generator: xoshiro256** seeded by SplitMix64, with Box–Muller
//! normals.
//!
//! Written here instead of taken from `rand` on purpose, as the one exception to "prefer
//! crates": initial weights must stay bit-identical for a given seed across every future
//! version of cnnc and of its dependencies (papers, course exercises and regression tests quote
//! them), and `rand` has changed its algorithms and sampling between releases before. Nothing
//! here may change; the known-answer tests below pin every step.
//!
//! The algorithms are the public-domain reference ones by Blackman and Vigna
//! (<https://prng.di.unimi.it/>): SplitMix64 to expand a 64-bit seed into the 256-bit state,
//! xoshiro256** to generate. Normals use the Box–Muller transform in f64. Its `ln`, `sin` and
//! `cos` come from the platform's maths library, which may differ in the last bit between
//! systems; after rounding to f32 that almost never shows, but bit-identity is only promised
//! on one platform.

/// SplitMix64: a 64-bit state advanced by a constant, with a strong output mix.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// xoshiro256**, with a cached second Box–Muller normal.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
    spare_normal: Option<f64>,
}

impl Rng {
    /// Expands `seed` with SplitMix64 into the state, as the reference recommends. SplitMix64's
    /// output is a bijection of its counter, so four consecutive outputs are never all zero
    /// (the one state xoshiro must avoid).
    pub fn seed_from_u64(seed: u64) -> Rng {
        let mut sm = SplitMix64::new(seed);
        Rng::from_state([sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()])
    }

    /// The stream of one named tensor: the seed combined with an FNV-1a hash of the name, so a
    /// tensor's values depend only on the seed and its own name, never on which other tensors
    /// exist or in what order they are drawn.
    pub fn for_name(seed: u64, name: &str) -> Rng {
        Rng::seed_from_u64(seed ^ fnv1a64(name.as_bytes()))
    }

    fn from_state(s: [u64; 4]) -> Rng {
        Rng { s, spare_normal: None }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits (every value a multiple of 2^-53).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal by Box–Muller; each pair of uniforms gives two normals, used in turn.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// 64-bit FNV-1a: a tiny, fixed string hash (`std`'s hashers may change between releases).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference() {
        // The reference implementation's outputs for seed 1234567.
        let mut sm = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| sm.next_u64()).collect();
        assert_eq!(
            got,
            [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821]
        );
    }

    #[test]
    fn xoshiro256starstar_matches_the_reference() {
        // The reference implementation's outputs from the state [1, 2, 3, 4].
        let mut rng = Rng::from_state([1, 2, 3, 4]);
        let got: Vec<u64> = (0..10).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                11520,
                0,
                1509978240,
                1215971899390074240,
                1216172134540287360,
                607988272756665600,
                16172922978634559625,
                8476171486693032832,
                10595114339597558777,
                2904607092377533576,
            ]
        );
    }

    #[test]
    fn fnv1a64_matches_the_reference() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn uniforms_stay_in_range_and_normals_look_normal() {
        let mut rng = Rng::seed_from_u64(7);
        let n = 200_000;
        let (mut sum, mut sq, mut within_one) = (0.0, 0.0, 0usize);
        for _ in 0..n {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
            let z = rng.normal();
            assert!(z.is_finite());
            sum += z;
            sq += z * z;
            within_one += usize::from(z.abs() < 1.0);
        }
        let mean = sum / n as f64;
        let var = sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
        // P(|Z| < 1) = 0.6827 for a standard normal.
        assert!((within_one as f64 / n as f64 - 0.6827).abs() < 0.005);
    }

    #[test]
    fn named_streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).scan(Rng::for_name(1, "conv1.weight"), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..4).scan(Rng::for_name(1, "conv1.weight"), |r, _| Some(r.next_u64())).collect();
        let c: Vec<u64> = (0..4).scan(Rng::for_name(1, "conv2.weight"), |r, _| Some(r.next_u64())).collect();
        let d: Vec<u64> = (0..4).scan(Rng::for_name(2, "conv1.weight"), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
