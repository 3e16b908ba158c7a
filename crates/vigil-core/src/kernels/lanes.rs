//! Four `f32` lanes as one value: SSE registers on x86-64 (part of its baseline, so no run-time
//! detection and no build flag), plain arrays elsewhere. The kernels' transforms work on four
//! tiles at once with these, the same arithmetic in the same order as one tile at a time, so
//! F(2x2, 3x3)'s results are bit for bit those of the scalar definitions (`winograd::f2x2`
//! tests).
//!
//! Four lanes rather than eight: F(2x2, 3x3)'s tiles are 4x4, so a tile's rows and the
//! transposes between tiles and planes are exactly one register wide (F(4x4, 3x3)'s six-value
//! rows are two overlapping loads), and groups of four tiles fill the lanes on every layer
//! (eight-lane rows of one tile row did not: docs/performance.md, "tried and reverted").

use std::ops::{Add, Neg, Sub};

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::{
        __m128, _mm_add_ps, _mm_loadu_ps, _mm_movehl_ps, _mm_movelh_ps, _mm_mul_ps, _mm_set1_ps,
        _mm_setzero_ps, _mm_storeu_ps, _mm_sub_ps, _mm_unpackhi_ps, _mm_unpacklo_ps, _mm_xor_ps,
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
}
