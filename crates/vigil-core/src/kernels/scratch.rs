//! Working memory the kernels reuse across calls: each thread keeps the buffers it has used.
//!
//! rayon calls a `for_each_init` initialiser once for every piece of work it splits off, not
//! once per thread, and the Winograd kernels' per-group buffers are 1-2 MB: zeroing fresh ones
//! for every piece was 5% of PreAct-ResNet-18's time (docs/performance.md). A [`Scratch`] comes
//! from the calling thread's pool and goes back to it when dropped; a buffer is zeroed only when
//! it first grows. Its contents are whatever its last user left, so callers write every value
//! they later read. A thread keeps its largest buffers until it exits (rayon's workers live as
//! long as the process).

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` floats of the calling thread's working memory, returned to its pool on drop.
pub struct Scratch {
    buffer: Vec<f32>,
    len: usize,
}

/// A buffer of at least `len` floats from the calling thread's pool (holding what its last
/// user left), or a new zeroed one.
pub fn scratch(len: usize) -> Scratch {
    let mut buffer = POOL
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_default();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    Scratch { buffer, len }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buffer[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buffer[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        // During thread teardown the pool may be gone; the buffer is then simply freed.
        let _ = POOL.try_with(|pool| pool.borrow_mut().push(buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_on_the_same_thread_and_sized_as_asked() {
        let first_ptr = {
            let mut a = scratch(1000);
            assert_eq!(a.len(), 1000);
            assert!(a.iter().all(|&v| v == 0.0), "a new buffer is zeroed");
            a[999] = 7.0;
            a.as_ptr()
        };
        let b = scratch(10);
        assert_eq!(b.len(), 10);
        assert_eq!(b.as_ptr(), first_ptr, "the dropped buffer comes back");
        // Two at once are two buffers.
        let c = scratch(10);
        assert_ne!(b.as_ptr(), c.as_ptr());
    }
}
