//! Where vigil's work runs: on the worker threads of rayon's global pool, which every parallel
//! loop (vigil's kernels, burn-flex's operations, the gemm crate) shares.
//!
//! A parallel loop started from a thread outside the pool hands its work to the workers and
//! puts the caller to sleep until they finish: two wake-ups through the kernel per operation.
//! A language model's step is hundreds of operations of tens to hundreds of microseconds each
//! (the tiny LM's at batch 4 x 128 tokens), so those hand-offs cost a large share of it. Started
//! from a worker, the same loop runs its first part on that worker while the others steal the
//! rest, and nobody sleeps between operations: on the tiny LM the forward pass ran 1.3x and the
//! SGLD step 1.1x faster (docs/performance.md, "The tiny LM: ..."). [`run`] therefore moves
//! a whole job (a command of the CLI) onto a worker.

/// Stack of each worker thread: the size of a Linux main thread's, since [`run`] gives a
/// worker what the main thread would otherwise run (rayon's default is 2 MiB).
const WORKER_STACK_BYTES: usize = 8 << 20;

/// The global pool could not be built (it already exists, or a thread could not start).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the worker threads: {0}")]
pub struct PoolError(#[from] rayon::ThreadPoolBuildError);

/// Builds rayon's global pool with `threads` workers (`None`: one per core, rayon's default,
/// or `RAYON_NUM_THREADS`) and stacks large enough for [`run`]. Call it once, before any
/// parallel work; afterwards the pool exists and this fails.
pub fn build(threads: Option<usize>) -> Result<(), PoolError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .stack_size(WORKER_STACK_BYTES)
        .build_global()
        .map_err(PoolError::from)
}

/// Runs `job` on one of the global pool's workers and returns what it returns (on a worker
/// already, it runs in place). The calling thread waits.
pub fn run<R: Send>(job: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| job())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_on_a_worker_and_returns_its_value() {
        assert!(
            rayon::current_thread_index().is_none(),
            "tests start off the pool"
        );
        let (index, value) = run(|| (rayon::current_thread_index(), 6 * 7));
        assert!(index.is_some(), "the job ran on a worker");
        assert_eq!(value, 42);
        // Nested: in place.
        assert!(run(|| run(|| rayon::current_thread_index().is_some())));
    }
}
