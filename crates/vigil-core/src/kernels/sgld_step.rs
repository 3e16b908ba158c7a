//! One step of localized SGLD (`madfa::sgld`) on a flat parameter, each value read and written
//! once. As burn tensor operations the step is about twenty element-wise passes, each writing a
//! fresh buffer; on SmolLM2-135M's 135M weights those passes and their page faults took over a
//! second per step (docs/performance.md, "The SGLD step"). The arithmetic here is the tensor
//! operations' operation by operation in `f32` (no fused multiply-adds), so the two agree bit for
//! bit (`kernels::tests`); the squared norms are summed in `f64`, per lane and chunk in an order
//! fixed by the length, so they do not depend on the thread count.

use rayon::prelude::*;

/// The step's constants, each rounded to `f32` as burn rounds a scalar operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgldScalars {
    /// `(lr/2) n_beta`.
    pub drift: f32,
    /// `(lr/2) gamma`.
    pub pull: f32,
    /// `sqrt(lr)`.
    pub noise: f32,
    /// RMSprop's `alpha`, `1 - alpha` and `eps`; `None` for plain SGLD.
    pub rmsprop: Option<[f32; 3]>,
}

/// Values per parallel job; fixed, so sums run in the same order whatever the thread count.
const CHUNK: usize = 1 << 15;

/// One step in place: `w` becomes `w - (lr/2) G (n_beta g + gamma (w - w*)) + sqrt(lr) sqrt(G) N`
/// and `v` (RMSprop's squared-gradient average, all of `w`'s length; empty for plain SGLD)
/// `alpha v + (1 - alpha) g^2`. Returns the squared norms of the drift, localization and noise
/// terms and of `w - w*` after the step. Every slice has `w`'s length.
pub fn step(
    s: &SgldScalars,
    w: &mut [f32],
    v: &mut [f32],
    [g, w0, noise]: [&[f32]; 3],
) -> [f64; 4] {
    let n = w.len();
    // Plain SGLD has no average: every chunk gets an empty slice for it.
    let v_chunks: Vec<&mut [f32]> = if v.is_empty() {
        std::iter::repeat_with(|| &mut [][..])
            .take(n.div_ceil(CHUNK))
            .collect()
    } else {
        v.chunks_mut(CHUNK).collect()
    };
    let sums: Vec<[f64; 4]> = w
        .par_chunks_mut(CHUNK)
        .zip(v_chunks)
        .enumerate()
        .map(|(k, (w, v))| {
            let range = k * CHUNK..k * CHUNK + w.len();
            step_chunk(
                s,
                w,
                v,
                &g[range.clone()],
                &w0[range.clone()],
                &noise[range],
            )
        })
        .collect();
    let mut squared = [0.0f64; 4];
    for chunk in sums {
        for (total, part) in squared.iter_mut().zip(chunk) {
            *total += part;
        }
    }
    squared
}

/// Elements [`step_chunk`] steps together: arrays of this many lanes compile to vector
/// instructions (x86-64's baseline SSE has exact division and square root).
const LANES: usize = 8;

/// [`step`] on one chunk; `v` is empty for plain SGLD.
fn step_chunk(
    s: &SgldScalars,
    w: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    w0: &[f32],
    noise: &[f32],
) -> [f64; 4] {
    match s.rmsprop {
        Some(rmsprop) => step_elements::<true>(s, rmsprop, w, v, g, w0, noise),
        None => step_elements::<false>(s, [0.0; 3], w, v, g, w0, noise),
    }
}

/// [`step_chunk`] with the preconditioner fixed at compile time, `LANES` elements at a time and
/// then the rest one by one; each lane sums its own squares.
fn step_elements<const RMSPROP: bool>(
    s: &SgldScalars,
    rmsprop: [f32; 3],
    w: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    w0: &[f32],
    noise: &[f32],
) -> [f64; 4] {
    // Plain SGLD keeps no average: a chunk's worth of unused lanes stands in for it.
    let mut unused;
    let v = if RMSPROP {
        v
    } else {
        unused = vec![0.0; w.len()];
        &mut unused[..]
    };
    let (w_blocks, w_rest) = w.as_chunks_mut::<LANES>();
    let (v_blocks, v_rest) = v.as_chunks_mut::<LANES>();
    let (g_blocks, g_rest) = g.as_chunks::<LANES>();
    let (w0_blocks, w0_rest) = w0.as_chunks::<LANES>();
    let (noise_blocks, noise_rest) = noise.as_chunks::<LANES>();
    let mut lanes = [[0.0f64; LANES]; 4];
    for ((((w, v), g), w0), noise) in w_blocks
        .iter_mut()
        .zip(v_blocks)
        .zip(g_blocks)
        .zip(w0_blocks)
        .zip(noise_blocks)
    {
        step_lanes::<LANES, RMSPROP>(s, rmsprop, w, v, [g, w0, noise], &mut lanes);
    }
    let mut squared = lanes.map(|lane_sums| lane_sums.iter().sum::<f64>());
    for ((((w, v), g), w0), noise) in w_rest
        .iter_mut()
        .zip(v_rest)
        .zip(g_rest)
        .zip(w0_rest)
        .zip(noise_rest)
    {
        let mut one = [[0.0f64; 1]; 4];
        let (w, v) = (std::array::from_mut(w), std::array::from_mut(v));
        let operands = [g, w0, noise].map(std::array::from_ref);
        step_lanes::<1, RMSPROP>(s, rmsprop, w, v, operands, &mut one);
        for (total, term) in squared.iter_mut().zip(one) {
            *total += term[0];
        }
    }
    squared
}

/// One step of `N` elements: `[g, w*, N(0, 1)]` in, `w` and `v` updated, each term's square
/// added to its lane of `squared`.
#[inline(always)]
fn step_lanes<const N: usize, const RMSPROP: bool>(
    s: &SgldScalars,
    [alpha, one_minus_alpha, eps]: [f32; 3],
    w: &mut [f32; N],
    v: &mut [f32; N],
    [g, w0, noise]: [&[f32; N]; 3],
    squared: &mut [[f64; N]; 4],
) {
    for i in 0..N {
        let mut drift = g[i] * s.drift;
        let mut pull = (w[i] - w0[i]) * s.pull;
        let mut step_noise = noise[i] * s.noise;
        if RMSPROP {
            v[i] = v[i] * alpha + g[i] * g[i] * one_minus_alpha;
            let gain = 1.0 / (v[i].sqrt() + eps);
            drift *= gain;
            pull *= gain;
            step_noise *= gain.sqrt();
        }
        w[i] = w[i] - drift - pull + step_noise;
        let terms = [drift, pull, step_noise, w[i] - w0[i]];
        for (lane, term) in squared.iter_mut().zip(terms) {
            lane[i] += f64::from(term) * f64::from(term);
        }
    }
}
