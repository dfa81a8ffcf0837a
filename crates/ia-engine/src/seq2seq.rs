//! Encoder-decoder decoding over any engine, as transformers runs it: greedy and beam search
//! drive a [`Seq2SeqDecoder`] (feed tokens, read next-token logits, reorder caches for beams),
//! and [`TokenRules`] say which tokens may come next. An engine computes; what is chosen is
//! decided here, once, whichever runtime runs the model (text generation has the same shape
//! over [`crate::TextGenerator`]).

use crate::generation::{argmax, log_sum_exp};
use crate::EngineError;

/// The decoder side of an encoder-decoder model whose encoder has already run: the caller
/// started it with one row per sequence to decode.
pub trait Seq2SeqDecoder {
    /// Feeds `tokens` (`rows` rows of equal length, row after row) after what each row has
    /// seen; returns each row's logits for the next token.
    fn decode(&mut self, tokens: &[u32], rows: usize) -> Result<Vec<Vec<f32>>, EngineError>;
    /// Keeps, for each new row `i`, the cache of row `rows[i]` (beam search).
    fn reorder(&mut self, rows: &[u32]) -> Result<(), EngineError>;
}

/// What decides the next token besides the logits: the decoder prompt, end-of-sequence, and
/// the logits processors.
pub trait TokenRules {
    fn prompt(&self) -> &[u32];
    fn eos(&self) -> u32;
    /// Masks the next token's scores (logits or log-probs) given this row's generated tokens.
    fn apply(&self, scores: &mut [f32], generated: &[u32]);
}

/// Greedy decoding of `rows` sequences (without their end-of-sequence); rows that finish wait
/// for the others.
pub fn greedy(
    decoder: &mut dyn Seq2SeqDecoder,
    rules: &dyn TokenRules,
    rows: usize,
    max_new: usize,
) -> Result<Vec<Vec<u32>>, EngineError> {
    let eos = rules.eos();
    let prompt: Vec<u32> = (0..rows).flat_map(|_| rules.prompt().to_vec()).collect();
    let mut logits = decoder.decode(&prompt, rows)?;
    let mut out = vec![Vec::new(); rows];
    let mut done = vec![false; rows];
    for step in 0..max_new {
        let mut next = Vec::with_capacity(rows);
        for (b, scores) in logits.iter_mut().enumerate() {
            rules.apply(scores, &out[b]);
            let tok = argmax(scores);
            if done[b] || tok == eos {
                done[b] = true;
                next.push(eos);
            } else {
                out[b].push(tok);
                next.push(tok);
            }
        }
        if done.iter().all(|&d| d) || step + 1 == max_new {
            break;
        }
        logits = decoder.decode(&next, rows)?;
    }
    Ok(out)
}

/// Beam search of one sequence as transformers runs it (length_penalty 1, early_stopping
/// false) over a decoder started with `beams` identical rows: each step keeps the `beams` best
/// running continuations; an end-of-sequence among the top `beams` candidates finishes a
/// hypothesis scored by sum of log-probs / generated length.
pub fn beam_search(
    decoder: &mut dyn Seq2SeqDecoder,
    rules: &dyn TokenRules,
    beams: usize,
    max_new: usize,
) -> Result<Vec<u32>, EngineError> {
    let eos = rules.eos();
    let prompt: Vec<u32> = (0..beams).flat_map(|_| rules.prompt().to_vec()).collect();
    let mut logits = decoder.decode(&prompt, beams)?;
    let mut running: Vec<(Vec<u32>, f32)> = (0..beams)
        .map(|i| (Vec::new(), if i == 0 { 0.0 } else { -1e9 }))
        .collect();
    let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
    for step in 0..max_new {
        let mut candidates: Vec<(f32, usize, u32)> = Vec::new();
        for (b, scores) in logits.iter().enumerate() {
            let lse = log_sum_exp(scores);
            let mut lp: Vec<f32> = scores.iter().map(|&x| x - lse).collect();
            rules.apply(&mut lp, &running[b].0);
            candidates.extend(
                lp.iter()
                    .enumerate()
                    .map(|(t, &l)| (running[b].1 + l, b, t as u32)),
            );
        }
        // The 2 * beams best, highest first; ties keep the lower flat index as torch.topk does.
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        candidates.truncate(2 * beams);
        let generated = (step + 1) as f32;
        let mut next = Vec::with_capacity(beams);
        for (rank, &(score, b, tok)) in candidates.iter().enumerate() {
            if tok == eos {
                if rank < beams {
                    finished.push((running[b].0.clone(), score / generated));
                }
            } else if next.len() < beams {
                next.push((b, tok, score));
            }
        }
        finished.sort_by(|a, b| b.1.total_cmp(&a.1));
        finished.truncate(beams);
        running = next
            .iter()
            .map(|&(b, tok, score)| {
                let mut seq = running[b].0.clone();
                seq.push(tok);
                (seq, score)
            })
            .collect();
        let best_running = running[0].1 / generated;
        let worst_finished = finished.last().map_or(f32::NEG_INFINITY, |f| f.1);
        if (finished.len() == beams && best_running <= worst_finished) || step + 1 == max_new {
            break;
        }
        let src: Vec<u32> = next.iter().map(|&(b, _, _)| b as u32).collect();
        decoder.reorder(&src)?;
        let toks: Vec<u32> = next.iter().map(|&(_, t, _)| t).collect();
        logits = decoder.decode(&toks, beams)?;
    }
    // Hypotheses still running at the length limit compete with the finished ones.
    for (seq, score) in running {
        let len = seq.len().max(1) as f32;
        finished.push((seq, score / len));
    }
    finished.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(finished.into_iter().next().map(|f| f.0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder over a vocabulary of 5 (end-of-sequence 0) whose logits depend only on the
    /// last token of each row: a fixed table, so greedy and beam search can differ.
    struct Table {
        last: Vec<u32>,
    }

    const LOGITS: [[f32; 5]; 5] = [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 3.0, 0.0],
        [3.0, 0.0, 0.0, 0.0, 0.0],
        [2.0, 0.0, 0.0, 0.0, 2.1],
        [4.0, 0.0, 0.0, 0.0, 0.0],
    ];

    impl Seq2SeqDecoder for Table {
        fn decode(&mut self, tokens: &[u32], rows: usize) -> Result<Vec<Vec<f32>>, EngineError> {
            let t = tokens.len() / rows;
            self.last = (0..rows).map(|r| tokens[r * t + t - 1]).collect();
            Ok(self
                .last
                .iter()
                .map(|&l| LOGITS[l as usize].to_vec())
                .collect())
        }
        fn reorder(&mut self, _rows: &[u32]) -> Result<(), EngineError> {
            Ok(())
        }
    }

    struct Rules;
    impl TokenRules for Rules {
        fn prompt(&self) -> &[u32] {
            &[1]
        }
        fn eos(&self) -> u32 {
            0
        }
        fn apply(&self, scores: &mut [f32], generated: &[u32]) {
            if generated.is_empty() {
                scores[0] = f32::NEG_INFINITY; // never end at once
            }
        }
    }

    #[test]
    fn greedy_follows_the_best_token_until_the_end() {
        let mut d = Table { last: vec![] };
        let out = greedy(&mut d, &Rules, 2, 10).unwrap();
        assert_eq!(out, vec![vec![3, 4], vec![3, 4]]);
        let out = greedy(&mut d, &Rules, 1, 1).unwrap();
        assert_eq!(out, vec![vec![3]]);
    }

    #[test]
    fn beam_search_returns_the_best_finished_hypothesis() {
        let mut d = Table { last: vec![] };
        let best = beam_search(&mut d, &Rules, 2, 10).unwrap();
        assert_eq!(best, vec![3, 4]);
    }
}
