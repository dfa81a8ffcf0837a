//! LLaVA 1.5 (transformers' `LlavaForConditionalGeneration`): a CLIP vision tower whose
//! hidden states at `vision_feature_layer` (CLS dropped under the "default" strategy) go through
//! the two-layer `multi_modal_projector` into the language model's embedding space, where they
//! replace the prompt's image tokens one for one; the language model is a LLaMA-family
//! [`decoder`](super::decoder).
//!
//! Checkpoints name the parts in two layouts: `vision_tower.vision_model.*`,
//! `multi_modal_projector.*`, `language_model.model.*` and `language_model.lm_head` (the
//! llava-hf checkpoints; transformers 5 saves the same, without `vision_model`), or
//! `model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*` and
//! `lm_head` (transformers' module tree).

use super::{clip, decoder, LoadContext};
use crate::rt;
use candle_core::{DType, Module, Tensor};
use candle_nn::{Activation, Linear, VarBuilder};
use candle_transformers::models::clip::vision_model::ClipVisionTransformer;
use ia_engine::generation::ImagePrompt;
use ia_engine::{EngineError, SessionInfo, TextGenerator};
use serde::Deserialize;
use serde_json::Value;

/// config.json of a LLaVA 1.5 checkpoint (the text model's own config is read by the decoder).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vision_config: clip::VisionConfig,
    /// transformers < 4.47 and the llava-hf configs: `image_token_index`; later `image_token_id`.
    #[serde(alias = "image_token_id", default = "default_image_token")]
    pub image_token_index: u32,
    #[serde(default = "default_projector_act")]
    pub projector_hidden_act: Activation,
    #[serde(default = "default_feature_layer")]
    pub vision_feature_layer: FeatureLayer,
    #[serde(default = "default_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "default_true")]
    pub multimodal_projector_bias: bool,
}

/// One hidden-state index of the vision tower, or several whose features are concatenated.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FeatureLayer {
    One(i64),
    Several(Vec<i64>),
}

// transformers' LlavaConfig defaults.
fn default_image_token() -> u32 {
    32000
}
fn default_projector_act() -> Activation {
    Activation::Gelu
}
fn default_feature_layer() -> FeatureLayer {
    FeatureLayer::One(-2)
}
fn default_strategy() -> String {
    "default".into()
}
fn default_true() -> bool {
    true
}

impl Config {
    fn from_json(config: &Value) -> Result<(Self, decoder::Config), EngineError> {
        let cfg: Config = serde_json::from_value(config.clone()).map_err(|e| {
            EngineError::InvalidModel(format!("config.json does not describe a LLaVA model: {e}"))
        })?;
        let tower = config
            .get("vision_config")
            .and_then(|v| v.get("model_type"))
            .and_then(Value::as_str)
            .unwrap_or("clip_vision_model");
        if tower != "clip_vision_model" {
            return Err(EngineError::Unsupported(format!(
                "LLaVA with a {tower} vision tower: the native LLaVA has CLIP's"
            )));
        }
        cfg.vision_config.check()?;
        if !matches!(
            cfg.vision_feature_select_strategy.as_str(),
            "default" | "full"
        ) {
            return Err(EngineError::InvalidModel(format!(
                "vision_feature_select_strategy '{}' (transformers knows 'default' and 'full')",
                cfg.vision_feature_select_strategy
            )));
        }
        // Completed with LlamaConfig's defaults when the model was resolved (ia_models::defaults).
        let text = config
            .get("text_config")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let text = decoder::Config::from_json(&text)?;
        Ok((cfg, text))
    }

    /// Indices into candle's list of the tower's layer outputs (hidden state k of
    /// transformers is the output of layer k; 0, the embeddings, is not offered).
    fn feature_layers(&self) -> Result<Vec<usize>, EngineError> {
        let layers = self.vision_config.num_hidden_layers as i64;
        let wanted = match &self.vision_feature_layer {
            FeatureLayer::One(k) => vec![*k],
            FeatureLayer::Several(ks) => ks.clone(),
        };
        wanted
            .into_iter()
            .map(|k| {
                let at = if k < 0 { layers + 1 + k } else { k };
                if (1..=layers).contains(&at) {
                    Ok(at as usize - 1)
                } else {
                    Err(EngineError::Unsupported(format!(
                        "vision_feature_layer {k} of a {layers}-layer vision tower (layers 1..={layers} or -{layers}..=-1 are supported)"
                    )))
                }
            })
            .collect()
    }

    /// Image features (and so image tokens) per image: one per patch, plus CLS when kept.
    fn tokens_per_image(&self) -> usize {
        let v = &self.vision_config;
        let patches = (v.image_size / v.patch_size.max(1)).pow(2);
        patches + usize::from(self.vision_feature_select_strategy == "full")
    }
}

struct Projector {
    linear_1: Linear,
    act: Activation,
    linear_2: Linear,
}

impl Module for Projector {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2
            .forward(&self.linear_1.forward(x)?.apply(&self.act)?)
    }
}

pub struct Llava {
    vision: ClipVisionTransformer,
    feature_layers: Vec<usize>,
    keep_cls: bool,
    projector: Projector,
    language: decoder::Decoder,
    prompt: ImagePrompt,
    /// Side of the square images the tower takes.
    image_size: usize,
    /// Projected features of the attached images, [images x tokens per image, text hidden].
    attached: Option<Tensor>,
    device: candle_core::Device,
    dtype: DType,
}

/// The first prefix whose probe tensor the checkpoint has; the first listed (the layout
/// transformers saves) for random weights, which have every name.
fn layout<'a>(vb: &VarBuilder, candidates: &[(&'a str, &str)]) -> &'a str {
    candidates
        .iter()
        .find(|(_, probe)| vb.contains_tensor(probe))
        .unwrap_or(&candidates[0])
        .0
}

impl Llava {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn TextGenerator>, EngineError> {
        let (cfg, text) = Config::from_json(ctx.source.config())?;
        let feature_layers = cfg.feature_layers()?;
        let (vision_hidden, text_hidden) = (cfg.vision_config.hidden_size, text.hidden_size);
        let ((vision, projector, weights), mut info) = ctx.build("LLaVA", &["logits"], |vb| {
            let tower = layout(
                &vb,
                &[
                    ("vision_tower", "vision_tower.embeddings.class_embedding"),
                    (
                        "vision_tower.vision_model",
                        "vision_tower.vision_model.embeddings.class_embedding",
                    ),
                    (
                        "model.vision_tower.vision_model",
                        "model.vision_tower.vision_model.embeddings.class_embedding",
                    ),
                    (
                        "model.vision_tower",
                        "model.vision_tower.embeddings.class_embedding",
                    ),
                ],
            );
            let (projector, language, head) = match layout(
                &vb,
                &[
                    ("legacy", "language_model.model.embed_tokens.weight"),
                    ("modules", "model.language_model.embed_tokens.weight"),
                ],
            ) {
                "legacy" => (
                    "multi_modal_projector",
                    "language_model.model",
                    "language_model.lm_head",
                ),
                _ => (
                    "model.multi_modal_projector",
                    "model.language_model",
                    "lm_head",
                ),
            };
            // The tower's projection is CLIP's, not LLaVA's: it is neither loaded nor used.
            let vision = ClipVisionTransformer::new(vb.pp(tower), &cfg.vision_config.tower(0))?;
            let p = vb.pp(projector);
            let linear = |i, o, name| {
                if cfg.multimodal_projector_bias {
                    candle_nn::linear(i, o, p.pp(name))
                } else {
                    candle_nn::linear_no_bias(i, o, p.pp(name))
                }
            };
            let projector = Projector {
                linear_1: linear(
                    vision_hidden * feature_layers.len(),
                    text_hidden,
                    "linear_1",
                )?,
                act: cfg.projector_hidden_act,
                linear_2: linear(text_hidden, text_hidden, "linear_2")?,
            };
            let weights = decoder::Weights::load(&text, vb.pp(language), vb.pp(head))?;
            Ok((vision, projector, weights))
        })?;
        info.output_names = vec!["logits".into()];
        let language = decoder::Decoder::new(&text, weights, info, &ctx)?;
        Ok(Box::new(Self {
            vision,
            feature_layers,
            keep_cls: cfg.vision_feature_select_strategy == "full",
            projector,
            language,
            prompt: ImagePrompt {
                token: cfg.image_token_index,
                tokens_per_image: cfg.tokens_per_image(),
            },
            image_size: cfg.vision_config.image_size,
            attached: None,
            device: ctx.device,
            dtype: ctx.dtype,
        }))
    }

    /// transformers' `get_image_features`: [images, channels, h, w] -> [images x tokens, hidden].
    fn image_features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.vision.output_hidden_states(pixels)?;
        let selected = self
            .feature_layers
            .iter()
            .map(|&k| {
                let h = &hidden[k];
                if self.keep_cls {
                    Ok(h.clone())
                } else {
                    h.narrow(1, 1, h.dim(1)? - 1)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let features = Tensor::cat(&selected, 2)?;
        let (images, tokens, width) = features.dims3()?;
        self.projector
            .forward(&features.reshape((images * tokens, width))?)
    }

    /// The prompts' embeddings with the attached image features in place of the image
    /// tokens (transformers' `masked_scatter`), or None without image tokens.
    fn merged_embeddings(&mut self, prompts: &[Vec<u32>]) -> Result<Option<Tensor>, EngineError> {
        let tokens: Vec<u32> = prompts.concat();
        let image_tokens = tokens.iter().filter(|&&t| t == self.prompt.token).count();
        let features = self.attached.take();
        let rows = match &features {
            Some(f) => f.dim(0).map_err(rt)?,
            None => 0,
        };
        if image_tokens != rows {
            return Err(EngineError::InvalidInput(format!(
                "image features and image tokens do not match: {image_tokens} image tokens (id {}) in the prompt, {rows} features from {} attached images of {} tokens each",
                self.prompt.token,
                rows / self.prompt.tokens_per_image.max(1),
                self.prompt.tokens_per_image
            )));
        }
        let Some(features) = features else {
            return Ok(None);
        };
        let text = self.language.embed(&tokens).map_err(rt)?;
        // One gather from [text rows; feature rows]: each image token takes the next feature.
        let mut next = tokens.len();
        let index: Vec<u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t == self.prompt.token {
                    next += 1;
                    (next - 1) as u32
                } else {
                    i as u32
                }
            })
            .collect();
        let table =
            Tensor::cat(&[text, features.to_dtype(self.dtype).map_err(rt)?], 0).map_err(rt)?;
        let index = Tensor::from_vec(index, tokens.len(), &self.device).map_err(rt)?;
        table.index_select(&index, 0).map(Some).map_err(rt)
    }
}

impl TextGenerator for Llava {
    fn info(&self) -> &SessionInfo {
        self.language.info()
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        Ok(self.prefill_batch(&[prompt.to_vec()])?.remove(0))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        self.language.step(token)
    }

    fn prefill_batch(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        match self.merged_embeddings(prompts)? {
            Some(x) => self.language.prefill_embedded(prompts, x),
            None => self.language.prefill_batch(prompts),
        }
    }

    fn step_batch(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.language.step_batch(tokens)
    }

    fn max_context(&self) -> usize {
        self.language.max_context()
    }

    fn eos_tokens(&self) -> Vec<u32> {
        self.language.eos_tokens()
    }

    fn weight_bytes(&self) -> Option<u64> {
        self.language.weight_bytes()
    }

    fn image_prompt(&self) -> Option<ImagePrompt> {
        Some(self.prompt)
    }

    fn attach_images(
        &mut self,
        shape: [usize; 4],
        pixel_values: &[f32],
    ) -> Result<(), EngineError> {
        let [_, channels, height, width] = shape;
        let v = self.image_size;
        if channels != 3 || height != v || width != v {
            return Err(EngineError::InvalidInput(format!(
                "images of {channels}x{height}x{width}: the vision tower takes 3x{v}x{v}"
            )));
        }
        let pixels = Tensor::from_slice(pixel_values, shape.to_vec(), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(rt)?;
        self.attached = Some(self.image_features(&pixels).map_err(rt)?);
        Ok(())
    }
}
