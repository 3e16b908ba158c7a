//! Winograd's F(2x2, 3x3): 2x2 output tiles from 4x4 input patches, 16 multiplications per 4
//! outputs. The filter transform, the three tile transforms (four tiles at a time) and the
//! weight gradient's way back from the transformed domain.
//!
//! Each transform walks one channel's tiles in their order in the transformed arrays (tile
//! `s * th * tw + ty * tw + tx` of the samples in a group) four at a time: a group of four may
//! span tile rows and samples, so the lanes fill on every layer, down to ResNet's 2x2-tile deep
//! layers. The input's planes are first copied into zero-padded planes, so no input tile needs
//! an edge case; output tiles are written straight into the output, their rows and columns
//! past its edge dropped ([`super::planes::OutputTile`]). Within a group, the 16 values
//! of a tile's position `ξ` are one four-lane store into plane `ξ`; transposes move between a
//! tile's rows and the tiles' lanes ([`super::super::lanes`]).
//!
//! The arithmetic is the per-tile definition's, in the same order, so results are bit for bit
//! those of the one-tile-at-a-time transforms kept below as the tests' reference.

use super::planes::{
    group_of_four, load_lanes, output_tiles, place_channel, store_lanes, tile_corners,
};
use super::{plane_stride, tiles};
use crate::kernels::conv2d::Conv2dGeometry;
use crate::kernels::lanes::{F4, transpose};

/// `U = G g G^T` of every filter, laid out `[16][c_out][c_in]`.
pub(super) fn filter_transform(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let plane = plane_stride(c_out * c_in);
    let mut u = vec![0.0f32; 16 * plane];
    for (f, g) in weight.chunks_exact(9).enumerate() {
        // Rows: G g (4x3).
        let mut t = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = g0;
            t[1][j] = 0.5 * (g0 + g1 + g2);
            t[2][j] = 0.5 * (g0 - g1 + g2);
            t[3][j] = g2;
        }
        // Columns: (G g) G^T (4x4).
        for (i, row) in t.iter().enumerate() {
            let (a, b, c) = (row[0], row[1], row[2]);
            let out = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
            for (j, v) in out.into_iter().enumerate() {
                u[(i * 4 + j) * plane + f] = v;
            }
        }
    }
    u
}

/// `dW = G^T dU G` of every filter from `dU` (`[16][c_out][c_in]`), as `[c_out, c_in, 3, 3]`.
pub(super) fn weight_from_transformed(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let plane = plane_stride(c_out * c_in);
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    // G^T u for a 4-vector u: G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1].
    let fold = |u: [f32; 4]| {
        [
            u[0] + 0.5 * (u[1] + u[2]),
            0.5 * (u[1] - u[2]),
            0.5 * (u[1] + u[2]) + u[3],
        ]
    };
    for (f, out) in dw.chunks_exact_mut(9).enumerate() {
        let at = |i: usize, j: usize| du[(i * 4 + j) * plane + f];
        // Columns first: each row i of dU folded to 3 values, then the rows folded.
        let rows: [[f32; 3]; 4] = std::array::from_fn(|i| fold([0, 1, 2, 3].map(|j| at(i, j))));
        for l in 0..3 {
            let col = fold([rows[0][l], rows[1][l], rows[2][l], rows[3][l]]);
            for k in 0..3 {
                out[k * 3 + l] = col[k];
            }
        }
    }
    dw
}

/// `B^T d B` of the patch at `corner` of zero-padded planes `cols` floats wide: lane i of
/// element j is row i, column j.
#[inline(always)]
fn input_tile(padded: &[f32], corner: usize, cols: usize) -> [F4; 4] {
    let d0 = F4::load(&padded[corner..]);
    let d1 = F4::load(&padded[corner + cols..]);
    let d2 = F4::load(&padded[corner + 2 * cols..]);
    let d3 = F4::load(&padded[corner + 3 * cols..]);
    // Rows: B^T d, lane c holding column c.
    let t = [d0 - d2, d1 + d2, d2 - d1, d1 - d3];
    // Columns: (B^T d) B; after the transpose, lane i of `c[j]` is row i, column j.
    let c = transpose(t);
    [c[0] - c[2], c[1] + c[2], c[2] - c[1], c[1] - c[3]]
}

/// `V = B^T d B` of every 4x4 patch under the tiles of the samples in `x`, laid out
/// `[16][c_in][tiles]` (tile `s * th * tw + ty * tw + tx`); positions outside the input read
/// zero. Plane `ξ` starts at `ξ * plane`.
pub(super) fn input_transform(g: &Conv2dGeometry, x: &[f32], v: &mut [f32], plane: usize) {
    let [th, tw] = tiles(g, 2);
    let n = x.len() / (g.c_in * g.h * g.w);
    let t_all = n * th * tw;
    // The patches of the last tile row and column end at 2 th + 1 and 2 tw + 1; the input sits
    // at (padding, padding), and the zeros around it are never overwritten.
    let (rows, cols) = (2 * th + 2, 2 * tw + 2);
    let mut padded = vec![0.0f32; n * rows * cols];
    let corners = tile_corners(n, [th, tw], [rows, cols], 2);
    for ci in 0..g.c_in {
        place_channel(
            (x, [g.c_in, ci], [g.h, g.w]),
            (&mut padded, [rows, cols], g.padding),
        );
        for (group, chunk) in corners.chunks(4).enumerate() {
            let [a, b, c, d] = group_of_four(chunk);
            let per_tile = [
                input_tile(&padded, a, cols),
                input_tile(&padded, b, cols),
                input_tile(&padded, c, cols),
                input_tile(&padded, d, cols),
            ];
            let base = ci * t_all + 4 * group;
            for j in 0..4 {
                // Lane k of `rows_of[i]`: tile k's value at row i, column j.
                let rows_of = transpose([
                    per_tile[0][j],
                    per_tile[1][j],
                    per_tile[2][j],
                    per_tile[3][j],
                ]);
                for (i, value) in rows_of.into_iter().enumerate() {
                    store_lanes(value, &mut v[(i * 4 + j) * plane + base..], chunk.len());
                }
            }
        }
    }
}

/// `Y = A^T m A` of every tile in `m` (`[16][c_out][tiles]`), written into the samples'
/// output planes `out` (`[n, c_out, oh, ow]`), clipped to the output. Plane `ξ` of `m` starts
/// at `ξ * plane`.
pub(super) fn output_transform(g: &Conv2dGeometry, m: &[f32], out: &mut [f32], plane: usize) {
    let [th, tw] = tiles(g, 2);
    let n = out.len() / (g.c_out * g.oh * g.ow);
    let t_all = n * th * tw;
    // Each tile straight into the output, clipped to it (an odd side computes one row or
    // column past the output).
    let places = output_tiles(n, [th, tw], g.c_out, [g.oh, g.ow], 2);
    for co in 0..g.c_out {
        let channel = co * g.oh * g.ow;
        for (group, chunk) in places.chunks(4).enumerate() {
            let base = co * t_all + 4 * group;
            // Lanes are tiles: `at[i * 4 + j]` is every tile's value at row i, column j.
            let mut at = [F4::zero(); 16];
            for (xi, value) in at.iter_mut().enumerate() {
                *value = load_lanes(&m[xi * plane + base..], chunk.len());
            }
            // Rows: A^T m (2x4).
            let (mut t0, mut t1) = ([F4::zero(); 4], [F4::zero(); 4]);
            for j in 0..4 {
                t0[j] = at[j] + at[4 + j] + at[8 + j];
                t1[j] = at[4 + j] - at[8 + j] - at[12 + j];
            }
            let pair = |row: [F4; 4]| [row[0] + row[1] + row[2], row[1] - row[2] - row[3]];
            let y = [pair(t0), pair(t1)];
            // Lane order back to tiles: each tile's [y00, y01, y10, y11].
            let per_tile = transpose([y[0][0], y[0][1], y[1][0], y[1][1]]);
            for (tile, values) in chunk.iter().zip(per_tile) {
                let values = values.to_array();
                for (k, row) in values.chunks_exact(2).take(tile.rows).enumerate() {
                    let at = channel + tile.at + k * g.ow;
                    out[at..at + tile.cols].copy_from_slice(&row[..tile.cols]);
                }
            }
        }
    }
}

/// `dM = A dY A^T` of every tile of the output gradient `dout` (`[n, c_out, oh, ow]`), laid
/// out `[16][c_out][tiles]` with plane `ξ` at `ξ * plane`; positions past the output's edge
/// have no gradient.
pub(super) fn gradient_transform(g: &Conv2dGeometry, dout: &[f32], dm: &mut [f32], plane: usize) {
    let [th, tw] = tiles(g, 2);
    let n = dout.len() / (g.c_out * g.oh * g.ow);
    let t_all = n * th * tw;
    // Whole-tile planes whose positions past the output stay zero.
    let (rows, cols) = (2 * th, 2 * tw);
    let mut whole = vec![0.0f32; n * rows * cols];
    let corners = tile_corners(n, [th, tw], [rows, cols], 2);
    // A = [1 0; 1 1; 1 -1; 0 -1] applied to a pair.
    let lift = |a: F4, b: F4| [a, a + b, a - b, -b];
    for co in 0..g.c_out {
        place_channel(
            (dout, [g.c_out, co], [g.oh, g.ow]),
            (&mut whole, [rows, cols], [0, 0]),
        );
        for (group, chunk) in corners.chunks(4).enumerate() {
            let pair_rows = |corner: usize| {
                let (top, bottom) = (&whole[corner..], &whole[corner + cols..]);
                F4::load(&[top[0], top[1], bottom[0], bottom[1]])
            };
            let [a, b, c, d] = group_of_four(chunk);
            let per_tile = [pair_rows(a), pair_rows(b), pair_rows(c), pair_rows(d)];
            // Lanes are tiles: y[r * 2 + c] is every tile's dY at row r, column c.
            let y = transpose(per_tile);
            // A y per column (4x2), then per row (4x4).
            let cols_lifted = [lift(y[0], y[2]), lift(y[1], y[3])];
            let base = co * t_all + 4 * group;
            for i in 0..4 {
                for (j, value) in lift(cols_lifted[0][i], cols_lifted[1][i])
                    .into_iter()
                    .enumerate()
                {
                    store_lanes(value, &mut dm[(i * 4 + j) * plane + base..], chunk.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pseudo_random;

    /// The transforms one tile at a time, as first written: the reference the four-tile
    /// transforms must equal bit for bit.
    mod reference {
        use super::super::tiles;
        use crate::kernels::conv2d::Conv2dGeometry;

        /// `V = B^T d B` of every 4x4 patch under the tiles of the samples in `x`, laid out
        /// `[16][c_in][tiles]` (tile `s * th * tw + ty * tw + tx`); positions outside the input read
        /// zero. Plane `ξ` starts at `ξ * plane`.
        pub fn input_transform(g: &Conv2dGeometry, x: &[f32], v: &mut [f32], plane: usize) {
            let [th, tw] = tiles(g, 2);
            let n = x.len() / (g.c_in * g.h * g.w);
            let t_all = n * th * tw;
            let (ph, pw) = (g.padding[0] as isize, g.padding[1] as isize);
            let (h, w) = (g.h as isize, g.w as isize);
            for s in 0..n {
                for ci in 0..g.c_in {
                    let xp = &x[(s * g.c_in + ci) * g.h * g.w..][..g.h * g.w];
                    for ty in 0..th {
                        let y0 = 2 * ty as isize - ph;
                        for tx in 0..tw {
                            let x0 = 2 * tx as isize - pw;
                            let mut d = [[0.0f32; 4]; 4];
                            let inside = y0 >= 0 && x0 >= 0 && y0 + 4 <= h && x0 + 4 <= w;
                            if inside {
                                for (r, row) in d.iter_mut().enumerate() {
                                    let start = (y0 as usize + r) * g.w + x0 as usize;
                                    row.copy_from_slice(&xp[start..start + 4]);
                                }
                            } else {
                                for (r, row) in d.iter_mut().enumerate() {
                                    let y = y0 + r as isize;
                                    if !(0..h).contains(&y) {
                                        continue;
                                    }
                                    for (c, value) in row.iter_mut().enumerate() {
                                        let xx = x0 + c as isize;
                                        if (0..w).contains(&xx) {
                                            *value = xp[y as usize * g.w + xx as usize];
                                        }
                                    }
                                }
                            }
                            // Rows: B^T d, column by column.
                            let t: [[f32; 4]; 4] = std::array::from_fn(|j| {
                                [
                                    d[0][j] - d[2][j],
                                    d[1][j] + d[2][j],
                                    d[2][j] - d[1][j],
                                    d[1][j] - d[3][j],
                                ]
                            });
                            // Columns: (B^T d) B; `t[j][i]` is row i, column j of B^T d.
                            let tile = (s * th + ty) * tw + tx;
                            let base = ci * t_all + tile;
                            for i in 0..4 {
                                let row = [
                                    t[0][i] - t[2][i],
                                    t[1][i] + t[2][i],
                                    t[2][i] - t[1][i],
                                    t[1][i] - t[3][i],
                                ];
                                for (j, value) in row.into_iter().enumerate() {
                                    v[(i * 4 + j) * plane + base] = value;
                                }
                            }
                        }
                    }
                }
            }
        }

        /// `Y = A^T m A` of every tile in `m` (`[16][c_out][tiles]`), written into the samples'
        /// output planes `out` (`[n, c_out, oh, ow]`), clipped to the output. Plane `ξ` of `m` starts
        /// at `ξ * plane`.
        pub fn output_transform(g: &Conv2dGeometry, m: &[f32], out: &mut [f32], plane: usize) {
            let [th, tw] = tiles(g, 2);
            let n = out.len() / (g.c_out * g.oh * g.ow);
            let t_all = n * th * tw;
            for s in 0..n {
                for co in 0..g.c_out {
                    let op = &mut out[(s * g.c_out + co) * g.oh * g.ow..][..g.oh * g.ow];
                    for ty in 0..th {
                        for tx in 0..tw {
                            let base = co * t_all + (s * th + ty) * tw + tx;
                            let at = |i: usize, j: usize| m[(i * 4 + j) * plane + base];
                            // Rows: A^T m (2x4).
                            let t = [
                                std::array::from_fn::<f32, 4, _>(|j| {
                                    at(0, j) + at(1, j) + at(2, j)
                                }),
                                std::array::from_fn::<f32, 4, _>(|j| {
                                    at(1, j) - at(2, j) - at(3, j)
                                }),
                            ];
                            for (r, row) in t.iter().enumerate() {
                                let y = 2 * ty + r;
                                if y >= g.oh {
                                    break;
                                }
                                let pair = [row[0] + row[1] + row[2], row[1] - row[2] - row[3]];
                                for (c, value) in pair.into_iter().enumerate() {
                                    let x = 2 * tx + c;
                                    if x < g.ow {
                                        op[y * g.ow + x] = value;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        /// `dM = A dY A^T` of every tile of the output gradient `dout` (`[n, c_out, oh, ow]`), laid
        /// out `[16][c_out][tiles]` with plane `ξ` at `ξ * plane`; positions past the output's edge
        /// have no gradient.
        pub fn gradient_transform(g: &Conv2dGeometry, dout: &[f32], dm: &mut [f32], plane: usize) {
            let [th, tw] = tiles(g, 2);
            let n = dout.len() / (g.c_out * g.oh * g.ow);
            let t_all = n * th * tw;
            // A = [1 0; 1 1; 1 -1; 0 -1] applied to a pair.
            let lift = |a: f32, b: f32| [a, a + b, a - b, -b];
            for s in 0..n {
                for co in 0..g.c_out {
                    let dp = &dout[(s * g.c_out + co) * g.oh * g.ow..][..g.oh * g.ow];
                    for ty in 0..th {
                        for tx in 0..tw {
                            let mut y = [[0.0f32; 2]; 2];
                            for (r, row) in y.iter_mut().enumerate() {
                                for (c, value) in row.iter_mut().enumerate() {
                                    let (yy, xx) = (2 * ty + r, 2 * tx + c);
                                    if yy < g.oh && xx < g.ow {
                                        *value = dp[yy * g.ow + xx];
                                    }
                                }
                            }
                            // A y per column (4x2), then per row (4x4).
                            let cols = [lift(y[0][0], y[1][0]), lift(y[0][1], y[1][1])];
                            let base = co * t_all + (s * th + ty) * tw + tx;
                            for i in 0..4 {
                                for (j, value) in
                                    lift(cols[0][i], cols[1][i]).into_iter().enumerate()
                                {
                                    dm[(i * 4 + j) * plane + base] = value;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Every transform against its per-tile reference, bit for bit, on groups of samples whose
    /// tile counts are and are not multiples of four, odd sides, paddings 0-2. The planes'
    /// gaps are filled with a sentinel, which must survive.
    #[test]
    fn four_tile_transforms_equal_the_per_tile_definition_bit_for_bit() {
        for (batch, c_in, c_out, h, w, pad) in [
            (1, 2, 3, 4, 4, 1),
            (3, 2, 2, 7, 7, 1),
            (2, 3, 1, 5, 9, 0),
            (1, 1, 2, 6, 3, 2),
            (5, 2, 3, 3, 3, 1),
            (2, 1, 1, 14, 14, 1),
        ] {
            let g = Conv2dGeometry::new([batch, c_in, h, w], [c_out, c_in, 3, 3], [1, 1], [pad; 2])
                .unwrap();
            let [th, tw] = tiles(&g, 2);
            let t_all = batch * th * tw;
            let x = pseudo_random(batch * c_in * h * w, 5);
            let dout = pseudo_random(batch * c_out * g.oh * g.ow, 6);
            let sentinel = 12345.0f32;

            let plane = c_in * t_all + 3;
            let (mut v, mut v_ref) = (vec![sentinel; 16 * plane], vec![sentinel; 16 * plane]);
            input_transform(&g, &x, &mut v, plane);
            reference::input_transform(&g, &x, &mut v_ref, plane);
            assert_eq!(bits(&v), bits(&v_ref), "input transform {g:?}");

            let plane = c_out * t_all + 5;
            let m = pseudo_random(16 * plane, 7);
            let (mut out, mut out_ref) = (vec![sentinel; dout.len()], vec![sentinel; dout.len()]);
            output_transform(&g, &m, &mut out, plane);
            reference::output_transform(&g, &m, &mut out_ref, plane);
            assert_eq!(bits(&out), bits(&out_ref), "output transform {g:?}");
            assert!(out.iter().all(|v| *v != sentinel), "every output written");

            let (mut dm, mut dm_ref) = (vec![sentinel; 16 * plane], vec![sentinel; 16 * plane]);
            gradient_transform(&g, &dout, &mut dm, plane);
            reference::gradient_transform(&g, &dout, &mut dm_ref, plane);
            assert_eq!(bits(&dm), bits(&dm_ref), "gradient transform {g:?}");
        }
    }
}
