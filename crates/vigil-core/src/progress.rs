//! One way for a long run (training, MAD-FA chains, a benchmark) to say how it is going and to
//! be asked to stop: [`Progress`], over the run's own event type.
//!
//! Each module keeps its events as an enum (`madfa::ChainEvent`, ...), and a caller passes
//! anything that implements `Progress` for it: [`Quiet`] to watch nothing, a closure
//! `FnMut(E)` to see every event, or a type of its own that also answers
//! [`Progress::should_stop`] (the CLI's Ctrl-C flag). A run nested in another (a benchmark's
//! detector, an attack's training) reports through its caller with [`Nested`], and so stops
//! when the caller is asked to.

/// Receives a run's events of type `E`, and is asked between units of work (a step, an epoch,
/// a detector) whether to stop. A run that stops checkpoints first where it can resume.
pub trait Progress<E> {
    /// One event of the run.
    fn report(&mut self, _event: E) {}

    /// Polled between units of work: `true` ends the run early, as its outcome says.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// Every closure is a `Progress` that sees every event and never stops the run, so callers that
/// only print need no type of their own.
impl<E, F: FnMut(E)> Progress<E> for F {
    fn report(&mut self, event: E) {
        self(event);
    }
}

/// A `Progress` that watches nothing and never stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl<E> Progress<E> for Quiet {}

/// The `Progress` of a run nested in another: each event is wrapped into the outer run's event
/// type by `wrap` and reported to `outer`, and the nested run stops when `outer` says so.
pub struct Nested<'a, P: ?Sized, W> {
    outer: &'a mut P,
    wrap: W,
}

impl<'a, P: ?Sized, W> Nested<'a, P, W> {
    /// Reports to `outer` through `wrap`.
    pub fn new(outer: &'a mut P, wrap: W) -> Self {
        Self { outer, wrap }
    }
}

impl<E, O, P, W> Progress<E> for Nested<'_, P, W>
where
    P: Progress<O> + ?Sized,
    W: FnMut(E) -> O,
{
    fn report(&mut self, event: E) {
        self.outer.report((self.wrap)(event));
    }

    fn should_stop(&mut self) -> bool {
        self.outer.should_stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it sees and stops once it has seen `stop_after` events.
    struct Keep {
        seen: Vec<String>,
        stop_after: usize,
    }

    impl Progress<String> for Keep {
        fn report(&mut self, event: String) {
            self.seen.push(event);
        }

        fn should_stop(&mut self) -> bool {
            self.seen.len() >= self.stop_after
        }
    }

    /// A run of `n` units reporting each, stopping when asked; returns the units done.
    fn run(n: usize, progress: &mut impl Progress<usize>) -> usize {
        for unit in 0..n {
            progress.report(unit);
            if progress.should_stop() {
                return unit + 1;
            }
        }
        n
    }

    #[test]
    fn a_closure_sees_every_event_and_never_stops() {
        let mut seen = Vec::new();
        assert_eq!(run(3, &mut |unit| seen.push(unit)), 3);
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(run(3, &mut Quiet), 3);
    }

    #[test]
    fn a_nested_run_reports_through_its_caller_and_stops_with_it() {
        let mut outer = Keep {
            seen: Vec::new(),
            stop_after: 2,
        };
        let mut nested = Nested::new(&mut outer, |unit: usize| format!("inner {unit}"));
        assert_eq!(run(5, &mut nested), 2);
        assert_eq!(outer.seen, ["inner 0", "inner 1"]);
    }
}
