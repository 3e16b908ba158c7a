//! Direct 2-D convolution of NCHW `f32` data: per sample, an im2col matrix in the classic
//! `[c_in * kh * kw, oh * ow]` layout and one gemm, forward and both backward passes.
//!
//! burn-flex lowers every 2-D convolution to its generic 3-D path: a serial NCHW to NHWC copy
//! of the whole batch, im2col tiles in NHWC order, a scatter back to NCHW, and for the backward
//! passes burn's backend-generic formulas (transposed convolution, layout swaps). Here the NCHW
//! layout is kept: the im2col rows are shifted copies of input rows, the gemm writes the
//! output plane of a sample in place, and samples run in parallel with one single-threaded gemm
//! each, which is where the two cores pay off at vigil's batch sizes.
//!
//! Dilation 1 and one group only: that is every convolution of vigil's models; others go
//! through burn's own kernels (see [`super::conv2d`]).

use gemm::Parallelism;
use rayon::prelude::*;

use super::fill::par_chunks_filled;
use super::output_size;
use super::scratch::{Scratch, scratch};

/// Shapes of one convolution: input `[batch, c_in, h, w]`, weight `[c_out, c_in, kh, kw]`,
/// output `[batch, c_out, oh, ow]`, symmetric zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Samples.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride `[vertical, horizontal]`.
    pub stride: [usize; 2],
    /// Zero padding `[vertical, horizontal]`, on both sides.
    pub padding: [usize; 2],
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Conv2dGeometry {
    /// The geometry of `x` (`[batch, c_in, h, w]`) convolved with `weight` (`[c_out, c_in, kh,
    /// kw]`); `None` when the shapes do not fit together or the output would be empty.
    pub fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Option<Self> {
        let [batch, c_in, h, w] = x;
        let [c_out, wc_in, kh, kw] = weight;
        if wc_in != c_in || stride.contains(&0) || kh == 0 || kw == 0 {
            return None;
        }
        let oh = output_size(h, kh, stride[0], padding[0])?;
        let ow = output_size(w, kw, stride[1], padding[1])?;
        Some(Self {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            padding,
            oh,
            ow,
        })
    }

    /// Rows of the im2col matrix: one per input channel and kernel position.
    pub fn col_rows(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Columns of the im2col matrix: one per output position.
    pub fn col_cols(&self) -> usize {
        self.oh * self.ow
    }

    fn input_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn output_len(&self) -> usize {
        self.c_out * self.col_cols()
    }

    /// A 1x1 convolution with stride 1 and no padding: the input plane is its own im2col.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Output columns `ox` whose input column `ox * stride + kx - pad` lies inside the input.
    fn valid_columns(&self, kx: usize) -> std::ops::Range<usize> {
        valid_range(self.w, self.ow, self.stride[1], self.padding[1], kx)
    }

    fn valid_rows(&self, ky: usize) -> std::ops::Range<usize> {
        valid_range(self.h, self.oh, self.stride[0], self.padding[0], ky)
    }
}

/// The output indices `o` in `0..out` with `o * stride + k - pad` in `0..size`.
fn valid_range(
    size: usize,
    out: usize,
    stride: usize,
    pad: usize,
    k: usize,
) -> std::ops::Range<usize> {
    // First o with o * stride + k >= pad; last o with o * stride + k - pad <= size - 1.
    let first = pad.saturating_sub(k).div_ceil(stride);
    let end = if size + pad > k {
        ((size + pad - k - 1) / stride + 1).min(out)
    } else {
        0
    };
    first.min(end)..end
}

/// Fills columns `offset..offset + col_cols` of `col` (row-major, `col_rows` rows of `ld`
/// columns) with the patches of one sample `x` (`[c_in, h, w]`): several samples' patches side
/// by side, for one wider gemm (`ld = col_cols`, `offset = 0` for one sample alone).
fn im2col_at(g: &Conv2dGeometry, x: &[f32], col: &mut [f32], ld: usize, offset: usize) {
    let (p, [sy, sx], [py, px]) = (g.col_cols(), g.stride, g.padding);
    let mut row = 0;
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            let rows = g.valid_rows(ky);
            for kx in 0..g.kw {
                let cols = g.valid_columns(kx);
                let start = row * ld + offset;
                let dst = &mut col[start..start + p];
                for oy in 0..g.oh {
                    let line = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                    if !rows.contains(&oy) {
                        line.fill(0.0);
                        continue;
                    }
                    line[..cols.start].fill(0.0);
                    line[cols.end..].fill(0.0);
                    if cols.is_empty() {
                        continue;
                    }
                    let iy = oy * sy + ky - py;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let ix0 = cols.start * sx + kx - px;
                    if sx == 1 {
                        line[cols.clone()].copy_from_slice(&src[ix0..ix0 + cols.len()]);
                    } else {
                        for (o, v) in line[cols.clone()].iter_mut().enumerate() {
                            *v = src[ix0 + o * sx];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Adds the patches in columns `offset..offset + col_cols` of `col` (row-major, `ld` columns)
/// back onto one sample's input gradient `dx` (`[c_in, h, w]`): the adjoint of [`im2col_at`].
fn col2im_add_at(g: &Conv2dGeometry, col: &[f32], dx: &mut [f32], ld: usize, offset: usize) {
    let (p, [sy, sx], [py, px]) = (g.col_cols(), g.stride, g.padding);
    let mut row = 0;
    for c in 0..g.c_in {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            let rows = g.valid_rows(ky);
            for kx in 0..g.kw {
                let cols = g.valid_columns(kx);
                let start = row * ld + offset;
                let src = &col[start..start + p];
                if cols.is_empty() {
                    row += 1;
                    continue;
                }
                for oy in rows.clone() {
                    let iy = oy * sy + ky - py;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let line = &src[oy * g.ow..(oy + 1) * g.ow];
                    let ix0 = cols.start * sx + kx - px;
                    if sx == 1 {
                        // Contiguous on both sides: a slice add the compiler vectorises (the
                        // strided loop below does not, and was 8% of a training step).
                        let dst = &mut dst[ix0..ix0 + cols.len()];
                        for (d, v) in dst.iter_mut().zip(&line[cols.clone()]) {
                            *d += v;
                        }
                    } else {
                        for (o, v) in line[cols.clone()].iter().enumerate() {
                            dst[ix0 + o * sx] += v;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Row-major matrix operand for [`matmul`]: data, rows, columns, the distance between rows,
/// and whether it is read transposed (then `rows x cols` is the shape after transposition).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    transposed: bool,
}

impl<'a> Mat<'a> {
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "Mat: data length");
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            transposed: false,
        }
    }

    /// A `rows x cols` matrix whose row `r` is `data[r * row_stride..][..cols]`.
    pub(crate) fn rows_apart(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(cols <= row_stride, "Mat: rows overlap");
        assert!(
            data.len() >= rows.saturating_sub(1) * row_stride + cols,
            "Mat: data length"
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
            transposed: false,
        }
    }

    /// The transpose of the row-major `rows x cols` matrix in `data`.
    pub(crate) fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "Mat: data length");
        Self {
            data,
            rows: cols,
            cols: rows,
            row_stride: cols,
            transposed: true,
        }
    }

    /// (column stride, row stride) of the matrix as read.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (self.rows as isize, 1)
        } else {
            (1, self.row_stride as isize)
        }
    }
}

/// `dst = a b` (or `dst += a b` with `accumulate`), `dst` row-major `a.rows x b.cols`,
/// single-threaded: the callers parallelise over samples.
pub(super) fn matmul(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    matmul_with(dst, a, b, accumulate, Parallelism::None);
}

/// `dst = a b` on every thread of rayon's pool, for one large product.
pub(crate) fn matmul_threaded(dst: &mut [f32], a: Mat, b: Mat) {
    matmul_with(dst, a, b, false, Parallelism::Rayon(0));
}

fn matmul_with(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool, parallelism: Parallelism) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    assert_eq!(dst.len(), a.rows * b.cols, "matmul: output size");
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    // SAFETY: the pointers and strides stay within the slices checked above and in `Mat`'s
    // constructors (a: rows x cols read through its strides, b likewise, dst row-major
    // a.rows x b.cols); gemm reads `dst` only when `accumulate` is set.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.as_mut_ptr(),
            1,
            b.cols as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Output positions one gemm should cover at least: samples whose output plane is smaller
/// (the deep layers of a ResNet: 16-64 positions) are grouped side by side into one gemm of
/// about this width, so each weight read from memory serves that many columns instead of a
/// single sample's few. Measured on PreAct-ResNet-18's layers (`examples/conv_kernels.rs`, 2
/// threads, groups 1-16): wider groups make the patch matrix outgrow the L2 cache and lose in
/// the forward pass; about 128 columns was best or within noise of best on every layer.
const GEMM_COLUMNS: usize = 128;

/// Samples per gemm for `g`: 1 when a sample's output plane alone is wide enough.
pub fn group_size(g: &Conv2dGeometry) -> usize {
    GEMM_COLUMNS
        .div_ceil(g.col_cols().max(1))
        .clamp(1, g.batch.max(1))
}

/// The forward pass: the output (`[batch, c_out, oh, ow]`) of `x` and `weight`, without bias.
/// 3x3 convolutions of stride 1 with enough channels go through Winograd's F(2x2, 3x3)
/// ([`super::winograd`]).
pub fn forward(g: &Conv2dGeometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    if super::winograd::applies(g) {
        return super::winograd::forward(g, x, weight);
    }
    forward_grouped(g, x, weight, group_size(g))
}

/// [`forward`] with `group` samples per gemm (1: one gemm per sample; the kernel benchmark
/// compares the two).
pub fn forward_grouped(g: &Conv2dGeometry, x: &[f32], weight: &[f32], group: usize) -> Vec<f32> {
    let group = group.clamp(1, g.batch.max(1));
    assert_eq!(x.len(), g.batch * g.input_len());
    assert_eq!(weight.len(), g.c_out * g.col_rows());
    let (k, p) = (g.col_rows(), g.col_cols());
    let w = Mat::new(weight, g.c_out, k);
    // Per group: the samples' patches side by side ([k, n p]), one gemm into [c_out, n p], and
    // each sample's columns copied to its own output planes (a sample alone writes them in
    // place: its planes are its [c_out, p] matrix).
    par_chunks_filled(
        g.batch * g.output_len(),
        group * g.output_len(),
        || GroupBuffers::new(g, group),
        |GroupBuffers { col, wide }, index, out| {
            let n = group.min(g.batch - index * group);
            let x = &x[index * group * g.input_len()..][..n * g.input_len()];
            let col = Mat::new(patches(g, x, col), k, n * p);
            if n == 1 {
                matmul(out, w, col, false);
            } else {
                let wide = &mut wide[..g.c_out * n * p];
                matmul(wide, w, col, false);
                unpack_columns(g, wide, out, n);
            }
        },
    )
}

/// Scratch matrices of one group of samples: patches `[k, n p]` and an output-shaped
/// `[c_out, n p]`; for one sample per gemm only the patches (none for a pointwise
/// convolution, which reads the input itself). From the thread's pool ([`scratch`]), holding
/// whatever their last user left: every pass writes all it reads (im2col writes the padding's
/// zeros too, the gemms overwrite, the packing copies whole planes).
struct GroupBuffers {
    col: Scratch,
    wide: Scratch,
}

impl GroupBuffers {
    fn new(g: &Conv2dGeometry, group: usize) -> Self {
        if group == 1 {
            let col = if g.is_pointwise() {
                0
            } else {
                g.col_rows() * g.col_cols()
            };
            return Self {
                col: scratch(col),
                wide: scratch(0),
            };
        }
        Self {
            col: scratch(g.col_rows() * group * g.col_cols()),
            wide: scratch(g.c_out * group * g.col_cols()),
        }
    }
}

/// The patches of the samples in `x` side by side, `[k, n p]`, written into `col`; the input
/// itself for one sample of a pointwise convolution.
fn patches<'a>(g: &Conv2dGeometry, x: &'a [f32], col: &'a mut [f32]) -> &'a [f32] {
    let n = x.len() / g.input_len();
    if n == 1 && g.is_pointwise() {
        return x;
    }
    let (p, np) = (g.col_cols(), n * g.col_cols());
    let col = &mut col[..g.col_rows() * np];
    for (s, xs) in x.chunks(g.input_len()).enumerate() {
        im2col_at(g, xs, col, np, s * p);
    }
    col
}

/// `n` samples' `[c_out, p]` planes as one `[c_out, n p]` matrix: the planes themselves for
/// one sample, else copied side by side into `wide`.
fn side_by_side<'a>(g: &Conv2dGeometry, planes: &'a [f32], wide: &'a mut [f32]) -> &'a [f32] {
    let n = planes.len() / g.output_len();
    if n == 1 {
        return planes;
    }
    let wide = &mut wide[..g.c_out * n * g.col_cols()];
    pack_columns(g, planes, wide, n);
    wide
}

/// `[c_out, n p]` (samples side by side) to `n` samples' `[c_out, p]` planes.
fn unpack_columns(g: &Conv2dGeometry, wide: &[f32], out: &mut [f32], n: usize) {
    let p = g.col_cols();
    for (s, sample) in out.chunks_mut(g.output_len()).enumerate() {
        for (c, plane) in sample.chunks_mut(p).enumerate() {
            let start = c * n * p + s * p;
            plane.copy_from_slice(&wide[start..start + p]);
        }
    }
}

/// `n` samples' `[c_out, p]` planes side by side as `[c_out, n p]`: the inverse of
/// [`unpack_columns`].
fn pack_columns(g: &Conv2dGeometry, planes: &[f32], wide: &mut [f32], n: usize) {
    let p = g.col_cols();
    for (s, sample) in planes.chunks(g.output_len()).enumerate() {
        for (c, plane) in sample.chunks(p).enumerate() {
            let start = c * n * p + s * p;
            wide[start..start + p].copy_from_slice(plane);
        }
    }
}

/// The gradient with respect to the input (`[batch, c_in, h, w]`) from the output gradient
/// `dout` (`[batch, c_out, oh, ow]`).
pub fn backward_input(g: &Conv2dGeometry, weight: &[f32], dout: &[f32]) -> Vec<f32> {
    if super::winograd::applies(g) {
        return super::winograd::backward_input(g, weight, dout);
    }
    backward_input_grouped(g, weight, dout, group_size(g))
}

/// [`backward_input`] with `group` samples per gemm.
pub fn backward_input_grouped(
    g: &Conv2dGeometry,
    weight: &[f32],
    dout: &[f32],
    group: usize,
) -> Vec<f32> {
    let group = group.clamp(1, g.batch.max(1));
    assert_eq!(weight.len(), g.c_out * g.col_rows());
    assert_eq!(dout.len(), g.batch * g.output_len());
    // Zeroed once here: col2im adds onto it.
    let mut dx = vec![0.0; g.batch * g.input_len()];
    let (k, p) = (g.col_rows(), g.col_cols());
    let w_t = Mat::transposed(weight, g.c_out, k);
    dx.par_chunks_mut((group * g.input_len()).max(1))
        .zip(dout.par_chunks((group * g.output_len()).max(1)))
        .for_each_init(
            || GroupBuffers::new(g, group),
            |GroupBuffers { col, wide }, (dx, dout)| {
                let n = dout.len() / g.output_len();
                let dout = Mat::new(side_by_side(g, dout, wide), g.c_out, n * p);
                if n == 1 && g.is_pointwise() {
                    matmul(dx, w_t, dout, false);
                    return;
                }
                let col = &mut col[..k * n * p];
                matmul(col, w_t, dout, false);
                for (s, dxs) in dx.chunks_mut(g.input_len()).enumerate() {
                    col2im_add_at(g, col, dxs, n * p, s * p);
                }
            },
        );
    dx
}

/// Largest number of partial weight gradients held at once (in floats, 64 MiB): bounds the
/// memory of [`backward_weight`] on wide layers.
const PARTIAL_BUDGET: usize = 16 << 20;

/// A sum of `size` floats over a batch of `batch` samples taken in groups of `group`,
/// independent of the thread count and of scheduling: the groups are cut into a number of
/// chunks that depends on the sizes only (at most 8, and at most [`PARTIAL_BUDGET`] floats of
/// partial sums), each chunk sums its groups into its own partial with its own `buffers()`,
/// and the partials are added in chunk order. `add_group(sum, buffers, first, n, accumulate)`
/// adds the group of samples `first..first + n` into `sum` (overwriting it when `accumulate`
/// is false: the chunk's first group). Both weight gradients (direct and Winograd) reduce so.
pub(super) fn sum_over_batch<B>(
    (batch, group, size): (usize, usize, usize),
    buffers: impl Fn() -> B + Sync,
    add_group: impl Fn(&mut [f32], &mut B, usize, usize, bool) + Sync,
) -> Vec<f32> {
    if batch == 0 || size == 0 {
        return vec![0.0; size];
    }
    let group = group.clamp(1, batch);
    let groups = batch.div_ceil(group);
    let chunks = (PARTIAL_BUDGET / size).clamp(1, 8).min(groups);
    let per_chunk = groups.div_ceil(chunks);
    let partials: Vec<Vec<f32>> = (0..groups.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut sum = vec![0.0f32; size];
            let mut scratch = buffers();
            let first = chunk * per_chunk * group;
            let last = ((chunk + 1) * per_chunk * group).min(batch);
            for (i, b) in (first..last).step_by(group).enumerate() {
                add_group(&mut sum, &mut scratch, b, group.min(last - b), i > 0);
            }
            sum
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0.0; size]);
    for part in parts {
        for (a, b) in sum.iter_mut().zip(&part) {
            *a += b;
        }
    }
    sum
}

/// The gradient with respect to the weight, `[c_out, c_in, kh, kw]`, from the input `x` and
/// the output gradient `dout`.
///
/// The batch is cut into a number of chunks that depends on the shapes only, each chunk sums
/// its samples into its own partial gradient, and the partials are added in chunk order: the
/// result does not depend on the thread count or on scheduling.
pub fn backward_weight(g: &Conv2dGeometry, x: &[f32], dout: &[f32]) -> Vec<f32> {
    if super::winograd::applies(g) {
        return super::winograd::backward_weight(g, x, dout);
    }
    backward_weight_grouped(g, x, dout, group_size(g))
}

/// [`backward_weight`] with `group` samples per gemm (one gemm of inner size `group p`
/// instead of `group` of inner size `p`, each of which would read and write the whole
/// gradient).
pub fn backward_weight_grouped(
    g: &Conv2dGeometry,
    x: &[f32],
    dout: &[f32],
    group: usize,
) -> Vec<f32> {
    let group = group.clamp(1, g.batch.max(1));
    assert_eq!(x.len(), g.batch * g.input_len());
    assert_eq!(dout.len(), g.batch * g.output_len());
    let (k, p) = (g.col_rows(), g.col_cols());
    sum_over_batch(
        (g.batch, group, g.c_out * k),
        || GroupBuffers::new(g, group),
        |dw, GroupBuffers { col, wide }, b, n, accumulate| {
            let xb = &x[b * g.input_len()..(b + n) * g.input_len()];
            let dout_b = &dout[b * g.output_len()..(b + n) * g.output_len()];
            matmul(
                dw,
                Mat::new(side_by_side(g, dout_b, wide), g.c_out, n * p),
                Mat::transposed(patches(g, xb, col), k, n * p),
                accumulate,
            );
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution straight from its definition, in f64.
    fn naive_forward(g: &Conv2dGeometry, x: &[f32], w: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0f64; g.batch * g.output_len()];
        for b in 0..g.batch {
            for co in 0..g.c_out {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = 0.0f64;
                        for ci in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy =
                                        (oy * g.stride[0] + ky) as isize - g.padding[0] as isize;
                                    let ix =
                                        (ox * g.stride[1] + kx) as isize - g.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * g.c_in + ci) * g.h + iy as usize) * g.w
                                        + ix as usize];
                                    let wv = w[((co * g.c_in + ci) * g.kh + ky) * g.kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((b * g.c_out + co) * g.oh + oy) * g.ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    use super::super::pseudo_random;

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (*x as f64 - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "element {i}: {x} vs {y}"
            );
        }
    }

    /// Shapes with odd sizes, strides 1-3, paddings 0-2, 1x1 to 5x5 kernels, 1 and 3 channels.
    fn geometries() -> Vec<Conv2dGeometry> {
        let cases = [
            ([2, 1, 7, 9], [4, 1, 3, 3], [1, 1], [1, 1]),
            ([3, 3, 8, 8], [5, 3, 3, 3], [2, 2], [1, 1]),
            ([1, 3, 11, 6], [2, 3, 5, 3], [1, 2], [2, 0]),
            ([2, 4, 5, 5], [3, 4, 1, 1], [1, 1], [0, 0]),
            ([2, 4, 9, 7], [6, 4, 1, 1], [2, 2], [0, 0]),
            ([1, 2, 4, 4], [2, 2, 3, 3], [3, 3], [2, 2]),
            ([5, 1, 3, 3], [1, 1, 3, 3], [1, 1], [0, 0]),
            ([7, 3, 4, 4], [4, 3, 3, 3], [2, 2], [1, 1]),
        ];
        cases
            .into_iter()
            .map(|(x, w, s, p)| Conv2dGeometry::new(x, w, s, p).expect("valid case"))
            .collect()
    }

    #[test]
    fn geometry_matches_the_output_size_formula() {
        let g = Conv2dGeometry::new([1, 1, 28, 28], [8, 1, 3, 3], [2, 2], [1, 1]).unwrap();
        assert_eq!((g.oh, g.ow), (14, 14));
        assert!(Conv2dGeometry::new([1, 2, 4, 4], [1, 3, 3, 3], [1, 1], [0, 0]).is_none());
        assert!(Conv2dGeometry::new([1, 1, 2, 2], [1, 1, 5, 5], [1, 1], [0, 0]).is_none());
        assert!(Conv2dGeometry::new([1, 1, 4, 4], [1, 1, 3, 3], [0, 1], [0, 0]).is_none());
    }

    /// Samples per gemm to test each geometry with: one, two and three (a ragged last group
    /// where the batch is not a multiple), the whole batch, and the default choice.
    fn groups(g: &Conv2dGeometry) -> Vec<usize> {
        let mut groups = vec![0, 1, 2, 3, g.batch, group_size(g)];
        // 0 stands for "clamped to 1".
        groups.retain(|&n| n <= g.batch.max(1));
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    #[test]
    fn forward_equals_the_definition() {
        for (i, g) in geometries().iter().enumerate() {
            let x = pseudo_random(g.batch * g.input_len(), i as u64);
            let w = pseudo_random(g.c_out * g.col_rows(), 100 + i as u64);
            let expected = naive_forward(g, &x, &w);
            close(&forward(g, &x, &w), &expected);
            for group in groups(g) {
                close(&forward_grouped(g, &x, &w, group), &expected);
            }
        }
    }

    #[test]
    fn small_output_planes_are_grouped_and_large_ones_are_not() {
        let deep = Conv2dGeometry::new([64, 8, 4, 4], [8, 8, 3, 3], [1, 1], [1, 1]).unwrap();
        assert_eq!(group_size(&deep), GEMM_COLUMNS / 16);
        let few = Conv2dGeometry::new([3, 8, 4, 4], [8, 8, 3, 3], [1, 1], [1, 1]).unwrap();
        assert_eq!(group_size(&few), 3);
        let wide = Conv2dGeometry::new([64, 1, 28, 28], [8, 1, 3, 3], [1, 1], [1, 1]).unwrap();
        assert_eq!(group_size(&wide), 1);
    }

    /// Both gradients against the adjoint identities of the definition: for a random output
    /// gradient u, <u, conv(x, w)> is linear in x and in w, so d/dx_i = <u, conv(e_i, w)> and
    /// d/dw_j = <u, conv(x, e_j)>.
    #[test]
    fn backward_passes_equal_the_definition() {
        for (i, g) in geometries().iter().enumerate() {
            let x = pseudo_random(g.batch * g.input_len(), 7 + i as u64);
            let w = pseudo_random(g.c_out * g.col_rows(), 70 + i as u64);
            let u = pseudo_random(g.batch * g.output_len(), 700 + i as u64);
            let dot = |out: &[f64]| out.iter().zip(&u).map(|(a, b)| a * *b as f64).sum::<f64>();

            let expected_dx: Vec<f64> = (0..x.len())
                .map(|j| {
                    let mut e = vec![0.0f32; x.len()];
                    e[j] = 1.0;
                    dot(&naive_forward(g, &e, &w))
                })
                .collect();
            close(&backward_input(g, &w, &u), &expected_dx);

            let expected_dw: Vec<f64> = (0..w.len())
                .map(|j| {
                    let mut e = vec![0.0f32; w.len()];
                    e[j] = 1.0;
                    dot(&naive_forward(g, &x, &e))
                })
                .collect();
            close(&backward_weight(g, &x, &u), &expected_dw);

            for group in groups(g) {
                close(&backward_input_grouped(g, &w, &u, group), &expected_dx);
                close(&backward_weight_grouped(g, &x, &u, group), &expected_dw);
            }
        }
    }

    #[test]
    fn valid_range_covers_exactly_the_inside_positions() {
        for size in 1..9 {
            for k in 0..4 {
                for stride in 1..4 {
                    for pad in 0..3 {
                        if size + 2 * pad < k + 1 {
                            continue;
                        }
                        let out = (size + 2 * pad - (k + 1)) / stride + 1;
                        let r = valid_range(size, out, stride, pad, k);
                        for o in 0..out {
                            let i = (o * stride + k) as isize - pad as isize;
                            let inside = i >= 0 && i < size as isize;
                            assert_eq!(r.contains(&o), inside, "{size} {k} {stride} {pad} {o}");
                        }
                    }
                }
            }
        }
    }
}
