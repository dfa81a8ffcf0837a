//! CLIP (transformers' `CLIPModel`): both towers on the encoder kernels ([`super::encoder`],
//! as ViT), the text tower's attention causal.
//!
//! `run` with images gives `image_embeds`, with text `text_embeds` (both projected, not yet
//! L2-normalised, as transformers' `get_image_features` / `get_text_features`), plus
//! `logit_scale` (already exponentiated) so zero-shot classification can be scored.
//! The text tower is pooled at the first end-of-text token, as transformers does (argmax of the
//! ids only for legacy configs whose eos_token_id is 2).

use super::encoder::{Dense, FeedForwardAct, ImageConv, PreNormLayer, Products, SelfAttention};
use super::LoadContext;
use crate::kernels::LayerNorm;
use crate::{kernels, rt, CandleOutput};
use candle_core::{DType, IndexOp, Module, Tensor};
use candle_nn::{embedding, linear_no_bias, Embedding, Linear, VarBuilder};
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
    /// The text tower runs quick_gelu with eps 1e-5 (X-CLIP's integration transformer, still
    /// candle's, hard-codes both).
    pub(crate) fn check(&self) -> Result<(), EngineError> {
        check_tower("text", &self.hidden_act, self.layer_norm_eps)
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
    embeddings: VisionEmbeddings,
    pre_layrnorm: LayerNorm,
    layers: Vec<PreNormLayer>,
    post_layernorm: LayerNorm,
}

impl VisionTower {
    /// `products`: how the layers' linear layers multiply ([`Products`]).
    pub fn load(
        cfg: &VisionConfig,
        vb: VarBuilder,
        products: Products,
    ) -> candle_core::Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            embeddings: VisionEmbeddings::load(
                (cfg.num_channels, h, cfg.image_size, cfg.patch_size),
                vb.pp("embeddings"),
                products,
            )?,
            pre_layrnorm: LayerNorm::load(h, eps, vb.pp("pre_layrnorm"))?,
            layers: load_layers(
                cfg.num_hidden_layers,
                (h, cfg.num_attention_heads, cfg.intermediate_size, eps),
                &vb,
                products,
            )?,
            post_layernorm: LayerNorm::load(h, eps, vb.pp("post_layernorm"))?,
        })
    }

    /// The pooled output [batch, hidden] (the class token after the post-norm) for pixels
    /// [batch, channels, height, width].
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.embed(pixels)?;
        let first = PreNormLayer::first_token_after(&self.layers, &x)?.squeeze(1)?;
        self.post_layernorm.forward(&first)
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

    /// The embeddings through the pre-norm: [batch, tokens, hidden].
    fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.pre_layrnorm.forward(&self.embeddings.forward(pixels)?)
    }
}

/// transformers' `CLIPVisionEmbeddings` (also X-CLIP's): patches, a class token and learned
/// positions.
pub(crate) struct VisionEmbeddings {
    class_embedding: Tensor,
    /// A convolution with the patch as kernel and stride, no bias.
    patch_embedding: ImageConv,
    position_embedding: Tensor,
}

impl VisionEmbeddings {
    /// `class_embedding`, `patch_embedding` and `position_embedding` under `vb`, for images of
    /// (channels, hidden, image size, patch size).
    pub fn load(
        (channels, h, image_size, patch_size): (usize, usize, usize, usize),
        vb: VarBuilder,
        products: Products,
    ) -> candle_core::Result<Self> {
        let positions = (image_size / patch_size).pow(2) + 1;
        let weight = vb
            .pp("patch_embedding")
            .get((h, channels, patch_size, patch_size), "weight")?;
        Ok(Self {
            class_embedding: vb.get(h, "class_embedding")?,
            patch_embedding: ImageConv::new(&weight, None, patch_size, 0, products)?,
            position_embedding: vb.get((positions, h), "position_embedding.weight")?,
        })
    }

    /// Pixels [batch, channels, height, width] -> [batch, 1 + patches, hidden]: the class
    /// token, then the patches, plus the positions.
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self.patch_embedding.patches(pixels)?;
        let h = self.class_embedding.dim(0)?;
        let class = self
            .class_embedding
            .reshape((1, 1, h))?
            .broadcast_as((b, 1, h))?;
        Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)
    }
}

/// A tower's `count` layers (transformers' `CLIPEncoderLayer`) under `vb`'s
/// `encoder.layers`, each (hidden, heads, intermediate, layer norm eps) = `dims`.
fn load_layers(
    count: usize,
    (h, heads, intermediate, eps): (usize, usize, usize, f64),
    vb: &VarBuilder,
    products: Products,
) -> candle_core::Result<Vec<PreNormLayer>> {
    let qkv = [("q_proj", true), ("k_proj", true), ("v_proj", true)];
    (0..count)
        .map(|i| {
            let vb = vb.pp(format!("encoder.layers.{i}"));
            let dense = |i, o, name| Dense::load(i, o, vb.pp(name), products);
            Ok(PreNormLayer {
                norm_before: LayerNorm::load(h, eps, vb.pp("layer_norm1"))?,
                attention: SelfAttention::load_named(h, heads, qkv, vb.pp("self_attn"), products)?,
                attention_output: dense(h, h, "self_attn.out_proj")?,
                norm_after: LayerNorm::load(h, eps, vb.pp("layer_norm2"))?,
                intermediate: dense(h, intermediate, "mlp.fc1")?,
                act: FeedForwardAct::Fused(kernels::Activation::QuickGelu),
                output: dense(intermediate, h, "mlp.fc2")?,
            })
        })
        .collect()
}

/// transformers' `CLIPTextTransformer` on the encoder kernels: token and position embeddings,
/// the vision tower's layers with causal attention, the final norm; tensor names as under
/// `text_model`.
pub(crate) struct TextTower {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<PreNormLayer>,
    final_layer_norm: LayerNorm,
}

impl TextTower {
    /// `products`: how the layers' linear layers multiply ([`Products`]).
    pub fn load(cfg: &TextConfig, vb: VarBuilder, products: Products) -> candle_core::Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let e = vb.pp("embeddings");
        Ok(Self {
            token_embedding: embedding(cfg.vocab_size, h, e.pp("token_embedding"))?,
            position_embedding: e.get(
                (cfg.max_position_embeddings, h),
                "position_embedding.weight",
            )?,
            layers: load_layers(
                cfg.num_hidden_layers,
                (h, cfg.num_attention_heads, cfg.intermediate_size, eps),
                &vb,
                products,
            )?,
            final_layer_norm: LayerNorm::load(h, eps, vb.pp("final_layer_norm"))?,
        })
    }

    /// The last hidden state [batch, seq, hidden] for `input_ids` [batch, seq].
    pub fn forward(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let seq = input_ids.dim(1)?;
        let mut x = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, seq)?)?;
        for layer in &self.layers {
            x = layer.forward_attending(&x, true)?;
        }
        self.final_layer_norm.forward(&x)
    }
}

pub struct ClipSession {
    text: TextTower,
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
            let text = TextTower::load(&cfg.text_config, vb.pp("text_model"), ctx.products)?;
            let vision =
                VisionTower::load(&cfg.vision_config, vb.pp("vision_model"), ctx.products)?;
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
        let hidden = self.text.forward(&input_ids)?;
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
