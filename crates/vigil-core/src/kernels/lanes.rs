//! Eight floats handled as one value, for the kernels' element-wise loops (the Winograd
//! transforms). Written as fixed-size arrays, these compile to single vector
//! instructions in the functions `multiversion` builds for AVX2 (8 floats wide), and to two
//! SSE2 instructions in the portable build; the compiler does not find this on its own in
//! loops that gather strided data or write 16 planes at once.
//!
//! Every operation is lane by lane with the scalar operation, so a kernel written with lanes
//! gives bit for bit what the same arithmetic gives one value at a time.

/// Floats per lane group: one AVX2 register.
pub const LANES: usize = 8;

/// Eight floats.
pub type Lanes = [f32; LANES];

/// `a + b` lane by lane.
#[inline(always)]
pub fn add(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|i| a[i] + b[i])
}

/// `a - b` lane by lane.
#[inline(always)]
pub fn sub(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|i| a[i] - b[i])
}

/// `-a` lane by lane.
#[inline(always)]
pub fn neg(a: Lanes) -> Lanes {
    std::array::from_fn(|i| -a[i])
}

/// The first `LANES` values of `s`, zero past its end.
///
/// A full group is one fixed-size copy (a vector load); a short one goes value by value under
/// a condition, because a copy of variable length becomes a call to `memmove`, which costs
/// more than the arithmetic of these kernels.
#[inline(always)]
pub fn load(s: &[f32]) -> Lanes {
    let mut lanes = [0.0; LANES];
    if let Some(full) = s.get(..LANES) {
        lanes.copy_from_slice(full);
    } else {
        for (i, lane) in lanes.iter_mut().enumerate() {
            if i < s.len() {
                *lane = s[i];
            }
        }
    }
    lanes
}

/// Writes the first `s.len().min(LANES)` lanes into `s` (without `memmove`, as [`load`]).
#[inline(always)]
pub fn store(s: &mut [f32], lanes: &Lanes) {
    if let Some(full) = s.get_mut(..LANES) {
        full.copy_from_slice(lanes);
    } else {
        let n = s.len();
        for (i, lane) in lanes.iter().enumerate() {
            if i < n {
                s[i] = *lane;
            }
        }
    }
}

/// Copies `from` into `to` (equal lengths) a group of lanes at a time: the short copies of
/// these kernels (a row of 7 tiles) without a call to `memmove`.
#[inline(always)]
pub fn copy(to: &mut [f32], from: &[f32]) {
    debug_assert_eq!(to.len(), from.len());
    for (to, from) in to.chunks_mut(LANES).zip(from.chunks(LANES)) {
        store(to, &load(from));
    }
}

/// `(even, odd)`: the values at even and odd positions of the 16 values `lo` then `hi`.
#[inline(always)]
pub fn deinterleave(lo: Lanes, hi: Lanes) -> (Lanes, Lanes) {
    let even = std::array::from_fn(|i| if i < 4 { lo[2 * i] } else { hi[2 * i - 8] });
    let odd = std::array::from_fn(|i| if i < 4 { lo[2 * i + 1] } else { hi[2 * i - 7] });
    (even, odd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deinterleave_splits_even_and_odd_positions() {
        let lo: Lanes = std::array::from_fn(|i| i as f32);
        let hi: Lanes = std::array::from_fn(|i| (i + 8) as f32);
        let (even, odd) = deinterleave(lo, hi);
        assert_eq!(even, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]);
        assert_eq!(odd, [1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0]);
    }

    #[test]
    fn partial_loads_fill_zeros_and_partial_stores_stop_at_the_end() {
        assert_eq!(load(&[1.0, 2.0]), [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let mut out = [9.0; 3];
        store(&mut out, &[1.0; LANES]);
        assert_eq!(out, [1.0; 3]);
        let from: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let mut to = vec![0.0; 19];
        copy(&mut to, &from);
        assert_eq!(to, from);
    }
}
