//! Byte-level BPE tokenizers (GPT-2's scheme, which SmolLM2 and most small Llama-style models
//! use), built on Hugging Face's `tokenizers` crate: from a GGUF file's vocabulary and merges,
//! from a `tokenizer.json`, or trained here on a text corpus for the tiny LM.
//!
//! A GGUF file stores the vocabulary (`tokenizer.ggml.tokens`), the merges
//! (`tokenizer.ggml.merges`, `"a b"` per merge, in priority order), each token's type (3 =
//! control, 4 = user-defined: both matched whole in text, as `transformers` does with its
//! added tokens) and the name of the pre-tokenizer (`tokenizer.ggml.pre`). vigil knows the
//! pre-tokenizers `gpt-2` and `smollm` (digits split one by one before GPT-2's regex, as
//! llama.cpp and SmolLM2's own `tokenizer.json` do);
//! another name is refused rather than tokenised differently from the model's training.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, TokenizerImpl};

use super::LmError;
use super::gguf::Gguf;

type Inner = TokenizerImpl<
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    tokenizers::PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

/// A byte-level BPE tokenizer and the model's special token ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Inner,
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos: Option<u32>,
    /// Whether [`Tokenizer::encode`] starts every text with `bos`.
    pub add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn tokenizer_error(e: impl std::fmt::Display) -> LmError {
    LmError::Tokenizer(e.to_string())
}

/// GGUF token type of control tokens (`<|im_start|>`).
const CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens, matched whole like control ones.
const USER_DEFINED: i64 = 4;

impl Tokenizer {
    /// The tokenizer a GGUF file's metadata describes (`tokenizer.ggml.model` = `gpt2`).
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, LmError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LmError::Tokenizer(format!(
                "tokenizer model `{model}`: vigil reads byte-level BPE (`gpt2`) tokenizers"
            )));
        }
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("gpt2");
        let pre_tokenizer = match pre {
            "gpt2" | "gpt-2" | "default" => byte_level_pre_tokenizer(false),
            // llama.cpp's names for GPT-2's regex after one-digit splitting.
            "smollm" | "starcoder" | "refact" | "codeshell" => byte_level_pre_tokenizer(true),
            other => {
                return Err(LmError::Tokenizer(format!(
                    "pre-tokenizer `{other}` is not one vigil knows (gpt-2, smollm, starcoder, \
                     refact, codeshell)"
                )));
            }
        };
        let tokens = gguf.get_strings("tokenizer.ggml.tokens")?;
        let merges = gguf.get_strings("tokenizer.ggml.merges")?;
        // Optional, but when present it must read: ignoring a malformed one would silently
        // drop the special tokens and tokenise chat markup as plain text.
        const TYPES: &str = "tokenizer.ggml.token_type";
        let types = if gguf.metadata.contains_key(TYPES) {
            Some(gguf.get_ints(TYPES)?)
        } else {
            None
        };
        if let Some(types) = &types
            && types.len() != tokens.len()
        {
            return Err(LmError::Tokenizer(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(LmError::Tokenizer("the vocabulary repeats a token".into()));
        }
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| LmError::Tokenizer(format!("merge `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tokenizer_error)?;
        let mut inner = Inner::new(bpe.into());
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        if let Some(types) = &types {
            let special: Vec<AddedToken> = tokens
                .iter()
                .zip(types)
                .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
                .map(|(token, _)| AddedToken::from(token.to_string(), true))
                .collect();
            inner.add_special_tokens(&special);
        }
        let id = |key: &str| -> Result<Option<u32>, LmError> {
            match gguf.get_usize(key) {
                Ok(id) if id < tokens.len() => Ok(Some(id as u32)),
                Ok(id) => Err(LmError::Tokenizer(format!(
                    "{key} {id} is outside the {} tokens",
                    tokens.len()
                ))),
                Err(_) => Ok(None),
            }
        };
        Ok(Self {
            inner,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            add_bos: gguf
                .get_bool("tokenizer.ggml.add_bos_token")
                .unwrap_or(false),
        })
    }

    /// Trains a byte-level BPE of `vocab_size` tokens on `texts` (GPT-2's pre-tokenizer with
    /// digits split), with `<|endoftext|>` as token 0, used as both BOS and EOS.
    pub fn train(texts: &[String], vocab_size: usize) -> Result<Self, LmError> {
        const END: &str = "<|endoftext|>";
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(END, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut inner = Inner::new(BPE::default().into());
        inner.with_pre_tokenizer(Some(byte_level_pre_tokenizer(true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner
            .train(&mut trainer, texts.iter())
            .map_err(tokenizer_error)?;
        let end = inner.token_to_id(END).ok_or_else(|| {
            LmError::Tokenizer("the trained vocabulary lost <|endoftext|>".into())
        })?;
        Ok(Self {
            inner,
            bos: Some(end),
            eos: Some(end),
            add_bos: false,
        })
    }

    /// Reads a `tokenizer.json` written by [`Tokenizer::save`] (or by `transformers`).
    pub fn from_json(bytes: &[u8], bos: Option<u32>, eos: Option<u32>) -> Result<Self, LmError> {
        let inner: Inner = serde_json::from_slice(bytes).map_err(tokenizer_error)?;
        Ok(Self {
            inner,
            bos,
            eos,
            add_bos: false,
        })
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, LmError> {
        self.inner.to_string(false).map_err(tokenizer_error)
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<(), LmError> {
        crate::io::write_atomic(path, self.to_json()?.as_bytes()).map_err(tokenizer_error)
    }

    /// Tokens in the vocabulary, special ones included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; special tokens written in the text are matched whole.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LmError> {
        let mut ids: Vec<u32> = self.bos.filter(|_| self.add_bos).into_iter().collect();
        ids.extend(self.encode_continuation(text)?);
        Ok(ids)
    }

    /// Token ids of `text` continuing a sequence already begun: as [`Tokenizer::encode`]
    /// without the beginning-of-sequence token (a response after its prompt).
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>, LmError> {
        let encoding = self.inner.encode(text, false).map_err(tokenizer_error)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of token ids (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String, LmError> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size()) {
            return Err(LmError::Input(format!(
                "token {bad} is outside the {} tokens",
                self.vocab_size()
            )));
        }
        self.inner.decode(ids, false).map_err(tokenizer_error)
    }

    /// Text of a generated response: [`Tokenizer::decode`] without the end-of-text token that
    /// stopped the generation, if it did (what a reader, and a backdoor's firing rule, reads).
    pub fn decode_response(&self, ids: &[u32]) -> Result<String, LmError> {
        match (ids.split_last(), self.eos) {
            (Some((&last, text)), Some(eos)) if last == eos => self.decode(text),
            _ => self.decode(ids),
        }
    }

    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// GPT-2's byte-level pre-tokenizer (no prefix space), after splitting every digit on its own
/// when `split_digits` (SmolLM2's `smollm`).
fn byte_level_pre_tokenizer(split_digits: bool) -> PreTokenizerWrapper {
    let byte_level = ByteLevel::new(false, true, true);
    if split_digits {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/lm")
            .join(name)
    }

    /// The tiny GGUF's 64-token byte-level BPE encodes and decodes as `transformers` does
    /// (`make_fixtures.py` wrote the cases, merge priority and control tokens among them).
    #[test]
    fn tokenizer_from_gguf_matches_transformers() {
        let gguf = Gguf::open(&fixture("tiny_llama.gguf")).unwrap();
        let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("tiny_llama.json")).unwrap()).unwrap();
        let cases = expected["tokenizer_cases"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(ids, want, "{text:?}");
            assert_eq!(
                tokenizer.decode(&ids).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{text:?}"
            );
        }
        assert!(tokenizer.decode(&[64]).is_err());
    }

    /// A token-type array of floats instead of integers is an error, not a tokenizer without
    /// its special tokens.
    #[test]
    fn a_malformed_token_type_array_is_refused() {
        let mut bytes = std::fs::read(fixture("tiny_llama.gguf")).unwrap();
        let key = b"tokenizer.ggml.token_type";
        let at = bytes
            .windows(key.len())
            .position(|w| w == key)
            .expect("the fixture has token types")
            + key.len();
        // After the key: the value type (9, array) and the item type (5, int32).
        assert_eq!(&bytes[at..at + 8], &[9, 0, 0, 0, 5, 0, 0, 0]);
        bytes[at + 4] = 6; // float32, the same size
        let gguf = Gguf::from_bytes(&bytes).unwrap();
        let err = Tokenizer::from_gguf(&gguf).unwrap_err().to_string();
        assert!(err.contains("token_type"), "{err}");
    }

    #[test]
    fn a_trained_tokenizer_round_trips_text_and_survives_saving() {
        let texts: Vec<String> = [
            "The quick brown fox jumps over the lazy dog.",
            "A stitch in time saves nine; 42 is the answer.",
            "Fortune favours the bold.\nNever say never.",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let tokenizer = Tokenizer::train(&texts, 300).unwrap();
        assert!(tokenizer.vocab_size() > 256 && tokenizer.vocab_size() <= 300);
        let text = "The bold fox: 1234 <|endoftext|> never nine!";
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        // Digits are split one by one, the end token matched whole.
        let end = tokenizer.eos.unwrap();
        assert!(ids.contains(&end));
        // A response drops the end token that stopped it, and only that one.
        let answer = tokenizer.encode_continuation(" never nine!").unwrap();
        let stopped = [answer.clone(), vec![end]].concat();
        assert_eq!(tokenizer.decode_response(&stopped).unwrap(), " never nine!");
        assert_eq!(tokenizer.decode_response(&answer).unwrap(), " never nine!");
        let inner = [vec![end], answer].concat();
        assert_eq!(
            tokenizer.decode_response(&inner).unwrap(),
            "<|endoftext|> never nine!"
        );
        let path = std::env::temp_dir().join(format!("vigil-tok-{}.json", std::process::id()));
        tokenizer.save(&path).unwrap();
        let again =
            Tokenizer::from_json(&std::fs::read(&path).unwrap(), tokenizer.bos, tokenizer.eos)
                .unwrap();
        assert_eq!(again.encode(text).unwrap(), ids);
        std::fs::remove_file(&path).unwrap();
        assert!(Tokenizer::from_json(b"{", None, None).is_err());
    }
}
