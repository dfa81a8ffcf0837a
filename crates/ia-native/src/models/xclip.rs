//! X-CLIP (transformers' `XCLIPModel`, `modeling_x_clip.py`): text-video similarity.
//!
//! Each frame goes through a CLIP vision tower whose layers first exchange one message token
//! per frame across the clip (cross-frame communication); the frames' projected CLS states
//! go through the multi-frame integration transformer (`mit`) and are averaged into the video
//! embedding. The label texts go through CLIP's text tower, and the prompt generator lets
//! each text attend over the clip's patch features before both sides are normalised and
//! compared. Because the text embeddings depend on the video, one forward pass takes both
//! ([`Inputs::Video`] with its `texts`).
//!
//! Outputs: `video_embeds` (batch x projection_dim) and, with texts, `text_embeds`
//! (batch x labels x projection_dim) and `logits_per_video` (batch x labels), all as
//! `XCLIPOutput` holds them (normalised; logits scaled by the trained temperature).

use super::attention::{Mlp, MultiHeadAttention};
use super::clip::{self, TextConfig};
use super::encoder::{FeedForwardAct, Products};
use super::LoadContext;
use crate::kernels::{self, LayerNorm};
use crate::{rt, CandleOutput};
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::text_model::ClipEncoder;
use candle_transformers::models::clip::{vision_model, EncoderConfig};
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use serde::Deserialize;

/// transformers' `XCLIPConfig` (the fields the model uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default = "clip::default_projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "default_prompt_layers")]
    pub prompt_layers: usize,
    #[serde(default = "default_prompt_alpha")]
    pub prompt_alpha: f32,
    #[serde(default = "clip::default_act")]
    pub prompt_hidden_act: String,
    #[serde(default = "default_prompt_heads")]
    pub prompt_num_attention_heads: usize,
}

/// transformers' `XCLIPVisionConfig`: CLIP's vision tower plus the clip length and the
/// multi-frame integration transformer's sizes.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "clip::default_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "clip::default_vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "clip::default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "clip::default_vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_mit_hidden")]
    pub mit_hidden_size: usize,
    #[serde(default = "default_mit_intermediate")]
    pub mit_intermediate_size: usize,
    #[serde(default = "default_mit_layers")]
    pub mit_num_hidden_layers: usize,
    #[serde(default = "default_mit_heads")]
    pub mit_num_attention_heads: usize,
    #[serde(default = "clip::default_image_size")]
    pub image_size: usize,
    #[serde(default = "clip::default_patch")]
    pub patch_size: usize,
    #[serde(default = "clip::default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_frames")]
    pub num_frames: usize,
    #[serde(default = "clip::default_act")]
    pub hidden_act: String,
    #[serde(default = "clip::default_eps")]
    pub layer_norm_eps: f64,
}

// transformers' XCLIPConfig / XCLIPVisionConfig defaults (microsoft/xclip-base-patch32).
fn default_prompt_layers() -> usize {
    2
}
fn default_prompt_alpha() -> f32 {
    0.1
}
fn default_prompt_heads() -> usize {
    8
}
fn default_mit_hidden() -> usize {
    512
}
fn default_mit_intermediate() -> usize {
    2048
}
fn default_mit_layers() -> usize {
    1
}
fn default_mit_heads() -> usize {
    8
}
fn default_frames() -> usize {
    8
}

impl Config {
    /// The native blocks are quick_gelu with eps 1e-5 (candle's CLIP encoder hard-codes them),
    /// and the integration transformer's residual adds the projected frame embeddings.
    fn check(&self) -> Result<(), EngineError> {
        self.text_config.check()?;
        let v = &self.vision_config;
        clip::check_tower("vision", &v.hidden_act, v.layer_norm_eps)?;
        clip::check_tower("prompt generator", &self.prompt_hidden_act, 1e-5)?;
        if v.mit_hidden_size != self.projection_dim {
            return Err(EngineError::InvalidModel(format!(
                "X-CLIP mit_hidden_size {} differs from projection_dim {}: the integration transformer adds the two",
                v.mit_hidden_size, self.projection_dim
            )));
        }
        let heads_divide = |what: &str, dim: usize, heads: usize| {
            if heads == 0 || !dim.is_multiple_of(heads) {
                return Err(EngineError::InvalidModel(format!(
                    "X-CLIP {what}: {heads} attention heads do not divide {dim}"
                )));
            }
            Ok(())
        };
        heads_divide("vision", v.hidden_size, v.num_attention_heads)?;
        heads_divide("mit", v.mit_hidden_size, v.mit_num_attention_heads)?;
        heads_divide(
            "prompt generator",
            self.projection_dim,
            self.prompt_num_attention_heads,
        )?;
        if v.num_frames == 0 || v.patch_size == 0 || v.image_size < v.patch_size {
            return Err(EngineError::InvalidModel(format!(
                "X-CLIP vision config: {} frames, patch {} on image {}",
                v.num_frames, v.patch_size, v.image_size
            )));
        }
        Ok(())
    }

    /// The integration transformer: CLIP encoder layers at the mit sizes.
    fn mit(&self) -> EncoderConfig {
        let v = &self.vision_config;
        EncoderConfig::Vision(vision_model::ClipVisionConfig {
            embed_dim: v.mit_hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: v.mit_intermediate_size,
            num_hidden_layers: v.mit_num_hidden_layers,
            num_attention_heads: v.mit_num_attention_heads,
            projection_dim: self.projection_dim,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
        })
    }
}

const EPS: f64 = 1e-5;

/// `XCLIPVisionEncoderLayer` (the original's `CrossFramelAttentionBlock`).
struct CrossFrameLayer {
    message_fc: Linear,
    message_ln: LayerNorm,
    message_attn: MultiHeadAttention,
    self_attn: MultiHeadAttention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl CrossFrameLayer {
    fn load(v: &VisionConfig, vb: VarBuilder, products: Products) -> candle_core::Result<Self> {
        let d = v.hidden_size;
        Ok(Self {
            message_fc: linear(d, d, vb.pp("message_fc"))?,
            message_ln: LayerNorm::load(d, EPS, vb.pp("message_ln"))?,
            message_attn: MultiHeadAttention::load(
                d,
                v.num_attention_heads,
                true,
                vb.pp("message_attn"),
                products,
            )?,
            self_attn: MultiHeadAttention::load(
                d,
                v.num_attention_heads,
                true,
                vb.pp("self_attn"),
                products,
            )?,
            layer_norm1: LayerNorm::load(d, EPS, vb.pp("layer_norm1"))?,
            mlp: Mlp::load(
                d,
                v.intermediate_size,
                FeedForwardAct::Fused(kernels::Activation::QuickGelu),
                &vb.pp("mlp"),
                products,
            )?,
            layer_norm2: LayerNorm::load(d, EPS, vb.pp("layer_norm2"))?,
        })
    }

    /// `xs`: (videos * frames, tokens, hidden), frames of a video adjacent.
    fn forward(&self, xs: &Tensor, frames: usize) -> candle_core::Result<Tensor> {
        let (batch_time, tokens, hidden) = xs.dims3()?;
        let msg = self.message_fc.forward(&xs.i((.., 0, ..))?)?.reshape((
            batch_time / frames,
            frames,
            hidden,
        ))?;
        let msg = (&msg
            + self
                .message_attn
                .forward(&self.message_ln.forward(&msg)?, None)?)?
        .reshape((batch_time, 1, hidden))?;
        let h = Tensor::cat(&[xs, &msg], 1)?;
        let h = (&h
            + self
                .self_attn
                .forward(&self.layer_norm1.forward(&h)?, None)?)?;
        let h = h.narrow(1, 0, tokens)?;
        &h + self.mlp.forward(&self.layer_norm2.forward(&h)?)?
    }
}

/// `XCLIPVisionModel`: last hidden states of every frame, and their post-normed CLS states.
struct VisionTower {
    embeddings: clip::VisionEmbeddings,
    pre_layernorm: LayerNorm,
    layers: Vec<CrossFrameLayer>,
    post_layernorm: LayerNorm,
    frames: usize,
}

impl VisionTower {
    fn load(v: &VisionConfig, vb: VarBuilder, products: Products) -> candle_core::Result<Self> {
        let layers = (0..v.num_hidden_layers)
            .map(|i| CrossFrameLayer::load(v, vb.pp(format!("encoder.layers.{i}")), products))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            embeddings: clip::VisionEmbeddings::load(
                (v.num_channels, v.hidden_size, v.image_size, v.patch_size),
                vb.pp("embeddings"),
                products,
            )?,
            pre_layernorm: LayerNorm::load(v.hidden_size, EPS, vb.pp("pre_layernorm"))?,
            layers,
            post_layernorm: LayerNorm::load(v.hidden_size, EPS, vb.pp("post_layernorm"))?,
            frames: v.num_frames,
        })
    }

    fn forward(&self, pixels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let mut xs = self
            .pre_layernorm
            .forward(&self.embeddings.forward(pixels)?)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, self.frames)?;
        }
        let pooled = self.post_layernorm.forward(&xs.i((.., 0, ..))?)?;
        Ok((xs, pooled))
    }
}

/// `PromptGeneratorLayer`: the texts attend over the clip's patch features.
struct PromptLayer {
    cross_attn: MultiHeadAttention,
    norm1: LayerNorm,
    norm3: LayerNorm,
    mlp_in: Linear,
    mlp_out: Linear,
}

impl PromptLayer {
    fn load(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let p = cfg.projection_dim;
        let eps = cfg.text_config.layer_norm_eps;
        let a = vb.pp("cross_attn");
        let parts = [
            linear_no_bias(p, p, a.pp("q_proj"))?,
            linear_no_bias(p, p, a.pp("k_proj"))?,
            linear_no_bias(p, p, a.pp("v_proj"))?,
            linear(p, p, a.pp("proj"))?,
        ];
        Ok(Self {
            cross_attn: MultiHeadAttention::from_parts(parts, p, cfg.prompt_num_attention_heads)?,
            norm1: LayerNorm::load(p, eps, vb.pp("norm1"))?,
            norm3: LayerNorm::load(p, eps, vb.pp("norm3"))?,
            // nn.Sequential(Linear, act, Dropout, Linear): indices 0 and 3.
            mlp_in: linear(p, 4 * p, vb.pp("mlp.0"))?,
            mlp_out: linear(4 * p, p, vb.pp("mlp.3"))?,
        })
    }

    fn forward(&self, text: &Tensor, visual: &Tensor) -> candle_core::Result<Tensor> {
        let text = (text
            + self
                .cross_attn
                .attend_inputs(&self.norm1.forward(text)?, visual, visual, None)?)?;
        let mlp = self.mlp_out.forward(
            &Activation::QuickGelu.forward(&self.mlp_in.forward(&self.norm3.forward(&text)?)?)?,
        )?;
        &text + mlp
    }
}

/// `XCLIPPromptGenerator` (the original's `VideoSpecificPrompt`).
struct PromptGenerator {
    layernorm: LayerNorm,
    layers: Vec<PromptLayer>,
    alpha: Tensor,
}

impl PromptGenerator {
    fn load(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let layers = (0..cfg.prompt_layers)
            .map(|i| PromptLayer::load(cfg, vb.pp(format!("decoder.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            layernorm: LayerNorm::load(
                cfg.projection_dim,
                cfg.vision_config.layer_norm_eps,
                vb.pp("layernorm"),
            )?,
            layers,
            alpha: vb.get(cfg.projection_dim, "alpha")?,
        })
    }

    fn forward(&self, text: &Tensor, visual: &Tensor) -> candle_core::Result<Tensor> {
        let visual = self.layernorm.forward(visual)?;
        let mut text = text.clone();
        for layer in &self.layers {
            text = layer.forward(&text, &visual)?;
        }
        text.broadcast_mul(&self.alpha)
    }
}

/// `XCLIPMultiframeIntegrationTransformer`: frame embeddings plus positions through CLIP
/// encoder layers, the residual added back, averaged over the frames.
struct Integration {
    position_embedding: Tensor,
    encoder: ClipEncoder,
}

impl Integration {
    fn forward(&self, frames: &Tensor) -> candle_core::Result<Tensor> {
        let xs = frames.broadcast_add(&self.position_embedding)?;
        (self.encoder.forward(&xs, None)? + frames)?.mean(1)
    }
}

struct Model {
    text: clip::TextTower,
    vision: VisionTower,
    visual_projection: Linear,
    text_projection: Linear,
    prompts_visual_layernorm: LayerNorm,
    prompts_visual_projection: Tensor,
    mit: Integration,
    prompts_generator: PromptGenerator,
    logit_scale: Tensor,
}

impl Model {
    /// `products`: how the text tower's and the vision tower's linear layers multiply (the
    /// small rest, the frames' message projection, the multi-frame integration and the prompt
    /// generator, stays as loaded).
    fn load(cfg: &Config, vb: VarBuilder, products: Products) -> candle_core::Result<Self> {
        let v = &cfg.vision_config;
        let p = cfg.projection_dim;
        Ok(Self {
            text: clip::TextTower::load(&cfg.text_config, vb.pp("text_model"), products)?,
            vision: VisionTower::load(v, vb.pp("vision_model"), products)?,
            visual_projection: linear_no_bias(v.hidden_size, p, vb.pp("visual_projection"))?,
            text_projection: linear_no_bias(
                cfg.text_config.hidden_size,
                p,
                vb.pp("text_projection"),
            )?,
            prompts_visual_layernorm: LayerNorm::load(
                v.hidden_size,
                v.layer_norm_eps,
                vb.pp("prompts_visual_layernorm"),
            )?,
            prompts_visual_projection: vb.get((v.hidden_size, p), "prompts_visual_projection")?,
            mit: Integration {
                position_embedding: vb.get((1, v.num_frames, p), "mit.position_embedding")?,
                encoder: ClipEncoder::new(vb.pp("mit.encoder"), &cfg.mit())?,
            },
            prompts_generator: PromptGenerator::load(cfg, vb.pp("prompts_generator"))?,
            logit_scale: vb.get((), "logit_scale")?,
        })
    }

    /// `pixels`: (videos * frames, channels, height, width). Returns the normalised video
    /// embeddings (videos, projection) and the clips' patch features the prompt generator
    /// reads (videos, patches, projection).
    fn video(&self, pixels: &Tensor, videos: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let frames = self.vision.frames;
        let (hidden, pooled) = self.vision.forward(pixels)?;
        let cls = self
            .visual_projection
            .forward(&pooled)?
            .reshape((videos, frames, ()))?;
        let video = normalise(&self.mit.forward(&cls)?)?;
        let patches = hidden.narrow(1, 1, hidden.dim(1)? - 1)?;
        let patches = self
            .prompts_visual_layernorm
            .forward(&patches)?
            .broadcast_matmul(&self.prompts_visual_projection)?;
        let (_, n, p) = patches.dims3()?;
        let patches = patches.reshape((videos, frames, n, p))?.mean(1)?;
        Ok((video, patches))
    }

    /// Normalised text embeddings per video (videos, texts, projection) and the scaled
    /// cosine similarities (videos, texts).
    fn score(
        &self,
        video: &Tensor,
        patches: &Tensor,
        ids: &[u32],
        texts: usize,
        seq_len: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let videos = video.dim(0)?;
        let input_ids = Tensor::from_slice(ids, (texts, seq_len), video.device())?;
        let hidden = self.text.forward(&input_ids)?;
        // XCLIPTextModel forces the legacy pooling: the highest id ends the text.
        let text = clip::pool_at_eos(&hidden, ids, seq_len, 2)?
            .apply(&self.text_projection)?
            .unsqueeze(0)?
            .broadcast_as((videos, texts, video.dim(1)?))?
            .contiguous()?;
        let text = normalise(&(&text + self.prompts_generator.forward(&text, patches)?)?)?;
        let logits = text
            .matmul(&video.unsqueeze(2)?)?
            .squeeze(2)?
            .broadcast_mul(&self.logit_scale.exp()?)?;
        Ok((text, logits))
    }
}

fn normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

pub struct XclipSession {
    model: Model,
    device: Device,
    dtype: DType,
    info: SessionInfo,
}

impl XclipSession {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn Session>, EngineError> {
        let cfg: Config = super::parse_config(ctx.source, "X-CLIP")?;
        cfg.check()?;
        let (model, info) = ctx.build(
            "X-CLIP",
            &["video_embeds", "text_embeds", "logits_per_video"],
            |vb| Model::load(&cfg, vb, ctx.products),
        )?;
        Ok(Box::new(Self {
            model,
            device: ctx.device,
            dtype: ctx.dtype,
            info,
        }))
    }
}

impl Session for XclipSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> Result<Outputs, EngineError> {
        let Inputs::Video {
            shape,
            pixel_values,
            texts,
        } = inputs
        else {
            return Err(EngineError::InvalidInput(
                "X-CLIP takes video clips (with label texts to score them against)".into(),
            ));
        };
        let [videos, frames, c, h, w] = *shape;
        if frames != self.model.vision.frames {
            return Err(EngineError::InvalidInput(format!(
                "X-CLIP was trained on clips of {} frames; got {frames}",
                self.model.vision.frames
            )));
        }
        let pixels = Tensor::from_slice(pixel_values, (videos * frames, c, h, w), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(rt)?;
        let (video, patches) = self.model.video(&pixels, videos).map_err(rt)?;
        let mut tensors: Vec<(String, Box<dyn ia_engine::OutputTensor>)> = Vec::new();
        if let Some(texts) = texts {
            let Inputs::Text {
                batch,
                seq_len,
                input_ids,
                ..
            } = texts.as_ref()
            else {
                return Err(EngineError::InvalidInput(
                    "X-CLIP scores a clip against tokenised texts".into(),
                ));
            };
            let (text, logits) = self
                .model
                .score(&video, &patches, input_ids, *batch, *seq_len)
                .map_err(rt)?;
            tensors.push(("text_embeds".into(), Box::new(CandleOutput(text))));
            tensors.push(("logits_per_video".into(), Box::new(CandleOutput(logits))));
        }
        tensors.insert(0, ("video_embeds".into(), Box::new(CandleOutput(video))));
        Ok(Outputs { tensors })
    }
}
