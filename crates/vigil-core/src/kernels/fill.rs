//! New output buffers written chunk by chunk in parallel, without a zeroing pass of their own.
//!
//! `vec![0.0; n]` zeroes a kernel's whole output on the calling thread before the parallel
//! loop starts: for the small CNN's first convolution at batch 64 that is 6.4 MB written by one
//! thread while the other waits, and the zeroing passes of the convolution and pooling outputs
//! were 4-7% of the MAD-FA chain's profile (docs/performance.md, "Pooling four windows at a
//! time"). Here each chunk is zeroed by the thread that then writes it, just before, while the
//! chunk is in that thread's cache: no single-threaded pass, no extra trip to memory.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A new vector of `len` floats, cut into chunks of `chunk` floats (the last may be shorter)
/// that `fill(state, index, piece)` writes in parallel; each piece arrives zeroed, `state`
/// comes from `init` (once per piece of work rayon splits off, as `for_each_init`).
pub fn par_chunks_filled<S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |state, (index, piece)| {
            piece.fill(MaybeUninit::new(0.0));
            // SAFETY: every element of `piece` was initialised on the line above, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let piece = unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) };
            fill(state, index, piece);
        });
    // SAFETY: the pieces cover `0..len` and each was initialised before `fill` saw it; had
    // `fill` panicked, rayon would have re-raised the panic before this line.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_arrive_zeroed_cover_the_vector_and_keep_their_writes() {
        for (len, chunk) in [(10, 3), (12, 4), (0, 5), (7, 0), (1000, 64)] {
            let out = par_chunks_filled(
                len,
                chunk,
                || (),
                |_, index, piece| {
                    assert!(piece.iter().all(|&v| v.to_bits() == 0), "zeroed");
                    assert!(piece.len() <= chunk.max(1));
                    for (k, v) in piece.iter_mut().enumerate() {
                        *v = (index * chunk.max(1) + k) as f32;
                    }
                },
            );
            let expected: Vec<f32> = (0..len).map(|i| i as f32).collect();
            assert_eq!(out, expected, "len {len} chunk {chunk}");
        }
    }
}
