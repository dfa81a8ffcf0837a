//! Whisper's sequential long-form transcription as transformers runs it (`WhisperForConditional
//! Generation.generate` past 3000 mel frames, then the ASR pipeline's `_decode_asr`), kept apart
//! from the engine that computes the logits: the timestamp rules applied at each step, where the
//! next 30-s window starts after one was decoded, and how the tokens of all windows become text.
//!
//! The loop itself: features of the whole recording; from frame `seek`, a window of at most
//! 3000 frames (zero-padded), decoded with [`TimestampRules`]; [`WindowCut`] keeps the finished
//! segments and moves `seek`; at the end [`transcript_text`] decodes the text between
//! timestamps. No temperature fallback, no conditioning on previous windows: transformers'
//! defaults for checkpoints whose generation config sets no thresholds.

use crate::generation::log_sum_exp;
use serde_json::Value;

/// transformers' `WhisperTimeStampLogitsProcessor`: `<|notimestamps|>` is never chosen,
/// timestamps come in pairs (a lone one only right before end-of-text) and never decrease, the
/// first token is a timestamp no later than `max_initial_timestamp_index`, and text is ruled out
/// whenever all timestamps together are likelier than the best text token.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestampRules {
    pub no_timestamps: u32,
    /// The first timestamp token (`<|0.00|>`), one past `<|notimestamps|>`.
    pub begin: u32,
    pub eos: u32,
    pub max_initial_index: Option<u32>,
}

impl TimestampRules {
    /// From generation_config.json (`generation`) and config.json; `None` when the checkpoint
    /// has no `no_timestamps_token_id` (transformers refuses long-form decoding then too).
    pub fn from_configs(config: &Value, generation: &Value, eos: u32) -> Option<Self> {
        let field = |k: &str| generation.get(k).or_else(|| config.get(k));
        let no_timestamps = u32::try_from(field("no_timestamps_token_id")?.as_u64()?).ok()?;
        Some(Self {
            no_timestamps,
            begin: no_timestamps.checked_add(1)?,
            eos,
            max_initial_index: field("max_initial_timestamp_index")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
        })
    }

    pub fn is_timestamp(&self, token: u32) -> bool {
        token >= self.begin
    }

    /// Masks `scores` (logits or log-probs of the next token) given the tokens generated so far
    /// in this window, after the suppress-token rules.
    pub fn apply(&self, scores: &mut [f32], generated: &[u32]) {
        let n = scores.len();
        let begin = (self.begin as usize).min(n);
        let mask = |scores: &mut [f32], from: usize, to: usize| {
            for s in &mut scores[from.min(n)..to.min(n)] {
                *s = f32::NEG_INFINITY;
            }
        };
        mask(
            scores,
            self.no_timestamps as usize,
            self.no_timestamps as usize + 1,
        );
        let last_was_timestamp = generated.last().is_some_and(|&t| self.is_timestamp(t));
        let penultimate_was_timestamp =
            generated.len() < 2 || self.is_timestamp(generated[generated.len() - 2]);
        if last_was_timestamp {
            if penultimate_was_timestamp {
                mask(scores, begin, n);
            } else {
                mask(scores, 0, self.eos as usize);
            }
        }
        if let Some(&last) = generated.iter().rev().find(|&&t| self.is_timestamp(t)) {
            // A segment's end may repeat as the next one's start, nothing goes back in time.
            let floor = if last_was_timestamp && !penultimate_was_timestamp {
                last
            } else {
                last.saturating_add(1)
            };
            mask(scores, begin, floor as usize);
        }
        if generated.is_empty() {
            mask(scores, 0, begin);
            if let Some(m) = self.max_initial_index {
                mask(
                    scores,
                    begin.saturating_add(m as usize).saturating_add(1),
                    n,
                );
            }
        }
        let timestamps = log_sum_exp(&scores[begin..]);
        let best_text = scores[..begin]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if timestamps > best_text {
            mask(scores, 0, begin);
        }
    }
}

/// What one decoded window contributes (transformers' `_retrieve_segment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCut {
    /// How many of the window's tokens are kept: every finished segment; after the last pair of
    /// timestamps, an unfinished segment is dropped and decoded again in the next window.
    pub keep: usize,
    /// Mel frames to move `seek` by.
    pub advance: usize,
}

impl WindowCut {
    /// `tokens`: the window's generated tokens without end-of-text; `window_frames`: the frames
    /// of audio it held (before zero padding); `frames_per_timestamp`: mel frames per timestamp
    /// step (2 for Whisper: 0.02 s).
    pub fn of(
        tokens: &[u32],
        rules: &TimestampRules,
        window_frames: usize,
        frames_per_timestamp: usize,
    ) -> Self {
        let ts: Vec<bool> = tokens.iter().map(|&t| rules.is_timestamp(t)).collect();
        let n = ts.len();
        let single_timestamp_ending = n >= 2 && !ts[n - 2] && ts[n - 1];
        let last_pair = (1..n).rev().find(|&i| ts[i - 1] && ts[i]);
        match last_pair {
            Some(second) if !single_timestamp_ending => {
                // Seek to the end of the last finished segment (the first of the pair).
                let end = (tokens[second - 1] - rules.begin) as usize;
                Self {
                    keep: second + 1,
                    // The rules make a pair's first timestamp at least <|0.02|>; a zero would
                    // never move on, so at least one frame.
                    advance: (end * frames_per_timestamp).max(1),
                }
            }
            _ => Self {
                keep: n,
                advance: window_frames.max(1),
            },
        }
    }
}

/// The text of a long-form transcription, as transformers' ASR pipeline assembles it
/// (`_decode_asr` without stride): the text tokens between a segment's opening and closing
/// timestamp are decoded together and the pieces joined. `seconds_per_timestamp` is the
/// pipeline's `chunk_length / max_source_positions` (0.02).
pub fn transcript_text<E>(
    tokens: &[u32],
    rules: &TimestampRules,
    seconds_per_timestamp: f64,
    mut decode: impl FnMut(&[u32]) -> Result<String, E>,
) -> Result<String, E> {
    // The pipeline's segment length in timestamp steps, fixed whatever the model.
    const SEGMENT_STEPS: f64 = 1500.0;
    let mut text = String::new();
    let mut current: Vec<u32> = Vec::new();
    let mut start: Option<f64> = None;
    let (mut cur_max, mut penultimate, mut previous_segments) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &t) in tokens.iter().enumerate() {
        if t == rules.eos {
            continue;
        }
        if !rules.is_timestamp(t) {
            current.push(t);
            continue;
        }
        let stamp = f64::from(t - rules.begin) * seconds_per_timestamp;
        if stamp < cur_max {
            // A new window started: its times count from the end of the previous one.
            let single_ending =
                i >= 2 && !(rules.is_timestamp(tokens[i - 1]) && rules.is_timestamp(tokens[i - 2]));
            if single_ending {
                previous_segments += seconds_per_timestamp * SEGMENT_STEPS;
            } else {
                cur_max = penultimate;
                previous_segments += penultimate;
            }
        }
        penultimate = cur_max;
        cur_max = stamp;
        let time = ((stamp + previous_segments) * 100.0).round() / 100.0;
        match start {
            None => start = Some(time),
            // An end equal to its start is read as a start again.
            Some(s) if s == time => {}
            Some(_) => {
                text.push_str(&decode(&current)?);
                current.clear();
                start = None;
            }
        }
    }
    if !current.is_empty() {
        text.push_str(&decode(&current)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NEG: f32 = f32::NEG_INFINITY;

    /// A vocabulary of 20: text 0..=9, end-of-text 10, <|notimestamps|> 11, timestamps 12..20.
    fn rules() -> TimestampRules {
        TimestampRules {
            no_timestamps: 11,
            begin: 12,
            eos: 10,
            max_initial_index: Some(2),
        }
    }

    fn allowed(scores: &[f32]) -> Vec<usize> {
        (0..scores.len()).filter(|&i| scores[i] > NEG).collect()
    }

    #[test]
    fn rules_come_from_the_generation_config() {
        let r = TimestampRules::from_configs(
            &json!({}),
            &json!({"no_timestamps_token_id": 50362, "max_initial_timestamp_index": 50}),
            50256,
        )
        .unwrap();
        assert_eq!((r.begin, r.max_initial_index), (50363, Some(50)));
        assert!(TimestampRules::from_configs(&json!({}), &json!({}), 1).is_none());
    }

    #[test]
    fn first_token_is_an_early_timestamp() {
        let mut s = vec![0.0; 20];
        rules().apply(&mut s, &[]);
        assert_eq!(allowed(&s), vec![12, 13, 14]);
    }

    #[test]
    fn timestamps_pair_up_and_never_go_back() {
        let r = rules();
        // After an opening timestamp: text (timestamps would make an empty segment).
        let mut s = vec![0.0; 20];
        s[3] = 5.0;
        r.apply(&mut s, &[13]);
        assert_eq!(allowed(&s), (0..=10).collect::<Vec<_>>());
        // After text: text, end-of-text, or a timestamp later than the opening one.
        let mut s = vec![0.0; 20];
        s[3] = 5.0;
        r.apply(&mut s, &[13, 3]);
        assert_eq!(
            allowed(&s),
            [(0..=10).collect::<Vec<_>>(), (14..20).collect()].concat()
        );
        // After a closing timestamp: end-of-text or the next opening, not earlier.
        let mut s = vec![0.0; 20];
        s[10] = 5.0;
        r.apply(&mut s, &[13, 3, 16]);
        assert_eq!(allowed(&s), vec![10, 16, 17, 18, 19]);
    }

    #[test]
    fn likely_timestamps_rule_out_text() {
        let mut s = vec![-10.0; 20];
        s[3] = 0.0; // best text token
        for v in &mut s[14..20] {
            *v = -0.5; // together likelier than token 3
        }
        rules().apply(&mut s, &[13, 3]);
        assert_eq!(allowed(&s), (14..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_window_keeps_finished_segments_and_seeks_to_the_last_end() {
        let r = rules();
        // <|0.00|> a <|0.08|><|0.08|> b (cut off): keep the first segment plus the reopening.
        let cut = WindowCut::of(&[12, 1, 16, 16, 2], &r, 3000, 2);
        assert_eq!(
            cut,
            WindowCut {
                keep: 4,
                advance: 8
            }
        );
        // Ends on a lone timestamp: nothing more was said, the whole window is done.
        let cut = WindowCut::of(&[12, 1, 16, 16, 2, 18], &r, 3000, 2);
        assert_eq!(
            cut,
            WindowCut {
                keep: 6,
                advance: 3000
            }
        );
        // No pair at all: one segment, the whole window.
        let cut = WindowCut::of(&[12, 1, 2], &r, 1234, 2);
        assert_eq!(
            cut,
            WindowCut {
                keep: 3,
                advance: 1234
            }
        );
        let cut = WindowCut::of(&[], &r, 7, 2);
        assert_eq!(
            cut,
            WindowCut {
                keep: 0,
                advance: 7
            }
        );
    }

    #[test]
    fn text_is_decoded_segment_by_segment() {
        let r = rules();
        let decode = |t: &[u32]| -> Result<String, ()> {
            Ok(format!(
                "[{}]",
                t.iter().map(|x| x.to_string()).collect::<String>()
            ))
        };
        // Two windows: <0> 1 2 <4><4> 3 <6> | <0> 5 <2>
        let tokens = [12, 1, 2, 16, 16, 3, 18, 12, 5, 14];
        assert_eq!(
            transcript_text(&tokens, &r, 0.02, decode).unwrap(),
            "[12][3][5]"
        );
        // Text without timestamps is one piece; a trailing unfinished segment is kept.
        assert_eq!(
            transcript_text(&[1, 2, 10], &r, 0.02, decode).unwrap(),
            "[12]"
        );
        assert_eq!(
            transcript_text(&[12, 1, 14, 14, 2], &r, 0.02, decode).unwrap(),
            "[1][2]"
        );
    }
}
