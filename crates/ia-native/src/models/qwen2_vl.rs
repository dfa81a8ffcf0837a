//! Qwen2-VL (transformers' `Qwen2VLForConditionalGeneration`, `modeling_qwen2_vl.py`).
//!
//! Images come at their own resolution (the processor's `smart_resize`), cut into patches
//! whose 2 x 2 blocks the vision transformer merges into one language-model token. The
//! vision blocks rotate queries and keys by each patch's row and column (a 2D rotary
//! embedding); the language model is our Qwen2 decoder with M-RoPE: a prompt's text tokens
//! take one position each, an image's tokens share a temporal position and spread over its
//! rows and columns, and the tokens after continue from the largest (`get_rope_index`).

use super::llava::{layout, merge_image_features};
use super::{decoder, LoadContext};
use crate::rt;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{layer_norm, linear, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::clip::text_model::Activation as ClipActivation;
use ia_engine::generation::ImageBatch;
use ia_engine::{EngineError, SessionInfo, TextGenerator};
use ia_preprocess::image::PatchGrid;
use serde::Deserialize;
use serde_json::Value;

/// `Qwen2VLVisionConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    /// The language model's width, which the merger projects to.
    pub hidden_size: usize,
    #[serde(default = "default_vision_act")]
    pub hidden_act: String,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_heads")]
    pub num_heads: usize,
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_merge")]
    pub spatial_merge_size: usize,
    #[serde(default = "default_temporal")]
    pub temporal_patch_size: usize,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
}

// Qwen2VLVisionConfig's defaults (Qwen2-VL-7B's tower).
fn default_depth() -> usize {
    32
}
fn default_embed_dim() -> usize {
    1280
}
fn default_vision_act() -> String {
    "quick_gelu".into()
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_heads() -> usize {
    16
}
fn default_channels() -> usize {
    3
}
fn default_patch() -> usize {
    14
}
fn default_merge() -> usize {
    2
}
fn default_temporal() -> usize {
    2
}
fn default_image_token() -> u32 {
    151655
}

#[derive(Debug, Clone, Deserialize)]
struct Config {
    vision_config: VisionConfig,
    #[serde(default = "default_image_token")]
    image_token_id: u32,
}

impl VisionConfig {
    fn check(&self) -> Result<(), EngineError> {
        let head = self.embed_dim / self.num_heads.max(1);
        if self.num_heads == 0
            || !self.embed_dim.is_multiple_of(self.num_heads)
            || !head.is_multiple_of(4)
            || self.patch_size == 0
            || self.spatial_merge_size == 0
            || self.temporal_patch_size == 0
        {
            return Err(EngineError::InvalidModel(format!(
                "Qwen2-VL vision config: embed_dim {} over {} heads (head size a multiple of 4), patch {}, merge {}, temporal patch {}",
                self.embed_dim, self.num_heads, self.patch_size, self.spatial_merge_size, self.temporal_patch_size
            )));
        }
        if self.hidden_act != "quick_gelu" {
            return Err(EngineError::Unsupported(format!(
                "Qwen2-VL vision hidden_act {} (quick_gelu is implemented)",
                self.hidden_act
            )));
        }
        Ok(())
    }

    fn grid(&self) -> PatchGrid {
        PatchGrid {
            patch: self.patch_size,
            merge: self.spatial_merge_size,
            temporal: self.temporal_patch_size,
        }
    }

    fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0)
    }
}

/// The language model's config: `text_config` (transformers 5), or the top level (the hub's
/// flat configs), with the top level's `tie_word_embeddings` where the text part has none.
fn text_config(config: &Value) -> Result<decoder::Config, EngineError> {
    let mut text = config.get("text_config").unwrap_or(config).clone();
    if let (Some(obj), Some(tie)) = (text.as_object_mut(), config.get("tie_word_embeddings")) {
        obj.entry("tie_word_embeddings").or_insert(tie.clone());
    }
    let cfg = decoder::Config::from_json(&text)?;
    if cfg.mrope()?.is_none() {
        return Err(EngineError::InvalidModel(
            "Qwen2-VL's text config has no rope mrope_section".into(),
        ));
    }
    Ok(cfg)
}

/// `VisionAttention` + `Qwen2VLVisionBlock`.
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn load(v: &VisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = v.embed_dim;
        let hidden = (d as f64 * v.mlp_ratio) as usize;
        Ok(Self {
            norm1: layer_norm(d, 1e-6, vb.pp("norm1"))?,
            qkv: linear(d, 3 * d, vb.pp("attn.qkv"))?,
            proj: linear(d, d, vb.pp("attn.proj"))?,
            norm2: layer_norm(d, 1e-6, vb.pp("norm2"))?,
            fc1: linear(d, hidden, vb.pp("mlp.fc1"))?,
            fc2: linear(hidden, d, vb.pp("mlp.fc2"))?,
            heads: v.num_heads,
        })
    }

    /// `x`: [patches, embed] of one image, rotated by `cos`/`sin` [patches, head/2].
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let (n, d) = x.dims2()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((n, 3, self.heads, hd))?
            .permute((1, 2, 0, 3))?; // [3, heads, n, hd]
        let dtype = qkv.dtype();
        // Rotated in f32, as apply_rotary_pos_emb_vision does.
        let rotate = |t: Tensor| -> candle_core::Result<Tensor> {
            candle_nn::rotary_emb::rope(
                &t.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?,
                cos,
                sin,
            )?
            .squeeze(0)?
            .to_dtype(dtype)
        };
        let q = rotate(qkv.get(0)?)?;
        let k = rotate(qkv.get(1)?)?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
        let attended = probs
            .matmul(&v)?
            .transpose(0, 1)?
            .reshape((n, d))?
            .apply(&self.proj)?;
        let x = (x + attended)?;
        let mlp = self.fc2.forward(
            &ClipActivation::QuickGelu.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?)?,
        )?;
        &x + mlp
    }
}

/// `Qwen2VisionTransformerPretrainedModel`: patches of one image -> its merged tokens.
struct Vision {
    patch_embed: Linear,
    blocks: Vec<Block>,
    ln_q: LayerNorm,
    merge_in: Linear,
    merge_out: Linear,
    grid: PatchGrid,
    /// Inverse frequencies of the 2D rotary embedding: head/4 per axis.
    inv_freq: Vec<f32>,
    device: Device,
}

impl Vision {
    fn load(v: &VisionConfig, vb: VarBuilder, device: &Device) -> candle_core::Result<Self> {
        let patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
        // Conv3d with kernel = stride = (temporal, patch, patch) on one patch is a matmul.
        let w = vb.get(
            (
                v.embed_dim,
                v.in_channels,
                v.temporal_patch_size,
                v.patch_size,
                v.patch_size,
            ),
            "patch_embed.proj.weight",
        )?;
        let merged = v.embed_dim * v.spatial_merge_size * v.spatial_merge_size;
        let spatial = v.embed_dim / v.num_heads / 2;
        let theta = v.rope_theta();
        Ok(Self {
            patch_embed: Linear::new(w.reshape((v.embed_dim, patch_dim))?, None),
            blocks: (0..v.depth)
                .map(|i| Block::load(v, vb.pp(format!("blocks.{i}"))))
                .collect::<candle_core::Result<_>>()?,
            ln_q: layer_norm(v.embed_dim, 1e-6, vb.pp("merger.ln_q"))?,
            merge_in: linear(merged, merged, vb.pp("merger.mlp.0"))?,
            merge_out: linear(merged, v.hidden_size, vb.pp("merger.mlp.2"))?,
            grid: v.grid(),
            inv_freq: (0..spatial)
                .step_by(2)
                .map(|i| 1.0 / theta.powf(i as f64 / spatial as f64) as f32)
                .collect(),
            device: device.clone(),
        })
    }

    /// The rotary cos and sin of each patch, in the patchified order (merge blocks
    /// adjacent): its row's angles, then its column's. [patches, head/2].
    fn rotary(&self, grid_h: usize, grid_w: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let m = self.grid.merge;
        let mut angles = Vec::with_capacity(grid_h * grid_w * 2 * self.inv_freq.len());
        for bi in 0..grid_h / m {
            for bj in 0..grid_w / m {
                for mi in 0..m {
                    for mj in 0..m {
                        let (h, w) = ((bi * m + mi) as f32, (bj * m + mj) as f32);
                        angles.extend(self.inv_freq.iter().map(|f| h * f));
                        angles.extend(self.inv_freq.iter().map(|f| w * f));
                    }
                }
            }
        }
        let n = grid_h * grid_w;
        let angles = Tensor::from_vec(angles, (n, 2 * self.inv_freq.len()), &self.device)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// One processed image (CHW, `height` x `width`) -> [tokens, language hidden].
    fn forward(
        &self,
        chw: &[f32],
        height: usize,
        width: usize,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let p = self.grid.patch;
        let (gh, gw) = (height / p, width / p);
        let patches = self.grid.patchify(chw, height, width);
        let n = gh * gw;
        let x = Tensor::from_vec(patches, (n, ()), &self.device)?.to_dtype(dtype)?;
        let mut x = self.patch_embed.forward(&x)?;
        let (cos, sin) = self.rotary(gh, gw)?;
        for block in &self.blocks {
            x = block.forward(&x, &cos, &sin)?;
        }
        let merged = self.grid.merge * self.grid.merge * x.dim(D::Minus1)?;
        let x = self
            .ln_q
            .forward(&x)?
            .reshape((n / (self.grid.merge * self.grid.merge), merged))?;
        self.merge_out
            .forward(&self.merge_in.forward(&x)?.gelu_erf()?)
    }
}

pub struct Qwen2Vl {
    vision: Vision,
    language: decoder::Decoder,
    image_token: u32,
    /// Features of the attached images and each one's merged token grid (rows, columns).
    attached: Option<(Tensor, Vec<(usize, usize)>)>,
    dtype: DType,
}

impl Qwen2Vl {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn TextGenerator>, EngineError> {
        let config = ctx.source.config();
        let cfg: Config = serde_json::from_value(config.clone()).map_err(|e| {
            EngineError::InvalidModel(format!(
                "config.json does not describe a Qwen2-VL model: {e}"
            ))
        })?;
        cfg.vision_config.check()?;
        let text = text_config(config)?;
        if cfg.vision_config.hidden_size != text.hidden_size {
            return Err(EngineError::InvalidModel(format!(
                "Qwen2-VL's merger projects to {} but the language model is {} wide",
                cfg.vision_config.hidden_size, text.hidden_size
            )));
        }
        let device = ctx.device.clone();
        let ((vision, weights), mut info) = ctx.build("Qwen2-VL", &["logits"], |vb| {
            // The hub's layout (visual, model, lm_head), or transformers 5's module tree.
            let (visual, language) = match layout(
                &vb,
                &[
                    ("hub", "visual.patch_embed.proj.weight"),
                    ("modules", "model.visual.patch_embed.proj.weight"),
                ],
            ) {
                "hub" => ("visual", "model"),
                _ => ("model.visual", "model.language_model"),
            };
            let vision = Vision::load(&cfg.vision_config, vb.pp(visual), &device)?;
            let weights = decoder::Weights::load(&text, vb.pp(language), vb.pp("lm_head"))?;
            Ok((vision, weights))
        })?;
        info.output_names = vec!["logits".into()];
        let language = decoder::Decoder::new(&text, weights, info, &ctx)?;
        Ok(Box::new(Self {
            vision,
            language,
            image_token: cfg.image_token_id,
            attached: None,
            dtype: ctx.dtype,
        }))
    }

    /// `get_rope_index` for one prompt: text tokens one position each; the next image's
    /// run of image tokens at (start, start + row, start + column); text after continues
    /// from start + the image's longer side.
    fn rope_positions(
        &self,
        prompt: &[u32],
        grids: &mut impl Iterator<Item = (usize, usize)>,
    ) -> Result<Vec<[u32; 3]>, EngineError> {
        let mut out = Vec::with_capacity(prompt.len());
        let mut next = 0usize;
        let mut i = 0;
        while i < prompt.len() {
            if prompt[i] != self.image_token {
                out.push([next as u32; 3]);
                next += 1;
                i += 1;
                continue;
            }
            let run = prompt[i..]
                .iter()
                .take_while(|&&t| t == self.image_token)
                .count();
            let (rows, cols) = grids.next().ok_or_else(|| {
                EngineError::InvalidInput("more image-token runs than attached images".into())
            })?;
            if run != rows * cols {
                return Err(EngineError::InvalidInput(format!(
                    "an image's run of {run} image tokens; its features are {rows}x{cols} = {} tokens",
                    rows * cols
                )));
            }
            for r in 0..rows {
                for c in 0..cols {
                    out.push([next as u32, (next + r) as u32, (next + c) as u32]);
                }
            }
            next += rows.max(cols);
            i += run;
        }
        Ok(out)
    }
}

impl TextGenerator for Qwen2Vl {
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
        let (features, grids) = match self.attached.take() {
            Some((f, g)) => (Some(f), g),
            None => (None, Vec::new()),
        };
        match merge_image_features(
            &self.language,
            prompts,
            self.image_token,
            features,
            self.dtype,
        )? {
            None => self.language.prefill_batch(prompts),
            Some(x) => {
                let mut grids = grids.into_iter();
                let positions = prompts
                    .iter()
                    .map(|p| self.rope_positions(p, &mut grids))
                    .collect::<Result<Vec<_>, _>>()?;
                self.language.prefill_embedded_at(prompts, x, &positions)
            }
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

    /// Images as the processor resized them (NCHW, all one size): each becomes
    /// (height / patch / merge) x (width / patch / merge) tokens.
    fn attach_images(&mut self, images: &ImageBatch) -> Result<Vec<usize>, EngineError> {
        let [n, channels, height, width] = images.shape;
        let unit = self.vision.grid.patch * self.vision.grid.merge;
        if n == 0
            || channels != 3
            || height % unit != 0
            || width % unit != 0
            || height == 0
            || width == 0
        {
            return Err(EngineError::InvalidInput(format!(
                "{n} images of {channels}x{height}x{width}: Qwen2-VL takes RGB images whose sides are multiples of {unit} (its processor's smart_resize)"
            )));
        }
        let per = channels * height * width;
        let mut features = Vec::with_capacity(n);
        for i in 0..n {
            let chw = &images.pixel_values[i * per..(i + 1) * per];
            features.push(
                self.vision
                    .forward(chw, height, width, self.dtype)
                    .map_err(rt)?,
            );
        }
        let grid = (height / unit, width / unit);
        let tokens = grid.0 * grid.1;
        self.attached = Some((Tensor::cat(&features, 0).map_err(rt)?, vec![grid; n]));
        Ok(vec![tokens; n])
    }
}
