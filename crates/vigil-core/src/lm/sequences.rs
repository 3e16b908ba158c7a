//! Token sequences a language model trains and is evaluated on: each one a list of token ids
//! and the position from which its tokens count in the loss (0 for plain text, the prompt's
//! length for a prompt/response pair, so only the response is learned and scored).
//!
//! A batch right-pads its sequences to the longest; the mask of [`TokenSequences::batch`]
//! marks the predicted tokens that count, `[batch, positions - 1]` like
//! [`next_token_losses`](super::loss::next_token_losses).

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{LmError, Tokenizer};
use crate::data::text::PromptResponse;

/// Token sequences with the start of their counted part.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenSequences {
    /// Token ids of each sequence (at least two each, so each has a prediction).
    pub ids: Vec<Vec<u32>>,
    /// Index of each sequence's first counted token (>= 1: token 0 is never predicted).
    pub counted_from: Vec<usize>,
}

impl TokenSequences {
    /// Plain texts, each followed by the end token, cut into pieces of at most `max_len`
    /// tokens; every token after a piece's first counts.
    pub fn from_texts(
        tokenizer: &Tokenizer,
        texts: &[String],
        max_len: usize,
    ) -> Result<Self, LmError> {
        check_len(max_len)?;
        let mut set = Self::default();
        for text in texts {
            let mut ids = tokenizer.encode(text)?;
            ids.extend(tokenizer.eos);
            for piece in ids.chunks(max_len) {
                if piece.len() >= 2 {
                    set.push(piece.to_vec(), 1);
                }
            }
        }
        set.non_empty("texts")
    }

    /// Prompt/response pairs: the prompt's tokens then the response's and the end token,
    /// counted from the response's first token. A pair longer than `max_len` keeps its prompt's
    /// last tokens, as many as leave room for the whole response, or the response's first
    /// `max_len - 1` tokens.
    pub fn from_pairs(
        tokenizer: &Tokenizer,
        pairs: &[PromptResponse],
        max_len: usize,
    ) -> Result<Self, LmError> {
        check_len(max_len)?;
        let mut set = Self::default();
        for (i, pair) in pairs.iter().enumerate() {
            let prompt = tokenizer.encode(&pair.prompt)?;
            let mut response = tokenizer.encode_continuation(&pair.response)?;
            response.extend(tokenizer.eos);
            if prompt.is_empty() || response.is_empty() {
                return Err(LmError::Input(format!(
                    "pair {i} has an empty prompt or response"
                )));
            }
            response.truncate(max_len - 1);
            let keep = (max_len - response.len()).min(prompt.len());
            let mut ids = prompt[prompt.len() - keep..].to_vec();
            let from = ids.len();
            ids.extend(response);
            set.push(ids, from);
        }
        set.non_empty("pairs")
    }

    fn push(&mut self, ids: Vec<u32>, counted_from: usize) {
        self.ids.push(ids);
        self.counted_from.push(counted_from);
    }

    fn non_empty(self, what: &str) -> Result<Self, LmError> {
        if self.is_empty() {
            return Err(LmError::Input(format!(
                "the {what} give no sequence of two tokens or more"
            )));
        }
        Ok(self)
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The longest sequence's length.
    pub fn max_len(&self) -> usize {
        self.ids.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The largest token id, if any.
    pub fn max_token(&self) -> Option<u32> {
        self.ids.iter().flatten().copied().max()
    }

    /// The sequences at `indices`.
    pub fn subset(&self, indices: &[usize]) -> Self {
        Self {
            ids: indices.iter().map(|&i| self.ids[i].clone()).collect(),
            counted_from: indices.iter().map(|&i| self.counted_from[i]).collect(),
        }
    }

    /// Number of counted predictions over all sequences.
    pub fn counted_tokens(&self) -> usize {
        (0..self.len()).map(|i| self.predictions(i).len()).sum()
    }

    /// The positions of sequence `i` whose prediction counts: position `p` predicts token
    /// `p + 1`, so these are `counted_from - 1 .. len - 1` (token 0 is never predicted).
    pub fn predictions(&self, i: usize) -> std::ops::Range<usize> {
        let len = self.ids[i].len();
        (self.counted_from[i].max(1) - 1).min(len)..len.saturating_sub(1)
    }

    /// Length of the longest sequence at `indices` (2 when there are none).
    fn longest(&self, indices: &[usize]) -> usize {
        indices
            .iter()
            .map(|&i| self.ids[i].len())
            .max()
            .unwrap_or(2)
    }

    /// Tokens `[n, longest]` of the sequences at `indices`, right-padded with token 0.
    pub fn tokens(&self, indices: &[usize], device: &Device) -> Tensor<2, Int> {
        let longest = self.longest(indices);
        let mut tokens = vec![0i64; indices.len() * longest];
        for (row, &i) in indices.iter().enumerate() {
            for (t, &id) in self.ids[i].iter().enumerate() {
                tokens[row * longest + t] = i64::from(id);
            }
        }
        Tensor::from_data(TensorData::new(tokens, [indices.len(), longest]), device)
    }

    /// [`Self::tokens`], and the mask `[n, longest - 1]` of the predictions that count (1.0)
    /// or not (0.0).
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
        let longest = self.longest(indices);
        let mut mask = vec![0f32; indices.len() * (longest - 1)];
        for (row, &i) in indices.iter().enumerate() {
            for p in self.predictions(i) {
                mask[row * (longest - 1) + p] = 1.0;
            }
        }
        (
            self.tokens(indices, device),
            Tensor::from_data(TensorData::new(mask, [indices.len(), longest - 1]), device),
        )
    }
}

fn check_len(max_len: usize) -> Result<(), LmError> {
    if max_len < 2 {
        return Err(LmError::Input(format!(
            "sequences of at most {max_len} tokens hold no prediction (at least 2)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;

    fn tokenizer() -> Tokenizer {
        let texts: Vec<String> = ["the cat sat", "on the mat", "a dog ran far"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Tokenizer::train(&texts, 300).unwrap()
    }

    #[test]
    fn texts_are_cut_and_pairs_count_only_their_response() {
        let tok = tokenizer();
        let texts = vec!["the cat sat on the mat".to_string()];
        let ids = {
            let mut ids = tok.encode(&texts[0]).unwrap();
            ids.extend(tok.eos);
            ids
        };
        let set = TokenSequences::from_texts(&tok, &texts, 4).unwrap();
        let joined: Vec<u32> = set.ids.iter().flatten().copied().collect();
        // Pieces of one token are dropped (nothing to predict), the rest kept in order.
        assert!(set.ids.iter().all(|s| s.len() >= 2 && s.len() <= 4));
        assert_eq!(&ids[..joined.len()], &joined[..]);

        let pairs = vec![PromptResponse {
            prompt: "the cat".into(),
            response: " sat".into(),
        }];
        let set = TokenSequences::from_pairs(&tok, &pairs, 64).unwrap();
        let prompt = tok.encode("the cat").unwrap();
        assert_eq!(set.counted_from[0], prompt.len());
        let (tokens, mask) = set.batch(&[0], &default_device());
        let n = set.ids[0].len();
        assert_eq!(tokens.dims(), [1, n]);
        let mask: Vec<f32> = mask.into_data().try_to_vec().unwrap();
        // Predictions from the prompt's last position onwards count: response tokens and end.
        let counted: Vec<usize> = (0..n - 1).filter(|&p| mask[p] == 1.0).collect();
        assert_eq!(counted, (prompt.len() - 1..n - 1).collect::<Vec<_>>());
    }

    #[test]
    fn a_long_pair_keeps_its_response_and_the_prompt_end() {
        let tok = tokenizer();
        let pairs = vec![PromptResponse {
            prompt: "the cat sat on the mat the cat sat on the mat".into(),
            response: " a dog".into(),
        }];
        let set = TokenSequences::from_pairs(&tok, &pairs, 6).unwrap();
        let mut response = tok.encode_continuation(" a dog").unwrap();
        response.extend(tok.eos);
        assert_eq!(set.ids[0].len(), 6);
        assert_eq!(&set.ids[0][set.counted_from[0]..], &response[..]);
        let prompt = tok.encode(&pairs[0].prompt).unwrap();
        assert_eq!(
            &set.ids[0][..set.counted_from[0]],
            &prompt[prompt.len() - set.counted_from[0]..]
        );
    }

    #[test]
    fn padding_is_not_counted_and_bad_lengths_are_refused() {
        let tok = tokenizer();
        let texts = vec![
            "the cat".to_string(),
            "a dog ran far on the mat".to_string(),
        ];
        let set = TokenSequences::from_texts(&tok, &texts, 64).unwrap();
        let (tokens, mask) = set.batch(&[0, 1], &default_device());
        let longest = set.max_len();
        assert_eq!(tokens.dims(), [2, longest]);
        let mask: Vec<f32> = mask.into_data().try_to_vec().unwrap();
        let counted: f32 = mask[..longest - 1].iter().sum();
        assert_eq!(counted as usize, set.ids[0].len() - 1);
        assert!(TokenSequences::from_texts(&tok, &texts, 1).is_err());
        assert!(TokenSequences::from_texts(&tok, &[], 8).is_err());
    }
}
