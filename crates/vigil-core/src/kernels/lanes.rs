//! Four `f32` lanes as one value: SSE registers on x86-64 (part of its baseline, so no run-time
//! detection and no build flag), plain arrays elsewhere. The kernels' transforms work on four
//! tiles at once with these, the same arithmetic in the same order as one tile at a time, so
//! F(2x2, 3x3)'s results are bit for bit those of the scalar definitions (`winograd::f2x2`
//! tests). The 2x2 max-pooling takes four windows at once with the lane masks, selects and
//! (de)interleaving below (`max_pool2d`).
//!
//! Four lanes rather than eight: F(2x2, 3x3)'s tiles are 4x4, so a tile's rows and the
//! transposes between tiles and planes are exactly one register wide (F(4x4, 3x3)'s six-value
//! rows are two overlapping loads), and groups of four tiles fill the lanes on every layer
//! (eight-lane rows of one tile row did not: docs/performance.md, "tried and reverted").

use std::ops::{Add, Neg, Sub};

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::{
        __m128, _mm_add_ps, _mm_and_ps, _mm_andnot_ps, _mm_cmpge_ps, _mm_cmpunord_ps, _mm_loadu_ps,
        _mm_movehl_ps, _mm_movelh_ps, _mm_mul_ps, _mm_or_ps, _mm_set1_ps, _mm_setzero_ps,
        _mm_shuffle_ps, _mm_storeu_ps, _mm_sub_ps, _mm_unpackhi_ps, _mm_unpacklo_ps, _mm_xor_ps,
    };

    /// Four lanes in one SSE register.
    #[derive(Clone, Copy)]
    pub struct F4(__m128);

    impl F4 {
        /// Four zeros.
        #[inline(always)]
        pub fn zero() -> Self {
            // SAFETY: SSE is part of x86-64's baseline, so every machine this code is compiled
            // for has the instructions used here and below.
            Self(unsafe { _mm_setzero_ps() })
        }

        /// The first four values of `s` (panics if it holds fewer).
        #[inline(always)]
        pub fn load(s: &[f32]) -> Self {
            let s = &s[..4];
            // SAFETY: `s` holds four floats; the load is unaligned.
            Self(unsafe { _mm_loadu_ps(s.as_ptr()) })
        }

        /// Writes the lanes to the first four values of `d` (panics if it holds fewer).
        #[inline(always)]
        pub fn store(self, d: &mut [f32]) {
            let d = &mut d[..4];
            // SAFETY: `d` holds four floats; the store is unaligned.
            unsafe { _mm_storeu_ps(d.as_mut_ptr(), self.0) }
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            // SAFETY: SSE, as in `zero`.
            Self(unsafe { _mm_add_ps(self.0, o.0) })
        }

        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            Self(unsafe { _mm_sub_ps(self.0, o.0) })
        }

        /// Flips the sign bit, as scalar negation does (so `-0.0` stays distinct from `0.0`).
        #[inline(always)]
        pub fn neg(self) -> Self {
            Self(unsafe { _mm_xor_ps(self.0, _mm_set1_ps(-0.0)) })
        }

        /// Every lane times `c`.
        #[inline(always)]
        pub fn scale(self, c: f32) -> Self {
            Self(unsafe { _mm_mul_ps(self.0, _mm_set1_ps(c)) })
        }

        /// Per lane, all bits set where `self` wins against `o` under the first-maximum rule
        /// (`self >= o`, or `self` is NaN), all clear elsewhere: a mask for [`F4::select`].
        #[inline(always)]
        pub fn keeps_first(self, o: Self) -> Self {
            // SAFETY: SSE, as in `zero`. `cmpunord(x, x)` is true exactly where `x` is NaN.
            Self(unsafe { _mm_or_ps(_mm_cmpge_ps(self.0, o.0), _mm_cmpunord_ps(self.0, self.0)) })
        }

        /// Per lane, `if_set` where the mask `self` is set and `if_clear` where it is clear;
        /// `self` must hold all-set or all-clear lanes (from [`F4::keeps_first`]).
        #[inline(always)]
        pub fn select(self, if_set: Self, if_clear: Self) -> Self {
            // SAFETY: SSE, as in `zero` (SSE4.1's blend is not in the baseline).
            Self(unsafe {
                _mm_or_ps(
                    _mm_and_ps(self.0, if_set.0),
                    _mm_andnot_ps(self.0, if_clear.0),
                )
            })
        }

        /// The bits of `self` and `o` (masks combine with it; a mask and values keep the values
        /// where the mask is set and give `+0.0` elsewhere).
        #[inline(always)]
        pub fn and(self, o: Self) -> Self {
            Self(unsafe { _mm_and_ps(self.0, o.0) })
        }

        /// The bits of `o` where `self` is clear: `!self & o`.
        #[inline(always)]
        pub fn and_not(self, o: Self) -> Self {
            Self(unsafe { _mm_andnot_ps(self.0, o.0) })
        }

        /// Eight consecutive values, `a` then `b`, split into their even and odd positions.
        #[inline(always)]
        pub fn deinterleave(a: Self, b: Self) -> (Self, Self) {
            // SAFETY: SSE, as in `zero`. Selector 0b10_00_10_00 takes lanes 0 and 2 of each
            // operand, 0b11_01_11_01 lanes 1 and 3.
            unsafe {
                (
                    Self(_mm_shuffle_ps::<0b10_00_10_00>(a.0, b.0)),
                    Self(_mm_shuffle_ps::<0b11_01_11_01>(a.0, b.0)),
                )
            }
        }

        /// The inverse of [`F4::deinterleave`]: `even` and `odd` woven into eight values.
        #[inline(always)]
        pub fn interleave(even: Self, odd: Self) -> (Self, Self) {
            // SAFETY: SSE, as in `zero`.
            unsafe {
                (
                    Self(_mm_unpacklo_ps(even.0, odd.0)),
                    Self(_mm_unpackhi_ps(even.0, odd.0)),
                )
            }
        }
    }

    /// Rows become columns: lane `j` of output `i` is lane `i` of input `j`.
    #[inline(always)]
    pub fn transpose([a, b, c, d]: [F4; 4]) -> [F4; 4] {
        // SAFETY: SSE, as above.
        unsafe {
            let ab_lo = _mm_unpacklo_ps(a.0, b.0); // a0 b0 a1 b1
            let cd_lo = _mm_unpacklo_ps(c.0, d.0); // c0 d0 c1 d1
            let ab_hi = _mm_unpackhi_ps(a.0, b.0); // a2 b2 a3 b3
            let cd_hi = _mm_unpackhi_ps(c.0, d.0); // c2 d2 c3 d3
            [
                F4(_mm_movelh_ps(ab_lo, cd_lo)),
                F4(_mm_movehl_ps(cd_lo, ab_lo)),
                F4(_mm_movelh_ps(ab_hi, cd_hi)),
                F4(_mm_movehl_ps(cd_hi, ab_hi)),
            ]
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    /// Four lanes as an array (the compiler vectorises what it can).
    #[derive(Clone, Copy)]
    pub struct F4([f32; 4]);

    impl F4 {
        #[inline(always)]
        pub fn zero() -> Self {
            Self([0.0; 4])
        }

        #[inline(always)]
        pub fn load(s: &[f32]) -> Self {
            Self([s[0], s[1], s[2], s[3]])
        }

        #[inline(always)]
        pub fn store(self, d: &mut [f32]) {
            d[..4].copy_from_slice(&self.0);
        }

        #[inline(always)]
        pub fn add(self, o: Self) -> Self {
            Self(std::array::from_fn(|k| self.0[k] + o.0[k]))
        }

        #[inline(always)]
        pub fn sub(self, o: Self) -> Self {
            Self(std::array::from_fn(|k| self.0[k] - o.0[k]))
        }

        #[inline(always)]
        pub fn neg(self) -> Self {
            Self(self.0.map(|v| -v))
        }

        #[inline(always)]
        pub fn scale(self, c: f32) -> Self {
            Self(self.0.map(|v| v * c))
        }

        #[inline(always)]
        pub fn keeps_first(self, o: Self) -> Self {
            Self(std::array::from_fn(|k| {
                let wins = self.0[k] >= o.0[k] || self.0[k].is_nan();
                f32::from_bits(if wins { u32::MAX } else { 0 })
            }))
        }

        #[inline(always)]
        pub fn select(self, if_set: Self, if_clear: Self) -> Self {
            Self(std::array::from_fn(|k| {
                let m = self.0[k].to_bits();
                f32::from_bits((m & if_set.0[k].to_bits()) | (!m & if_clear.0[k].to_bits()))
            }))
        }

        #[inline(always)]
        pub fn and(self, o: Self) -> Self {
            Self(std::array::from_fn(|k| {
                f32::from_bits(self.0[k].to_bits() & o.0[k].to_bits())
            }))
        }

        #[inline(always)]
        pub fn and_not(self, o: Self) -> Self {
            Self(std::array::from_fn(|k| {
                f32::from_bits(!self.0[k].to_bits() & o.0[k].to_bits())
            }))
        }

        #[inline(always)]
        pub fn deinterleave(a: Self, b: Self) -> (Self, Self) {
            let (a, b) = (a.0, b.0);
            (
                Self([a[0], a[2], b[0], b[2]]),
                Self([a[1], a[3], b[1], b[3]]),
            )
        }

        #[inline(always)]
        pub fn interleave(even: Self, odd: Self) -> (Self, Self) {
            let (e, o) = (even.0, odd.0);
            (
                Self([e[0], o[0], e[1], o[1]]),
                Self([e[2], o[2], e[3], o[3]]),
            )
        }
    }

    #[inline(always)]
    pub fn transpose(rows: [F4; 4]) -> [F4; 4] {
        std::array::from_fn(|i| F4(std::array::from_fn(|j| rows[j].0[i])))
    }
}

pub use imp::{F4, transpose};

impl Add for F4 {
    type Output = F4;
    #[inline(always)]
    fn add(self, o: F4) -> F4 {
        F4::add(self, o)
    }
}

impl Sub for F4 {
    type Output = F4;
    #[inline(always)]
    fn sub(self, o: F4) -> F4 {
        F4::sub(self, o)
    }
}

impl Neg for F4 {
    type Output = F4;
    #[inline(always)]
    fn neg(self) -> F4 {
        F4::neg(self)
    }
}

impl F4 {
    /// The lanes as an array.
    #[inline(always)]
    pub fn to_array(self) -> [f32; 4] {
        let mut out = [0.0; 4];
        self.store(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_add_subtract_scale_negate_and_transpose_as_arrays_do() {
        let a = F4::load(&[1.0, -2.0, 0.0, 4.5]);
        let b = F4::load(&[0.5, 3.0, -0.0, -1.0]);
        assert_eq!((a + b).to_array(), [1.5, 1.0, 0.0, 3.5]);
        assert_eq!((a - b).to_array(), [0.5, -5.0, 0.0, 5.5]);
        assert_eq!(a.scale(-2.0).to_array(), [-2.0, 4.0, -0.0, -9.0]);
        let negated = (-b).to_array();
        assert_eq!(negated, [-0.5, -3.0, 0.0, 1.0]);
        assert!(negated[2].is_sign_positive(), "-(-0.0) is +0.0");
        assert!((-a).to_array()[2].is_sign_negative(), "-(0.0) is -0.0");
        let rows: [F4; 4] = std::array::from_fn(|i| {
            F4::load(&std::array::from_fn::<f32, 4, _>(|j| (4 * i + j) as f32))
        });
        let cols = transpose(rows).map(F4::to_array);
        for (i, col) in cols.iter().enumerate() {
            for (j, value) in col.iter().enumerate() {
                assert_eq!(*value, (4 * j + i) as f32);
            }
        }
        let mut out = [9.0; 5];
        a.store(&mut out);
        assert_eq!(out, [1.0, -2.0, 0.0, 4.5, 9.0]);
        assert_eq!(F4::zero().to_array(), [0.0; 4]);
    }

    #[test]
    fn masks_selects_and_weaves_follow_their_scalar_definitions() {
        let nan = f32::NAN;
        let x = F4::load(&[1.0, nan, 2.0, -0.0]);
        let y = F4::load(&[1.0, 3.0, nan, 0.0]);
        let wins = x.keeps_first(y).to_array().map(f32::to_bits);
        // A tie keeps `x`, NaN in `x` keeps it, NaN in `y` alone beats it, `-0.0 >= 0.0`.
        assert_eq!(wins, [u32::MAX, u32::MAX, 0, u32::MAX]);
        let mask = x.keeps_first(y);
        let picked = mask.select(x, y).to_array();
        assert_eq!(picked[0], 1.0);
        assert!(picked[1].is_nan() && picked[2].is_nan());
        assert!(picked[3].to_bits() == (-0.0f32).to_bits());
        let grad = F4::load(&[5.0, -6.0, 7.0, -0.0]);
        assert_eq!(
            mask.and(grad).to_array().map(f32::to_bits),
            [5.0f32, -6.0, 0.0, -0.0].map(f32::to_bits)
        );
        assert_eq!(
            mask.and_not(grad).to_array().map(f32::to_bits),
            [0.0f32, 0.0, 7.0, 0.0].map(f32::to_bits)
        );
        let a = F4::load(&[0.0, 1.0, 2.0, 3.0]);
        let b = F4::load(&[4.0, 5.0, 6.0, 7.0]);
        let (even, odd) = F4::deinterleave(a, b);
        assert_eq!(even.to_array(), [0.0, 2.0, 4.0, 6.0]);
        assert_eq!(odd.to_array(), [1.0, 3.0, 5.0, 7.0]);
        let (lo, hi) = F4::interleave(even, odd);
        assert_eq!((lo.to_array(), hi.to_array()), (a.to_array(), b.to_array()));
    }
}
