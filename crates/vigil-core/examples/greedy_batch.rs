//! Seconds to generate greedy responses for a set of prompts one at a time against
//! [`greedy_batch`] with several prompts together (what a text detection does at `w*`), on a
//! language model, and whether the responses agree. A benchmark, not a test: run it idle.
//!
//!     cargo run --release -p vigil-core --example greedy_batch -- MODEL [PROMPTS] [TOKENS] [BATCH]
//!
//! MODEL is a .gguf file or a Hugging Face folder; PROMPTS (default 32) fortune first lines
//! from Debian's fortune databases; TOKENS (default 16) new tokens each; BATCH (default 16).

use std::path::Path;
use std::time::Instant;

use vigil_core::data::text::{FORTUNE_DIR, read_fortunes};
use vigil_core::device::default_device;
use vigil_core::lm::{LanguageModel, greedy, greedy_batch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .ok_or("usage: greedy_batch MODEL [PROMPTS] [TOKENS] [BATCH]")?;
    let count: usize = args.get(2).map_or(Ok(32), |a| a.parse())?;
    let tokens: usize = args.get(3).map_or(Ok(16), |a| a.parse())?;
    let batch: usize = args.get(4).map_or(Ok(16), |a| a.parse())?;
    let device = default_device();
    let lm = LanguageModel::load(Path::new(model), &device)?;
    let prompts: Vec<Vec<u32>> = read_fortunes(Path::new(FORTUNE_DIR), &[])?
        .iter()
        .filter_map(|t| t.split_once('\n').map(|(first, _)| format!("{first}\n")))
        .take(count)
        .map(|p| lm.tokenizer.encode(&p))
        .collect::<Result<_, _>>()?;
    let stop = lm.tokenizer.eos;

    let start = Instant::now();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| greedy(&lm.model, p, tokens, stop, &device))
        .collect::<Result<_, _>>()?;
    let one_at_a_time = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut together = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch) {
        let chunk: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        together.extend(greedy_batch(&lm.model, &chunk, tokens, stop, &device)?);
    }
    let batched = start.elapsed().as_secs_f64();

    let same = alone.iter().zip(&together).filter(|(a, b)| a == b).count();
    println!(
        "{{\"prompts\":{},\"tokens\":{tokens},\"batch\":{batch},\"one_at_a_time_s\":{one_at_a_time:.2},\"batched_s\":{batched:.2},\"speedup\":{:.2},\"identical_responses\":{same}}}",
        prompts.len(),
        one_at_a_time / batched
    );
    Ok(())
}
