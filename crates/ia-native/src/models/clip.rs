//! CLIP (transformers' `CLIPModel`): the vision tower on the encoder kernels
//! ([`super::encoder`], as ViT), the text tower (causal attention) on candle-transformers'.
//!
//! `run` with images gives `image_embeds`, with text `text_embeds` (both projected, not yet
//! L2-normalised, as transformers' `get_image_features` / `get_text_features`), plus
//! `logit_scale` (already exponentiated) so zero-shot classification can be scored.
//! The text tower is pooled at the first end-of-text token, as transformers does (argmax of the
//! ids only for legacy configs whose eos_token_id is 2).

use super::encoder::{Dense, Products, SelfAttention};
use super::LoadContext;
use crate::{kernels, rt, CandleOutput};
use candle_core::{DType, IndexOp, Module, Tensor};
use candle_nn::{
    conv2d_no_bias, layer_norm, linear_no_bias, Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder,
};
use candle_transformers::models::clip::text_model;
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use serde::Deserialize;
use std::sync::atomic::Ordering;

/// transformers' `CLIPConfig` (the fields the towers use).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_text_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_text_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_text_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

// transformers' CLIPTextConfig / CLIPVisionConfig defaults (openai/clip-vit-base-patch32).
pub(super) fn default_projection_dim() -> usize {
    512
}
pub(super) fn default_logit_scale() -> f32 {
    2.6592
}
fn default_text_vocab() -> usize {
    49408
}
fn default_text_hidden() -> usize {
    512
}
fn default_text_intermediate() -> usize {
    2048
}
pub(super) fn default_layers() -> usize {
    12
}
fn default_text_heads() -> usize {
    8
}
fn default_text_positions() -> usize {
    77
}
pub(super) fn default_act() -> String {
    "quick_gelu".into()
}
pub(super) fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> u32 {
    49407
}
pub(super) fn default_vision_hidden() -> usize {
    768
}
pub(super) fn default_vision_intermediate() -> usize {
    3072
}
pub(super) fn default_vision_heads() -> usize {
    12
}
pub(super) fn default_image_size() -> usize {
    224
}
pub(super) fn default_patch() -> usize {
    32
}
pub(super) fn default_channels() -> usize {
    3
}

impl Config {
    /// candle's towers hard-code quick_gelu and eps 1e-5; anything else would run wrong.
    fn check(&self) -> Result<(), EngineError> {
        self.text_config.check()?;
        self.vision_config.check()
    }

    fn text(&self) -> text_model::ClipTextConfig {
        self.text_config.tower(self.projection_dim)
    }
}

pub(crate) fn check_tower(tower: &str, act: &str, eps: f64) -> Result<(), EngineError> {
    if act != "quick_gelu" || (eps - 1e-5).abs() > 1e-12 {
        return Err(EngineError::Unsupported(format!(
            "CLIP {tower} tower with hidden_act {act} and layer_norm_eps {eps}: the native CLIP supports quick_gelu with 1e-5"
        )));
    }
    Ok(())
}

impl TextConfig {
    /// candle's text tower hard-codes quick_gelu and eps 1e-5.
    pub(crate) fn check(&self) -> Result<(), EngineError> {
        check_tower("text", &self.hidden_act, self.layer_norm_eps)
    }

    pub(crate) fn tower(&self, projection_dim: usize) -> text_model::ClipTextConfig {
        text_model::ClipTextConfig {
            vocab_size: self.vocab_size,
            embed_dim: self.hidden_size,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim,
        }
    }
}

impl VisionConfig {
    /// The vision tower runs quick_gelu; eps is held to 1e-5 as for the text tower.
    pub(crate) fn check(&self) -> Result<(), EngineError> {
        check_tower("vision", &self.hidden_act, self.layer_norm_eps)
    }
}

/// transformers' `CLIPVisionTransformer` on the encoder kernels: patch and class embeddings,
/// the pre-norm, pre-norm layers (q/k/v one product, quick_gelu MLP, residual adds in the
/// products' pass) and the post-norm of the class token; tensor names as under
/// `vision_model`.
pub(crate) struct VisionTower {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<VisionLayer>,
    post_layernorm: LayerNorm,
}

struct VisionLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    out_proj: Dense,
    layer_norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

impl VisionTower {
    pub fn load(cfg: &VisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let e = vb.pp("embeddings");
        let positions = (cfg.image_size / cfg.patch_size).pow(2) + 1;
        let patch = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let layer = |l: VarBuilder| -> candle_core::Result<VisionLayer> {
            let qkv = [("q_proj", true), ("k_proj", true), ("v_proj", true)];
            Ok(VisionLayer {
                layer_norm1: layer_norm(h, eps, l.pp("layer_norm1"))?,
                self_attn: SelfAttention::load_named(
                    h,
                    cfg.num_attention_heads,
                    qkv,
                    l.pp("self_attn"),
                    Products::AsLoaded,
                )?,
                out_proj: Dense::load(h, h, l.pp("self_attn.out_proj"), Products::AsLoaded)?,
                layer_norm2: layer_norm(h, eps, l.pp("layer_norm2"))?,
                fc1: Dense::load(
                    h,
                    cfg.intermediate_size,
                    l.pp("mlp.fc1"),
                    Products::AsLoaded,
                )?,
                fc2: Dense::load(
                    cfg.intermediate_size,
                    h,
                    l.pp("mlp.fc2"),
                    Products::AsLoaded,
                )?,
            })
        };
        Ok(Self {
            class_embedding: e.get(h, "class_embedding")?,
            patch_embedding: conv2d_no_bias(
                cfg.num_channels,
                h,
                cfg.patch_size,
                patch,
                e.pp("patch_embedding"),
            )?,
            position_embedding: e.get((positions, h), "position_embedding.weight")?,
            pre_layrnorm: layer_norm(h, eps, vb.pp("pre_layrnorm"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| layer(vb.pp(format!("encoder.layers.{i}"))))
                .collect::<candle_core::Result<_>>()?,
            post_layernorm: layer_norm(h, eps, vb.pp("post_layernorm"))?,
        })
    }

    /// The pooled output [batch, hidden] (the class token after the post-norm) for pixels
    /// [batch, channels, height, width].
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.embed(pixels)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.post_layernorm.forward(&x.i((.., 0, ..))?)
    }

    /// The outputs of the first `count` layers, [batch, tokens, hidden] each: transformers'
    /// hidden states 1..=count (LLaVA's image features come from one of them; the layers
    /// after the deepest one asked for do not run).
    pub fn layer_outputs(&self, pixels: &Tensor, count: usize) -> candle_core::Result<Vec<Tensor>> {
        let mut x = self.embed(pixels)?;
        let mut outputs = Vec::with_capacity(count);
        for layer in self.layers.iter().take(count) {
            x = layer.forward(&x)?;
            outputs.push(x.clone());
        }
        Ok(outputs)
    }

    /// Patch and class embeddings plus positions, through the pre-norm: [batch, tokens,
    /// hidden].
    fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self
            .patch_embedding
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let h = self.class_embedding.dim(0)?;
        let class = self
            .class_embedding
            .reshape((1, 1, h))?
            .broadcast_as((b, 1, h))?;
        self.pre_layrnorm
            .forward(&Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?)
    }
}

impl VisionLayer {
    /// Pre-norm: x = x + attention(norm(x)); x = x + mlp(norm(x)).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, None)?;
        let x = self.out_proj.forward_residual(&attended, x)?;
        let inner = self.fc1.forward_fused(
            &self.layer_norm2.forward(&x)?,
            kernels::Activation::QuickGelu,
        )?;
        self.fc2.forward_residual(&inner, &x)
    }
}

pub struct ClipSession {
    text: text_model::ClipTextTransformer,
    vision: VisionTower,
    text_projection: Linear,
    visual_projection: Linear,
    logit_scale: Tensor,
    eos_token_id: u32,
    device: candle_core::Device,
    dtype: DType,
    info: SessionInfo,
}

impl ClipSession {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn Session>, EngineError> {
        let cfg: Config = super::parse_config(ctx.source, "CLIP")?;
        cfg.check()?;
        let (vb, params) = crate::load_var_builder(ctx.source, ctx.dtype, &ctx.device)?;
        let build = || -> candle_core::Result<_> {
            let text = text_model::ClipTextTransformer::new(vb.pp("text_model"), &cfg.text())?;
            let vision = VisionTower::load(&cfg.vision_config, vb.pp("vision_model"))?;
            let text_projection = linear_no_bias(
                cfg.text_config.hidden_size,
                cfg.projection_dim,
                vb.pp("text_projection"),
            )?;
            let visual_projection = linear_no_bias(
                cfg.vision_config.hidden_size,
                cfg.projection_dim,
                vb.pp("visual_projection"),
            )?;
            let logit_scale = vb.get((), "logit_scale")?.to_dtype(DType::F32)?.exp()?;
            Ok((
                text,
                vision,
                text_projection,
                visual_projection,
                logit_scale,
            ))
        };
        let (text, vision, text_projection, visual_projection, logit_scale) =
            build().map_err(|e| {
                EngineError::InvalidModel(format!(
                    "cannot build CLIP: {}",
                    crate::candle_message(&e)
                ))
            })?;
        let mut info = ctx.info;
        info.parameter_count = params.load(Ordering::Relaxed);
        info.output_names = vec![
            "image_embeds".into(),
            "text_embeds".into(),
            "logit_scale".into(),
        ];
        Ok(Box::new(Self {
            text,
            vision,
            text_projection,
            visual_projection,
            logit_scale,
            eos_token_id: cfg.text_config.eos_token_id,
            device: ctx.device,
            dtype: ctx.dtype,
            info,
        }))
    }

    fn text_embeds(
        &self,
        batch: usize,
        seq_len: usize,
        ids: &[u32],
    ) -> candle_core::Result<Tensor> {
        let input_ids = Tensor::from_slice(ids, (batch, seq_len), &self.device)?;
        let hidden = self.text.forward_with_mask(&input_ids, usize::MAX)?;
        pool_at_eos(&hidden, ids, seq_len, self.eos_token_id)?.apply(&self.text_projection)
    }
}

/// The text tower's state at each row's end-of-text token, as transformers pools it: the first
/// `eos_token_id`, or the highest id for legacy configs whose eos_token_id is 2.
pub(crate) fn pool_at_eos(
    hidden: &Tensor,
    ids: &[u32],
    seq_len: usize,
    eos_token_id: u32,
) -> candle_core::Result<Tensor> {
    let pooled = ids
        .chunks(seq_len)
        .enumerate()
        .map(|(b, row)| {
            let at = if eos_token_id == 2 {
                row.iter()
                    .enumerate()
                    .max_by_key(|(i, &t)| (t, std::cmp::Reverse(*i)))
                    .map_or(0, |(i, _)| i)
            } else {
                row.iter().position(|&t| t == eos_token_id).unwrap_or(0)
            };
            hidden.i((b, at))?.unsqueeze(0)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&pooled, 0)
}

impl Session for ClipSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        let (name, embeds) = match inputs {
            Inputs::Image {
                shape,
                pixel_values,
            } => {
                let xs = Tensor::from_slice(pixel_values, shape.to_vec(), &self.device)
                    .and_then(|t| t.to_dtype(self.dtype))
                    .map_err(rt)?;
                let e = self
                    .vision
                    .forward(&xs)
                    .and_then(|h| h.apply(&self.visual_projection))
                    .map_err(rt)?;
                ("image_embeds", e)
            }
            Inputs::Text {
                batch,
                seq_len,
                input_ids,
                ..
            } => (
                "text_embeds",
                self.text_embeds(*batch, *seq_len, input_ids).map_err(rt)?,
            ),
            Inputs::Audio { .. } | Inputs::Video { .. } => {
                return Err(EngineError::InvalidInput(
                    "CLIP takes images or text".into(),
                ))
            }
        };
        Ok(Outputs {
            tensors: vec![
                (name.into(), Box::new(CandleOutput(embeds))),
                (
                    "logit_scale".into(),
                    Box::new(CandleOutput(self.logit_scale.clone())),
                ),
            ],
        })
    }
}
