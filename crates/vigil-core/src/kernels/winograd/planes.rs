//! What both tile sizes' transforms share: where tiles sit in a group's planes, groups of four
//! tiles as four lanes, and row copies between the tensors' planes and the zero-padded or
//! whole-tile planes the transforms read and write.

use crate::kernels::lanes::F4;

/// Offsets of every tile's top-left corner in planes of `rows x cols` floats laid end to end,
/// one plane per sample, `step` floats (the output tile's side) between neighbouring tiles'
/// corners along each axis.
pub(super) fn tile_corners(
    n: usize,
    [th, tw]: [usize; 2],
    [rows, cols]: [usize; 2],
    step: usize,
) -> Vec<usize> {
    let mut corners = Vec::with_capacity(n * th * tw);
    for s in 0..n {
        for ty in 0..th {
            for tx in 0..tw {
                corners.push(s * rows * cols + step * (ty * cols + tx));
            }
        }
    }
    corners
}

/// The four lanes of a group of up to four tiles: the group's own, or, for the last group of a
/// plane, the tiles it has and copies of its last (their results are dropped).
#[inline(always)]
pub(super) fn group_of_four(chunk: &[usize]) -> [usize; 4] {
    let last = chunk.len() - 1;
    [
        chunk[0],
        chunk[1.min(last)],
        chunk[2.min(last)],
        chunk[3.min(last)],
    ]
}

/// Stores lane `k < len` of `value` at `dst[k]`: all four at once for a full group.
#[inline(always)]
pub(super) fn store_lanes(value: F4, dst: &mut [f32], len: usize) {
    if len == 4 {
        value.store(dst);
    } else {
        dst[..len].copy_from_slice(&value.to_array()[..len]);
    }
}

/// Loads `src[k]` into lane `k < len`, zero in the others.
#[inline(always)]
pub(super) fn load_lanes(src: &[f32], len: usize) -> F4 {
    if len == 4 {
        F4::load(src)
    } else {
        let mut lanes = [0.0f32; 4];
        lanes[..len].copy_from_slice(&src[..len]);
        F4::load(&lanes)
    }
}

/// `dst[..src.len()] = src`, four floats at a time: rows of 4-28 floats, too short for a call
/// to `memmove` (what `copy_from_slice` becomes) to pay for itself.
#[inline(always)]
pub(super) fn copy_row(dst: &mut [f32], src: &[f32]) {
    let dst = &mut dst[..src.len()];
    let mut k = 0;
    while k + 4 <= src.len() {
        F4::load(&src[k..]).store(&mut dst[k..]);
        k += 4;
    }
    for (d, s) in dst[k..].iter_mut().zip(&src[k..]) {
        *d = *s;
    }
}

/// Copies channel `c` of every sample in `src` (`[n, channels, h, w]`, given as
/// `[channels, c]` and `[h, w]`) into `dst`'s planes of `rows x cols`, one per sample, with its
/// top-left value at `[top, left]`; the rest of `dst` is left as it was.
pub(super) fn place_channel(
    (src, [channels, c], [h, w]): (&[f32], [usize; 2], [usize; 2]),
    (dst, [rows, cols], [top, left]): (&mut [f32], [usize; 2], [usize; 2]),
) {
    let n = src.len() / (channels * h * w);
    for s in 0..n {
        let plane = &src[(s * channels + c) * h * w..][..h * w];
        for (y, row) in plane.chunks_exact(w).enumerate() {
            copy_row(&mut dst[s * rows * cols + (y + top) * cols + left..], row);
        }
    }
}

/// Copies the visible `oh x ow` part of channel `c`'s whole-tile planes (`rows x cols`, one per
/// sample) into `out` (`[n, channels, oh, ow]`).
pub(super) fn take_channel(
    (whole, [rows, cols]): (&[f32], [usize; 2]),
    (out, [channels, c], [oh, ow]): (&mut [f32], [usize; 2], [usize; 2]),
) {
    let n = out.len() / (channels * oh * ow);
    for s in 0..n {
        let plane_out = &mut out[(s * channels + c) * oh * ow..][..oh * ow];
        for (y, row) in plane_out.chunks_exact_mut(ow).enumerate() {
            copy_row(row, &whole[s * rows * cols + y * cols..][..ow]);
        }
    }
}
