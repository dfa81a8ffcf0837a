//! Input generators, one per modality: what the benchmark feeds a session.
//!
//! Text inputs are real token ids from the checkpoint's own tokenizer when it has one (a fixed
//! English passage, truncated or repeated to the requested length); images are a fixed
//! synthetic picture normalised with the checkpoint's image mean and std.

use crate::EngineError;
use ia_models::cost::ImageWork;
use ia_models::{Modality, Model, ModelClass, ModelSource};
use ia_preprocess::image::{ImageProcessor, RgbImage};
use serde_json::Value;

/// The shape of one benchmark input.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    pub batch_size: usize,
    /// Tokens per sequence (text models).
    pub seq_len: usize,
    /// Clip length for audio models, seconds.
    pub audio_seconds: f32,
}

impl InputSpec {
    pub fn new(batch_size: usize, seq_len: usize) -> Self {
        Self {
            batch_size,
            seq_len,
            audio_seconds: 5.0,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Inputs {
    Text {
        batch: usize,
        seq_len: usize,
        input_ids: Vec<u32>,
        attention_mask: Vec<u32>,
        token_type_ids: Vec<u32>,
    },
    Image {
        /// NCHW, row-major.
        shape: [usize; 4],
        pixel_values: Vec<f32>,
    },
    /// Mono waveforms, `batch` rows of equal length, in [-1, 1].
    Audio {
        batch: usize,
        sample_rate: u32,
        samples: Vec<f32>,
    },
    /// Clips of processed frames: (batch, frames, channels, height, width), row-major.
    /// `texts` (a `Text` batch) are labels to score the clips against: X-CLIP's text
    /// embeddings depend on the clip, so one forward pass takes both.
    Video {
        shape: [usize; 5],
        pixel_values: Vec<f32>,
        texts: Option<Box<Inputs>>,
    },
}

impl Inputs {
    pub fn batch_size(&self) -> usize {
        match self {
            Inputs::Text { batch, .. } => *batch,
            Inputs::Image { shape, .. } => shape[0],
            Inputs::Audio { batch, .. } => *batch,
            Inputs::Video { shape, .. } => shape[0],
        }
    }

    /// A text batch from token-id rows of any lengths: right-padded with `pad_id`, masked.
    pub fn from_token_rows(rows: &[Vec<u32>], pad_id: u32) -> Result<Self, EngineError> {
        let seq_len = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() || seq_len == 0 {
            return Err(EngineError::InvalidInput("no tokens to run".into()));
        }
        let mut input_ids = Vec::with_capacity(rows.len() * seq_len);
        let mut attention_mask = Vec::with_capacity(rows.len() * seq_len);
        for r in rows {
            input_ids.extend(
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, seq_len - r.len())),
            );
            attention_mask.extend((0..seq_len).map(|i| u32::from(i < r.len())));
        }
        Ok(Inputs::Text {
            batch: rows.len(),
            seq_len,
            token_type_ids: vec![0; input_ids.len()],
            input_ids,
            attention_mask,
        })
    }

    /// The input an exported graph (ONNX, OpenVINO IR) declares as `name`, in the element type
    /// such exports take: token ids, masks and token types as int64, pixels as float32. Inputs
    /// that need the model's feature extraction (audio) come from [`crate::features::GraphFeeds`].
    pub fn graph_input(&self, name: &str) -> Result<GraphInput<'_>, EngineError> {
        match (name, self) {
            (
                "input_ids" | "attention_mask" | "token_type_ids",
                Inputs::Text {
                    batch,
                    seq_len,
                    input_ids,
                    attention_mask,
                    token_type_ids,
                },
            ) => {
                let src = match name {
                    "input_ids" => input_ids,
                    "attention_mask" => attention_mask,
                    _ => token_type_ids,
                };
                Ok(GraphInput::Int64 {
                    shape: vec![*batch, *seq_len],
                    data: src.iter().map(|&v| i64::from(v)).collect(),
                })
            }
            (
                "pixel_values",
                Inputs::Image {
                    shape,
                    pixel_values,
                },
            ) => Ok(GraphInput::Float32 {
                shape: shape.to_vec(),
                data: std::borrow::Cow::Borrowed(pixel_values),
            }),
            // Every image of a batch has the batch's size, so no pixel is padding (DETR).
            ("pixel_mask", Inputs::Image { shape, .. }) => Ok(GraphInput::Int64 {
                shape: vec![shape[0], shape[2], shape[3]],
                data: vec![1; shape[0] * shape[2] * shape[3]],
            }),
            (other, _) => Err(EngineError::InvalidInput(format!(
                "the model wants input '{other}', which these inputs do not provide"
            ))),
        }
    }

    /// The waveforms of an audio batch, one slice per row; an empty or ragged batch is an
    /// input error rather than a panic further down.
    pub fn audio_rows(&self) -> Result<Vec<&[f32]>, EngineError> {
        match self {
            Inputs::Audio { batch, samples, .. } => {
                if *batch == 0 || samples.is_empty() || samples.len() % batch != 0 {
                    return Err(EngineError::InvalidInput(format!(
                        "an audio batch of {batch} needs {batch} equal, non-empty waveforms ({} samples given)",
                        samples.len()
                    )));
                }
                Ok(samples.chunks(samples.len() / batch).collect())
            }
            _ => Err(EngineError::InvalidInput("not an audio input".into())),
        }
    }

    /// Real (non-padding) tokens in the batch, for tokens/s.
    pub fn token_count(&self) -> Option<usize> {
        match self {
            Inputs::Text { attention_mask, .. } => {
                Some(attention_mask.iter().filter(|&&m| m != 0).count())
            }
            Inputs::Image { .. } | Inputs::Audio { .. } | Inputs::Video { .. } => None,
        }
    }
}

/// One named input of an exported graph, see [`Inputs::graph_input`].
#[derive(Debug, Clone)]
pub enum GraphInput<'a> {
    Int64 {
        shape: Vec<usize>,
        data: Vec<i64>,
    },
    /// Borrowed from the inputs, or made from them by a feature extractor.
    Float32 {
        shape: Vec<usize>,
        data: std::borrow::Cow<'a, [f32]>,
    },
    /// Flags (CLAP's `is_longer`).
    Bool {
        shape: Vec<usize>,
        data: Vec<bool>,
    },
}

/// The passage text inputs are cut from: plain English, so a real tokenizer produces the
/// token-length distribution it would on real text.
pub const SAMPLE_TEXT: &str = "The quick brown fox jumps over the lazy dog. Benchmarks measure \
what a machine really does with a model: how long it takes to load, how long the first request \
waits, and how many requests per second it sustains once it is warm. Hardware differs in memory \
bandwidth, vector units and caches, so the same network can be fast on one computer and slow on \
another. Careful measurement repeats each run many times and reports the spread, not just the mean.";

/// Benchmark inputs of `modality` for `model` (its own modality, or text for a generation
/// prompt or a text tower), `spec.batch_size` rows.
pub fn generate(model: &Model, modality: Modality, spec: InputSpec) -> Result<Inputs, EngineError> {
    let source = &model.source;
    if !(1..=MAX_BATCH).contains(&spec.batch_size) {
        return Err(EngineError::InvalidInput(format!(
            "batch size {} is outside 1..={MAX_BATCH}",
            spec.batch_size
        )));
    }
    match modality {
        Modality::Text => text_inputs(source, spec),
        Modality::Vision => image_inputs(model, spec.batch_size),
        Modality::Audio => audio_inputs(source.config(), source.preprocessor_config(), spec),
        Modality::Multimodal if model.class == ModelClass::Xclip => {
            video_inputs(model, spec.batch_size)
        }
        // Dual encoders (CLIP) are benchmarked on their image tower.
        Modality::Multimodal if source.config().get("vision_config").is_some() => {
            image_inputs(model, spec.batch_size)
        }
        Modality::Multimodal => Err(EngineError::Unsupported(
            "no input generator for this multimodal model yet".into(),
        )),
    }
}

fn text_inputs(source: &ModelSource, spec: InputSpec) -> Result<Inputs, EngineError> {
    if spec.seq_len == 0 {
        return Err(EngineError::InvalidInput(
            "sequence length must be at least 1".into(),
        ));
    }
    if spec.seq_len > MAX_SEQ_LEN {
        return Err(EngineError::InvalidInput(format!(
            "sequence length {} is outside 1..={MAX_SEQ_LEN}",
            spec.seq_len
        )));
    }
    let config = source.config();
    if let Some((field, max)) = max_text_positions(config) {
        if spec.seq_len as u64 > max {
            return Err(EngineError::InvalidInput(format!(
                "sequence length {} exceeds the model's {field} {max}",
                spec.seq_len
            )));
        }
    }
    let ids: Vec<u32> = match source.tokenizer_json() {
        Some(path) => tokenize_to_length(path, spec.seq_len)?,
        None => {
            // No tokenizer (random-weight model from a config): seeded ids over the vocabulary.
            let vocab = vocab_size(config).filter(|&v| v > 0).ok_or_else(|| {
                EngineError::InvalidModel("config has no positive vocab_size".into())
            })?;
            seeded_ids(&mut SplitMix64::new(0x5eed), vocab, spec.seq_len)
        }
    };
    check_token_ids(config, &ids)?;
    let batch = spec.batch_size;
    crate::memory::ensure_allocatable(
        (batch as u64)
            .saturating_mul(spec.seq_len as u64)
            .saturating_mul(12),
        "the token batch",
    )?;
    Ok(Inputs::Text {
        batch,
        seq_len: spec.seq_len,
        input_ids: ids.repeat(batch),
        attention_mask: vec![1; batch * spec.seq_len],
        token_type_ids: vec![0; batch * spec.seq_len],
    })
}

/// `len` seeded token ids over a vocabulary of `vocab`: the text of a random-weight model
/// that has no tokenizer.
fn seeded_ids(rng: &mut SplitMix64, vocab: u64, len: usize) -> Vec<u32> {
    (0..len).map(|_| (rng.next_u64() % vocab) as u32).collect()
}

/// Encodes the sample passage (repeated as needed) and cuts it to exactly `len` tokens, keeping
/// the tokenizer's special tokens at both ends.
fn tokenize_to_length(path: &std::path::Path, len: usize) -> Result<Vec<u32>, EngineError> {
    let tok = crate::tokenizer::open(path)?;
    let encode = |repeats: usize| -> Result<Vec<u32>, EngineError> {
        let text = vec![SAMPLE_TEXT; repeats].join(" ");
        Ok(tok
            .encode(text.as_str(), true)
            .map_err(|e| EngineError::Runtime(format!("tokenizer failed: {e}")))?
            .get_ids()
            .to_vec())
    };
    let once = encode(1)?.len();
    if once == 0 {
        return Err(EngineError::InvalidModel(format!(
            "the tokenizer {} produces no token ids for English text",
            path.display()
        )));
    }
    // Enough repeats for `len` tokens at the rate one passage gives; more when short.
    let mut repeats = len.div_ceil(once).max(1);
    let mut previous = 0;
    loop {
        if repeats.saturating_mul(SAMPLE_TEXT.len()) > MAX_SAMPLE_BYTES {
            return Err(EngineError::InvalidInput(format!(
                "{len} tokens need more than {} MiB of sample text with this tokenizer",
                MAX_SAMPLE_BYTES >> 20
            )));
        }
        let ids = encode(repeats)?;
        if ids.len() >= len {
            let mut out = ids[..len].to_vec();
            if len >= 2 {
                // Keep the closing special token (e.g. [SEP]) the model was trained to see.
                out[len - 1] = *ids.last().expect("non-empty");
            }
            return Ok(out);
        }
        if ids.len() <= previous {
            return Err(EngineError::InvalidModel(format!(
                "the tokenizer {} stops producing ids at {} tokens",
                path.display(),
                ids.len()
            )));
        }
        previous = ids.len();
        repeats = repeats.saturating_mul(2);
    }
}

/// The most sample text tokenised for one input (64 MiB).
const MAX_SAMPLE_BYTES: usize = 64 << 20;

/// Token ids a tokenizer produced must index the model's embedding table (a tokenizer from
/// another checkpoint can produce ids past its vocabulary).
pub fn check_token_ids(config: &Value, ids: &[u32]) -> Result<(), EngineError> {
    if let Some(vocab) = vocab_size(config) {
        if let Some(&id) = ids.iter().find(|&&id| u64::from(id) >= vocab) {
            return Err(EngineError::InvalidModel(format!(
                "the tokenizer produces token id {id}, outside the model's vocabulary (vocab_size {vocab})"
            )));
        }
    }
    Ok(())
}

/// The vocabulary's size: the config's, or its text model's (multimodal configs).
fn vocab_size(config: &Value) -> Option<u64> {
    config
        .get("vocab_size")
        .or_else(|| config.get("text_config")?.get("vocab_size"))
        .and_then(Value::as_u64)
}

/// The largest batch any input generator makes.
pub const MAX_BATCH: usize = 1 << 16;

/// The longest sequence any input generator makes (2^20 tokens).
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// The positions a text model was built for and the field that says so: max_position_embeddings
/// or n_positions (of the text tower for two-tower configs); None for relative-position models
/// such as T5.
pub fn max_text_positions(config: &Value) -> Option<(&'static str, u64)> {
    [Some(config), config.get("text_config")]
        .into_iter()
        .flatten()
        .find_map(|c| {
            ["max_position_embeddings", "n_positions"]
                .into_iter()
                .find_map(|k| c.get(k).and_then(Value::as_u64).map(|v| (k, v)))
        })
}

/// The image processor of a model, the one `run` and the benchmark inputs both use: the
/// checkpoint's preprocessor_config.json, or transformers' defaults for the class at the
/// model's image size.
pub fn image_processor(model: &Model) -> Result<ImageProcessor, EngineError> {
    let (source, class) = (&model.source, model.class);
    let config = source.config();
    let size = config
        .get("vision_config")
        .unwrap_or(config)
        .get("image_size")
        .cloned()
        .unwrap_or(Value::from(224));
    let default = match class {
        ModelClass::Detr => serde_json::json!({"image_processor_type": "DetrImageProcessor"}),
        // LLaVA's vision tower is CLIP's, and so is its image processor.
        // microsoft/xclip-base-patch32's preprocessor_config.json.
        ModelClass::Xclip => serde_json::json!({
            "feature_extractor_type": "VideoMAEFeatureExtractor",
            "size": size, "crop_size": size, "resample": 2,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]
        }),
        ModelClass::Clip | ModelClass::Llava => serde_json::json!({
            "image_processor_type": "CLIPImageProcessor",
            "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}
        }),
        // Qwen2-VL-2B-Instruct's preprocessor_config.json (Qwen3-VL-2B-Instruct's: a larger
        // pixel budget, mean and std 0.5), at the model's patch layout.
        ModelClass::Qwen => {
            let v = config.get("vision_config").unwrap_or(config);
            let mut processor = serde_json::json!({
                "image_processor_type": "Qwen2VLImageProcessor",
                "min_pixels": 3136, "max_pixels": 12845056,
                "patch_size": v.get("patch_size").cloned().unwrap_or(Value::from(14)),
                "merge_size": v.get("spatial_merge_size").cloned().unwrap_or(Value::from(2)),
                "temporal_patch_size": v.get("temporal_patch_size").cloned().unwrap_or(Value::from(2))
            });
            if config.get("model_type").and_then(Value::as_str) == Some("qwen3_vl") {
                processor["min_pixels"] = 65536.into();
                processor["max_pixels"] = 16777216.into();
                processor["image_mean"] = serde_json::json!([0.5, 0.5, 0.5]);
                processor["image_std"] = serde_json::json!([0.5, 0.5, 0.5]);
            }
            processor
        }
        ModelClass::LlavaNext => serde_json::json!({
            "image_processor_type": "LlavaNextImageProcessor",
            "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size},
            "image_grid_pinpoints": config.get("image_grid_pinpoints")
        }),
        _ => serde_json::json!({
            "image_processor_type": "ViTImageProcessor",
            "size": {"height": size, "width": size}
        }),
    };
    ImageProcessor::from_config(source.preprocessor_config().unwrap_or(&default))
        .map_err(|e| EngineError::InvalidModel(e.to_string()))
}

/// Side of the square test picture: the processors resize it as they would a photo (DETR's
/// shortest edge, ViT's fixed size, CLIP's resize and crop).
const TEST_PICTURE_SIDE: usize = 512;

/// The test picture: smooth gradients plus a little noise, structure a vision model can
/// respond to.
fn test_picture() -> Result<RgbImage, EngineError> {
    let side = TEST_PICTURE_SIDE;
    let mut rng = SplitMix64::new(0x1a6e);
    let mut data = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            for c in 0..3 {
                let fx = x as f32 / side as f32;
                let fy = y as f32 / side as f32;
                let v = 0.5
                    + 0.3 * ((fx * 6.0 + c as f32).sin() * (fy * 4.0).cos())
                    + 0.1 * (rng.next_f32() - 0.5);
                data.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
    }
    RgbImage::new(side, side, data).map_err(|e| EngineError::InvalidInput(e.to_string()))
}

/// The labels of transformers' X-CLIP example, which bench scores its clips against.
pub const VIDEO_LABELS: [&str; 3] = ["playing sports", "eating spaghetti", "go shopping"];

/// X-CLIP: `batch` clips of the model's frame count, each frame a window of the test picture
/// panned 8 pixels further (so frames differ, as in a video), through the model's image
/// processor; with [`VIDEO_LABELS`] to score (seeded ids over the vocabulary when a
/// random-weight model has no tokenizer).
fn video_inputs(model: &Model, batch: usize) -> Result<Inputs, EngineError> {
    let frames = ia_models::defaults::video_frames(model.source.config()).clamp(1, 64);
    let picture = test_picture()?;
    let side = TEST_PICTURE_SIDE;
    let window = side - 8 * frames;
    let clip = (0..frames)
        .map(|f| {
            let data = (0..window)
                .flat_map(|y| {
                    let row = (y * side + 8 * f) * 3;
                    picture.data[row..row + window * 3].iter().copied()
                })
                .collect();
            RgbImage::new(window, window, data)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::InvalidInput(e.to_string()))?;
    let one = image_processor(model)?
        .process(&clip)
        .map_err(|e| EngineError::InvalidModel(e.to_string()))?;
    let [_, channels, height, width] = one.shape;
    crate::memory::ensure_allocatable(
        (batch as u64)
            .saturating_mul(one.pixel_values.len() as u64)
            .saturating_mul(4),
        "the video batch",
    )?;
    let rows: Vec<Vec<u32>> = match model.source.tokenizer_json() {
        Some(path) => {
            let tok = crate::tokenizer::open(path)?;
            VIDEO_LABELS
                .iter()
                .map(|l| {
                    tok.encode(*l, true)
                        .map(|e| e.get_ids().to_vec())
                        .map_err(|e| EngineError::Runtime(format!("tokenizer failed: {e}")))
                })
                .collect::<Result<_, _>>()?
        }
        None => {
            let vocab = model
                .source
                .config()
                .pointer("/text_config/vocab_size")
                .and_then(Value::as_u64)
                .unwrap_or(49408)
                .max(1);
            let mut rng = SplitMix64::new(0x5eed);
            VIDEO_LABELS
                .iter()
                .map(|_| seeded_ids(&mut rng, vocab, 8))
                .collect()
        }
    };
    Ok(Inputs::Video {
        shape: [batch, frames, channels, height, width],
        pixel_values: one.pixel_values.repeat(batch),
        texts: Some(Box::new(Inputs::from_token_rows(&rows, 0)?)),
    })
}

/// `batch` copies of the test picture through the model's own image processor, for an
/// image-text generator.
pub fn test_images(model: &Model, batch: usize) -> Result<crate::ImageBatch, EngineError> {
    let (shape, pixel_values) = processed_test_pictures(model, batch)?;
    Ok(crate::ImageBatch {
        shape,
        pixel_values,
        sizes: vec![(TEST_PICTURE_SIDE, TEST_PICTURE_SIDE); batch],
        each: None,
    })
}

/// `pictures` through `processor` for an image-text generator. A processor that resizes each
/// picture to its own size (Qwen-VL's smart_resize) processes them one by one, and pictures
/// that come out at different sizes are kept so ([`crate::ImageBatch::each`]).
pub fn image_batch(
    processor: &ImageProcessor,
    pictures: &[RgbImage],
) -> Result<crate::ImageBatch, EngineError> {
    let invalid = |e: ia_preprocess::PreprocessError| EngineError::InvalidInput(e.to_string());
    let sizes = pictures.iter().map(|p| (p.height, p.width)).collect();
    if processor.patches.is_none() || pictures.len() < 2 {
        let pixels = processor.process(pictures).map_err(invalid)?;
        return Ok(crate::ImageBatch {
            shape: pixels.shape,
            pixel_values: pixels.pixel_values,
            sizes,
            each: None,
        });
    }
    let mut pixel_values = Vec::new();
    let mut each = Vec::with_capacity(pictures.len());
    let mut channels = 0;
    for picture in pictures {
        let one = processor
            .process(std::slice::from_ref(picture))
            .map_err(invalid)?;
        let [_, c, h, w] = one.shape;
        channels = c;
        each.push((h, w));
        pixel_values.extend(one.pixel_values);
    }
    let uniform = each.iter().all(|&s| s == each[0]);
    let (h, w) = if uniform { each[0] } else { (0, 0) };
    Ok(crate::ImageBatch {
        shape: [pictures.len(), channels, h, w],
        pixel_values,
        sizes,
        each: (!uniform).then_some(each),
    })
}

/// [`ImageWork`] of the bench's test picture for `model` (what bench measures and predict
/// models); None for a model that generates no text from images.
pub fn test_image_work(model: &Model) -> Result<Option<ImageWork>, EngineError> {
    if model.modality != Modality::Multimodal || !model.generates_text() {
        return Ok(None);
    }
    image_work(model, &test_images(model, 1)?).map(Some)
}

/// [`ImageWork`] of the first picture of `images`, as `model`'s processor made them: LLaVA's
/// patches (CLS kept under the "full" strategy), LLaVA-NeXT's anyres features over its base
/// tile and grid, Qwen-VL's merged patches. What the generator's `attach_images` will count,
/// known before the model is loaded.
pub fn image_work(model: &Model, images: &crate::ImageBatch) -> Result<ImageWork, EngineError> {
    let config = model.source.config();
    let [_, _, height, width] = images.shape;
    let processor = image_processor(model)?;
    if let Some(grid) = processor.patches {
        let patches = (height / grid.patch.max(1)) * (width / grid.patch.max(1));
        return Ok(ImageWork {
            tiles: 1,
            tower_positions: patches,
            tokens: patches / (grid.merge * grid.merge).max(1),
        });
    }
    let patch = config
        .pointer("/vision_config/patch_size")
        .and_then(Value::as_u64)
        .unwrap_or(14)
        .max(1) as usize;
    let keep_cls = config
        .get("vision_feature_select_strategy")
        .and_then(Value::as_str)
        == Some("full");
    let per_tile = (height / patch) * (width / patch);
    let (h, w) = images.sizes.first().copied().unwrap_or((height, width));
    Ok(match &processor.anyres {
        Some(anyres) => {
            let (rows, cols) = anyres.grid(h.max(1), w.max(1));
            ImageWork {
                tiles: 1 + rows * cols,
                tower_positions: per_tile + 1,
                tokens: anyres.image_tokens(h.max(1), w.max(1), patch, keep_cls),
            }
        }
        None => ImageWork {
            tiles: 1,
            tower_positions: per_tile + 1,
            tokens: per_tile + usize::from(keep_cls),
        },
    })
}

/// The test picture through the model's own image processor, `batch` copies.
fn image_inputs(model: &Model, batch: usize) -> Result<Inputs, EngineError> {
    let (shape, pixel_values) = processed_test_pictures(model, batch)?;
    Ok(Inputs::Image {
        shape,
        pixel_values,
    })
}

/// `batch` copies of the processed test picture, each as many tiles as the processor makes
/// of it: NCHW shape and pixels.
fn processed_test_pictures(
    model: &Model,
    batch: usize,
) -> Result<([usize; 4], Vec<f32>), EngineError> {
    let processor = image_processor(model)?;
    let one = processor
        .process(&[test_picture()?])
        .map_err(|e| EngineError::InvalidModel(e.to_string()))?;
    let [tiles, channels, height, width] = one.shape;
    crate::memory::ensure_allocatable(
        (batch as u64)
            .saturating_mul((tiles * channels * height * width) as u64)
            .saturating_mul(4),
        "the image batch",
    )?;
    Ok((
        [batch * tiles, channels, height, width],
        one.pixel_values.repeat(batch),
    ))
}

/// The rate an audio model's feature extractor takes: preprocessor_config.json's
/// `sampling_rate`, else 48 kHz for CLAP and 16 kHz for speech models; checked against the
/// rates a waveform may have.
pub fn audio_sampling_rate(config: &Value, pre: Option<&Value>) -> Result<u32, EngineError> {
    let default_rate = if config.get("model_type").and_then(Value::as_str) == Some("clap") {
        48_000
    } else {
        16_000
    };
    ia_preprocess::audio::check_sample_rate(
        pre.and_then(|p| p.get("sampling_rate"))
            .and_then(Value::as_u64)
            .unwrap_or(default_rate),
        "preprocessor config sampling_rate",
    )
    .map_err(|e| EngineError::InvalidModel(e.to_string()))
}

/// A voiced-speech-like test signal: a 120-220 Hz gliding fundamental with decaying harmonics,
/// syllable-rate amplitude modulation and a little noise, at the extractor's sampling rate.
fn audio_inputs(
    config: &Value,
    pre: Option<&Value>,
    spec: InputSpec,
) -> Result<Inputs, EngineError> {
    let max = ia_preprocess::audio::MAX_AUDIO_SECONDS;
    if !(spec.audio_seconds > 0.0 && f64::from(spec.audio_seconds) <= max) {
        return Err(EngineError::InvalidInput(format!(
            "audio length {} s is outside (0, {max}] s",
            spec.audio_seconds
        )));
    }
    let sample_rate = audio_sampling_rate(config, pre)?;
    let n = (spec.audio_seconds * sample_rate as f32) as usize;
    if n == 0 {
        return Err(EngineError::InvalidInput(format!(
            "{} s of audio at {sample_rate} Hz is no samples",
            spec.audio_seconds
        )));
    }
    crate::memory::ensure_allocatable(
        (spec.batch_size as u64)
            .saturating_mul(n as u64)
            .saturating_mul(4),
        "the audio batch",
    )?;
    let mut rng = SplitMix64::new(0xa0d1);
    let mut phase = 0.0f32;
    let one: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / sample_rate as f32;
            let f0 = 170.0 + 50.0 * (2.0 * std::f32::consts::PI * 0.5 * t).sin();
            phase += 2.0 * std::f32::consts::PI * f0 / sample_rate as f32;
            let voiced: f32 = (1..=6).map(|h| (phase * h as f32).sin() / h as f32).sum();
            let envelope = 0.5 + 0.5 * (2.0 * std::f32::consts::PI * 4.0 * t).sin().abs();
            (0.3 * envelope * voiced + 0.01 * (rng.next_f32() - 0.5)).clamp(-1.0, 1.0)
        })
        .collect();
    Ok(Inputs::Audio {
        batch: spec.batch_size,
        sample_rate,
        samples: one.repeat(spec.batch_size),
    })
}

/// A tiny, fast, seedable generator (splitmix64) so generated inputs and random weights are
/// identical on every machine and run.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Moves on by `n` draws of [`Self::next_u64`] at once: the state is a counter, so a
    /// long stream can be cut into pieces generated apart, each the same as in one pass.
    pub fn skip(&mut self, n: u64) {
        self.0 = self.0.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn next_normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn random(config: Value) -> Model {
        Model::resolve("test", ModelSource::RandomInit { config, seed: 0 }).unwrap()
    }

    #[test]
    fn skip_is_the_same_as_drawing() {
        let mut drawn = SplitMix64::new(7);
        for _ in 0..1000 {
            drawn.next_u64();
        }
        let mut skipped = SplitMix64::new(7);
        skipped.skip(1000);
        assert_eq!(drawn.next_u64(), skipped.next_u64());
    }

    #[test]
    fn text_without_tokenizer_uses_vocab() {
        let src =
            random(json!({"model_type": "bert", "vocab_size": 100, "max_position_embeddings": 64}));
        let inp = generate(&src, Modality::Text, InputSpec::new(2, 16)).unwrap();
        match inp {
            Inputs::Text {
                input_ids, batch, ..
            } => {
                assert_eq!(batch, 2);
                assert_eq!(input_ids.len(), 32);
                assert!(input_ids.iter().all(|&i| i < 100));
            }
            _ => panic!("expected text"),
        }
    }

    #[test]
    fn too_long_sequence_is_rejected() {
        let src =
            random(json!({"model_type": "bert", "vocab_size": 100, "max_position_embeddings": 8}));
        let err = generate(&src, Modality::Text, InputSpec::new(1, 16))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_position_embeddings"), "{err}");
        // CLIP's limit lives in text_config.
        let clip = random(
            json!({"model_type": "clip", "text_config": {"vocab_size": 100, "max_position_embeddings": 8}}),
        );
        let err = generate(&clip, Modality::Text, InputSpec::new(1, 16))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_position_embeddings 8"), "{err}");
    }

    #[test]
    fn images_are_normalised_nchw() {
        let src = random(json!({"model_type": "vit", "image_size": 8, "num_channels": 3}));
        let inp = generate(&src, Modality::Vision, InputSpec::new(3, 0)).unwrap();
        match inp {
            Inputs::Image {
                shape,
                pixel_values,
            } => {
                assert_eq!(shape, [3, 3, 8, 8]);
                assert_eq!(pixel_values.len(), 3 * 3 * 64);
                assert!(pixel_values.iter().all(|v| (-1.0..=1.0).contains(v)));
            }
            _ => panic!("expected image"),
        }
    }

    #[test]
    fn audio_is_a_bounded_waveform_at_the_extractor_rate() {
        let src = random(json!({"model_type": "wav2vec2"}));
        let spec = InputSpec {
            audio_seconds: 0.5,
            ..InputSpec::new(2, 0)
        };
        match generate(&src, Modality::Audio, spec).unwrap() {
            Inputs::Audio {
                batch,
                sample_rate,
                samples,
            } => {
                assert_eq!((batch, sample_rate, samples.len()), (2, 16_000, 16_000));
                assert!(samples.iter().all(|s| (-1.0..=1.0).contains(s)));
                let rms =
                    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt();
                assert!(rms > 0.05, "{rms}");
            }
            _ => panic!("expected audio"),
        }
    }

    #[test]
    fn rng_is_deterministic() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix64::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix64::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
    }
}

#[cfg(test)]
mod audio_rows_tests {
    use super::*;

    #[test]
    fn empty_or_ragged_audio_batches_are_input_errors() {
        let audio = |batch, n| Inputs::Audio {
            batch,
            sample_rate: 16_000,
            samples: vec![0.0; n],
        };
        assert_eq!(audio(2, 8).audio_rows().unwrap().len(), 2);
        assert!(audio(1, 0).audio_rows().is_err());
        assert!(audio(3, 8)
            .audio_rows()
            .unwrap_err()
            .to_string()
            .contains("3"));
    }
}
