//! Winograd's F(4x4, 3x3): 4x4 output tiles from 6x6 input patches, 36 multiplications per 16
//! outputs, 4x fewer than im2col's 144 (F(2x2, 3x3) saves 2.25x). The filter transform and the
//! input and output transforms of the forward pass (which the input gradient is too).
//!
//! With the interpolation points 0, 1, -1, 2, -2 and infinity (Lavin and Gray 2016):
//!
//! ```text
//! B^T = [4  0 -5  0 1 0;       G = [ 1/4     0     0;     A^T = [1 1  1 1  1 0;
//!        0 -4 -4  1 1 0;            -1/6  -1/6  -1/6;             0 1 -1 2 -2 0;
//!        0  4 -4 -1 1 0;            -1/6   1/6  -1/6;             0 1  1 4  4 0;
//!        0 -2 -1  2 1 0;            1/24  1/12   1/6;             0 1 -1 8 -8 1]
//!        0  2 -1 -2 1 0;            1/24 -1/12   1/6;
//!        0  4  0 -5 0 1]               0     0     1]
//! ```
//!
//! The larger constants cost precision in float32: relative errors of 0.5-5e-6 on the tests'
//! shapes where F(2x2, 3x3) has 0.1-0.4e-6 (the tests bound both against the definition in
//! f64). The lanes are four consecutive tiles, as in [`super::f2x2`]; a tile's six-value rows
//! are two overlapping four-value loads, transposed so that each lane holds one tile.

use rayon::prelude::*;

use super::planes::{
    group_of_four, load_lanes, output_tiles, place_channel, store_lanes, tile_corners,
};
use super::tiles;
use crate::kernels::conv2d::{Conv2dGeometry, Mat};
use crate::kernels::lanes::{F4, transpose};

/// `G u` for a filter row or column `u` (3 values), in f64.
#[inline(always)]
fn filter_lift(g0: f64, g1: f64, g2: f64) -> [f64; 6] {
    const SIXTH: f64 = 1.0 / 6.0;
    [
        0.25 * g0,
        -SIXTH * (g0 + g1 + g2),
        -SIXTH * (g0 - g1 + g2),
        (0.25 * g0 + 0.5 * g1 + g2) * SIXTH,
        (0.25 * g0 - 0.5 * g1 + g2) * SIXTH,
        g2,
    ]
}

/// `G g G^T` of one 3x3 filter, row-major 6x6; in f64, rounded once (the sixths of `G` are not
/// exact in binary).
#[inline(always)]
fn transform_filter(g: &[f32]) -> [f32; 36] {
    let g = |k: usize| f64::from(g[k]);
    // Columns of G g (6x3), one per filter column.
    let c0 = filter_lift(g(0), g(3), g(6));
    let c1 = filter_lift(g(1), g(4), g(7));
    let c2 = filter_lift(g(2), g(5), g(8));
    let mut out = [0.0f32; 36];
    for (i, row) in out.chunks_exact_mut(6).enumerate() {
        for (value, lifted) in row.iter_mut().zip(filter_lift(c0[i], c1[i], c2[i])) {
            *value = lifted as f32;
        }
    }
    out
}

/// `U = G g G^T` of every filter, laid out `[c_out][36][c_in]`: output channel `co`'s
/// transformed filters at position `ξ` are the row `(co * 36 + ξ) * c_in`, so `U[ξ]` is a
/// `[c_out, c_in]` matrix with rows `36 c_in` apart ([`filters_at`]). Unlike F(2x2, 3x3)'s
/// `[16][c_out][c_in]` planes, each output channel's values are written close together, in
/// parallel over output channels: written plane by plane, 36 planes 1 MB apart, the transform
/// of a 512-channel layer's filters cost more than its gemms.
pub(super) fn filter_transform(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; c_out * 36 * c_in];
    if c_in == 0 {
        return u;
    }
    u.par_chunks_mut(36 * c_in)
        .zip(weight.par_chunks(9 * c_in))
        .for_each(|(rows, filters)| {
            for (ci, g) in filters.chunks_exact(9).enumerate() {
                for (xi, value) in transform_filter(g).into_iter().enumerate() {
                    rows[xi * c_in + ci] = value;
                }
            }
        });
    u
}

/// `U[ξ]` of [`filter_transform`]'s output, `[c_out, c_in]`.
pub(super) fn filters_at(u: &[f32], xi: usize, c_out: usize, c_in: usize) -> Mat<'_> {
    Mat::rows_apart(&u[xi * c_in..], c_out, c_in, 36 * c_in)
}

/// `B^T d` of six values.
#[inline(always)]
fn input_lift([d0, d1, d2, d3, d4, d5]: [F4; 6]) -> [F4; 6] {
    let (a, b) = (d4 - d2.scale(4.0), d3 - d1.scale(4.0));
    let (c, e) = (d4 - d2, (d3 - d1).scale(2.0));
    [
        d0.scale(4.0) - d2.scale(5.0) + d4,
        a + b,
        a - b,
        c + e,
        c - e,
        d1.scale(4.0) - d3.scale(5.0) + d5,
    ]
}

/// `A^T m` of six values.
#[inline(always)]
fn output_fold([m0, m1, m2, m3, m4, m5]: [F4; 6]) -> [F4; 4] {
    let (a, b) = (m1 + m2, m1 - m2);
    let (c, d) = (m3 + m4, m3 - m4);
    [
        m0 + a + c,
        b + d.scale(2.0),
        a + c.scale(4.0),
        b + d.scale(8.0) + m5,
    ]
}

/// Row `r` (six values) of the patches at four corners of zero-padded planes `cols` floats
/// wide, lane k holding tile k: two overlapping four-value loads per tile, transposed.
#[inline(always)]
fn patch_row([a, b, c, d]: [usize; 4], padded: &[f32], at: usize) -> [F4; 6] {
    let load = |corner: usize, offset: usize| F4::load(&padded[corner + at + offset..]);
    let low = transpose([load(a, 0), load(b, 0), load(c, 0), load(d, 0)]);
    let high = transpose([load(a, 2), load(b, 2), load(c, 2), load(d, 2)]);
    [low[0], low[1], low[2], low[3], high[2], high[3]]
}

/// `V = B^T d B` of every 6x6 patch under the tiles of the samples in `x`, laid out
/// `[36][c_in][tiles]` (tile `s * th * tw + ty * tw + tx`); positions outside the input read
/// zero. Plane `ξ` starts at `ξ * plane`.
pub(super) fn input_transform(g: &Conv2dGeometry, x: &[f32], v: &mut [f32], plane: usize) {
    let [th, tw] = tiles(g, 4);
    let n = x.len() / (g.c_in * g.h * g.w);
    let t_all = n * th * tw;
    // The patches of the last tile row and column end at 4 th + 1 and 4 tw + 1; the input sits
    // at (padding, padding), and the zeros around it are never overwritten.
    let (rows, cols) = (4 * th + 2, 4 * tw + 2);
    let mut padded = vec![0.0f32; n * rows * cols];
    let corners = tile_corners(n, [th, tw], [rows, cols], 4);
    for ci in 0..g.c_in {
        place_channel(
            (x, [g.c_in, ci], [g.h, g.w]),
            (&mut padded, [rows, cols], g.padding),
        );
        for (group, chunk) in corners.chunks(4).enumerate() {
            let four = group_of_four(chunk);
            // Columns: B^T d; `t[i][c]` is row i, column c of B^T d, lanes are tiles.
            let mut d = [[F4::zero(); 6]; 6];
            for (r, row) in d.iter_mut().enumerate() {
                *row = patch_row(four, &padded, r * cols);
            }
            let mut t = [[F4::zero(); 6]; 6];
            for c in 0..6 {
                let column = input_lift([d[0][c], d[1][c], d[2][c], d[3][c], d[4][c], d[5][c]]);
                for (i, value) in column.into_iter().enumerate() {
                    t[i][c] = value;
                }
            }
            // Rows: (B^T d) B, each value one store into its plane.
            let base = ci * t_all + 4 * group;
            for (i, row) in t.into_iter().enumerate() {
                for (j, value) in input_lift(row).into_iter().enumerate() {
                    store_lanes(value, &mut v[(i * 6 + j) * plane + base..], chunk.len());
                }
            }
        }
    }
}

/// `Y = A^T m A` of every tile in `m` (`[36][c_out][tiles]`), written into the samples'
/// output planes `out` (`[n, c_out, oh, ow]`), clipped to the output. Plane `ξ` of `m` starts
/// at `ξ * plane`.
pub(super) fn output_transform(g: &Conv2dGeometry, m: &[f32], out: &mut [f32], plane: usize) {
    let [th, tw] = tiles(g, 4);
    let n = out.len() / (g.c_out * g.oh * g.ow);
    let t_all = n * th * tw;
    let places = output_tiles(n, [th, tw], g.c_out, [g.oh, g.ow], 4);
    for co in 0..g.c_out {
        let channel = co * g.oh * g.ow;
        for (group, chunk) in places.chunks(4).enumerate() {
            let base = co * t_all + 4 * group;
            let at = |xi: usize| load_lanes(&m[xi * plane + base..], chunk.len());
            // Rows: A^T m (4x6), column by column.
            let mut t = [[F4::zero(); 6]; 4];
            #[expect(
                clippy::needless_range_loop,
                reason = "j picks six planes of `m` as well as a column of `t`"
            )]
            for j in 0..6 {
                let folded = output_fold([
                    at(j),
                    at(6 + j),
                    at(12 + j),
                    at(18 + j),
                    at(24 + j),
                    at(30 + j),
                ]);
                for (k, value) in folded.into_iter().enumerate() {
                    t[k][j] = value;
                }
            }
            // Columns: (A^T m) A, then each output row back from lanes to tiles, stored
            // straight into the output, clipped to it.
            for (k, row) in t.into_iter().enumerate() {
                let per_tile = transpose(output_fold(row));
                for (tile, values) in chunk.iter().zip(per_tile) {
                    if k < tile.rows {
                        let at = channel + tile.at + k * g.ow;
                        store_lanes(values, &mut out[at..], tile.cols);
                    }
                }
            }
        }
    }
}
