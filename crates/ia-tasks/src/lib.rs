//! Task pipelines over the engine API: what `ipfs-accelerate run` (and later the server) does
//! with one input. A [`Pipeline`] loads a model once; [`Pipeline::run`] takes a text or a media
//! file and returns the model's task result:
//!
//! - BERT and other encoders: a sentence embedding;
//! - ViT: top-k labels (or an image embedding without a classifier);
//! - CLIP: zero-shot image classification over `labels`, or an image / text embedding;
//! - CLAP: zero-shot audio classification over `labels`, or an audio / text embedding;
//! - DETR: detected objects (label, score, box in image pixels) above a score threshold;
//! - Whisper, Wav2Vec2: a transcript.
//!
//! Preprocessing is ia-preprocess's, so the tensors are the ones transformers would build.

mod input;
pub mod text;

pub use input::Input;
pub use text::TextEncoder;

use ia_engine::{
    Engine, EngineError, Inputs, Outputs, Placement, Session, SessionInfo, SpeechRecognizer,
    TranscribeOptions,
};
use ia_models::sentence_transformers::SentenceEmbedding;
use ia_models::{Model, ModelClass, ModelSource};
use ia_preprocess::audio::Waveform;
use ia_preprocess::image::{ImageProcessor, RgbImage};
use ia_preprocess::PreprocessError;
use serde::Serialize;
use serde_json::Value;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("{0}")]
    Input(String),
}

#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Candidate labels for zero-shot classification.
    pub labels: Vec<String>,
    /// `{}` is replaced by each label; transformers' pipeline default when unset
    /// ("This is a photo of {}." for images, "This is a sound of {}." for audio).
    pub hypothesis_template: Option<String>,
    pub top_k: usize,
    /// Minimum score of a reported detection.
    pub threshold: f32,
    pub transcribe: TranscribeOptions,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            labels: Vec::new(),
            hypothesis_template: None,
            top_k: 5,
            threshold: 0.5,
            transcribe: TranscribeOptions::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub label: String,
    pub score: f32,
    /// [xmin, ymin, xmax, ymax] in pixels of the input image.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskOutput {
    Detections {
        detections: Vec<Detection>,
    },
    Embedding {
        /// What was embedded: "text", "image" or "audio".
        of: String,
        dim: usize,
        /// L2 norm of the raw embedding.
        norm: f32,
        values: Vec<f32>,
    },
    Labels {
        labels: Vec<LabelScore>,
    },
    Transcript {
        text: String,
        tokens: Vec<u32>,
        audio_seconds: f64,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub inference_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    /// Inputs that went through the model together (the timings are the batch's).
    pub batch_size: usize,
    /// Tokens of this input's text as the model saw it (after truncation, special tokens
    /// included); None for media inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<usize>,
    pub output: TaskOutput,
    pub timings: Timings,
}

enum Runner {
    Session(Box<dyn Session>),
    Speech(Box<dyn SpeechRecognizer>),
}

/// A loaded model and what it needs to turn files into inputs.
pub struct Pipeline {
    model: Model,
    runner: Runner,
    /// Text to inputs, for models that read text (None: the checkpoint has no tokenizer.json).
    text: Option<TextEncoder>,
    /// Pooling and normalisation of text embeddings (encoders such as BERT).
    embedding: Option<SentenceEmbedding>,
    pub load_ms: f64,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl Pipeline {
    pub fn load(engine: &dyn Engine, model: Model, at: Placement) -> Result<Self, TaskError> {
        let start = Instant::now();
        let runner = match model.class {
            ModelClass::Whisper | ModelClass::Wav2vec2 => {
                Runner::Speech(engine.load_speech_recognizer(&model, at)?)
            }
            ModelClass::Llama
            | ModelClass::Qwen
            | ModelClass::T5
            | ModelClass::Llava
            | ModelClass::LlavaNext
                if model.generates_text() =>
            {
                return Err(TaskError::Input(
                    "text generation models run with `ipfs-accelerate generate` (or `run --prompt`)"
                        .into(),
                ))
            }
            _ => Runner::Session(engine.load(&model, at)?),
        };
        let (text, embedding) = text_pipeline(&model.source, model.class)?;
        Ok(Self {
            model,
            runner,
            text,
            embedding,
            load_ms: ms(start),
        })
    }

    pub fn info(&self) -> &SessionInfo {
        match &self.runner {
            Runner::Session(s) => s.info(),
            Runner::Speech(s) => s.info(),
        }
    }

    pub fn task(&self) -> &str {
        self.model.task
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn run(&mut self, input: &Input, opts: &TaskOptions) -> Result<TaskResult, TaskError> {
        let wrong = |takes: &str| {
            TaskError::Input(format!(
                "{} ({}) takes {takes}; got {}",
                self.model.class.as_str(),
                self.model.task,
                input.describe()
            ))
        };
        let t0 = Instant::now();
        match (&self.model.class, input) {
            (ModelClass::Whisper | ModelClass::Wav2vec2, Input::Audio(path)) => {
                let Runner::Speech(asr) = &mut self.runner else {
                    unreachable!("speech classes load a recognizer")
                };
                let wav = Waveform::open(path)?;
                let samples = wav.resampled(asr.sample_rate())?.samples;
                let config = self.model.source.config();
                let beams = opts.transcribe.num_beams.max(1);
                let work = ia_models::footprint::Workload {
                    batch: 1,
                    positions: ia_engine::memory::audio_positions(config, samples.len()),
                    cached_positions: config
                        .get("max_target_positions")
                        .and_then(Value::as_u64)
                        .map_or(0, |p| p as usize),
                    beams,
                };
                ia_engine::memory::check_fits(&self.model.source, asr.info().precision, work)?;
                let preprocess_ms = ms(t0);
                let t1 = Instant::now();
                let t = asr.transcribe(&samples, &opts.transcribe)?;
                Ok(self.result(
                    TaskOutput::Transcript {
                        text: t.text.trim().to_string(),
                        tokens: t.tokens,
                        audio_seconds: wav.seconds(),
                    },
                    preprocess_ms,
                    ms(t1),
                ))
            }
            (ModelClass::Whisper | ModelClass::Wav2vec2, _) => Err(wrong("a WAV audio file")),
            (ModelClass::Clap, Input::Audio(path)) => {
                let rate = ia_preprocess::audio::ClapFrontEnd::from_config(
                    &self
                        .model
                        .source
                        .preprocessor_config()
                        .cloned()
                        .unwrap_or_default(),
                )?
                .sampling_rate;
                let wav = Waveform::open(path)?.resampled(rate)?;
                let inputs = Inputs::Audio {
                    batch: 1,
                    sample_rate: rate,
                    samples: wav.samples,
                };
                if !opts.labels.is_empty() {
                    return self.zero_shot(
                        inputs,
                        "audio_embeds",
                        "This is a sound of {}.",
                        opts,
                        t0,
                    );
                }
                let preprocess_ms = ms(t0);
                let t1 = Instant::now();
                let out = self.forward(&inputs)?;
                Ok(self.result(embedding("audio", &out)?, preprocess_ms, ms(t1)))
            }
            (ModelClass::Vit | ModelClass::Clip, Input::Image(path)) => {
                let image = RgbImage::open(path)?;
                let pixels = self.image_processor()?.process(&[image])?;
                let inputs = Inputs::Image {
                    shape: pixels.shape,
                    pixel_values: pixels.pixel_values,
                };
                if self.model.class == ModelClass::Clip && !opts.labels.is_empty() {
                    return self.zero_shot(
                        inputs,
                        "image_embeds",
                        "This is a photo of {}.",
                        opts,
                        t0,
                    );
                }
                let preprocess_ms = ms(t0);
                let t1 = Instant::now();
                let out = self.forward(&inputs)?;
                let inference_ms = ms(t1);
                let output = if let Some(logits) = out.get("logits") {
                    let logits = logits.to_f32_vec()?;
                    labels(
                        softmax(&logits),
                        &id2label(self.model.source.config()),
                        opts.top_k,
                    )
                } else {
                    embedding("image", &out)?
                };
                Ok(self.result(output, preprocess_ms, inference_ms))
            }
            (ModelClass::Detr, Input::Image(path)) => {
                let image = RgbImage::open(path)?;
                let size = (image.width as f32, image.height as f32);
                let pixels = self.image_processor()?.process(&[image])?;
                let inputs = Inputs::Image {
                    shape: pixels.shape,
                    pixel_values: pixels.pixel_values,
                };
                let preprocess_ms = ms(t0);
                let t1 = Instant::now();
                let out = self.forward(&inputs)?;
                let inference_ms = ms(t1);
                let logits = out.get("logits").ok_or(missing("logits"))?;
                let classes = logits.shape().last().copied().unwrap_or(1);
                let detections = post_process_detection(
                    &logits.to_f32_vec()?,
                    &out.get("pred_boxes")
                        .ok_or(missing("pred_boxes"))?
                        .to_f32_vec()?,
                    classes,
                    size,
                    opts.threshold,
                    &id2label(self.model.source.config()),
                );
                Ok(self.result(
                    TaskOutput::Detections { detections },
                    preprocess_ms,
                    inference_ms,
                ))
            }
            (ModelClass::Xclip, Input::Video(path)) => self.classify_video(path, opts, t0),
            (ModelClass::Xclip, _) => Err(wrong(
                "a video (a folder of frames or a video file), scored against --labels",
            )),
            (ModelClass::Vit | ModelClass::Detr, _) => Err(wrong("an image file (PNG or JPEG)")),
            (ModelClass::Bert, Input::Text(text)) => {
                Ok(self.embed_texts(std::slice::from_ref(text), t0)?.remove(0))
            }
            (ModelClass::Clip | ModelClass::Clap, Input::Text(text)) => {
                let inputs = self.tokenize_all(std::slice::from_ref(text))?;
                let preprocess_ms = ms(t0);
                let t1 = Instant::now();
                let out = self.forward(&inputs)?;
                Ok(self.result(embedding("text", &out)?, preprocess_ms, ms(t1)))
            }
            (ModelClass::Bert, _) => Err(wrong("text")),
            (ModelClass::Clip, _) => Err(wrong("an image file or text")),
            (ModelClass::Clap, _) => Err(wrong("a WAV audio file or text")),
            (other, _) => Err(TaskError::Input(format!(
                "`run` has no pipeline for {} models yet",
                other.as_str()
            ))),
        }
    }

    fn result(&self, output: TaskOutput, preprocess_ms: f64, inference_ms: f64) -> TaskResult {
        TaskResult {
            task: self.model.task.to_string(),
            batch_size: 1,
            input_tokens: None,
            output,
            timings: Timings {
                preprocess_ms,
                inference_ms,
            },
        }
    }

    /// One forward pass, after checking that its activations fit in memory.
    fn forward(&mut self, inputs: &Inputs) -> Result<Outputs, TaskError> {
        let work = ia_engine::memory::forward_workload(&self.model.source, inputs);
        ia_engine::memory::check_fits(&self.model.source, self.info().precision, work)?;
        Ok(self.session()?.run(inputs)?)
    }

    fn session(&mut self) -> Result<&mut Box<dyn Session>, TaskError> {
        match &mut self.runner {
            Runner::Session(s) => Ok(s),
            Runner::Speech(_) => Err(TaskError::Input("not a forward-pass model".into())),
        }
    }

    /// The checkpoint's preprocessor_config.json, or the processor transformers would default
    /// to for this class at the model's image size.
    fn image_processor(&self) -> Result<ImageProcessor, TaskError> {
        Ok(ia_engine::inputs::image_processor(&self.model)?)
    }

    fn tokenize_all(&self, texts: &[String]) -> Result<Inputs, TaskError> {
        self.text
            .as_ref()
            .ok_or_else(|| {
                TaskError::Input("the checkpoint has no tokenizer.json to read text with".into())
            })?
            .encode(texts)
    }

    /// Several inputs: the texts of a text-embedding model go through the model as one padded
    /// batch (as sentence-transformers' `encode` does); anything else runs one input at a time.
    /// Results come back in input order.
    pub fn run_batch(
        &mut self,
        inputs: &[Input],
        opts: &TaskOptions,
    ) -> Result<Vec<TaskResult>, TaskError> {
        let texts: Option<Vec<String>> = inputs
            .iter()
            .map(|i| match i {
                Input::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        match texts {
            Some(texts) if self.model.class == ModelClass::Bert && !texts.is_empty() => {
                self.embed_texts(&texts, Instant::now())
            }
            _ => inputs.iter().map(|i| self.run(i, opts)).collect(),
        }
    }

    /// Sentence embeddings of `texts` in one batch: the checkpoint's tokenizer, the model's
    /// `last_hidden_state`, then sentence-transformers' pooling and normalisation.
    fn embed_texts(&mut self, texts: &[String], t0: Instant) -> Result<Vec<TaskResult>, TaskError> {
        let inputs = self.tokenize_all(texts)?;
        let preprocess_ms = ms(t0);
        let t1 = Instant::now();
        let out = self.forward(&inputs)?;
        let inference_ms = ms(t1);
        let hidden = out
            .get("last_hidden_state")
            .ok_or(missing("last_hidden_state"))?;
        let Inputs::Text {
            attention_mask,
            seq_len,
            ..
        } = &inputs
        else {
            unreachable!("text encodes to text inputs")
        };
        let tokens: Vec<usize> = attention_mask
            .chunks((*seq_len).max(1))
            .map(|row| row.iter().filter(|&&m| m != 0).count())
            .collect();
        let embedding = self
            .embedding
            .as_ref()
            .ok_or_else(|| TaskError::Input("no embedding pipeline for this model".into()))?;
        let rows = text::pool(
            embedding,
            &hidden.to_f32_vec()?,
            &hidden.shape(),
            attention_mask,
        )?;
        let batch = rows.len();
        Ok(rows
            .into_iter()
            .zip(tokens)
            .map(|(values, tokens)| TaskResult {
                batch_size: batch,
                input_tokens: Some(tokens),
                ..self.result(embedding_of("text", values), preprocess_ms, inference_ms)
            })
            .collect())
    }

    /// transformers' zero-shot image / audio classification: one text per label from the template,
    /// softmax over logit_scale * cosine similarity.
    /// X-CLIP: the clip's frames sampled and processed as transformers' processors do; with
    /// labels, the softmax of logits_per_video over them (the labels as written unless
    /// --hypothesis-template says otherwise), else the video embedding.
    fn classify_video(
        &mut self,
        path: &std::path::Path,
        opts: &TaskOptions,
        t0: Instant,
    ) -> Result<TaskResult, TaskError> {
        let frames = ia_models::defaults::video_frames(self.model.source.config());
        let clip = ia_preprocess::video::open(path, frames)?;
        let pixels = self.image_processor()?.process(&clip.frames)?;
        let [_, c, h, w] = pixels.shape;
        let texts = if opts.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.tokenize_labels(opts, "{}")?))
        };
        let scored = texts.is_some();
        let inputs = Inputs::Video {
            shape: [1, frames, c, h, w],
            pixel_values: pixels.pixel_values,
            texts,
        };
        let preprocess_ms = ms(t0);
        let t1 = Instant::now();
        let out = self.forward(&inputs)?;
        let inference_ms = ms(t1);
        let output = if scored {
            let logits = out
                .get("logits_per_video")
                .ok_or(missing("logits_per_video"))?
                .to_f32_vec()?;
            scored_labels(&logits, opts)
        } else {
            embedding("video", &out)?
        };
        Ok(self.result(output, preprocess_ms, inference_ms))
    }

    fn zero_shot(
        &mut self,
        media: Inputs,
        embeds: &str,
        default_template: &str,
        opts: &TaskOptions,
        t0: Instant,
    ) -> Result<TaskResult, TaskError> {
        let text = self.tokenize_labels(opts, default_template)?;
        let preprocess_ms = ms(t0);
        let t1 = Instant::now();
        let img = self.forward(&media)?;
        let txt = self.forward(&text)?;
        let inference_ms = ms(t1);
        let i = unit(&img.get(embeds).ok_or(missing(embeds))?.to_f32_vec()?);
        let t = txt
            .get("text_embeds")
            .ok_or(missing("text_embeds"))?
            .to_f32_vec()?;
        let scale = img
            .get("logit_scale")
            .ok_or(missing("logit_scale"))?
            .to_f32_vec()?[0];
        let logits: Vec<f32> = t
            .chunks(i.len())
            .map(|row| scale * unit(row).iter().zip(&i).map(|(a, b)| a * b).sum::<f32>())
            .collect();
        Ok(self.result(scored_labels(&logits, opts), preprocess_ms, inference_ms))
    }

    /// The labels as texts to score (the hypothesis template, else `default_template`,
    /// with `{}` as the label), tokenised as one batch.
    fn tokenize_labels(
        &self,
        opts: &TaskOptions,
        default_template: &str,
    ) -> Result<Inputs, TaskError> {
        let template = opts
            .hypothesis_template
            .as_deref()
            .unwrap_or(default_template);
        let texts: Vec<String> = opts
            .labels
            .iter()
            .map(|l| template.replace("{}", l))
            .collect();
        self.tokenize_all(&texts)
    }
}

/// Zero-shot scores: the softmax of the labels' logits, every label listed.
fn scored_labels(logits: &[f32], opts: &TaskOptions) -> TaskOutput {
    labels(
        softmax(logits),
        &opts.labels,
        opts.top_k.max(opts.labels.len()),
    )
}

/// transformers' `post_process_object_detection`: softmax over classes, the best real class
/// per query (the last class is "no object"), boxes from (cx, cy, w, h) to corners scaled to
/// the image, kept when the score exceeds the threshold; in query order.
pub fn post_process_detection(
    logits: &[f32],
    boxes: &[f32],
    classes: usize,
    (width, height): (f32, f32),
    threshold: f32,
    names: &[String],
) -> Vec<Detection> {
    logits
        .chunks(classes)
        .zip(boxes.chunks(4))
        .filter_map(|(l, b)| {
            let p = softmax(l);
            let (label, &score) = p[..classes - 1].iter().enumerate().fold(
                (0, &f32::NEG_INFINITY),
                |best, (i, s)| if *s > *best.1 { (i, s) } else { best },
            );
            (score > threshold).then(|| Detection {
                label: names
                    .get(label)
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{label}")),
                score,
                bbox: [
                    (b[0] - 0.5 * b[2]) * width,
                    (b[1] - 0.5 * b[3]) * height,
                    (b[0] + 0.5 * b[2]) * width,
                    (b[1] + 0.5 * b[3]) * height,
                ],
            })
        })
        .collect()
}

fn missing(name: &str) -> EngineError {
    EngineError::Runtime(format!("the session returned no {name}"))
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn id2label(config: &Value) -> Vec<String> {
    let map = config.get("id2label").and_then(Value::as_object);
    let n = map.map_or(0, |m| m.len());
    (0..n)
        .map(|i| {
            map.and_then(|m| m.get(&i.to_string()))
                .and_then(Value::as_str)
                .map_or_else(|| format!("LABEL_{i}"), str::to_string)
        })
        .collect()
}

fn labels(scores: Vec<f32>, names: &[String], top_k: usize) -> TaskOutput {
    let mut l: Vec<LabelScore> = scores
        .into_iter()
        .enumerate()
        .map(|(i, score)| LabelScore {
            label: names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
            score,
        })
        .collect();
    l.sort_by(|a, b| b.score.total_cmp(&a.score));
    l.truncate(top_k.max(1));
    TaskOutput::Labels { labels: l }
}

/// The first output that is an embedding: pooled / projected when the model has one.
fn embedding(of: &str, out: &Outputs) -> Result<TaskOutput, TaskError> {
    let t = [
        "video_embeds",
        "image_embeds",
        "audio_embeds",
        "text_embeds",
        "mean_pooled",
        "pooler_output",
    ]
    .iter()
    .find_map(|n| out.get(n))
    .ok_or_else(|| missing("embedding"))?;
    Ok(embedding_of(of, t.to_f32_vec()?))
}

fn embedding_of(of: &str, values: Vec<f32>) -> TaskOutput {
    TaskOutput::Embedding {
        of: of.into(),
        dim: values.len(),
        norm: values.iter().map(|x| x * x).sum::<f32>().sqrt(),
        values,
    }
}

/// The tokenizer set-up and, for encoders, the embedding pipeline of a checkpoint's text side:
/// sentence-transformers' max_seq_length, pooling and normalisation for BERT-class models;
/// the text tower's limit for CLIP, CLAP and X-CLIP. Never more tokens than the model has positions
/// for. A random-init config has no tokenizer and reads no text.
fn text_pipeline(
    source: &ModelSource,
    class: ModelClass,
) -> Result<(Option<TextEncoder>, Option<SentenceEmbedding>), TaskError> {
    let ModelSource::Checkpoint(ckpt) = source else {
        return Ok((None, None));
    };
    let Some(path) = ckpt.tokenizer_json.as_deref().filter(|_| {
        matches!(
            class,
            ModelClass::Bert | ModelClass::Clip | ModelClass::Clap | ModelClass::Xclip
        )
    }) else {
        return Ok((None, None));
    };
    let invalid = |e: ia_models::CheckpointError| EngineError::InvalidModel(e.to_string());
    let (max, lower_case, embedding) = if class == ModelClass::Bert {
        let st = ckpt.sentence_embedding().map_err(invalid)?;
        (st.max_seq_length, st.do_lower_case, Some(st))
    } else {
        (ckpt.text_max_length().map_err(invalid)?, false, None)
    };
    let positions =
        ia_engine::inputs::max_text_positions(&ckpt.config).map(|(_, p)| p.min(1 << 20) as usize);
    let max_length = match (max, positions) {
        (Some(m), Some(p)) => m.min(p),
        (m, p) => m.or(p).unwrap_or(512),
    }
    .max(1);
    let config = ckpt.config.get("text_config").unwrap_or(&ckpt.config);
    let encoder = TextEncoder::new(path, config, max_length, lower_case)?;
    Ok((Some(encoder), embedding))
}
