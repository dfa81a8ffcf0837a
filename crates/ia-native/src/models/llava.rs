//! LLaVA 1.5 and LLaVA-NeXT (transformers' `LlavaForConditionalGeneration` and
//! `LlavaNextForConditionalGeneration`, which differ only in how an image becomes features).
//!
//! LLaVA 1.5: a CLIP vision tower whose
//! hidden states at `vision_feature_layer` (CLS dropped under the "default" strategy) go through
//! the two-layer `multi_modal_projector` into the language model's embedding space, where they
//! replace the prompt's image tokens one for one; the language model is a LLaMA-family
//! [`decoder`](super::decoder).
//!
//! LLaVA-NeXT cuts an image into tiles (the whole image first, then a grid: the processor's
//! "anyres", [`AnyRes`]); the grid tiles' features are laid back out as one picture, the rows
//! and columns the padding made are taken off, and each row ends with the learned
//! `image_newline` (transformers' `pack_image_features`).
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
use ia_engine::generation::ImageBatch;
use ia_engine::{EngineError, SessionInfo, TextGenerator};
use ia_preprocess::image::{AnyRes, Filter};
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
    /// LLaVA-NeXT: the (height, width) grids an image may be tiled into.
    #[serde(default)]
    pub image_grid_pinpoints: Option<Vec<[usize; 2]>>,
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
        if cfg.image_grid_pinpoints.is_some() && cfg.vision_feature_select_strategy != "default" {
            return Err(EngineError::Unsupported(
                "LLaVA-NeXT with the 'full' feature strategy (CLS in every tile) is not implemented"
                    .into(),
            ));
        }
        // Completed with LlamaConfig's defaults when the model was resolved (ia_models::defaults).
        let text = config
            .get("text_config")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let text = decoder::Config::from_json(&text)?;
        Ok((cfg, text))
    }

    /// Indices into the tower's layer outputs ([`clip::VisionTower::layer_outputs`]: hidden
    /// state k of transformers is the output of layer k; 0, the embeddings, is not offered).
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

    /// LLaVA-NeXT's tiling over tiles of the tower's size.
    fn anyres(&self) -> Result<Option<AnyRes>, EngineError> {
        let Some(pinpoints) = &self.image_grid_pinpoints else {
            return Ok(None);
        };
        let side = self.vision_config.image_size;
        AnyRes::new(
            pinpoints.iter().map(|&[h, w]| (h, w)).collect(),
            side,
            (side, side),
            Filter::Bicubic,
        )
        .map(Some)
        .map_err(|e| EngineError::InvalidModel(e.to_string()))
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
    vision: clip::VisionTower,
    feature_layers: Vec<usize>,
    keep_cls: bool,
    projector: Projector,
    language: decoder::Decoder,
    /// The prompt token an image's features replace.
    image_token: u32,
    /// Side of the square images the tower takes, and of its patches.
    image_size: usize,
    patch_size: usize,
    /// LLaVA-NeXT: the tiling and the newline feature ending each row.
    anyres: Option<(AnyRes, Tensor)>,
    /// Projected features of the attached images, [images x tokens per image, text hidden].
    attached: Option<Tensor>,
    device: candle_core::Device,
    dtype: DType,
}

/// The first prefix whose probe tensor the checkpoint has; the first listed (the layout
/// transformers saves) for random weights, which have every name.
pub(crate) fn layout<'a>(vb: &VarBuilder, candidates: &[(&'a str, &str)]) -> &'a str {
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
        let anyres = cfg.anyres()?;
        let (vision_hidden, text_hidden) = (cfg.vision_config.hidden_size, text.hidden_size);
        let ((vision, projector, weights, newline), mut info) =
            ctx.build("LLaVA", &["logits"], |vb| {
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
                let (projector, language, head, newline) = match layout(
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
                        "image_newline",
                    ),
                    _ => (
                        "model.multi_modal_projector",
                        "model.language_model",
                        "lm_head",
                        "model.image_newline",
                    ),
                };
                // The tower's projection is CLIP's, not LLaVA's: it is neither loaded nor used.
                let vision =
                    clip::VisionTower::load(&cfg.vision_config, vb.pp(tower), ctx.products)?;
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
                // `--precision bf16`: the tower's and the decoder's linear layers in bf16 (the
                // projector and the convolution f32), as CLIP and the decoder alone run it.
                let storage = decoder::Storage::for_products(ctx.products);
                let weights =
                    decoder::Weights::load(&text, vb.pp(language), vb.pp(head), &storage)?;
                let newline = anyres
                    .is_some()
                    .then(|| vb.get(text_hidden, newline))
                    .transpose()?;
                Ok((vision, projector, weights, newline))
            })?;
        info.output_names = vec!["logits".into()];
        let language = decoder::Decoder::new(&text, weights, info, &ctx)?;
        Ok(Box::new(Self {
            vision,
            feature_layers,
            keep_cls: cfg.vision_feature_select_strategy == "full",
            projector,
            language,
            image_token: cfg.image_token_index,
            image_size: cfg.vision_config.image_size,
            patch_size: cfg.vision_config.patch_size,
            anyres: anyres.zip(newline),
            attached: None,
            device: ctx.device,
            dtype: ctx.dtype,
        }))
    }

    /// transformers' `get_image_features`: [tiles, channels, h, w] -> [tiles, tokens, hidden].
    fn image_features(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let deepest = self.feature_layers.iter().max().map_or(0, |k| k + 1);
        let hidden = self.vision.layer_outputs(pixels, deepest)?;
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
        let (tiles, tokens, width) = features.dims3()?;
        self.projector
            .forward(&features.reshape((tiles * tokens, width))?)?
            .reshape((tiles, tokens, ()))
    }

    /// LLaVA-NeXT's `pack_image_features` for one image of `height` x `width`: `features`
    /// [tiles, patches, hidden] (the whole image, then the grid row by row) -> [tokens, hidden].
    fn pack(
        &self,
        anyres: &AnyRes,
        newline: &Tensor,
        features: &Tensor,
        (height, width): (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let (tiles, _, hidden) = features.dims3()?;
        let (rows, cols) = anyres.grid(height, width);
        let side = self.image_size / self.patch_size;
        let grid = features
            .narrow(0, 1, tiles - 1)?
            .reshape((rows, cols, side, side, hidden))?
            .permute((4, 0, 2, 1, 3))?
            .contiguous()?
            .reshape((hidden, rows * side, cols * side))?;
        let ((top, kept_rows), (left, kept_cols)) =
            anyres.unpadded_features(height, width, self.patch_size);
        let grid = grid.narrow(1, top, kept_rows)?.narrow(2, left, kept_cols)?;
        let ends = newline
            .reshape((hidden, 1, 1))?
            .broadcast_as((hidden, kept_rows, 1))?;
        let grid = Tensor::cat(&[grid, ends.contiguous()?], 2)?
            .reshape((hidden, kept_rows * (kept_cols + 1)))?
            .t()?;
        Tensor::cat(&[features.get(0)?, grid], 0)
    }

    /// The prompts' embeddings with the attached image features in place of the image
    /// tokens, or None without image tokens.
    fn merged_embeddings(&mut self, prompts: &[Vec<u32>]) -> Result<Option<Tensor>, EngineError> {
        let features = self.attached.take();
        merge_image_features(
            &self.language,
            prompts,
            self.image_token,
            features,
            self.dtype,
        )
    }
}

/// transformers' `masked_scatter` of image features into prompt embeddings: each image token
/// of `prompts` (in order) takes the next row of `features`; None when there are neither.
pub(crate) fn merge_image_features(
    language: &decoder::Decoder,
    prompts: &[Vec<u32>],
    image_token: u32,
    features: Option<Tensor>,
    dtype: DType,
) -> Result<Option<Tensor>, EngineError> {
    let tokens: Vec<u32> = prompts.concat();
    let image_tokens = tokens.iter().filter(|&&t| t == image_token).count();
    let rows = match &features {
        Some(f) => f.dim(0).map_err(rt)?,
        None => 0,
    };
    if image_tokens != rows {
        return Err(EngineError::InvalidInput(format!(
            "image features and image tokens do not match: {image_tokens} image tokens (id {image_token}) in the prompt, {rows} image features attached"
        )));
    }
    let Some(features) = features else {
        return Ok(None);
    };
    let text = language.embed(&tokens).map_err(rt)?;
    // One gather from [text rows; feature rows]: each image token takes the next feature.
    let mut next = tokens.len();
    let index: Vec<u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if t == image_token {
                next += 1;
                (next - 1) as u32
            } else {
                i as u32
            }
        })
        .collect();
    let table = Tensor::cat(&[text, features.to_dtype(dtype).map_err(rt)?], 0).map_err(rt)?;
    let index = Tensor::from_vec(index, tokens.len(), table.device()).map_err(rt)?;
    table.index_select(&index, 0).map(Some).map_err(rt)
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

    fn image_token(&self) -> Option<u32> {
        Some(self.image_token)
    }

    fn attach_images(&mut self, images: &ImageBatch) -> Result<Vec<usize>, EngineError> {
        let [tiles, channels, height, width] = images.shape;
        let v = self.image_size;
        // Tiles of each image: one, or LLaVA-NeXT's base tile and grid.
        let per_image: Vec<usize> = images
            .sizes
            .iter()
            .map(|&(h, w)| match &self.anyres {
                Some((anyres, _)) => {
                    let (rows, cols) = anyres.grid(h.max(1), w.max(1));
                    1 + rows * cols
                }
                None => 1,
            })
            .collect();
        if per_image.iter().sum::<usize>() != tiles
            || images.sizes.iter().any(|&(h, w)| h == 0 || w == 0)
            || channels != 3
            || height != v
            || width != v
        {
            return Err(EngineError::InvalidInput(format!(
                "{} images as {tiles} tiles of {channels}x{height}x{width}: the vision tower takes {} 3x{v}x{v} tiles for them",
                images.sizes.len(),
                per_image.iter().sum::<usize>()
            )));
        }
        let pixels = Tensor::from_slice(&images.pixel_values, images.shape.to_vec(), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(rt)?;
        let features = self.image_features(&pixels).map_err(rt)?;
        let (attached, counts) = match &self.anyres {
            None => {
                let (tiles, tokens, _) = features.dims3().map_err(rt)?;
                (features.flatten_to(1).map_err(rt)?, vec![tokens; tiles])
            }
            Some((anyres, newline)) => {
                let mut start = 0;
                let mut each = Vec::with_capacity(per_image.len());
                for (&n, &size) in per_image.iter().zip(&images.sizes) {
                    let tiles = features.narrow(0, start, n).map_err(rt)?;
                    each.push(self.pack(anyres, newline, &tiles, size).map_err(rt)?);
                    start += n;
                }
                let counts = each.iter().map(|t| t.dim(0)).collect::<Result<_, _>>();
                (Tensor::cat(&each, 0).map_err(rt)?, counts.map_err(rt)?)
            }
        };
        self.attached = Some(attached);
        Ok(counts)
    }
}
