//! Performance prediction for combinations nobody has measured.
//!
//! * The prior is a roofline: each phase of an iteration (a forward pass; a prefill and the
//!   decode steps of a generation) takes at least `FLOPs / peak FLOP/s` and at least
//!   `bytes moved / memory bandwidth`, from the cost model ([`ia_models::cost`]) and the
//!   machine's calibration (`hardware --calibrate`).
//! * A per-target line (call overhead + slowdown x roofline) is fitted first; then a
//!   gradient-boosted model ([`forust_ml`]; `perpetual`, its successor, needs a nightly
//!   compiler) learns the log ratio of measured p50 latency to
//!   that line from the results store: how far each engine, platform, precision and class
//!   stays from the ceiling at each size. Learning a ratio, not the latency, lets the trees
//!   (which cannot extrapolate) serve batch sizes and lengths outside the measured range.
//! * The 90% interval is split conformal: the model is fitted on one part of the data, and
//!   the 90th percentile of its absolute log errors on the held-out rest widens every
//!   prediction. Coverage is therefore measured on points the model never saw.
//! * [`evaluate`] holds out configurations, batch sizes, models or whole platforms in turn.

use forust_ml::objective::ObjectiveType;
use forust_ml::{GradientBooster, Matrix};
use ia_models::cost::{Cost, Phase, Shape};
use ia_models::ModelClass;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{0}")]
    NotEnoughData(String),
    #[error("the learner failed: {0}")]
    Learner(String),
}

/// What a platform and engine sustain (from the calibration).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ceiling {
    pub flops_per_s: f64,
    pub bytes_per_s: f64,
}

/// Bytes each weight takes at a precision (the block formats' scales included).
pub fn bytes_per_weight(precision: &str) -> f64 {
    match precision {
        "f16" | "bf16" => 2.0,
        "int8" => 1.0,
        "q8_0" => 34.0 / 32.0,
        "q4_k" => 144.0 / 256.0,
        _ => 4.0,
    }
}

/// The size of one iteration of a benchmark combination.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Workload {
    pub batch: usize,
    /// Text length (prompt length of a generation).
    pub seq_len: usize,
    /// Tokens a generation adds (0 for a forward pass).
    pub new_tokens: usize,
    /// Seconds of audio per input.
    pub audio_seconds: f64,
}

/// The phases of one iteration and their costs: one forward pass, or a prefill and
/// `new_tokens - 1` decode steps. `None` for classes without a cost model (DETR's
/// convolutional backbone, CLAP's Swin tower).
pub fn iteration_costs(
    config: &Value,
    class: ModelClass,
    generates_text: bool,
    work: Workload,
    precision: &str,
) -> Option<Vec<Cost>> {
    let bytes = bytes_per_weight(precision);
    let (tower, positions) = match class {
        ModelClass::Bert => (None, work.seq_len),
        ModelClass::Llama | ModelClass::Qwen | ModelClass::T5 => (None, work.seq_len),
        ModelClass::Vit => (None, patches(config)?),
        ModelClass::Clip => (
            Some("vision_config"),
            patches(config.get("vision_config")?)?,
        ),
        // The encoder always sees a 30-s window: 1500 positions after its stride-2 conv.
        ModelClass::Whisper => (None, 1500),
        // 20 ms per position after the convolutional feature encoder.
        ModelClass::Wav2vec2 => (None, (work.audio_seconds * 50.0).round().max(1.0) as usize),
        _ => return None,
    };
    let shape = Shape::of(config, tower)?;
    if !generates_text {
        return Some(vec![shape.cost(
            Phase::Forward,
            false,
            work.batch,
            positions,
            bytes,
        )]);
    }
    let mut costs = vec![shape.cost(Phase::Prefill, true, work.batch, positions, bytes)];
    for step in 1..work.new_tokens {
        let cached = positions + step;
        costs.push(shape.cost(Phase::Decode { cached }, true, work.batch, 1, bytes));
    }
    Some(costs)
}

/// Image positions of a ViT-style tower: patches plus the class token.
fn patches(config: &Value) -> Option<usize> {
    let image = config.get("image_size")?.as_u64()?;
    let patch = config.get("patch_size")?.as_u64()?.max(1);
    Some(((image / patch).pow(2) + 1) as usize)
}

/// A configuration, with what the prediction depends on.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub model: String,
    pub class: String,
    pub engine: String,
    pub platform: String,
    pub precision: String,
    /// The machine (hardware fingerprint).
    pub hardware: String,
    pub work: Workload,
    /// The phases of one iteration.
    #[serde(skip)]
    pub costs: Vec<Cost>,
    pub ceiling: Option<Ceiling>,
}

/// A compute rate standing in for an uncalibrated platform (100 GFLOP/s, 20 GB/s): the
/// learned ratio absorbs how far off it is.
const NOMINAL: Ceiling = Ceiling {
    flops_per_s: 1e11,
    bytes_per_s: 2e10,
};

impl Case {
    /// The roofline of one iteration, ms: each phase bound by compute or by memory.
    pub fn prior_ms(&self) -> f64 {
        let c = self.ceiling.unwrap_or(NOMINAL);
        self.costs
            .iter()
            .map(|p| (p.flops / c.flops_per_s).max(p.bytes_moved() / c.bytes_per_s))
            .sum::<f64>()
            * 1e3
    }

    fn flops(&self) -> f64 {
        self.costs.iter().map(|c| c.flops).sum()
    }

    fn bytes(&self) -> f64 {
        self.costs.iter().map(Cost::bytes_moved).sum()
    }
}

/// A measured case.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    pub case: Case,
    pub latency_ms: f64,
    /// The stored result it came from.
    pub result_id: i64,
}

/// The first learned stage: latency = overhead + slowdown x roofline, fitted per engine,
/// platform and precision (and over everything, for targets without their own points), by
/// least squares on relative error. The roofline alone ignores the fixed cost of a call,
/// which dominates small models.
#[derive(Debug, Clone, Default)]
struct Affine {
    per_target: BTreeMap<String, (f64, f64)>,
    global: (f64, f64),
}

impl Affine {
    fn key(c: &Case) -> String {
        format!("{}|{}|{}", c.engine, c.platform, c.precision)
    }

    fn fit(observations: &[Observation]) -> Self {
        let points = |filter: &dyn Fn(&Case) -> bool| -> Vec<(f64, f64)> {
            observations
                .iter()
                .filter(|o| filter(&o.case))
                .map(|o| (o.case.prior_ms(), o.latency_ms))
                .collect()
        };
        let global = fit_affine(&points(&|_| true)).unwrap_or((0.0, 1.0));
        let mut per_target = BTreeMap::new();
        for o in observations {
            let key = Self::key(&o.case);
            if per_target.contains_key(&key) {
                continue;
            }
            if let Some(line) = fit_affine(&points(&|c| Self::key(c) == key)) {
                per_target.insert(key, line);
            }
        }
        Self { per_target, global }
    }

    fn baseline_ms(&self, c: &Case) -> f64 {
        let (a, b) = self
            .per_target
            .get(&Self::key(c))
            .copied()
            .unwrap_or(self.global);
        (a + b * c.prior_ms()).max(1e-6)
    }
}

/// `y = a + b x` minimising the squared relative error, with `a >= 0` and `b > 0`; `None` with
/// fewer than two distinct `x`.
fn fit_affine(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let distinct = points
        .iter()
        .any(|p| (p.0 - points[0].0).abs() > 1e-12 * p.0.abs().max(1e-12));
    if points.len() < 2 || !distinct {
        return None;
    }
    // Weighted normal equations, weights 1 / y^2.
    let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, y) in points {
        let w = 1.0 / (y * y);
        sw += w;
        sx += w * x;
        sy += w * y;
        sxx += w * x * x;
        sxy += w * x * y;
    }
    let det = sw * sxx - sx * sx;
    let (a, b) = if det.abs() > 0.0 {
        ((sy * sxx - sx * sxy) / det, (sw * sxy - sx * sy) / det)
    } else {
        (0.0, 0.0)
    };
    if a >= 0.0 && b > 0.0 {
        return Some((a, b));
    }
    // Through the origin (a = 0), or a constant (b ~ 0): the better of the two bounds.
    let slope = sxy / sxx;
    if slope > 0.0 && a < 0.0 {
        Some((0.0, slope))
    } else {
        Some((sy / sw, 1e-9))
    }
}

/// Categorical values as stable small integers, learned from the training cases.
#[derive(Debug, Clone, Default)]
struct Codes(BTreeMap<String, f64>);

impl Codes {
    fn learn<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let mut codes = BTreeMap::new();
        for v in values {
            let next = codes.len() as f64;
            codes.entry(v.to_string()).or_insert(next);
        }
        Self(codes)
    }

    /// Unseen values are missing (NaN), which the learner routes on its own.
    fn of(&self, v: &str) -> f64 {
        self.0.get(v).copied().unwrap_or(f64::NAN)
    }
}

const FEATURES: usize = 10;

/// Latency predictions with split-conformal intervals.
pub struct Predictor {
    affine: Affine,
    booster: GradientBooster,
    engines: Codes,
    platforms: Codes,
    precisions: Codes,
    classes: Codes,
    /// Half-width of the 90% interval in log space.
    log_margin: f64,
    /// Cases the model was fitted on, for "the nearest measurements it leaned on".
    fitted: Vec<Observation>,
}

/// A predicted p50 latency with its 90% interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    pub p50_ms: f64,
    pub low_ms: f64,
    pub high_ms: f64,
}

/// Every this-many-th observation calibrates the interval; the others fit the learner.
const CALIBRATION_EVERY: usize = 4;
/// The interval's target coverage.
pub const COVERAGE: f64 = 0.9;

impl Predictor {
    /// Fits on `observations`: every fourth one (in a fixed order) calibrates the interval,
    /// the others train the learner.
    pub fn fit(observations: &[Observation]) -> Result<Self, PredictError> {
        if observations.len() < 8 {
            return Err(PredictError::NotEnoughData(format!(
                "{} measured results; at least 8 are needed to fit and calibrate a predictor \
                 (run `bench` on more combinations)",
                observations.len()
            )));
        }
        let (fit, calibrate): (Vec<_>, Vec<_>) = observations
            .iter()
            .enumerate()
            .partition(|(i, _)| (i + 1) % CALIBRATION_EVERY != 0);
        let fit: Vec<Observation> = fit.into_iter().map(|(_, o)| o.clone()).collect();
        let calibrate: Vec<&Observation> = calibrate.into_iter().map(|(_, o)| o).collect();
        let cases = || fit.iter().map(|o| &o.case);
        let mut p = Self {
            affine: Affine::fit(&fit),
            // Shallow trees and many small steps: tens to hundreds of points, few features.
            booster: GradientBooster::default()
                .set_objective_type(ObjectiveType::SquaredLoss)
                .set_iterations(300)
                .set_learning_rate(0.1)
                .set_max_depth(3)
                .set_min_leaf_weight(1.0)
                .set_parallel(false)
                .set_seed(0),
            engines: Codes::learn(cases().map(|c| c.engine.as_str())),
            platforms: Codes::learn(cases().map(|c| c.platform.as_str())),
            precisions: Codes::learn(cases().map(|c| c.precision.as_str())),
            classes: Codes::learn(cases().map(|c| c.class.as_str())),
            log_margin: 0.0,
            fitted: Vec::new(),
        };
        let rows: Vec<&Case> = cases().collect();
        let y: Vec<f64> = fit
            .iter()
            .map(|o| (o.latency_ms / p.affine.baseline_ms(&o.case)).ln())
            .collect();
        let data = p.matrix(&rows);
        p.booster
            .fit_unweighted(&Matrix::new(&data, rows.len(), FEATURES), &y, None)
            .map_err(|e| PredictError::Learner(e.to_string()))?;
        let mut errors: Vec<f64> = calibrate
            .iter()
            .map(|o| (o.latency_ms.ln() - p.point_ms(&o.case).ln()).abs())
            .collect();
        p.log_margin = conformal_quantile(&mut errors, COVERAGE);
        p.fitted = fit;
        Ok(p)
    }

    /// Column-major features of `cases`.
    fn matrix(&self, cases: &[&Case]) -> Vec<f64> {
        let mut columns: Vec<Vec<f64>> = (0..FEATURES)
            .map(|_| Vec::with_capacity(cases.len()))
            .collect();
        for c in cases {
            let f = [
                self.affine.baseline_ms(c).ln(),
                c.flops().max(1.0).ln(),
                c.bytes().max(1.0).ln(),
                (c.flops() / c.bytes().max(1.0)).max(1e-9).ln(),
                (c.work.batch.max(1) as f64).ln(),
                (c.work.seq_len.max(1) as f64).ln(),
                self.engines.of(&c.engine),
                self.platforms.of(&c.platform),
                self.precisions.of(&c.precision),
                self.classes.of(&c.class),
            ];
            for (column, v) in columns.iter_mut().zip(f) {
                column.push(v);
            }
        }
        columns.concat()
    }

    fn point_ms(&self, case: &Case) -> f64 {
        let data = self.matrix(&[case]);
        let ratio = self
            .booster
            .predict(&Matrix::new(&data, 1, FEATURES), false)[0];
        self.affine.baseline_ms(case) * ratio.exp()
    }

    /// The predicted p50 latency of one iteration with its 90% interval.
    pub fn predict(&self, case: &Case) -> Interval {
        let p50_ms = self.point_ms(case);
        let m = self.log_margin.exp();
        Interval {
            p50_ms,
            low_ms: p50_ms / m,
            high_ms: p50_ms * m,
        }
    }

    /// The `n` fitted measurements most like `case` (same engine and platform first, then
    /// the closest prior), for saying what a prediction leaned on.
    pub fn nearest(&self, case: &Case, n: usize) -> Vec<&Observation> {
        let mut all: Vec<&Observation> = self.fitted.iter().collect();
        let distance = |o: &Observation| {
            let same = (o.case.engine == case.engine) as u8
                + (o.case.platform == case.platform) as u8
                + (o.case.model == case.model) as u8;
            (
                3 - same,
                (o.case.prior_ms().ln() - case.prior_ms().ln()).abs(),
            )
        };
        all.sort_by(|a, b| {
            let (x, y) = (distance(a), distance(b));
            x.0.cmp(&y.0).then(x.1.total_cmp(&y.1))
        });
        all.truncate(n);
        all
    }
}

/// The split-conformal quantile of absolute errors: the ceil((n + 1) q)-th smallest, or the
/// largest when there are too few to reach it.
fn conformal_quantile(errors: &mut [f64], q: f64) -> f64 {
    if errors.is_empty() {
        return f64::INFINITY;
    }
    errors.sort_by(f64::total_cmp);
    let rank = ((errors.len() as f64 + 1.0) * q).ceil() as usize;
    errors[rank.clamp(1, errors.len()) - 1]
}

/// How the evaluation holds data out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// One configuration at a time.
    Configuration,
    /// Every result of one batch size.
    BatchSize,
    /// Every result of one model.
    Model,
    /// Every result of one engine on one platform (its calibration stays known).
    Platform,
}

impl Split {
    pub const ALL: [Split; 4] = [
        Split::Configuration,
        Split::BatchSize,
        Split::Model,
        Split::Platform,
    ];

    fn group(self, c: &Case) -> String {
        match self {
            Split::Configuration => format!(
                "{}|{}|{}|{}|{}|{}",
                c.model, c.engine, c.platform, c.precision, c.work.batch, c.work.seq_len
            ),
            Split::BatchSize => c.work.batch.to_string(),
            Split::Model => c.model.clone(),
            Split::Platform => format!("{}|{}", c.engine, c.platform),
        }
    }
}

/// Held-out figures of one split.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub split: Split,
    /// Groups held out in turn, and the predictions made for them.
    pub folds: usize,
    pub predictions: usize,
    /// Folds skipped because the rest had too little data to fit.
    pub skipped_folds: usize,
    /// Mean absolute percentage error of the p50, %; the shares below. None without
    /// predictions (every fold skipped).
    pub mape: Option<f64>,
    /// Share of predictions within 10% of the measurement.
    pub within_10pct: Option<f64>,
    /// Share of measurements inside their 90% interval.
    pub coverage: Option<f64>,
    /// Among (model, batch, precision) cases measured on several targets: how often the
    /// predicted fastest is the measured fastest, and the mean loss (%) when it is not.
    pub selection_cases: usize,
    pub top1: Option<f64>,
    pub mean_loss_pct: Option<f64>,
}

/// Holds each group of `split` out in turn, fits on the rest, and scores the held-out
/// predictions.
pub fn evaluate(observations: &[Observation], split: Split) -> SplitReport {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, o) in observations.iter().enumerate() {
        groups.entry(split.group(&o.case)).or_default().push(i);
    }
    let mut scored: Vec<(&Observation, Interval)> = Vec::new();
    let mut skipped = 0;
    for held in groups.values() {
        let rest: Vec<Observation> = observations
            .iter()
            .enumerate()
            .filter(|(i, _)| !held.contains(i))
            .map(|(_, o)| o.clone())
            .collect();
        match Predictor::fit(&rest) {
            Ok(p) => {
                for &i in held {
                    scored.push((&observations[i], p.predict(&observations[i].case)));
                }
            }
            Err(_) => skipped += 1,
        }
    }
    let n = scored.len() as f64;
    let some = |v: f64| (!scored.is_empty()).then_some(v);
    let errors: Vec<f64> = scored
        .iter()
        .map(|(o, p)| (p.p50_ms - o.latency_ms).abs() / o.latency_ms)
        .collect();
    let covered = scored
        .iter()
        .filter(|(o, p)| (p.low_ms..=p.high_ms).contains(&o.latency_ms))
        .count();
    // Selection: the held-out predictions of one (model, batch, precision) across targets.
    let mut cases: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (o, p) in &scored {
        let c = &o.case;
        cases
            .entry(format!(
                "{}|{}|{}|{}",
                c.model, c.work.batch, c.work.seq_len, c.precision
            ))
            .or_default()
            .push((p.p50_ms, o.latency_ms));
    }
    let contested: Vec<&Vec<(f64, f64)>> = cases.values().filter(|v| v.len() > 1).collect();
    let mut hits = 0;
    let mut losses = Vec::new();
    for targets in &contested {
        let chosen = targets
            .iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("more than one");
        let best = targets.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
        if chosen.1 <= best {
            hits += 1;
        } else {
            losses.push((chosen.1 / best - 1.0) * 100.0);
        }
    }
    let selection_cases = contested.len();
    SplitReport {
        split,
        folds: groups.len(),
        predictions: scored.len(),
        skipped_folds: skipped,
        mape: some(errors.iter().sum::<f64>() / n * 100.0),
        within_10pct: some(errors.iter().filter(|&&e| e <= 0.1).count() as f64 / n),
        coverage: some(covered as f64 / n),
        selection_cases,
        top1: (selection_cases > 0).then(|| hits as f64 / selection_cases as f64),
        mean_loss_pct: (!losses.is_empty())
            .then(|| losses.iter().sum::<f64>() / losses.len() as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bert(layers: u64) -> Value {
        json!({"model_type": "bert", "hidden_size": 256, "intermediate_size": 1024,
               "num_hidden_layers": layers, "num_attention_heads": 4, "vocab_size": 30522,
               "max_position_embeddings": 512})
    }

    #[test]
    fn costs_follow_the_phases_of_an_iteration() {
        let work = Workload {
            batch: 2,
            seq_len: 16,
            new_tokens: 4,
            audio_seconds: 0.0,
        };
        let fwd = iteration_costs(&bert(4), ModelClass::Bert, false, work, "f32").unwrap();
        assert_eq!(fwd.len(), 1);
        let llama = json!({"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000});
        let gen = iteration_costs(&llama, ModelClass::Llama, true, work, "q8_0").unwrap();
        assert_eq!(gen.len(), 4, "a prefill and three decode steps");
        assert!(gen[0].flops > gen[1].flops);
        assert!(iteration_costs(&json!({}), ModelClass::Detr, false, work, "f32").is_none());
    }

    #[test]
    fn the_affine_stage_recovers_overhead_and_slowdown() {
        let points: Vec<(f64, f64)> = [1.0, 2.0, 4.0, 8.0]
            .iter()
            .map(|&x| (x, 0.5 + 3.0 * x))
            .collect();
        let (a, b) = fit_affine(&points).unwrap();
        assert!((a - 0.5).abs() < 1e-9 && (b - 3.0).abs() < 1e-9, "{a} {b}");
        assert!(
            fit_affine(&[(1.0, 2.0), (1.0, 3.0)]).is_none(),
            "one distinct x"
        );
    }

    #[test]
    fn the_conformal_quantile_is_the_finite_sample_rank() {
        let mut e: Vec<f64> = (1..=9).map(f64::from).collect();
        // ceil(10 x 0.9) = 9th smallest.
        assert_eq!(conformal_quantile(&mut e, 0.9), 9.0);
        let mut few = vec![0.3, 0.1];
        assert_eq!(conformal_quantile(&mut few, 0.9), 0.3);
    }

    /// A learner check on constructed points (never shown to users): when every measurement
    /// is three times its roofline, a held-out size is predicted at three times its roofline.
    #[test]
    fn the_learned_ratio_carries_to_unseen_sizes() {
        let case = |batch: usize, seq_len: usize| {
            let work = Workload {
                batch,
                seq_len,
                new_tokens: 0,
                audio_seconds: 0.0,
            };
            Case {
                model: "bert".into(),
                class: "bert".into(),
                engine: "native".into(),
                platform: "cpu".into(),
                precision: "f32".into(),
                hardware: "test".into(),
                work,
                costs: iteration_costs(&bert(4), ModelClass::Bert, false, work, "f32").unwrap(),
                ceiling: Some(Ceiling {
                    flops_per_s: 5e10,
                    bytes_per_s: 1e10,
                }),
            }
        };
        let mut observations = Vec::new();
        for batch in [1, 2, 4, 8] {
            for seq_len in [16, 32, 64, 128] {
                let c = case(batch, seq_len);
                observations.push(Observation {
                    latency_ms: 3.0 * c.prior_ms(),
                    case: c,
                    result_id: 0,
                });
            }
        }
        let p = Predictor::fit(&observations).unwrap();
        let unseen = case(16, 96);
        let got = p.predict(&unseen);
        let want = 3.0 * unseen.prior_ms();
        assert!((got.p50_ms / want - 1.0).abs() < 0.05, "{got:?} vs {want}");
        assert!(got.low_ms <= got.p50_ms && got.p50_ms <= got.high_ms);
    }

    #[test]
    fn too_little_data_is_a_clear_error() {
        let e = Predictor::fit(&[]).err().unwrap().to_string();
        assert!(e.contains("at least 8"), "{e}");
    }
}
