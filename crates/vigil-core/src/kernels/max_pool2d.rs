//! 2-D max-pooling of NCHW `f32` data, forward and backward, one channel plane per task.
//!
//! burn-flex pools through its generic 3-D path with an index tensor kept for the backward
//! pass. Here the backward pass finds each window's maximum again from the saved input (the
//! same first-maximum rule as the forward), so the forward writes nothing but its output.
//! Padding counts as minus infinity, as in PyTorch; no dilation, no ceil mode. 2x2 windows of
//! stride 2 (the small CNN's) run four at a time on SSE lanes (`PairWindows`), with the same
//! comparisons as one at a time.

use super::fill::par_chunks_filled;
use super::lanes::F4;
use super::output_size;

/// Shapes of one pooling: input `[batch, channels, h, w]`, output `[batch, channels, oh, ow]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Independent planes, `batch * channels`.
    pub planes: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window `[height, width]`.
    pub kernel: [usize; 2],
    /// Stride `[vertical, horizontal]`.
    pub stride: [usize; 2],
    /// Padding `[vertical, horizontal]` (never the maximum), on both sides.
    pub padding: [usize; 2],
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl PoolGeometry {
    /// `None` when the window does not fit, padding exceeds half the window (PyTorch's rule) or
    /// the input is empty.
    pub fn new(
        x: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Option<Self> {
        let [batch, channels, h, w] = x;
        // An empty plane has no window to take a maximum of (padding alone could give it an
        // output position): left to burn's pooling.
        if stride.contains(&0) || kernel.contains(&0) || h == 0 || w == 0 {
            return None;
        }
        if 2 * padding[0] > kernel[0] || 2 * padding[1] > kernel[1] {
            return None;
        }
        Some(Self {
            planes: batch * channels,
            h,
            w,
            kernel,
            stride,
            padding,
            oh: output_size(h, kernel[0], stride[0], padding[0])?,
            ow: output_size(w, kernel[1], stride[1], padding[1])?,
        })
    }

    /// 2x2 windows, stride 2, no padding: the small CNN's pooling, with its own loops.
    fn is_pair(&self) -> bool {
        self.kernel == [2, 2] && self.stride == [2, 2] && self.padding == [0, 0] && self.ow > 0
    }

    /// The input rows (or columns) `start..end` under output row `o`, clipped to the input.
    fn window(&self, o: usize, axis: usize) -> (usize, usize) {
        let size = [self.h, self.w][axis];
        let start = (o * self.stride[axis]).saturating_sub(self.padding[axis]);
        let end = (o * self.stride[axis] + self.kernel[axis])
            .saturating_sub(self.padding[axis])
            .min(size);
        (start, end)
    }

    /// The flat index in the plane of the window's first maximum (NaN counts as the maximum).
    fn argmax(&self, plane: &[f32], oy: usize, ox: usize) -> usize {
        let (y0, y1) = self.window(oy, 0);
        let (x0, x1) = self.window(ox, 1);
        let mut best = y0 * self.w + x0;
        let mut best_value = plane[best];
        for y in y0..y1 {
            for x in x0..x1 {
                let v = plane[y * self.w + x];
                if v > best_value || (v.is_nan() && !best_value.is_nan()) {
                    best = y * self.w + x;
                    best_value = v;
                }
            }
        }
        best
    }
}

/// The forward pass: the output (`[batch, channels, oh, ow]`) of `x`.
pub fn forward(g: &PoolGeometry, x: &[f32]) -> Vec<f32> {
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    assert_eq!(x.len(), g.planes * plane_in);
    if plane_out == 0 {
        return Vec::new();
    }
    par_chunks_filled(
        g.planes * plane_out,
        plane_out,
        || (),
        |_, p, out| {
            let plane = &x[p * plane_in..][..plane_in];
            if !g.is_pair() {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        out[oy * g.ow + ox] = plane[g.argmax(plane, oy, ox)];
                    }
                }
                return;
            }
            for (line, rows) in out.chunks_exact_mut(g.ow).zip(plane.chunks_exact(2 * g.w)) {
                let (r0, r1) = rows.split_at(g.w);
                if g.ow < 4 {
                    for ((v, p0), p1) in line
                        .iter_mut()
                        .zip(r0.chunks_exact(2))
                        .zip(r1.chunks_exact(2))
                    {
                        *v = PairWindow::new(p0, p1).max;
                    }
                    continue;
                }
                for ox in groups_of_four(g.ow) {
                    PairWindows::new(r0, r1, ox).max.store(&mut line[ox..]);
                }
            }
        },
    )
}

/// `x` wins against `y` under the first-maximum rule when it comes first: ties and NaN in `x`
/// keep `x`, and NaN in `y` alone beats `x`.
#[inline(always)]
fn keeps_first(x: f32, y: f32) -> bool {
    // `|`, not `||`: no branch to mispredict on random data, so the loops compile to selects.
    (x >= y) | x.is_nan()
}

/// One 2x2 window (`p0` its top pair, `p1` its bottom pair): its maximum and where it is. The
/// pairwise comparisons prefer the earlier element, so the winner is the first maximum in scan
/// order, as in [`PoolGeometry::argmax`].
struct PairWindow {
    max: f32,
    top: bool,
    left: bool,
}

impl PairWindow {
    #[inline(always)]
    fn new(p0: &[f32], p1: &[f32]) -> Self {
        let top_left = keeps_first(p0[0], p0[1]);
        let bottom_left = keeps_first(p1[0], p1[1]);
        let top_max = if top_left { p0[0] } else { p0[1] };
        let bottom_max = if bottom_left { p1[0] } else { p1[1] };
        let top = keeps_first(top_max, bottom_max);
        Self {
            max: if top { top_max } else { bottom_max },
            top,
            left: if top { top_left } else { bottom_left },
        }
    }
}

/// The output columns at which groups of four side-by-side windows start: `0, 4, 8, ...` and,
/// when `ow` is not a multiple of four, a last group ending at `ow` that overlaps the one before
/// (2x2 windows of stride 2 share no input, so a window done twice writes the same values).
/// Rows of fewer than four windows take the one-window loops instead.
fn groups_of_four(ow: usize) -> impl Iterator<Item = usize> {
    let last = (!ow.is_multiple_of(4) && ow >= 4).then(|| ow - 4);
    (0..ow / 4).map(|group| 4 * group).chain(last)
}

/// Four side-by-side 2x2 windows from output column `ox` of one row of windows: [`PairWindow`]
/// on four lanes, the same comparisons in the same order, so the same maxima and winners bit
/// for bit. `top` and `left` are lane masks.
struct PairWindows {
    max: F4,
    top: F4,
    left: F4,
}

impl PairWindows {
    /// `r0` and `r1` are the windows' two input rows (at least `2 * (ox + 4)` values each).
    #[inline(always)]
    fn new(r0: &[f32], r1: &[f32], ox: usize) -> Self {
        let at = 2 * ox;
        let (top_l, top_r) = F4::deinterleave(F4::load(&r0[at..]), F4::load(&r0[at + 4..]));
        let (bottom_l, bottom_r) = F4::deinterleave(F4::load(&r1[at..]), F4::load(&r1[at + 4..]));
        let top_left = top_l.keeps_first(top_r);
        let bottom_left = bottom_l.keeps_first(bottom_r);
        let top_max = top_left.select(top_l, top_r);
        let bottom_max = bottom_left.select(bottom_l, bottom_r);
        let top = top_max.keeps_first(bottom_max);
        Self {
            max: top.select(top_max, bottom_max),
            top,
            left: top.select(top_left, bottom_left),
        }
    }

    /// Writes the four windows' input gradients into the rows `d0` and `d1`: each window's
    /// gradient (the first four of `grads`) at its maximum, `+0.0` at its other three places.
    #[inline(always)]
    fn scatter(&self, grads: &[f32], d0: &mut [f32], d1: &mut [f32], ox: usize) {
        let grad = F4::load(grads);
        let (top, bottom) = (self.top.and(grad), self.top.and_not(grad));
        let at = 2 * ox;
        for (row_grad, d) in [(top, d0), (bottom, d1)] {
            let (lo, hi) = F4::interleave(self.left.and(row_grad), self.left.and_not(row_grad));
            lo.store(&mut d[at..]);
            hi.store(&mut d[at + 4..]);
        }
    }
}

/// The gradient with respect to the input: each output gradient goes to its window's first
/// maximum in `x`; overlapping windows add up.
pub fn backward(g: &PoolGeometry, x: &[f32], dout: &[f32]) -> Vec<f32> {
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    assert_eq!(x.len(), g.planes * plane_in);
    assert_eq!(dout.len(), g.planes * plane_out);
    if plane_in == 0 {
        return Vec::new();
    }
    // Each plane arrives zeroed: positions under no window (an odd last row or column) keep 0,
    // and overlapping windows add onto it.
    par_chunks_filled(
        g.planes * plane_in,
        plane_in,
        || (),
        |_, p, dx| {
            let plane = &x[p * plane_in..][..plane_in];
            let dout = &dout[p * plane_out..][..plane_out];
            if !g.is_pair() {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        dx[g.argmax(plane, oy, ox)] += dout[oy * g.ow + ox];
                    }
                }
                return;
            }
            let lines = dx
                .chunks_exact_mut(2 * g.w)
                .zip(plane.chunks_exact(2 * g.w))
                .zip(dout.chunks_exact(g.ow.max(1)));
            for ((drows, rows), grads) in lines {
                let (r0, r1) = rows.split_at(g.w);
                let (d0, d1) = drows.split_at_mut(g.w);
                if g.ow >= 4 {
                    for ox in groups_of_four(g.ow) {
                        PairWindows::new(r0, r1, ox).scatter(&grads[ox..], d0, d1, ox);
                    }
                    continue;
                }
                let windows = r0
                    .chunks_exact(2)
                    .zip(r1.chunks_exact(2))
                    .zip(d0.chunks_exact_mut(2).zip(d1.chunks_exact_mut(2)))
                    .zip(grads);
                for (((p0, p1), (q0, q1)), &grad) in windows {
                    let win = PairWindow::new(p0, p1);
                    let pick = |top: bool, left: bool| {
                        if (win.top == top) & (win.left == left) {
                            grad
                        } else {
                            0.0
                        }
                    };
                    q0[0] = pick(true, true);
                    q0[1] = pick(true, false);
                    q1[0] = pick(false, true);
                    q1[1] = pick(false, false);
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_pytorch() {
        let g = PoolGeometry::new([2, 3, 28, 28], [2, 2], [2, 2], [0, 0]).unwrap();
        assert_eq!((g.planes, g.oh, g.ow), (6, 14, 14));
        let g = PoolGeometry::new([1, 1, 7, 7], [3, 3], [2, 2], [1, 1]).unwrap();
        assert_eq!((g.oh, g.ow), (4, 4));
        assert!(PoolGeometry::new([1, 1, 7, 7], [2, 2], [2, 2], [2, 2]).is_none());
        assert!(PoolGeometry::new([1, 1, 0, 3], [2, 2], [2, 2], [1, 1]).is_none());
    }

    #[test]
    fn first_maximum_wins_and_gradients_add_up_under_overlap() {
        // 1 plane 3x3, kernel 2 stride 1: the 2 at (0,1) and the 2 at (1,0) tie in the first
        // window; the first in scan order takes the gradient.
        let x = [1.0, 2.0, 0.0, 2.0, 0.5, 5.0, 0.0, 0.0, 0.0];
        let g = PoolGeometry::new([1, 1, 3, 3], [2, 2], [1, 1], [0, 0]).unwrap();
        assert_eq!(forward(&g, &x), [2.0, 5.0, 2.0, 5.0]);
        let dx = backward(&g, &x, &[1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(dx, [0.0, 1.0, 0.0, 100.0, 0.0, 1010.0, 0.0, 0.0, 0.0]);
    }

    /// The 2x2 loops against the general first-maximum scan (`argmax`) on ties, NaN and odd
    /// sizes: values bit for bit, gradients exactly. Rows of four or more windows take the
    /// four-lane loops (7, 9 and 14 windows end on an overlapping group), shorter ones the
    /// one-window loops.
    #[test]
    fn pair_windows_follow_the_general_rule() {
        let values = [
            0.0,
            1.0,
            1.0,
            f32::NAN,
            -1.0,
            1.0,
            0.0,
            f32::NAN,
            1.0,
            0.0,
            1.0,
        ];
        for (h, w) in [
            (4, 4),
            (5, 7),
            (2, 3),
            (2, 8),
            (6, 14),
            (3, 19),
            (4, 28),
            (5, 9),
        ] {
            let x: Vec<f32> = (0..2 * h * w)
                .map(|i| values[(i * 7 + i / 3) % values.len()])
                .collect();
            let pair = PoolGeometry::new([1, 2, h, w], [2, 2], [2, 2], [0, 0]).unwrap();
            let dout: Vec<f32> = (0..2 * pair.oh * pair.ow).map(|i| 1.0 + i as f32).collect();
            let (out, dx) = (forward(&pair, &x), backward(&pair, &x, &dout));
            for p in 0..2 {
                let plane = &x[p * h * w..(p + 1) * h * w];
                let mut expected_dx = vec![0.0; h * w];
                for oy in 0..pair.oh {
                    for ox in 0..pair.ow {
                        let i = pair.argmax(plane, oy, ox);
                        let o = p * pair.oh * pair.ow + oy * pair.ow + ox;
                        assert_eq!(out[o].to_bits(), plane[i].to_bits(), "{h}x{w} value {o}");
                        expected_dx[i] += dout[o];
                    }
                }
                assert_eq!(
                    &dx[p * h * w..(p + 1) * h * w],
                    &expected_dx[..],
                    "{h}x{w} gradient"
                );
            }
        }
    }

    #[test]
    fn padding_never_wins() {
        let x = [-3.0, -1.0, -2.0, -4.0];
        let g = PoolGeometry::new([1, 1, 2, 2], [3, 3], [2, 2], [1, 1]).unwrap();
        assert_eq!(forward(&g, &x), [-1.0]);
    }
}
