//! Text in, model inputs out, and token states back to one sentence embedding, the way the
//! checkpoint's reference pipeline does it.
//!
//! Tokenisation follows what transformers does when sentence-transformers (or a pipeline)
//! calls the tokenizer with `padding=True, truncation=True, max_length=...`: the tokenizer's own
//! pad token, pad id and padding side from tokenizer.json, padding to the longest text of the
//! batch, truncation (special tokens included) to the pipeline's max length, and the
//! tokenizer's attention mask, so padding never counts as text. A tokenizer.json that pads to a
//! fixed length is honoured through its mask: padded positions are masked out either way, and
//! padding to the batch's longest text computes the same embedding with less work.
//!
//! Pooling and normalisation come from the checkpoint's sentence-transformers files
//! ([`SentenceEmbedding`]): `SentenceTransformer(folder).encode(texts)` is the reference.

use crate::TaskError;
use ia_engine::{EngineError, Inputs};
use ia_models::sentence_transformers::{PoolingMode, SentenceEmbedding};
use serde_json::Value;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// A checkpoint's tokenizer set up as its pipeline calls it.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// Tokens kept per text, special tokens included.
    pub max_length: usize,
    lower_case: bool,
    /// The config the ids are fed to (its vocab_size bounds them).
    config: Value,
}

impl TextEncoder {
    /// The checkpoint's tokenizer.json, truncating to `max_length` and padding to the longest
    /// text of a batch. `config` is the (text) config the ids are fed to.
    pub fn new(
        tokenizer_json: &std::path::Path,
        config: &Value,
        max_length: usize,
        lower_case: bool,
    ) -> Result<Self, TaskError> {
        let invalid = |e: String| {
            TaskError::Engine(EngineError::InvalidModel(format!(
                "{}: {e}",
                tokenizer_json.display()
            )))
        };
        let mut tokenizer = ia_engine::tokenizer::open(tokenizer_json)?;
        let own_padding = tokenizer.get_padding().cloned();
        let own_truncation = tokenizer.get_truncation().cloned();
        let pad_id = own_padding
            .as_ref()
            .map(|p| p.pad_id)
            .or_else(|| {
                config
                    .get("pad_token_id")
                    .and_then(Value::as_u64)
                    .and_then(|p| u32::try_from(p).ok())
            })
            .unwrap_or(0);
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: own_padding
                .as_ref()
                .map_or(PaddingDirection::Right, |p| p.direction),
            pad_to_multiple_of: own_padding.as_ref().and_then(|p| p.pad_to_multiple_of),
            pad_id,
            pad_type_id: own_padding.as_ref().map_or(0, |p| p.pad_type_id),
            pad_token: own_padding
                .as_ref()
                .map_or_else(|| "[PAD]".to_string(), |p| p.pad_token.clone()),
        };
        tokenizer.with_padding(Some(padding));
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: own_truncation
                    .as_ref()
                    .map_or(TruncationDirection::Right, |t| t.direction),
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| invalid(format!("cannot truncate to {max_length} tokens: {e}")))?;
        Ok(Self {
            tokenizer,
            max_length,
            lower_case,
            config: config.clone(),
        })
    }

    /// A padded, masked batch of the texts.
    pub fn encode(&self, texts: &[String]) -> Result<Inputs, TaskError> {
        if texts.is_empty() {
            return Err(TaskError::Input("no text to encode".into()));
        }
        let texts: Vec<String> = texts
            .iter()
            .map(|t| {
                if self.lower_case {
                    t.to_lowercase()
                } else {
                    t.clone()
                }
            })
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(texts.clone(), true)
            .map_err(|e| TaskError::Input(format!("cannot tokenize: {e}")))?;
        let seq_len = encodings.first().map_or(0, |e| e.get_ids().len());
        if seq_len == 0 {
            return Err(TaskError::Input(
                "the tokenizer produced no tokens for this text".into(),
            ));
        }
        let (mut input_ids, mut attention_mask, mut token_type_ids) = (vec![], vec![], vec![]);
        for (text, e) in texts.iter().zip(&encodings) {
            if e.get_attention_mask().iter().all(|&m| m == 0) {
                return Err(TaskError::Input(format!(
                    "the tokenizer produced no tokens for {text:?}"
                )));
            }
            ia_engine::inputs::check_token_ids(&self.config, e.get_ids())?;
            input_ids.extend_from_slice(e.get_ids());
            attention_mask.extend_from_slice(e.get_attention_mask());
            token_type_ids.extend_from_slice(e.get_type_ids());
        }
        Ok(Inputs::Text {
            batch: encodings.len(),
            seq_len,
            input_ids,
            attention_mask,
            token_type_ids,
        })
    }
}

/// sentence-transformers' Pooling (and Normalize) over `hidden` [batch, seq, dim] with the
/// batch's attention mask: one embedding per row.
pub fn pool(
    embedding: &SentenceEmbedding,
    hidden: &[f32],
    shape: &[usize],
    mask: &[u32],
) -> Result<Vec<Vec<f32>>, TaskError> {
    let &[batch, seq, dim] = shape else {
        return Err(TaskError::Engine(EngineError::Runtime(format!(
            "last_hidden_state has shape {shape:?}, expected [batch, seq, hidden]"
        ))));
    };
    if hidden.len() != batch * seq * dim || mask.len() != batch * seq {
        return Err(TaskError::Engine(EngineError::Runtime(
            "last_hidden_state and the attention mask disagree in size".into(),
        )));
    }
    let mut out = Vec::with_capacity(batch);
    for b in 0..batch {
        let m = &mask[b * seq..(b + 1) * seq];
        let token = |t: usize| &hidden[(b * seq + t) * dim..(b * seq + t + 1) * dim];
        let count = m.iter().filter(|&&x| x != 0).count() as f32;
        let mut v = Vec::with_capacity(dim * embedding.pooling.len());
        for mode in &embedding.pooling {
            match mode {
                PoolingMode::Cls => v.extend_from_slice(token(0)),
                PoolingMode::Max => {
                    // Padding is set to -1e9 before the max, as sentence-transformers does.
                    let mut best = vec![f32::NEG_INFINITY; dim];
                    for (t, &on) in m.iter().enumerate() {
                        for (d, x) in best.iter_mut().zip(token(t)) {
                            *d = d.max(if on != 0 { *x } else { -1e9 });
                        }
                    }
                    v.extend(best);
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen | PoolingMode::WeightedMean => {
                    let weight = |t: usize| match mode {
                        PoolingMode::WeightedMean => (t + 1) as f32 * m[t] as f32,
                        _ => m[t] as f32,
                    };
                    let mut sum = vec![0f32; dim];
                    let mut total = 0f32;
                    for t in 0..seq {
                        let w = weight(t);
                        total += w;
                        for (s, x) in sum.iter_mut().zip(token(t)) {
                            *s += x * w;
                        }
                    }
                    let div = match mode {
                        PoolingMode::MeanSqrtLen => count.max(1e-9).sqrt(),
                        PoolingMode::WeightedMean => total.max(1e-9),
                        _ => count.max(1e-9),
                    };
                    v.extend(sum.into_iter().map(|s| s / div));
                }
                PoolingMode::LastToken => {
                    let last = m.iter().rposition(|&x| x != 0).unwrap_or(0);
                    v.extend_from_slice(token(last));
                }
            }
        }
        if embedding.normalize {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= n);
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(pooling: Vec<PoolingMode>, normalize: bool) -> SentenceEmbedding {
        SentenceEmbedding {
            pooling,
            normalize,
            ..SentenceEmbedding::plain(None)
        }
    }

    // Two rows of three tokens, dim 2; the second row's last token is padding.
    const HIDDEN: [f32; 12] = [1., 2., 3., 4., 5., 6., 10., 20., 30., 40., 99., 99.];
    const MASK: [u32; 6] = [1, 1, 1, 1, 1, 0];

    #[test]
    fn pooling_modes_ignore_padding() {
        let p = |modes| pool(&st(modes, false), &HIDDEN, &[2, 3, 2], &MASK).unwrap();
        assert_eq!(
            p(vec![PoolingMode::Mean]),
            vec![vec![3., 4.], vec![20., 30.]]
        );
        assert_eq!(
            p(vec![PoolingMode::Max]),
            vec![vec![5., 6.], vec![30., 40.]]
        );
        assert_eq!(
            p(vec![PoolingMode::LastToken]),
            vec![vec![5., 6.], vec![30., 40.]]
        );
        assert_eq!(
            p(vec![PoolingMode::Cls, PoolingMode::Mean])[1],
            vec![10., 20., 20., 30.]
        );
        // weights 1, 2 (the padded third has weight 0): (10 + 60) / 3, (20 + 80) / 3
        let w = &p(vec![PoolingMode::WeightedMean])[1];
        assert!((w[0] - 70. / 3.).abs() < 1e-5 && (w[1] - 100. / 3.).abs() < 1e-5);
        let s = &p(vec![PoolingMode::MeanSqrtLen])[1];
        assert!((s[0] - 40. / 2f32.sqrt()).abs() < 1e-4);
    }

    #[test]
    fn normalize_gives_unit_vectors() {
        let v = pool(
            &st(vec![PoolingMode::Mean], true),
            &HIDDEN,
            &[2, 3, 2],
            &MASK,
        )
        .unwrap();
        for row in v {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-6, "{n}");
        }
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        assert!(pool(&st(vec![PoolingMode::Mean], false), &HIDDEN, &[2, 3], &MASK).is_err());
        assert!(pool(
            &st(vec![PoolingMode::Mean], false),
            &HIDDEN,
            &[2, 2, 2],
            &MASK
        )
        .is_err());
    }
}
