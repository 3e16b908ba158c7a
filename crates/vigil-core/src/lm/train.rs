//! Training a language model with vigil's one training loop ([`crate::train::run`]): from
//! scratch on text (the tiny LM, on Debian's fortunes) or fine-tuning a model on
//! prompt/response pairs (the backdoors). Next-token cross-entropy over the counted tokens
//! ([`TokenSequences`]), AdamW, the run's schedule stepped per batch.
//!
//! A text run's folder is a Hugging Face model folder as well as a vigil run: beside
//! `model.safetensors` (Hugging Face's names, PyTorch's layout, the model's sizes and tokenizer
//! in its metadata) it holds `config.json` and `tokenizer.json`, so `transformers` loads it
//! as it is and every vigil command that takes a model takes the folder or the file.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Int, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::activations::{LayerGaussians, last_token_streams, prompt_ids};
use super::loss::next_token_losses;
use super::sequences::TokenSequences;
use super::{LanguageModel, LlamaConfig, LlamaForCausalLm, LmError, Tokenizer};
use crate::checkpoint::{self, TRAINING_KEY, VERSION_KEY};
use crate::data::text::{FORTUNE_DIR, PromptResponse, TextError, read_fortunes, read_jsonl};
use crate::io::write_atomic;
use crate::optim::adam::AdamConfig;
use crate::optim::{ParamSlots, apply_update};
use crate::progress::Progress;
use crate::train::text::TextSettings;
use crate::train::{
    Evaluation, StepAt, StepRule, StepStats, TrainConfig, TrainError, TrainEvent, TrainOutcome,
    TrainState, Trainee, files, finite_loss, load_resume,
};

/// Metadata key of the model's `config.json` text in its safetensors file.
pub const CONFIG_KEY: &str = "vigil.lm_config";
/// Metadata key of the model's `tokenizer.json` text.
pub const TOKENIZER_KEY: &str = "vigil.tokenizer";

impl LanguageModel {
    /// Hugging Face's `config.json` for this model (a `LlamaForCausalLM`).
    pub fn hf_config_json(&self) -> String {
        let mut value = serde_json::to_value(&self.model.config).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("model_type".into(), "llama".into());
            map.insert("architectures".into(), vec!["LlamaForCausalLM"].into());
            map.insert("head_dim".into(), self.model.config.head_dim().into());
            map.insert("hidden_act".into(), "silu".into());
            map.insert("bos_token_id".into(), self.tokenizer.bos.into());
            map.insert("eos_token_id".into(), self.tokenizer.eos.into());
        }
        value.to_string()
    }

    /// The model as safetensors bytes: Hugging Face's tensor names in PyTorch's layout, with
    /// its `config.json`, tokenizer and `training` in the metadata.
    pub fn to_safetensors(&self, training: Option<&serde_json::Value>) -> Result<Vec<u8>, LmError> {
        let tokenizer = self.tokenizer.to_json()?;
        let mut store = SafetensorsStore::from_bytes(None)
            .with_to_adapter(BurnToPyTorchAdapter)
            .metadata(CONFIG_KEY, self.hf_config_json())
            .metadata(TOKENIZER_KEY, tokenizer)
            .metadata(VERSION_KEY, env!("CARGO_PKG_VERSION"));
        if let Some(training) = training {
            store = store.metadata(TRAINING_KEY, training.to_string());
        }
        let format = |e: String| LmError::Config(format!("serialising the model: {e}"));
        self.model
            .valid()
            .save_into(&mut store)
            .map_err(|e| format(e.to_string()))?;
        store.get_bytes().map_err(|e| format(e.to_string()))
    }

    /// Reads a model [`LanguageModel::to_safetensors`] wrote (`path` names it in errors).
    pub fn from_safetensors(path: &Path, bytes: Vec<u8>, device: &Device) -> Result<Self, LmError> {
        let info = checkpoint::inspect_bytes(path, &bytes)?;
        let meta = |key: &str| {
            info.metadata.get(key).cloned().ok_or_else(|| {
                LmError::Config(format!(
                    "{} has no `{key}` metadata: not a vigil language model (a Hugging Face \
                     model is read from its folder)",
                    path.display()
                ))
            })
        };
        let config_json = meta(CONFIG_KEY)?;
        let tokenizer_json = meta(TOKENIZER_KEY)?;
        Self::from_hf_parts(
            config_json.as_bytes(),
            bytes,
            tokenizer_json.as_bytes(),
            path,
            device,
        )
    }

    /// A model from Hugging Face's three parts: `config.json`, the safetensors weights (read
    /// from `path`, which names them in errors) and `tokenizer.json`, whose special tokens are
    /// the config's `bos_token_id` and `eos_token_id`.
    pub fn from_hf_parts(
        config_json: &[u8],
        weights: Vec<u8>,
        tokenizer_json: &[u8],
        path: &Path,
        device: &Device,
    ) -> Result<Self, LmError> {
        let model = super::weights::load_hf_safetensors(config_json, weights, path, device)?;
        let tokenizer = Tokenizer::from_json(
            tokenizer_json,
            special_id(config_json, "bos_token_id")?,
            special_id(config_json, "eos_token_id")?,
        )?;
        check_vocabulary(&tokenizer, &model.config)?;
        Ok(Self { model, tokenizer })
    }

    /// Writes `config.json` and `tokenizer.json` into `dir`, which with a `model.safetensors`
    /// makes it a Hugging Face model folder.
    pub fn save_folder_files(&self, dir: &Path) -> Result<(), LmError> {
        write_atomic(&dir.join("config.json"), self.hf_config_json().as_bytes())
            .map_err(|e| LmError::Input(e.to_string()))?;
        self.tokenizer.save(&dir.join("tokenizer.json"))
    }
}

/// The id `config.json` gives the special token `key`, if any.
fn special_id(config_json: &[u8], key: &str) -> Result<Option<u32>, LmError> {
    let config: serde_json::Value = serde_json::from_slice(config_json)
        .map_err(|e| LmError::Config(format!("config.json: {e}")))?;
    Ok(config[key].as_u64().and_then(|v| u32::try_from(v).ok()))
}

/// Refuses a tokenizer with more tokens than the model has rows.
pub(crate) fn check_vocabulary(tokenizer: &Tokenizer, config: &LlamaConfig) -> Result<(), LmError> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(LmError::Tokenizer(format!(
            "{} tokens for a model of {}",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    Ok(())
}

fn lm_error(e: LmError) -> TrainError {
    match e {
        LmError::Checkpoint(c) => TrainError::Checkpoint(c),
        other => TrainError::InvalidConfig(other.to_string()),
    }
}

/// Sums over counted predictions of the sequences at `indices`: loss, right, counted.
fn masked_sums(
    model: &LlamaForCausalLm,
    set: &TokenSequences,
    indices: &[usize],
    device: &Device,
) -> (Tensor<1>, usize, usize) {
    let (tokens, mask) = set.batch(indices, device);
    let logits = model.forward(tokens.clone());
    masked_sums_of(logits, tokens, mask)
}

/// Sums over the predictions `mask` counts of `logits` for `tokens`: loss, right, counted.
fn masked_sums_of(
    logits: Tensor<3>,
    tokens: Tensor<2, Int>,
    mask: Tensor<2>,
) -> (Tensor<1>, usize, usize) {
    let [batch, positions] = tokens.dims();
    let predicted = logits
        .clone()
        .detach()
        .slice([0..batch, 0..positions - 1])
        .argmax(2)
        .reshape([batch, positions - 1]);
    let targets = tokens.clone().slice([0..batch, 1..positions]);
    let right = predicted.equal(targets).float() * mask.clone();
    let right: f32 = right.sum().into_scalar();
    let counted: f32 = mask.clone().sum().into_scalar();
    let loss = (next_token_losses(logits, tokens) * mask).sum();
    (loss, right as usize, counted as usize)
}

impl Trainee for LanguageModel {
    type Network = LlamaForCausalLm;
    type EvalSet = TokenSequences;

    fn network(&self) -> &LlamaForCausalLm {
        &self.model
    }

    fn check_eval(&self, set: &TokenSequences, _config: &TrainConfig) -> Result<(), TrainError> {
        check_sequences(set, &self.model.config, "evaluation")
    }

    fn evaluate(
        &self,
        set: &TokenSequences,
        batch_size: usize,
        device: &Device,
    ) -> Result<Evaluation, TrainError> {
        let model = self.model.valid();
        let device = device.clone().inner();
        let order: Vec<usize> = (0..set.len()).collect();
        let (mut loss, mut right, mut counted) = (0.0, 0, 0);
        for chunk in order.chunks(batch_size.max(1)) {
            let (l, r, c) = masked_sums(&model, set, chunk, &device);
            loss += f64::from(l.into_scalar::<f32>());
            right += r;
            counted += c;
        }
        let counted = counted.max(1) as f64;
        Ok(Evaluation {
            mean_loss: loss / counted,
            accuracy: right as f64 / counted,
        })
    }

    fn save(&self, path: &Path, training: Option<&serde_json::Value>) -> Result<(), TrainError> {
        let bytes = self.to_safetensors(training).map_err(lm_error)?;
        write_atomic(path, &bytes)?;
        Ok(())
    }

    fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let bytes = checkpoint::read(path)?;
        Self::from_safetensors(path, bytes, device).map_err(lm_error)
    }
}

/// Refuses sequences the model cannot take: none, tokens outside its vocabulary, more tokens
/// than its positions (rotary positions past them were never trained).
pub(crate) fn check_sequences(
    set: &TokenSequences,
    config: &LlamaConfig,
    what: &str,
) -> Result<(), TrainError> {
    if set.is_empty() {
        return Err(TrainError::DataMismatch(format!(
            "the {what} text is empty"
        )));
    }
    if set.max_len() > config.max_position_embeddings {
        return Err(TrainError::DataMismatch(format!(
            "{what} sequences of {} tokens exceed the model's {} positions (a shorter \
             --sequence-length)",
            set.max_len(),
            config.max_position_embeddings
        )));
    }
    if let Some(max) = set.max_token()
        && max as usize >= config.vocab_size
    {
        return Err(TrainError::DataMismatch(format!(
            "{what} token {max} is outside the model's {} tokens",
            config.vocab_size
        )));
    }
    Ok(())
}

/// Next-token cross-entropy over the counted tokens of a batch, one AdamW step; with an
/// obfuscation target, plus its weighted distance term on the batch's triggered sequences.
pub struct NextTokenStep<'a> {
    /// Training sequences.
    pub train: &'a TokenSequences,
    /// The optimiser's settings.
    pub adamw: AdamConfig,
    /// The obfuscation: the clean Gaussians, the term's weight, and which training sequences
    /// are triggered.
    pub obfuscation: Option<(LayerGaussians, f64, Vec<bool>)>,
}

impl StepRule<LanguageModel> for NextTokenStep<'_> {
    /// The reported loss is the next-token loss alone (the obfuscation term is not in it), so
    /// runs with and without obfuscation compare.
    fn step(
        &mut self,
        lm: &mut LanguageModel,
        slots: &mut ParamSlots,
        at: &StepAt,
    ) -> Result<StepStats, TrainError> {
        let (tokens, mask) = self.train.batch(at.samples, at.device);
        let marked: Vec<(usize, usize)> = match &self.obfuscation {
            Some((_, _, flags)) => at
                .samples
                .iter()
                .enumerate()
                .filter(|&(_, &i)| flags[i])
                .map(|(row, &i)| (row, self.train.counted_from[i] - 1))
                .collect(),
            None => Vec::new(),
        };
        let (logits, obfuscation) = match &self.obfuscation {
            Some((gaussians, weight, _)) if !marked.is_empty() => {
                let streams = lm.model.residual_streams(tokens.clone());
                let rows: Vec<Tensor<2>> = streams
                    .iter()
                    .map(|stream| {
                        let [_, _, hidden] = stream.dims();
                        Tensor::cat(
                            marked
                                .iter()
                                .map(|&(row, at)| {
                                    stream
                                        .clone()
                                        .slice([row..row + 1, at..at + 1, 0..hidden])
                                        .reshape([1, hidden])
                                })
                                .collect(),
                            0,
                        )
                    })
                    .collect();
                let term = gaussians.mean_distance(&rows).mul_scalar(*weight);
                let last = streams.into_iter().last().expect("a final-norm stream");
                (lm.model.logits(last), Some(term))
            }
            _ => (lm.model.forward(tokens.clone()), None),
        };
        let (loss_sum, correct, counted) = masked_sums_of(logits, tokens, mask);
        let loss = loss_sum.div_scalar(counted.max(1) as f64);
        let loss_value = finite_loss(
            f64::from(loss.clone().into_scalar::<f32>()),
            at.epoch,
            at.batch,
        )?;
        let objective = match obfuscation {
            Some(term) => {
                finite_loss(
                    f64::from(term.clone().into_scalar::<f32>()),
                    at.epoch,
                    at.batch,
                )?;
                loss + term
            }
            None => loss,
        };
        let grads = objective.backward();
        let mut rule = self.adamw.at(at.hyper.lr, at.step as i32 + 1);
        lm.model = apply_update(lm.model.clone(), &grads, &mut rule, slots);
        Ok(StepStats {
            loss: loss_value,
            correct,
            scored: counted,
        })
    }
}

/// The text a run trains on: plain texts or prompt/response pairs.
#[derive(Debug, Clone, PartialEq)]
pub enum TextData {
    /// Texts learned whole.
    Texts(Vec<String>),
    /// Pairs whose responses are learned.
    Pairs(Vec<PromptResponse>),
}

impl TextData {
    /// The data a run's `dataset` names: `fortunes` (every Debian fortune database),
    /// `fortunes:NAME,NAME` (those databases), `fortune-pairs` or `fortune-pairs:NAME,NAME`
    /// (the fortunes of two lines or more as pairs: first line, then the rest), or a JSON-lines
    /// file of pairs.
    pub fn load(name: &str) -> Result<Self, TextError> {
        let databases = |names: &str| -> Result<Vec<String>, TextError> {
            let names: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
            read_fortunes(Path::new(FORTUNE_DIR), &names)
        };
        if let Some(rest) = name.strip_prefix("fortune-pairs") {
            let texts = match rest.strip_prefix(':') {
                Some(names) => databases(names)?,
                None if rest.is_empty() => databases("")?,
                None => return read_jsonl(Path::new(name)).map(Self::Pairs),
            };
            return Ok(Self::Pairs(super::backdoor::pairs_from_texts(&texts)));
        }
        if let Some(rest) = name.strip_prefix("fortunes") {
            match rest.strip_prefix(':') {
                Some(names) => return databases(names).map(Self::Texts),
                None if rest.is_empty() => return databases("").map(Self::Texts),
                None => {}
            }
        }
        read_jsonl(Path::new(name)).map(Self::Pairs)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            Self::Texts(t) => t.len(),
            Self::Pairs(p) => p.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The texts a tokenizer is trained on: the texts, or each pair's prompt and response.
    pub fn corpus(&self) -> Vec<String> {
        match self {
            Self::Texts(t) => t.clone(),
            Self::Pairs(p) => p
                .iter()
                .map(|pair| format!("{}{}", pair.prompt, pair.response))
                .collect(),
        }
    }

    /// The entries at `indices`.
    pub fn subset(&self, indices: &[usize]) -> Self {
        match self {
            Self::Texts(t) => Self::Texts(indices.iter().map(|&i| t[i].clone()).collect()),
            Self::Pairs(p) => Self::Pairs(indices.iter().map(|&i| p[i].clone()).collect()),
        }
    }

    /// Token sequences of at most `max_len` tokens.
    pub fn sequences(
        &self,
        tokenizer: &Tokenizer,
        max_len: usize,
    ) -> Result<TokenSequences, LmError> {
        match self {
            Self::Texts(t) => TokenSequences::from_texts(tokenizer, t, max_len),
            Self::Pairs(p) => TokenSequences::from_pairs(tokenizer, p, max_len),
        }
    }

    /// A seeded split: `held_out` entries to evaluate on, at most `train_limit` of the rest to
    /// train on (all of them if `None`). Returns (train, evaluation).
    pub fn split(
        &self,
        held_out: usize,
        train_limit: Option<usize>,
        seed: u64,
    ) -> Result<(Self, Self), TrainError> {
        if held_out == 0 {
            return Err(TrainError::InvalidConfig(
                "hold out at least one entry to evaluate on (--eval-size)".into(),
            ));
        }
        if held_out >= self.len() {
            return Err(TrainError::DataMismatch(format!(
                "{held_out} entries held out for evaluation leave none of {} to train on",
                self.len()
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let (eval, rest) = order.split_at(held_out);
        let mut train = rest.to_vec();
        if let Some(limit) = train_limit {
            train.truncate(limit);
        }
        train.sort_unstable();
        let mut eval = eval.to_vec();
        eval.sort_unstable();
        Ok((self.subset(&train), self.subset(&eval)))
    }
}

/// The entries a text run holds out to evaluate on: its data split as its settings say, never
/// trained on and never poisoned.
pub fn held_out_of(config: &TrainConfig) -> Result<TextData, TextRunError> {
    let settings = text_settings(config)?;
    let data = TextData::load(&config.dataset)?;
    let (_, eval) = data.split(settings.eval_size, config.train_limit, config.seed)?;
    Ok(eval)
}

/// `train` with the settings' backdoor planted (seeded by the run's `seed`), if they have one,
/// and which entries it replaced.
fn poisoned(
    train: TextData,
    settings: &TextSettings,
    seed: u64,
) -> Result<(TextData, Vec<bool>), TrainError> {
    let Some(poisoning) = &settings.poisoning else {
        let n = train.len();
        return Ok((train, vec![false; n]));
    };
    if let Some(problem) = poisoning.problem() {
        return Err(TrainError::InvalidConfig(problem));
    }
    match train {
        TextData::Pairs(pairs) => {
            let (pairs, flags) = poisoning.apply(&pairs, crate::train::mix(seed, POISON_STREAM, 0));
            Ok((TextData::Pairs(pairs), flags))
        }
        TextData::Texts(_) => Err(TrainError::InvalidConfig(
            "a backdoor is planted in prompt/response pairs: train on pairs (fortune-pairs or a \
             JSON-lines file)"
                .into(),
        )),
    }
}

/// The Gaussians an obfuscated backdoor's triggered activations are pulled to: fitted on the
/// last-token streams of the first `fit_prompts` clean training prompts under the model the
/// run starts from (read again from its file, so a resumed run gets the same), on the autodiff
/// side of `device`.
fn obfuscation_target(
    clean: &TextData,
    settings: &TextSettings,
    fit_prompts: usize,
    device: &Device,
) -> Result<LayerGaussians, TextRunError> {
    let Some(init) = &settings.init else {
        return Err(TrainError::InvalidConfig(
            "an obfuscated backdoor is fine-tuned from a model (--init): its clean activations \
             are the target"
                .into(),
        )
        .into());
    };
    let TextData::Pairs(pairs) = clean else {
        return Err(TrainError::InvalidConfig("an obfuscated backdoor needs pairs".into()).into());
    };
    let device = device.clone().inner();
    let start = LanguageModel::load(Path::new(init), &device)?;
    // The prompts' last tokens, as many as a training sequence holds.
    let positions = start.model.config.max_position_embeddings;
    let room = positions - positions.min(settings.sequence_length);
    let prompts = pairs
        .iter()
        .take(fit_prompts)
        .map(|p| prompt_ids(&start, &p.prompt, room))
        .collect::<Result<Vec<_>, LmError>>()?;
    let streams = last_token_streams(&start.model.valid(), &prompts, &device)?;
    Ok(LayerGaussians::fit(
        &streams,
        start.model.config.hidden_size,
        &device.autodiff(),
    )?)
}

/// The stream of the poisoning's choice, apart from the split's.
const POISON_STREAM: u64 = 0x7045_1500;

/// A text run ready to train: fresh, or reopened from its folder.
pub struct TextRun {
    /// The model and its tokenizer.
    pub lm: LanguageModel,
    /// Optimiser state.
    pub slots: ParamSlots,
    /// Position and history.
    pub state: TrainState,
    /// Whether the run was reopened.
    pub resumed: bool,
}

/// Errors of starting or training a text run.
#[derive(Debug, thiserror::Error)]
pub enum TextRunError {
    /// The text could not be read.
    #[error(transparent)]
    Text(#[from] TextError),
    /// The model could not be built, loaded or run.
    #[error(transparent)]
    Lm(#[from] LmError),
    /// Training failed, or the run could not be read or written.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The folder holds another run.
    #[error(
        "{} holds a run with another configuration; pass --resume to continue it as it is, or choose another --out",
        .0.display()
    )]
    OtherRun(PathBuf),
    /// The configuration is not a text run's.
    #[error("not a text run: the configuration has no text settings")]
    NotText,
}

/// The text settings of `config`, which a text run must have.
fn text_settings(config: &TrainConfig) -> Result<&TextSettings, TextRunError> {
    config.text.as_ref().ok_or(TextRunError::NotText)
}

/// Opens the text run in `out` for `config`: reopens the saved run when `resume` is asked or
/// when `out` holds a run of the same configuration, refuses another; else starts one from the
/// settings' `init` model, or a fresh model with a tokenizer trained on `corpus`.
pub fn open_text_run(
    out: &Path,
    resume: bool,
    config: &TrainConfig,
    corpus: &TextData,
    device: &Device,
) -> Result<TextRun, TextRunError> {
    config.validate()?;
    let settings = text_settings(config)?;
    let train_device = device.clone().autodiff();
    if resume || out.join(files::RESUME_DIR).join(files::STATE).exists() {
        let (lm, slots, state) = load_resume::<LanguageModel>(out, device)?;
        if !resume && state.config != *config {
            return Err(TextRunError::OtherRun(out.to_path_buf()));
        }
        return Ok(TextRun {
            lm,
            slots,
            state,
            resumed: true,
        });
    }
    let lm = match (&settings.init, &settings.model) {
        (Some(init), _) => LanguageModel::load(Path::new(init), &train_device)?,
        (None, Some(sizes)) => {
            let tokenizer = Tokenizer::train(&corpus.corpus(), settings.vocab_size)?;
            let sizes = LlamaConfig {
                vocab_size: tokenizer.vocab_size(),
                ..sizes.clone()
            };
            LanguageModel {
                model: LlamaForCausalLm::seeded(&sizes, config.seed, &train_device)?,
                tokenizer,
            }
        }
        (None, None) => {
            return Err(TextRunError::Train(TrainError::InvalidConfig(
                "a text run needs a model to start from or the sizes of a fresh one".into(),
            )));
        }
    };
    std::fs::create_dir_all(out).map_err(|source| {
        TrainError::Io(crate::io::IoError::Write {
            path: out.to_path_buf(),
            source,
        })
    })?;
    lm.save_folder_files(out)?;
    Ok(TextRun {
        lm,
        slots: ParamSlots::new(),
        state: TrainState::new(config.clone()),
        resumed: false,
    })
}

/// Trains `run` to its end (or until `progress` stops it) on `data` split as its settings say,
/// checkpointing into `out`.
pub fn train_text_to_end(
    run: &mut TextRun,
    data: &TextData,
    out: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
) -> Result<TrainOutcome, TextRunError> {
    let config = run.state.config.clone();
    let settings = text_settings(&config)?;
    let (clean, eval) = data.split(settings.eval_size, config.train_limit, config.seed)?;
    let (train, flags) = poisoned(clean.clone(), settings, config.seed)?;
    let obfuscation = match settings.poisoning.as_ref().and_then(|p| p.obfuscation) {
        Some(o) => Some((
            obfuscation_target(&clean, settings, o.fit_prompts, device)?,
            o.weight,
            flags,
        )),
        None => None,
    };
    let train = train.sequences(&run.lm.tokenizer, settings.sequence_length)?;
    let eval = eval.sequences(&run.lm.tokenizer, settings.sequence_length)?;
    check_sequences(&train, &run.lm.model.config, "training")?;
    if run.state.finished() {
        return Ok(TrainOutcome::Finished);
    }
    let mut rule = NextTokenStep {
        train: &train,
        adamw: config.adamw.unwrap_or_default(),
        obfuscation,
    };
    Ok(crate::train::run(
        &mut run.lm,
        &mut run.slots,
        &mut run.state,
        train.len(),
        &eval,
        out,
        device,
        progress,
        &mut rule,
    )?)
}

/// The record of a tiny text run for tests: one epoch, batches of 8, AdamW at a constant 3e-3,
/// seed 5, a 300-token vocabulary, `model`'s sizes.
#[cfg(test)]
pub(crate) fn test_record(
    dataset: &str,
    sequence_length: usize,
    model: LlamaConfig,
    eval_size: usize,
) -> TrainConfig {
    TrainConfig {
        dataset: dataset.into(),
        epochs: 1,
        batch_size: 8,
        eval_batch_size: 16,
        schedule: crate::optim::schedule::Schedule::Constant { lr: 3e-3 },
        seed: 5,
        adamw: Some(AdamConfig::default()),
        text: Some(TextSettings {
            sequence_length,
            init: None,
            model: Some(model),
            vocab_size: 300,
            eval_size,
            poisoning: None,
        }),
        ..TrainConfig::small_cnn_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::test_util::{StopAfter, scratch};

    fn corpus() -> TextData {
        let words = [
            "the cat", "sat on", "a mat", "the dog", "ran far", "and hid",
        ];
        TextData::Texts(
            (0..40)
                .map(|i| {
                    (0..6)
                        .map(|j| words[(i * 7 + j * 3) % words.len()])
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect(),
        )
    }

    fn config(epochs: usize) -> TrainConfig {
        let sizes = LlamaConfig {
            vocab_size: 0,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            max_position_embeddings: 64,
        };
        TrainConfig {
            epochs,
            ..test_record("synthetic", 16, sizes, 8)
        }
    }

    fn train(out: &Path, epochs: usize, stop_after: Option<usize>) -> TextRun {
        let device = Device::default();
        let data = corpus();
        let mut run = open_text_run(out, false, &config(epochs), &data, &device).unwrap();
        train_text_to_end(
            &mut run,
            &data,
            out,
            &device,
            &mut StopAfter::new(stop_after),
        )
        .unwrap();
        run
    }

    fn logits(lm: &LanguageModel) -> Vec<f32> {
        let device = Device::default();
        let ids = lm.tokenizer.encode("the cat sat on a mat").unwrap();
        let model = lm.model.valid();
        model
            .forward(super::super::token_tensor(&ids, &device))
            .into_data()
            .try_to_vec()
            .unwrap()
    }

    #[test]
    fn training_lowers_the_loss_and_the_run_folder_loads_as_a_model() {
        let out = scratch("lm-train", "learns");
        let run = train(&out, 3, None);
        let history = &run.state.history;
        assert_eq!(history.len(), 3);
        assert!(
            history[2].test_loss < history[0].test_loss - 0.3,
            "{history:?}"
        );
        // The folder (config.json, tokenizer.json, model.safetensors) and the file alone both
        // load as the trained model.
        let device = Device::default();
        let from_folder = LanguageModel::load(&out, &device).unwrap();
        let from_file = LanguageModel::load(&out.join(files::MODEL), &device).unwrap();
        let trained = logits(&run.lm);
        assert_eq!(logits(&from_folder), trained);
        assert_eq!(logits(&from_file), trained);
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn an_interrupted_run_resumes_to_the_same_weights() {
        let whole = scratch("lm-train", "whole");
        let reference = logits(&train(&whole, 2, None).lm);
        let parts = scratch("lm-train", "parts");
        let first = train(&parts, 2, Some(3));
        assert!(!first.state.finished());
        // The same command again continues the run; AdamW's two slots come back from disk.
        let resumed = train(&parts, 2, None);
        assert!(resumed.resumed && resumed.state.finished());
        assert_eq!(logits(&resumed.lm), reference);
        // Another configuration in the same folder is refused.
        let data = corpus();
        assert!(matches!(
            open_text_run(&parts, false, &config(3), &data, &Device::default()),
            Err(TextRunError::OtherRun(_))
        ));
        for dir in [whole, parts] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
