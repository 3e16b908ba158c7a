//! What both tile sizes' transforms share: where tiles sit in a group's planes and in the
//! output, groups of four tiles as four lanes, and row copies from the tensors' planes into the
//! zero-padded or whole-tile planes the transforms read.

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

/// Where one output tile's values go: the offset of its top-left value in channel 0 of the
/// output (`[n, channels, oh, ow]`; channel `c` adds `c * oh * ow`) and how many of its rows
/// and columns lie inside the output (tiles on the last row or column may overhang it).
#[derive(Clone, Copy)]
pub(super) struct OutputTile {
    pub(super) at: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

/// Every tile of `n` samples' outputs, in the order of [`tile_corners`], `step` the tile's
/// side: the output transforms write each tile's rows straight into the output, clipped.
pub(super) fn output_tiles(
    n: usize,
    [th, tw]: [usize; 2],
    channels: usize,
    [oh, ow]: [usize; 2],
    step: usize,
) -> Vec<OutputTile> {
    let mut tiles = Vec::with_capacity(n * th * tw);
    for s in 0..n {
        for ty in 0..th {
            for tx in 0..tw {
                tiles.push(OutputTile {
                    at: s * channels * oh * ow + step * (ty * ow + tx),
                    rows: step.min(oh - step * ty),
                    cols: step.min(ow - step * tx),
                });
            }
        }
    }
    tiles
}
