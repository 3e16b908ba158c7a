//! `vigil benchmark`: whole experiments over several models or attack records, resumable, with
//! reports as JSON, CSV, Markdown and SVG. `backdoor`: every detector on every attack record;
//! `ood`: OOD detection under attack; `text`: backdoor detection on a language model.

mod backdoor;
mod ood;
mod text;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

/// Run a benchmark over several models or attack records.
#[derive(Args, Debug)]
pub struct BenchmarkArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand, Debug)]
enum Which {
    Backdoor(Box<backdoor::BackdoorArgs>),
    Ood(Box<ood::OodArgs>),
    Text(Box<text::TextArgs>),
}

pub fn run(args: BenchmarkArgs) -> Result<ExitCode> {
    match args.which {
        Which::Backdoor(args) => backdoor::run(*args),
        Which::Ood(args) => ood::run(*args),
        Which::Text(args) => text::run(*args),
    }
}
