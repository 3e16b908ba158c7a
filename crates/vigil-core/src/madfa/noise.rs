//! The standard-normal draws of one SGLD step: one seeded generator, parameters in visiting
//! order, each element in order. The stream is sequential (each draw may consume more than one
//! random word), so it cannot be split across threads without changing what a seed draws; on a
//! model of 135M weights drawing it takes about a second on one core, while the step's forward
//! and backward passes leave part of the second core idle. [`NoiseDraws::prefetched`] therefore
//! draws the same stream on a background thread from the moment the step starts, and the update
//! takes its values from there (docs/performance.md, "The SGLD step"). On Linux that thread runs
//! in the idle scheduling class, so it uses core time the passes leave free rather than taking
//! time from their workers; the draws, and so the values, are the same.

use std::sync::mpsc::{Receiver, channel};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// Values per message from the background thread.
const CHUNK: usize = 1 << 16;

/// Fewer draws than this are made on the spot: a thread would cost more than it saves.
const MIN_PREFETCH: usize = 4 * CHUNK;

/// One step's standard-normal draws, in the generator's order, whether made on the spot or
/// ahead of time on a background thread: the values are the same either way (tested).
pub struct NoiseDraws {
    seed: u64,
    /// Draws handed out so far.
    taken: usize,
    /// The generator, once it is here: from the start when drawing on the spot, else once the
    /// background thread has made its draws.
    rng: Option<StdRng>,
    /// Draws made ahead and not yet handed out: `pending[next..]`.
    pending: Vec<f32>,
    next: usize,
    /// Where the background thread sends its draws.
    receiver: Option<Receiver<Message>>,
}

enum Message {
    Draws(Vec<f32>),
    /// The thread made every draw it was asked for; the generator continues from here.
    Done(Box<StdRng>),
}

impl NoiseDraws {
    /// Draws from a generator seeded with `seed`, made when asked for.
    pub fn on_the_spot(seed: u64) -> Self {
        Self {
            seed,
            taken: 0,
            rng: Some(StdRng::seed_from_u64(seed)),
            pending: Vec::new(),
            next: 0,
            receiver: None,
        }
    }

    /// The same draws, the first `count` of them made on a background thread starting now
    /// (memory: up to `count` floats held until taken). Asking for more than `count` continues
    /// the same stream on the spot; dropping the value stops the thread.
    pub fn prefetched(seed: u64, count: usize) -> Self {
        if count < MIN_PREFETCH {
            return Self::on_the_spot(seed);
        }
        let (sender, receiver) = channel();
        std::thread::spawn(move || {
            run_only_when_idle();
            let mut rng = StdRng::seed_from_u64(seed);
            let mut left = count;
            while left > 0 {
                let n = left.min(CHUNK);
                let draws: Vec<f32> = (&mut rng).sample_iter(StandardNormal).take(n).collect();
                if sender.send(Message::Draws(draws)).is_err() {
                    return; // nobody is listening any more
                }
                left -= n;
            }
            let _ = sender.send(Message::Done(Box::new(rng)));
        });
        Self {
            rng: None,
            receiver: Some(receiver),
            ..Self::on_the_spot(seed)
        }
    }

    /// The next `n` draws.
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let want = n - out.len();
            if self.next < self.pending.len() {
                let end = self.pending.len().min(self.next + want);
                out.extend_from_slice(&self.pending[self.next..end]);
                self.next = end;
                continue;
            }
            if let Some(rng) = &mut self.rng {
                out.extend((&mut *rng).sample_iter::<f32, _>(StandardNormal).take(want));
                break;
            }
            match self.receiver.as_ref().map(Receiver::recv) {
                Some(Ok(Message::Draws(draws))) => {
                    self.pending = draws;
                    self.next = 0;
                }
                Some(Ok(Message::Done(rng))) => self.rng = Some(*rng),
                // The thread is gone without its generator (it cannot fail, but if it did):
                // replay the stream up to here, so the values stay the same.
                Some(Err(_)) | None => self.rng = Some(self.replayed(out.len())),
            }
        }
        self.taken += n;
        out
    }

    /// A generator at position `self.taken + extra` of the stream.
    fn replayed(&self, extra: usize) -> StdRng {
        let mut rng = StdRng::seed_from_u64(self.seed);
        for _ in 0..self.taken + extra {
            let _: f32 = rng.sample(StandardNormal);
        }
        rng
    }
}

/// Moves the calling thread to Linux's idle scheduling class: it runs only on a core no other
/// runnable thread wants. If the call fails (it cannot for one's own thread, short of a seccomp
/// filter), the thread keeps its normal class; only the timing differs.
#[cfg(target_os = "linux")]
fn run_only_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread, and `param` is a valid, initialised struct that
    // outlives the call; SCHED_IDLE takes priority 0.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

#[cfg(not(target_os = "linux"))]
fn run_only_when_idle() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(seed: u64, n: usize) -> Vec<f32> {
        StdRng::seed_from_u64(seed)
            .sample_iter(StandardNormal)
            .take(n)
            .collect()
    }

    /// Taken in uneven pieces across message boundaries, past the prefetched count and
    /// short of it: always the generator's own sequence.
    #[test]
    fn prefetched_draws_are_the_generators_sequence() {
        let seed = 41;
        let count = MIN_PREFETCH + 3 * CHUNK / 2;
        let pieces = [1, CHUNK - 1, 5, 3 * CHUNK, 17, MIN_PREFETCH, 1000];
        let total: usize = pieces.iter().sum();
        assert!(total > count);
        let expected = reference(seed, total);
        for mut draws in [
            NoiseDraws::prefetched(seed, count),
            NoiseDraws::prefetched(seed, total + CHUNK),
            NoiseDraws::on_the_spot(seed),
        ] {
            let mut got = Vec::new();
            for n in pieces {
                got.extend(draws.take(n));
            }
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_replayed_generator_continues_the_stream() {
        let mut draws = NoiseDraws::on_the_spot(7);
        let first = draws.take(10);
        let mut rng = draws.replayed(0);
        let next: Vec<f32> = (&mut rng).sample_iter(StandardNormal).take(5).collect();
        assert_eq!([first, next].concat(), reference(7, 15));
        // Dropping a prefetching source mid-way stops its thread without blocking.
        let mut early = NoiseDraws::prefetched(7, 10 * MIN_PREFETCH);
        assert_eq!(early.take(3), reference(7, 3));
        drop(early);
    }
}
