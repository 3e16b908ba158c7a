//! Winograd's minimal filtering for 3x3 convolutions of stride 1: forward and both backward
//! passes, in two tile sizes, F(2x2, 3x3) ([`f2x2`]) and F(4x4, 3x3) ([`f4x4`]).
//!
//! Each m x m output tile of a 3x3 convolution is `A^T [(G g G^T) ⊙ (B^T d B)] A`, with `d`
//! the (m + 2) x (m + 2) input patch under the tile and `g` the 3x3 filter (Lavin and Gray
//! 2016, "Fast Algorithms for Convolutional Neural Networks"). Summed over input channels, the
//! product `⊙` becomes one gemm per position `ξ` of the transformed tile (16 for F(2x2, 3x3),
//! 36 for F(4x4, 3x3)): `M[ξ] = U[ξ] V[ξ]` with `U[ξ]` the transformed filters `[c_out, c_in]`
//! and `V[ξ]` the transformed patches `[c_in, tiles]`. That is 16 multiplications per 4 outputs
//! (2.25x fewer than im2col's gemm, which is where PreAct-ResNet-18 spends its time,
//! docs/performance.md) or 36 per 16 (4x fewer). The transforms are additions and scalings.
//!
//! The three passes are linear in the same factors, so each is exact in exact arithmetic:
//! - forward: `Y = A^T M A` per tile;
//! - input gradient: a forward pass of the output gradient with the filters turned by 180
//!   degrees and their channel axes swapped, padding `2 - p`;
//! - weight gradient (F(2x2, 3x3) only): `dU[ξ] = dM[ξ] V[ξ]^T` summed over tiles, with
//!   `dM = A dY A^T` per tile, then `dW = G^T dU G`.
//!
//! In float32 the transforms cost a little precision (relative errors of 0.1-0.4e-6 for
//! F(2x2, 3x3) and 0.5-5e-6 for F(4x4, 3x3) on the tests' shapes, against about 2e-7 for
//! im2col); the tests bound it against the definition in f64.

mod f2x2;
mod f4x4;
mod planes;

use super::conv2d::{Conv2dGeometry, Mat, matmul, matmul_threaded, sum_over_batch};
use super::fill::par_chunks_filled;
use super::scratch::scratch;

/// Winograd's two tile sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// F(2x2, 3x3): 2x2 output tiles, 16 transformed positions.
    F2x2,
    /// F(4x4, 3x3): 4x4 output tiles, 36 transformed positions.
    F4x4,
}

impl Variant {
    /// The output tile's side.
    fn tile(self) -> usize {
        match self {
            Variant::F2x2 => 2,
            Variant::F4x4 => 4,
        }
    }

    /// Positions of the transformed tile: one gemm each.
    fn positions(self) -> usize {
        (self.tile() + 2) * (self.tile() + 2)
    }

    /// Tiles one group of gemms should cover at least: samples whose output has fewer tiles
    /// (the deep layers of a ResNet) are grouped so the gemms stay wide. F(2x2, 3x3), measured
    /// on PreAct-ResNet-18's layers (`examples/conv_kernels.rs`, 2 threads): 128 beat 64, 256,
    /// 512 and 1024 on every layer but one, where it was within noise. F(4x4, 3x3)'s
    /// transformed arrays are 2.25x larger per tile, so fewer tiles keep them in cache.
    fn gemm_tiles(self) -> usize {
        match self {
            Variant::F2x2 => 128,
            Variant::F4x4 => F4X4_GEMM_TILES,
        }
    }

    fn filter_transform(self, weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
        match self {
            Variant::F2x2 => f2x2::filter_transform(weight, c_out, c_in),
            Variant::F4x4 => f4x4::filter_transform(weight, c_out, c_in),
        }
    }

    /// The transformed filters `U[ξ]` (`[c_out, c_in]`) in [`Variant::filter_transform`]'s
    /// output `u`.
    fn filters_at(self, u: &[f32], xi: usize, c_out: usize, c_in: usize) -> Mat<'_> {
        match self {
            Variant::F2x2 => {
                let plane = plane_stride(c_out * c_in);
                Mat::new(&u[xi * plane..][..c_out * c_in], c_out, c_in)
            }
            Variant::F4x4 => f4x4::filters_at(u, xi, c_out, c_in),
        }
    }
}

/// See [`Variant::gemm_tiles`]. Measured on PreAct-ResNet-18's 64 x 32x32 and 128 x 16x16
/// layers: 32 and 64 tiles within noise of each other, 128 a little and 256 clearly slower.
const F4X4_GEMM_TILES: usize = 64;

/// 4x4 tiles per sample below which F(2x2, 3x3) runs instead. On the deepest layers' 4x4
/// outputs (one tile per sample) F(4x4, 3x3)'s 36 gemms have one column per sample and measured
/// 0.4-0.6x F(2x2, 3x3)'s 16 of four columns per sample; from four tiles per sample (8x8 and 7x7
/// outputs) up it measured 1.1-1.4x (`examples/conv_kernels.rs`,
/// `results/bench-kernels-2026-12-06-f4x4/`).
const F4X4_MIN_TILES: usize = 4;

/// Input channels below which the direct kernel wins: with few channels the gemms are too
/// thin (inner size `c_in`) to make up for the transforms.
const MIN_CHANNELS: usize = 16;

/// Whether tiles of side `m` cover `g`'s output without too much waste. An odd side computes
/// a whole tile for its last row or column: a 7x7 output (ResNet's third stage on 28x28
/// inputs) computes 64 positions for 49 with 2x2 tiles and still measured 1.2-1.4x faster than
/// the direct kernel in all three passes; a 3x3 output (16 for 9) is left to the direct kernel.
fn covers(g: &Conv2dGeometry, m: usize) -> bool {
    let [th, tw] = tiles(g, m);
    let covered = m * m * th * tw;
    let wasted = covered - g.oh * g.ow;
    4 * wasted <= covered
}

/// Whether the Winograd kernels compute `g`: 3x3, stride 1, padding at most 2, enough
/// channels, and 2x2 tiles that cover the output without too much waste.
pub fn applies(g: &Conv2dGeometry) -> bool {
    g.oh > 0
        && g.ow > 0
        && g.batch > 0
        && covers(g, 2)
        && g.kh == 3
        && g.kw == 3
        && g.stride == [1, 1]
        && g.padding[0] <= 2
        && g.padding[1] <= 2
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
}

/// The tile size a forward pass of `g` runs with: F(4x4, 3x3) where a sample's output holds at
/// least [`F4X4_MIN_TILES`] of its tiles and they cover it without too much waste, else
/// F(2x2, 3x3).
pub fn variant(g: &Conv2dGeometry) -> Variant {
    let [th, tw] = tiles(g, 4);
    if th * tw >= F4X4_MIN_TILES && covers(g, 4) {
        Variant::F4x4
    } else {
        Variant::F2x2
    }
}

/// Checks that `g` is a 3x3 convolution of stride 1 and padding at most 2, the shapes these
/// kernels compute (whether they pay is [`applies`]).
fn check(g: &Conv2dGeometry) {
    assert!(
        g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.padding[0] <= 2 && g.padding[1] <= 2,
        "winograd: not a 3x3 stride-1 convolution with padding at most 2: {g:?}"
    );
}

/// Floats between the starts of two of the planes `ξ` of a transformed array whose planes
/// hold `len` floats: rounded up to 4 KiB, plus one cache line. The transforms read or write
/// all planes at the same offset in turn; with a power-of-two plane (64 channels x 256 tiles
/// at 32x32 inputs) those addresses fall in one cache set and evict each other, which made
/// the kernels 1.5x slower on CIFAR's shapes than on Fashion-MNIST's. The extra line puts each
/// plane in the next set.
fn plane_stride(len: usize) -> usize {
    len.div_ceil(1024) * 1024 + 16
}

/// Tile counts of one sample's output: `[rows, columns]` of `m x m` tiles.
fn tiles(g: &Conv2dGeometry, m: usize) -> [usize; 2] {
    [g.oh.div_ceil(m), g.ow.div_ceil(m)]
}

/// Samples per group of gemms.
fn group_size(g: &Conv2dGeometry, variant: Variant) -> usize {
    let [th, tw] = tiles(g, variant.tile());
    variant
        .gemm_tiles()
        .div_ceil(th * tw)
        .clamp(1, g.batch.max(1))
}

/// The transposed filters of the input gradient: `W'[ci][co] = rot180(W[co][ci])`.
fn turned_filters(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut turned = vec![0.0f32; weight.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            let from = &weight[(co * c_in + ci) * 9..][..9];
            let to = &mut turned[(ci * c_out + co) * 9..][..9];
            for k in 0..9 {
                to[k] = from[8 - k];
            }
        }
    }
    turned
}

/// The forward pass, as [`super::conv2d::forward`], of a 3x3 convolution of stride 1 and
/// padding at most 2 (panics on another), with the tile size [`variant`] picks.
pub fn forward(g: &Conv2dGeometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    forward_with(variant(g), g, x, weight)
}

/// [`forward`] with a given tile size.
pub fn forward_with(variant: Variant, g: &Conv2dGeometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    check(g);
    let u = variant.filter_transform(weight, g.c_out, g.c_in);
    forward_transformed(variant, g, x, &u)
}

/// The forward pass with the filters already transformed ([`Variant::filter_transform`]).
fn forward_transformed(variant: Variant, g: &Conv2dGeometry, x: &[f32], u: &[f32]) -> Vec<f32> {
    let (input_len, output_len) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    assert_eq!(x.len(), g.batch * input_len);
    let positions = variant.positions();
    let group = group_size(g, variant);
    let [th, tw] = tiles(g, variant.tile());
    let t_max = group * th * tw;
    let (v_plane, m_plane) = (plane_stride(g.c_in * t_max), plane_stride(g.c_out * t_max));
    // A batch that makes one group (a small one: up to 32 samples on the 4x4 layers, 16 on the
    // 8x8 ones) would run on one thread: its gemms take every thread instead. Each output is still computed by one
    // thread in one order, so results do not depend on the thread count.
    let one_group = group >= g.batch;
    par_chunks_filled(
        g.batch * output_len,
        group * output_len,
        || (scratch(positions * v_plane), scratch(positions * m_plane)),
        |(v, m), index, out| {
            let n = group.min(g.batch - index * group);
            let x = &x[index * group * input_len..][..n * input_len];
            let t = n * th * tw;
            match variant {
                Variant::F2x2 => f2x2::input_transform(g, x, v, v_plane),
                Variant::F4x4 => f4x4::input_transform(g, x, v, v_plane),
            }
            for xi in 0..positions {
                let (dst, filters, patches) = (
                    &mut m[xi * m_plane..][..g.c_out * t],
                    variant.filters_at(u, xi, g.c_out, g.c_in),
                    Mat::new(&v[xi * v_plane..][..g.c_in * t], g.c_in, t),
                );
                if one_group {
                    matmul_threaded(dst, filters, patches);
                } else {
                    matmul(dst, filters, patches, false);
                }
            }
            match variant {
                Variant::F2x2 => f2x2::output_transform(g, m, out, m_plane),
                Variant::F4x4 => f4x4::output_transform(g, m, out, m_plane),
            }
        },
    )
}

/// The input gradient, as [`super::conv2d::backward_input`]: a forward pass of `dout` with the
/// turned filters and padding `2 - p` (the same shapes as [`forward`]), with the tile size
/// [`variant`] picks for that pass.
pub fn backward_input(g: &Conv2dGeometry, weight: &[f32], dout: &[f32]) -> Vec<f32> {
    let transposed = transposed(g);
    backward_input_with(variant(&transposed), g, weight, dout)
}

/// [`backward_input`] with a given tile size.
pub fn backward_input_with(
    variant: Variant,
    g: &Conv2dGeometry,
    weight: &[f32],
    dout: &[f32],
) -> Vec<f32> {
    check(g);
    let turned = turned_filters(weight, g.c_out, g.c_in);
    let u = variant.filter_transform(&turned, g.c_in, g.c_out);
    forward_transformed(variant, &transposed(g), dout, &u)
}

/// The geometry of the input gradient's forward pass: channels swapped, the output's side as
/// input, padding `2 - p`.
fn transposed(g: &Conv2dGeometry) -> Conv2dGeometry {
    Conv2dGeometry {
        batch: g.batch,
        c_in: g.c_out,
        h: g.oh,
        w: g.ow,
        c_out: g.c_in,
        kh: 3,
        kw: 3,
        stride: [1, 1],
        padding: [2 - g.padding[0], 2 - g.padding[1]],
        oh: g.h,
        ow: g.w,
    }
}

/// The weight gradient, as [`super::conv2d::backward_weight`] (the same shapes as [`forward`]),
/// with F(2x2, 3x3), summed over the batch by [`sum_over_batch`], so the result does not depend
/// on the thread count.
pub fn backward_weight(g: &Conv2dGeometry, x: &[f32], dout: &[f32]) -> Vec<f32> {
    check(g);
    let (input_len, output_len) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    assert_eq!(x.len(), g.batch * input_len);
    assert_eq!(dout.len(), g.batch * output_len);
    let u_plane = plane_stride(g.c_out * g.c_in);
    let group = group_size(g, Variant::F2x2);
    let [th, tw] = tiles(g, 2);
    let t_max = group * th * tw;
    let (v_plane, m_plane) = (plane_stride(g.c_in * t_max), plane_stride(g.c_out * t_max));
    let du = sum_over_batch(
        (g.batch, group, 16 * u_plane),
        || (scratch(16 * v_plane), scratch(16 * m_plane)),
        |du, (v, dm), b, n, accumulate| {
            let t = n * th * tw;
            f2x2::input_transform(g, &x[b * input_len..(b + n) * input_len], v, v_plane);
            let dout_b = &dout[b * output_len..(b + n) * output_len];
            f2x2::gradient_transform(g, dout_b, dm, m_plane);
            for xi in 0..16 {
                matmul(
                    &mut du[xi * u_plane..][..g.c_out * g.c_in],
                    Mat::new(&dm[xi * m_plane..][..g.c_out * t], g.c_out, t),
                    Mat::transposed(&v[xi * v_plane..][..g.c_in * t], g.c_in, t),
                    accumulate,
                );
            }
        },
    );
    f2x2::weight_from_transformed(&du, g.c_out, g.c_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::pseudo_random;

    /// The three passes straight from the definition, in f64.
    fn definition(g: &Conv2dGeometry, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let mut y = vec![0.0f64; g.batch * g.c_out * g.oh * g.ow];
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        for b in 0..g.batch {
            for co in 0..g.c_out {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let o = ((b * g.c_out + co) * g.oh + oy) * g.ow + ox;
                        for ci in 0..g.c_in {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy + ky) as isize - g.padding[0] as isize;
                                    let ix = (ox + kx) as isize - g.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let i =
                                        ((b * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize;
                                    let k = ((co * g.c_in + ci) * 3 + ky) * 3 + kx;
                                    y[o] += f64::from(w[k]) * f64::from(x[i]);
                                    dx[i] += f64::from(w[k]) * f64::from(dy[o]);
                                    dw[k] += f64::from(x[i]) * f64::from(dy[o]);
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    /// Largest difference relative to the largest magnitude of the reference.
    fn relative_error(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
        got.iter()
            .zip(want)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max)
            / scale
    }

    #[test]
    fn all_three_passes_equal_the_definition_on_odd_shapes() {
        // Odd and even planes, paddings 0-2, one sample and groups of several (the 4x4
        // outputs' batch of 10 is a single group, whose gemms take every thread), channel
        // counts not multiples of the gemm's tiles.
        for (batch, c_in, c_out, h, w, pad) in [
            (2, 16, 17, 7, 5, 1),
            (3, 19, 16, 8, 8, 0),
            (10, 16, 20, 4, 4, 1),
            (1, 17, 18, 6, 9, 2),
            (5, 16, 16, 3, 3, 1),
            (2, 64, 48, 12, 13, 1),
            (3, 32, 16, 14, 14, 1),
        ] {
            let g = Conv2dGeometry::new([batch, c_in, h, w], [c_out, c_in, 3, 3], [1, 1], [pad; 2])
                .unwrap();
            let x = pseudo_random(batch * c_in * h * w, 1);
            let wt = pseudo_random(c_out * c_in * 9, 2);
            let dy = pseudo_random(batch * c_out * g.oh * g.ow, 3);
            let [y, dx, dw] = definition(&g, &x, &wt, &dy);
            let weight_error = relative_error(&backward_weight(&g, &x, &dy), &dw);
            assert!(
                weight_error < 1e-5,
                "weight gradient {g:?}: relative error {weight_error}"
            );
            // Both tile sizes on every shape, whether or not `variant` would pick them.
            for (variant, bound) in [(Variant::F2x2, 1e-5), (Variant::F4x4, 2e-5)] {
                let errors = [
                    relative_error(&forward_with(variant, &g, &x, &wt), &y),
                    relative_error(&backward_input_with(variant, &g, &wt, &dy), &dx),
                ];
                for (pass, e) in ["forward", "input gradient"].iter().zip(errors) {
                    assert!(e < bound, "{variant:?} {pass} {g:?}: relative error {e}");
                }
            }
        }
    }

    #[test]
    fn only_stride_one_3x3_convolutions_with_enough_channels_apply() {
        let geometry = |c: usize, k: usize, stride: usize, pad: usize| {
            Conv2dGeometry::new([2, c, 8, 8], [c, c, k, k], [stride; 2], [pad; 2]).unwrap()
        };
        assert!(applies(&geometry(64, 3, 1, 1)));
        assert!(!applies(&geometry(64, 3, 2, 1)));
        assert!(!applies(&geometry(64, 1, 1, 0)));
        assert!(!applies(&geometry(8, 3, 1, 1)));
        assert!(!applies(&geometry(64, 3, 1, 3)));
        // 7x7 outputs waste 15 of 64 tile positions, 3x3 ones 7 of 16, 5x5 ones 11 of 36.
        let odd = |side: usize, pad: usize| {
            Conv2dGeometry::new([2, 64, side, side], [64, 64, 3, 3], [1, 1], [pad; 2]).unwrap()
        };
        assert!(applies(&odd(7, 1)));
        assert!(!applies(&odd(5, 0)));
        assert!(!applies(&odd(5, 1)));
        assert!(applies(&odd(29, 1)));
        // 4x4 tiles where they waste at most a quarter (14x14 in 16x16 and 7x7 in 8x8: 23%;
        // not 17x17 in 20x20: 28%, or 6x6 in 8x8) and a sample's output holds 4 of them or more
        // (not a 4x4 output's one).
        assert_eq!(variant(&odd(16, 1)), Variant::F4x4);
        assert_eq!(variant(&odd(14, 1)), Variant::F4x4);
        assert_eq!(variant(&odd(8, 1)), Variant::F4x4);
        assert_eq!(variant(&odd(7, 1)), Variant::F4x4);
        assert_eq!(variant(&odd(17, 1)), Variant::F2x2);
        assert_eq!(variant(&odd(6, 1)), Variant::F2x2);
        assert_eq!(variant(&odd(4, 1)), Variant::F2x2);
    }
}
