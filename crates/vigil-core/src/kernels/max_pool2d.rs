//! 2-D max-pooling of NCHW `f32` data, forward and backward, one channel plane per task.
//!
//! burn-flex pools through its generic 3-D path with an index tensor kept for the backward
//! pass. Here the backward pass finds each window's maximum again from the saved input (the
//! same first-maximum rule as the forward), so the forward writes nothing but its output.
//! Padding counts as minus infinity, as in PyTorch; no dilation, no ceil mode.

use rayon::prelude::*;

/// Shapes of one pooling: input `[batch, channels, h, w]`, output `[batch, channels, oh, ow]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub oh: usize,
    pub ow: usize,
}

impl PoolGeometry {
    /// `None` when the window does not fit, or padding exceeds half the window (PyTorch's rule).
    pub fn new(
        x: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Option<Self> {
        let [batch, channels, h, w] = x;
        if stride.contains(&0) || kernel.contains(&0) {
            return None;
        }
        if 2 * padding[0] > kernel[0] || 2 * padding[1] > kernel[1] {
            return None;
        }
        let out = |size: usize, k: usize, s: usize, p: usize| {
            (size + 2 * p).checked_sub(k).map(|span| span / s + 1)
        };
        Some(Self {
            planes: batch * channels,
            h,
            w,
            kernel,
            stride,
            padding,
            oh: out(h, kernel[0], stride[0], padding[0])?,
            ow: out(w, kernel[1], stride[1], padding[1])?,
        })
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

/// The forward pass: `out` (`[batch, channels, oh, ow]`) from `x`.
pub fn forward(g: &PoolGeometry, x: &[f32], out: &mut [f32]) {
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    assert_eq!(x.len(), g.planes * plane_in);
    assert_eq!(out.len(), g.planes * plane_out);
    if plane_out == 0 {
        return;
    }
    let pair = g.kernel == [2, 2] && g.stride == [2, 2] && g.padding == [0, 0];
    out.par_chunks_mut(plane_out)
        .zip(x.par_chunks(plane_in.max(1)))
        .for_each(|(out, plane)| {
            for oy in 0..g.oh {
                let line = &mut out[oy * g.ow..(oy + 1) * g.ow];
                if pair {
                    // The common 2x2 case without the window bookkeeping; same first-maximum
                    // rule, so the same values as the general loop.
                    let (r0, r1) = (
                        &plane[2 * oy * g.w..(2 * oy + 1) * g.w],
                        &plane[(2 * oy + 1) * g.w..(2 * oy + 2) * g.w],
                    );
                    for (ox, v) in line.iter_mut().enumerate() {
                        let mut m = r0[2 * ox];
                        for c in [r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]] {
                            if c > m || (c.is_nan() && !m.is_nan()) {
                                m = c;
                            }
                        }
                        *v = m;
                    }
                } else {
                    for (ox, v) in line.iter_mut().enumerate() {
                        *v = plane[g.argmax(plane, oy, ox)];
                    }
                }
            }
        });
}

/// The gradient with respect to the input: each output gradient goes to its window's first
/// maximum in `x`; overlapping windows add up.
pub fn backward(g: &PoolGeometry, x: &[f32], dout: &[f32], dx: &mut [f32]) {
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    assert_eq!(x.len(), g.planes * plane_in);
    assert_eq!(dout.len(), g.planes * plane_out);
    assert_eq!(dx.len(), g.planes * plane_in);
    if plane_in == 0 {
        return;
    }
    dx.par_chunks_mut(plane_in)
        .zip(x.par_chunks(plane_in))
        .zip(dout.par_chunks(plane_out.max(1)))
        .for_each(|((dx, plane), dout)| {
            dx.fill(0.0);
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    dx[g.argmax(plane, oy, ox)] += dout[oy * g.ow + ox];
                }
            }
        });
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
    }

    #[test]
    fn first_maximum_wins_and_gradients_add_up_under_overlap() {
        // 1 plane 3x3, kernel 2 stride 1: the 2 at (0,1) and the 2 at (1,0) tie in the first
        // window; the first in scan order takes the gradient.
        let x = [1.0, 2.0, 0.0, 2.0, 0.5, 5.0, 0.0, 0.0, 0.0];
        let g = PoolGeometry::new([1, 1, 3, 3], [2, 2], [1, 1], [0, 0]).unwrap();
        let mut out = [0.0; 4];
        forward(&g, &x, &mut out);
        assert_eq!(out, [2.0, 5.0, 2.0, 5.0]);
        let mut dx = [0.0; 9];
        backward(&g, &x, &[1.0, 10.0, 100.0, 1000.0], &mut dx);
        assert_eq!(dx, [0.0, 1.0, 0.0, 100.0, 0.0, 1010.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn padding_never_wins() {
        let x = [-3.0, -1.0, -2.0, -4.0];
        let g = PoolGeometry::new([1, 1, 2, 2], [3, 3], [2, 2], [1, 1]).unwrap();
        let mut out = [0.0; 1];
        forward(&g, &x, &mut out);
        assert_eq!(out, [-1.0]);
    }
}
