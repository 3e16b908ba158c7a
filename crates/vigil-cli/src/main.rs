//! `vigil`: catch neural networks running on anomalous mechanisms.
//!
//! A thin command-line layer over `vigil-core`: it parses arguments, wires the library
//! together, draws progress and prints results. Every command's `--help` is its manual.

mod commands;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tensor code allocates and frees multi-megabyte buffers every step. By default glibc serves
/// those with `mmap` and returns them to the kernel on free, so every step page-faults them in
/// and zeroes them again (about a tenth of a training step under perf). Keeping freed memory in
/// the heap removes that cost; peak memory is unchanged.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Rust ignores SIGPIPE, so every print to a closed pipe (`vigil info m | head -1`) is an EPIPE
/// error and `println!` panics on it. Restoring the default action makes the process end quietly
/// at its first write to a closed pipe, as `cat` or `grep` do, whichever command is printing:
/// there is no reader left for its output.
fn end_quietly_on_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: resetting a signal to its default action; called before any threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// vigil trains image classifiers and inspects them for anomalous mechanisms (backdoors,
/// adversarial and out-of-distribution inputs).
///
/// Data: Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (Debian package
/// dataset-fashion-mnist); other datasets from $VIGIL_DATA_DIR or ./data (run
/// scripts/setup-data.sh once). Every command that writes results writes them atomically.
#[derive(Parser, Debug)]
#[command(name = "vigil", version, about, long_about)]
struct Cli {
    /// Worker threads for tensor operations (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Train(Box<commands::train::TrainArgs>),
    // Boxed: the attack options are by far the largest variant.
    Attack(Box<commands::attack::AttackArgs>),
    Adversarial(Box<commands::adversarial::AdversarialArgs>),
    Eval(commands::eval::EvalArgs),
    Generate(commands::generate::GenerateArgs),
    Info(commands::info::InfoArgs),
    Table(commands::table::TableArgs),
    Calibrate(Box<commands::calibrate::CalibrateArgs>),
    Sample(Box<commands::sample::SampleArgs>),
    Score(commands::score::ScoreArgs),
    Merge(commands::merge::MergeArgs),
    Mechanisms(commands::mechanisms::MechanismsArgs),
    Evade(commands::evade::EvadeArgs),
    Detect(Box<commands::detect::DetectArgs>),
    // `vigil bench` is an old name of this command.
    #[command(alias = "bench")]
    Throughput(commands::throughput::ThroughputArgs),
    Benchmark(commands::benchmark::BenchmarkArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    end_quietly_on_broken_pipe();
    let cli = Cli::parse();
    // Built here whether or not --threads is given: the pool's workers need the main thread's
    // stack size to run the command (below).
    if let Err(e) = vigil_core::pool::build(cli.threads) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // The command runs on a worker of the pool its parallel loops use, so they start without
    // waking threads and putting this one to sleep at every operation (vigil_core::pool).
    let result = vigil_core::pool::run(move || match cli.command {
        Command::Train(args) => commands::train::run(*args),
        Command::Attack(args) => commands::attack::run(*args),
        Command::Adversarial(args) => commands::adversarial::run(*args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Table(args) => commands::table::run(args),
        Command::Calibrate(args) => commands::calibrate::run(*args),
        Command::Sample(args) => commands::sample::run(*args),
        Command::Score(args) => commands::score::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Mechanisms(args) => commands::mechanisms::run(args),
        Command::Evade(args) => commands::evade::run(args),
        Command::Detect(args) => commands::detect::run(*args),
        Command::Throughput(args) => commands::throughput::run(args),
        Command::Benchmark(args) => commands::benchmark::run(args),
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
