//! Progress bars for long work, drawn on stderr so stdout stays machine-readable.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use vigil_core::lm::detection::DetectionStage;
use vigil_core::progress::Progress;
use vigil_core::train::{EpochRecord, TrainEvent};

/// Set by Ctrl-C (SIGINT), and by SIGTERM and SIGHUP (what Slurm sends before SIGKILL, and a
/// closed terminal); long loops poll it and stop cleanly after checkpointing. One flag for the
/// whole process (the handler can be installed only once), so every run started in it, such as
/// each rung a benchmark trains, sees the interrupt.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let handler_flag = flag.clone();
        let ignored = ignored_signals();
        // A second signal while the first is being handled exits at once.
        let _ = ctrlc::set_handler(move || {
            if handler_flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            // Training and chains stop after the current batch and checkpoint; detect and the
            // benchmarks after the running detector or stage, keeping what is finished.
            eprintln!(
                "\ninterrupt: finishing the current batch, detector or stage and saving what is done (Ctrl-C again to abort)"
            );
        });
        keep_ignored(&ignored);
        flag
    })
    .clone()
}

/// The stop signals the parent process set to be ignored: `nohup` ignores SIGHUP so that a run
/// outlives its terminal, and a shell ignores SIGINT in background jobs. ctrlc's handler would
/// replace those dispositions, so they are read before it is installed and put back after
/// (the Unix convention: a signal ignored at start stays ignored).
#[cfg(unix)]
fn ignored_signals() -> Vec<libc::c_int> {
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .filter(|&signal| {
            // SAFETY: sigaction with a null new action only reads the current disposition into
            // a zeroed struct of the right type.
            unsafe {
                let mut current: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                    && current.sa_sigaction == libc::SIG_IGN
            }
        })
        .collect()
}

#[cfg(unix)]
fn keep_ignored(signals: &[libc::c_int]) {
    for &signal in signals {
        // SAFETY: setting a signal's disposition back to "ignore".
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}

#[cfg(not(unix))]
fn ignored_signals() -> Vec<i32> {
    Vec::new()
}

#[cfg(not(unix))]
fn keep_ignored(_signals: &[i32]) {}

/// Shows a run's events through `show` (a printing function or closure, or any other
/// [`Progress`]) and stops the run at its next check once Ctrl-C arrives ([`interrupt_flag`]).
pub struct Interruptible<P> {
    show: P,
    interrupted: Arc<AtomicBool>,
}

impl<P> Interruptible<P> {
    /// Shows events through `show`, stopping on Ctrl-C.
    pub fn new(show: P) -> Self {
        Self {
            show,
            interrupted: interrupt_flag(),
        }
    }

    /// What shows the events.
    pub fn inner(&self) -> &P {
        &self.show
    }
}

impl<E, P: Progress<E>> Progress<E> for Interruptible<P> {
    fn report(&mut self, event: E) {
        self.show.report(event);
    }

    fn should_stop(&mut self) -> bool {
        self.interrupted.load(Ordering::SeqCst) || self.show.should_stop()
    }
}

/// A bar over `len` items with a message. When stderr is not a terminal (a log file, a batch
/// job), where indicatif would draw nothing, the bar is written as a plain line every
/// [`LOG_EVERY`] instead.
pub fn bar(len: u64, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::term_like_with_hz(
            Box::new(LogLines::default()),
            1,
        ));
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec:>10} eta {eta:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// How often a bar is written as a line when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// A bar's "terminal" when stderr is not one: each drawing of the bar becomes one plain line on
/// stderr, at most one per [`LOG_EVERY`] (the first at once); cursor moves and clears are
/// dropped, so a log holds a readable history of the run's progress.
#[derive(Debug, Default)]
struct LogLines {
    last: Mutex<Option<Instant>>,
}

impl LogLines {
    fn log(&self, line: &str) -> std::io::Result<()> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            eprintln!("{line}");
            *last = Some(Instant::now());
        }
        Ok(())
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        self.log(line)
    }
    fn write_str(&self, line: &str) -> std::io::Result<()> {
        self.log(line)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Two bars for a language model's detection: the greedy responses, then each chain's steps.
pub struct TextDetectionBars {
    responses: ProgressBar,
    chain: ProgressBar,
}

impl TextDetectionBars {
    pub fn new() -> Self {
        Self {
            responses: bar(0, "responses".into()),
            chain: bar(0, "chain".into()),
        }
    }

    /// Clears both bars.
    pub fn finish(&self) {
        self.responses.finish_and_clear();
        self.chain.finish_and_clear();
    }
}

impl Progress<DetectionStage> for TextDetectionBars {
    fn report(&mut self, stage: DetectionStage) {
        match stage {
            DetectionStage::Responses { done, total } => {
                self.responses.set_length(total as u64);
                self.responses.set_position(done as u64);
            }
            DetectionStage::Chain { chain, step, steps } => {
                self.chain.set_length(steps as u64);
                self.chain.set_position(step as u64);
                self.chain.set_message(format!("chain {}", chain + 1));
            }
        }
    }
}

/// Draws training progress and prints each epoch's record as one JSON line on stdout.
pub struct TrainProgress {
    epochs: usize,
    bar: Option<ProgressBar>,
    /// Classes of the task, for the loss blow-up warning (none: no check).
    classes: Option<usize>,
}

impl TrainProgress {
    /// Warns after any epoch whose losses look diverged for a `classes`-way task.
    pub fn warn_on_blowup(mut self, classes: usize) -> Self {
        self.classes = Some(classes);
        self
    }

    /// Progress for a run of `epochs` epochs.
    pub fn new(epochs: usize) -> Self {
        Self {
            epochs,
            bar: None,
            classes: None,
        }
    }
}

/// The training loop's events draw the bars; a session's announcements are the caller's.
impl Progress<TrainEvent<'_>> for TrainProgress {
    fn report(&mut self, event: TrainEvent<'_>) {
        match event {
            TrainEvent::EpochStarted {
                epoch,
                batches,
                done,
            } => self.epoch_started(epoch, batches, done),
            TrainEvent::BatchFinished {
                loss, accuracy, lr, ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    bar.set_message(format!("loss {loss:.4} acc {accuracy:.4} lr {lr:.2e}"));
                }
            }
            TrainEvent::Evaluating => {
                if let Some(bar) = &self.bar {
                    bar.set_message("evaluating");
                }
            }
            TrainEvent::EpochFinished(record) => self.epoch_finished(record),
            TrainEvent::RunOpened { .. }
            | TrainEvent::TrainingStarts { .. }
            | TrainEvent::TrainingEnded { .. }
            | TrainEvent::OutliersDrawn { .. } => {}
        }
    }
}

impl TrainProgress {
    fn epoch_started(&mut self, epoch: usize, batches: usize, done: usize) {
        let bar = bar(
            batches as u64,
            format!("epoch {}/{}", epoch + 1, self.epochs),
        );
        bar.set_position(done as u64);
        self.bar = Some(bar);
    }

    fn epoch_finished(&mut self, record: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "epoch {}/{}: train loss {:.4} acc {:.4} | test loss {:.4} acc {:.4} | {:.0}s",
            record.epoch,
            self.epochs,
            record.train_loss,
            record.train_accuracy,
            record.test_loss,
            record.test_accuracy,
            record.seconds
        );
        println!("{}", serde_json::to_string(record).unwrap_or_default());
        if let Some(warning) = self
            .classes
            .and_then(|k| vigil_core::train::loss_blowup(record, k))
        {
            eprintln!("warning: {warning}");
        }
    }
}
