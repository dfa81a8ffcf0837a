//! CLAP (transformers' `ClapModel`), written against `modeling_clap.py`: an HTSAT audio encoder
//! (a Swin transformer over the log-mel spectrogram folded into an image, with the attentional
//! feature fusion of the "fused" checkpoints) and a RoBERTa text encoder ([`super::bert`] with
//! RoBERTa's positions), each with a two-layer projection. candle has no CLAP.
//!
//! Every linear layer is a [`Dense`] (under `--precision bf16`, bf16 products); the
//! convolutions, the Swin windows' attention and the norms stay f32.
//!
//! `run` with audio gives `audio_embeds`, with text `text_embeds` (projected, not normalised),
//! plus `logit_scale` (exp of `logit_scale_a`) for zero-shot audio classification. Audio inputs
//! are waveforms at the feature extractor's rate (48 kHz); the features are computed inside.

use super::bert::{self, BertModel};
use super::encoder::{Dense, Products, SelfAttention};
use super::LoadContext;
use crate::kernels::LayerNorm;
use crate::{rt, CandleOutput};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{conv2d, Activation, Conv2d, VarBuilder};
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use ia_preprocess::audio::ClapFrontEnd;
use serde::Deserialize;
use std::sync::atomic::Ordering;

/// HF `ClapAudioConfig` (the HTSAT encoder).
#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    #[serde(default = "d_window")]
    pub window_size: usize,
    #[serde(default = "d_mels")]
    pub num_mel_bins: usize,
    #[serde(default = "d_spec")]
    pub spec_size: usize,
    #[serde(default)]
    pub hidden_act: Activation,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_stride")]
    pub patch_stride: serde_json::Value,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_proj")]
    pub projection_dim: usize,
    #[serde(default = "d_depths")]
    pub depths: Vec<usize>,
    #[serde(default = "d_heads")]
    pub num_attention_heads: Vec<usize>,
    #[serde(default)]
    pub enable_fusion: bool,
    #[serde(default = "d_one")]
    pub patch_embed_input_channels: usize,
    #[serde(default = "d_embeds")]
    pub patch_embeds_hidden_size: usize,
    #[serde(default = "yes")]
    pub enable_patch_layer_norm: bool,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default = "d_mlp")]
    pub mlp_ratio: f64,
    #[serde(default = "d_aff")]
    pub aff_block_r: usize,
    #[serde(default = "d_relu")]
    pub projection_hidden_act: Activation,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub fusion_type: Option<String>,
}

fn d_window() -> usize {
    8
}
fn d_mels() -> usize {
    64
}
fn d_spec() -> usize {
    256
}
fn d_patch() -> usize {
    4
}
fn d_stride() -> serde_json::Value {
    serde_json::json!([4, 4])
}
fn d_hidden() -> usize {
    768
}
fn d_proj() -> usize {
    512
}
fn d_depths() -> Vec<usize> {
    vec![2, 2, 6, 2]
}
fn d_heads() -> Vec<usize> {
    vec![4, 8, 16, 32]
}
fn d_one() -> usize {
    1
}
fn d_embeds() -> usize {
    96
}
fn yes() -> bool {
    true
}
fn d_mlp() -> f64 {
    4.0
}
fn d_aff() -> usize {
    4
}
fn d_relu() -> Activation {
    Activation::Relu
}
fn d_eps() -> f64 {
    1e-5
}

/// The projection settings of `ClapTextConfig` (the rest is RoBERTa's config).
#[derive(Debug, Clone, Deserialize)]
struct TextProjection {
    #[serde(default = "d_proj")]
    projection_dim: usize,
    #[serde(default = "d_relu")]
    projection_hidden_act: Activation,
    hidden_size: usize,
}

/// Linear -> activation -> linear (`ClapProjectionLayer`).
struct Projection {
    linear1: Dense,
    act: Activation,
    linear2: Dense,
}

impl Projection {
    fn load(
        hidden: usize,
        dim: usize,
        act: Activation,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        Ok(Self {
            linear1: Dense::load(hidden, dim, vb.pp("linear1"), products)?,
            act,
            linear2: Dense::load(dim, dim, vb.pp("linear2"), products)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear2
            .forward(&self.linear1.forward_activated(x, self.act)?)
    }
}

/// Eval-mode BatchNorm2d folded to a per-channel scale and shift.
struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    fn load(n: usize, vb: VarBuilder) -> Result<Self> {
        let scale = (vb.get(n, "weight")? / (vb.get(n, "running_var")? + 1e-5)?.sqrt()?)?;
        let shift = (vb.get(n, "bias")? - (vb.get(n, "running_mean")? * &scale)?)?;
        Ok(Self { scale, shift })
    }

    /// Normalises dimension `dim` of `x`.
    fn forward(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let mut shape = vec![1; x.rank()];
        shape[dim] = self.scale.dim(0)?;
        x.broadcast_mul(&self.scale.reshape(shape.clone())?)?
            .broadcast_add(&self.shift.reshape(shape)?)
    }
}

/// A convolution whose kernel equals its stride and has no padding: non-overlapping patches,
/// computed as a matrix product (candle's conv2d takes square kernels only).
struct Patchify {
    weight: Tensor,
    bias: Tensor,
    kernel: (usize, usize),
}

impl Patchify {
    fn load(cin: usize, cout: usize, kernel: (usize, usize), vb: VarBuilder) -> Result<Self> {
        let w = vb.get((cout, cin, kernel.0, kernel.1), "weight")?;
        Ok(Self {
            weight: w.reshape((cout, cin * kernel.0 * kernel.1))?,
            bias: vb.get(cout, "bias")?,
            kernel,
        })
    }

    /// [n, c, h, w] -> [n, cout, h / kh, w / kw]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (kh, kw) = self.kernel;
        let (oh, ow) = (h / kh, w / kw);
        let x = x.narrow(2, 0, oh * kh)?.narrow(3, 0, ow * kw)?;
        let patches = x
            .reshape((n, c, oh, kh, ow, kw))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n * oh * ow, c * kh * kw))?;
        let y = patches
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        y.reshape((n, oh, ow, self.weight.dim(0)?))?
            .permute((0, 3, 1, 2))
    }
}

/// Attentional feature fusion (`ClapAudioAFFBlock`).
struct Aff {
    local: (Conv2d, BatchNorm, Conv2d, BatchNorm),
    global: (Conv2d, BatchNorm, Conv2d, BatchNorm),
}

impl Aff {
    fn load(channels: usize, r: usize, vb: VarBuilder) -> Result<Self> {
        let inter = channels / r;
        let branch =
            |vb: VarBuilder, first: usize| -> Result<(Conv2d, BatchNorm, Conv2d, BatchNorm)> {
                let i = |k: usize| vb.pp((first + k).to_string());
                Ok((
                    conv2d(channels, inter, 1, Default::default(), i(0))?,
                    BatchNorm::load(inter, i(1))?,
                    conv2d(inter, channels, 1, Default::default(), i(3))?,
                    BatchNorm::load(channels, i(4))?,
                ))
            };
        Ok(Self {
            local: branch(vb.pp("local_att"), 0)?,
            global: branch(vb.pp("global_att"), 1)?,
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let xa = (x + residual)?;
        let run = |b: &(Conv2d, BatchNorm, Conv2d, BatchNorm), t: &Tensor| -> Result<Tensor> {
            let h = b.1.forward(&b.0.forward(t)?, 1)?.relu()?;
            b.3.forward(&b.2.forward(&h)?, 1)
        };
        let pooled = xa.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
        let w = candle_nn::ops::sigmoid(
            &run(&self.local, &xa)?.broadcast_add(&run(&self.global, &pooled)?)?,
        )?;
        let a = (x * &w)?;
        let b = (residual * w.affine(-1.0, 1.0)?)?;
        (a + b)? * 2.0
    }
}

struct SwinBlock {
    layernorm_before: LayerNorm,
    attention: SelfAttention,
    /// What the windows' scores add, [windows of a map (1 unshifted), heads, window^2,
    /// window^2]: each head's relative position bias, plus in a shifted block the mask of each
    /// window's regions.
    score_bias: Tensor,
    dense: Dense,
    layernorm_after: LayerNorm,
    intermediate: Dense,
    output: Dense,
    act: Activation,
    window: usize,
    shift: usize,
}

impl SwinBlock {
    fn load(
        cfg: &AudioConfig,
        dim: usize,
        heads: usize,
        res: (usize, usize),
        shift: usize,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        // Windows never exceed the map; a map that fits one window is not shifted.
        let (window, shift) = if res.0.min(res.1) <= cfg.window_size {
            (res.0.min(res.1), 0)
        } else {
            (cfg.window_size, shift)
        };
        let a = vb.pp("attention.self");
        let table_window = cfg.window_size;
        let table = a.get(
            ((2 * table_window - 1).pow(2), heads),
            "relative_position_bias_table",
        )?;
        let n = window * window;
        let mut index = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..n {
                let dy = (i / window) as i64 - (j / window) as i64 + window as i64 - 1;
                let dx = (i % window) as i64 - (j % window) as i64 + window as i64 - 1;
                index.push((dy * (2 * window as i64 - 1) + dx) as u32);
            }
        }
        let index = Tensor::from_vec(index, n * n, vb.device())?;
        let relative_bias = table
            .index_select(&index, 0)?
            .reshape((n, n, heads))?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .unsqueeze(0)?;
        let padded = |len: usize| len.next_multiple_of(window);
        let score_bias = if shift > 0 {
            let mask = shift_mask(window, shift, padded(res.0), padded(res.1), vb.device())?;
            relative_bias.broadcast_add(&mask.unsqueeze(1)?)?
        } else {
            relative_bias.contiguous()?
        };
        let hidden = (cfg.mlp_ratio * dim as f64) as usize;
        Ok(Self {
            layernorm_before: LayerNorm::load(dim, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
            attention: SelfAttention::load(dim, heads, cfg.qkv_bias, a, products)?,
            score_bias,
            dense: Dense::load(dim, dim, vb.pp("attention.output.dense"), products)?,
            layernorm_after: LayerNorm::load(dim, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
            intermediate: Dense::load(dim, hidden, vb.pp("intermediate.dense"), products)?,
            output: Dense::load(hidden, dim, vb.pp("output.dense"), products)?,
            act: cfg.hidden_act,
            window,
            shift,
        })
    }

    fn forward(&self, x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let ws = self.window;
        let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        let mut t = self
            .layernorm_before
            .forward(x)?
            .reshape((b, h, w, c))?
            .pad_with_zeros(1, 0, ph)?
            .pad_with_zeros(2, 0, pw)?;
        let (hp, wp) = (h + ph, w + pw);
        if self.shift > 0 {
            t = t
                .roll(-(self.shift as i32), 1)?
                .roll(-(self.shift as i32), 2)?;
        }
        let (nh, nw, n) = (hp / ws, wp / ws, ws * ws);
        let windows = t
            .reshape((b, nh, ws, nw, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b * nh * nw, n, c))?;
        let out = self.attention.forward_biased(&windows, &self.score_bias)?;
        let out = self.dense.forward(&out)?;
        let mut t = out
            .reshape((b, nh, nw, ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b, hp, wp, c))?;
        if self.shift > 0 {
            t = t.roll(self.shift as i32, 1)?.roll(self.shift as i32, 2)?;
        }
        let t = t.narrow(1, 0, h)?.narrow(2, 0, w)?.reshape((b, h * w, c))?;
        let hdn = (x + t)?;
        let normed = self.layernorm_after.forward(&hdn)?;
        self.intermediate
            .feed_forward(&normed, self.act, &self.output, Some(&hdn))
    }
}

/// -100 between positions of a shifted window that come from different regions of the
/// (padded) `h` x `w` map: [windows, window^2, window^2].
fn shift_mask(ws: usize, s: usize, h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let region = |i: usize, len: usize| usize::from(i >= len - ws) + usize::from(i >= len - s);
    let (nh, nw) = (h / ws, w / ws);
    let n = ws * ws;
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for wy in 0..nh {
        for wx in 0..nw {
            let ids: Vec<usize> = (0..n)
                .map(|p| region(wy * ws + p / ws, h) * 3 + region(wx * ws + p % ws, w))
                .collect();
            for a in &ids {
                for b in &ids {
                    mask.push(if a == b { 0f32 } else { -100.0 });
                }
            }
        }
    }
    Tensor::from_vec(mask, (nh * nw, n, n), device)
}

/// `ClapAudioPatchMerging`: 2x2 neighbours concatenated, normalised, reduced to 2C.
struct PatchMerging {
    norm: LayerNorm,
    reduction: Dense,
}

impl PatchMerging {
    fn forward(&self, x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let t = x
            .reshape((b, h, w, c))?
            .pad_with_zeros(1, 0, h % 2)?
            .pad_with_zeros(2, 0, w % 2)?;
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        // transformers concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2].
        let t = t
            .reshape((b, h2, 2, w2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .reshape((b, h2 * w2, 4 * c))?;
        self.reduction.forward(&self.norm.forward(&t)?)
    }
}

struct Stage {
    blocks: Vec<SwinBlock>,
    downsample: Option<PatchMerging>,
}

pub struct AudioEncoder {
    batch_norm: BatchNorm,
    proj: Conv2d,
    patch_norm: Option<LayerNorm>,
    fusion: Option<(Patchify, Aff)>,
    stages: Vec<Stage>,
    norm: LayerNorm,
    resolutions: Vec<(usize, usize)>,
    cfg: AudioConfig,
}

/// torch's bicubic interpolation (A = -0.75, align_corners=True) from `n_in` to `n_out`
/// samples, as an [n_out, n_in] matrix.
fn bicubic_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let c1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = if n_out > 1 {
        (n_in as f64 - 1.0) / (n_out as f64 - 1.0)
    } else {
        0.0
    };
    let mut m = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        let real = scale * o as f64;
        let i = real.floor();
        let t = real - i;
        let coeffs = [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)];
        for (k, cf) in coeffs.iter().enumerate() {
            let idx = (i as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[o * n_in + idx] += *cf as f32;
        }
    }
    m
}

impl AudioEncoder {
    fn load(cfg: &AudioConfig, vb: VarBuilder, products: Products) -> Result<Self> {
        let stride = match &cfg.patch_stride {
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(4) as usize,
            serde_json::Value::Array(a) => {
                let v: Vec<u64> = a.iter().filter_map(|x| x.as_u64()).collect();
                if v.len() != 2 || v[0] != v[1] {
                    candle_core::bail!("patch_stride {:?}: only square strides are supported", v);
                }
                v[0] as usize
            }
            other => candle_core::bail!("patch_stride {other}"),
        };
        if stride != cfg.patch_size {
            candle_core::bail!(
                "patch_size {} != patch_stride {stride} (overlapping patches are not supported)",
                cfg.patch_size
            );
        }
        if cfg.enable_fusion && cfg.fusion_type.as_deref().is_some_and(|t| t != "aff_2d") {
            candle_core::bail!(
                "fusion_type {:?} (the native CLAP implements aff_2d)",
                cfg.fusion_type
            );
        }
        let e = cfg.patch_embeds_hidden_size;
        let pe = vb.pp("patch_embed");
        let proj = conv2d(
            cfg.patch_embed_input_channels,
            e,
            cfg.patch_size,
            candle_nn::Conv2dConfig {
                stride,
                ..Default::default()
            },
            pe.pp("proj"),
        )?;
        let fusion = if cfg.enable_fusion {
            Some((
                Patchify::load(
                    cfg.patch_embed_input_channels,
                    e,
                    (cfg.patch_size, cfg.patch_size * 3),
                    pe.pp("mel_conv2d"),
                )?,
                Aff::load(e, cfg.aff_block_r, pe.pp("fusion_model"))?,
            ))
        } else {
            None
        };
        let grid = cfg.spec_size / stride;
        let layers = cfg.depths.len();
        let resolutions: Vec<(usize, usize)> =
            (0..layers).map(|i| (grid >> i, grid >> i)).collect();
        let mut stages = Vec::with_capacity(layers);
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_attention_heads).enumerate() {
            let dim = e << i;
            let s = vb.pp(format!("layers.{i}"));
            let blocks = (0..depth)
                .map(|j| {
                    let shift = if j % 2 == 0 { 0 } else { cfg.window_size / 2 };
                    SwinBlock::load(
                        cfg,
                        dim,
                        heads,
                        resolutions[i],
                        shift,
                        s.pp(format!("blocks.{j}")),
                        products,
                    )
                })
                .collect::<Result<_>>()?;
            let downsample = (i + 1 < layers)
                .then(|| -> Result<PatchMerging> {
                    Ok(PatchMerging {
                        norm: LayerNorm::load(4 * dim, 1e-5, s.pp("downsample.norm"))?,
                        reduction: Dense::load_b(
                            4 * dim,
                            2 * dim,
                            false,
                            s.pp("downsample.reduction"),
                            products,
                        )?,
                    })
                })
                .transpose()?;
            stages.push(Stage { blocks, downsample });
        }
        Ok(Self {
            batch_norm: BatchNorm::load(cfg.num_mel_bins, vb.pp("batch_norm"))?,
            proj,
            patch_norm: cfg
                .enable_patch_layer_norm
                .then(|| LayerNorm::load(e, 1e-5, pe.pp("norm")))
                .transpose()?,
            fusion,
            stages,
            norm: LayerNorm::load(e << (layers - 1), cfg.layer_norm_eps, vb.pp("norm"))?,
            resolutions,
            cfg: cfg.clone(),
        })
    }

    /// Pooled audio features [batch, hidden] for mel features [batch, channels, frames, mels].
    fn forward(&self, features: &Tensor, is_longer: &[bool]) -> Result<Tensor> {
        let (b, ch, frames, mels) = features.dims4()?;
        let x = self.batch_norm.forward(features, 3)?;
        // reshape_mel2img: time stretched to spec_size * freq_ratio, folded into a square.
        let ratio = self.cfg.spec_size / self.cfg.num_mel_bins;
        let width = self.cfg.spec_size * ratio;
        if frames > width || mels != self.cfg.spec_size / ratio {
            candle_core::bail!(
                "{frames} x {mels} mel features do not fit the {}-wide HTSAT input",
                width
            );
        }
        let x = if frames < width {
            let m = Tensor::from_vec(bicubic_matrix(frames, width), (width, frames), x.device())?
                .to_dtype(x.dtype())?;
            m.broadcast_matmul(&x)?
        } else {
            x
        };
        let x = x
            .reshape((b, ch * ratio, width / ratio, mels))?
            .permute((0, 1, 3, 2))?
            .reshape((b, ch, mels * ratio, width / ratio))?
            .contiguous()?;
        let mut h = self.proj.forward(&x.narrow(1, 0, 1)?)?;
        if let Some((mel_conv, aff)) = &self.fusion {
            let (_, e, gh, gw) = h.dims4()?;
            let rows: Vec<Tensor> = (0..b)
                .map(|i| {
                    let g = h.i(i..i + 1)?;
                    if !is_longer.get(i).copied().unwrap_or(false) {
                        return Ok(g);
                    }
                    let local = x.i((i..i + 1, 1..ch))?.reshape((
                        ch - 1,
                        1,
                        mels * ratio,
                        width / ratio,
                    ))?;
                    let l = mel_conv.forward(&local)?;
                    let (_, _, lh, lw) = l.dims4()?;
                    let l = l
                        .reshape((1, ch - 1, e, lh, lw))?
                        .permute((0, 2, 3, 1, 4))?
                        .reshape((1, e, lh, (ch - 1) * lw))?;
                    let l = l
                        .pad_with_zeros(3, 0, gw.saturating_sub((ch - 1) * lw))?
                        .narrow(3, 0, gw)?;
                    aff.forward(&g, &l.narrow(2, 0, gh)?)
                })
                .collect::<Result<_>>()?;
            h = Tensor::cat(&rows, 0)?;
        }
        let mut h = h.flatten_from(2)?.transpose(1, 2)?;
        if let Some(n) = &self.patch_norm {
            h = n.forward(&h)?;
        }
        for (stage, &res) in self.stages.iter().zip(&self.resolutions) {
            for block in &stage.blocks {
                h = block.forward(&h, res)?;
            }
            if let Some(d) = &stage.downsample {
                h = d.forward(&h, res)?;
            }
        }
        // The pooler averages every position of the normalised last stage.
        self.norm.forward(&h)?.mean(1)
    }
}

/// HF `ClapConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub text_config: serde_json::Value,
    pub audio_config: AudioConfig,
}

pub struct ClapSession {
    audio: AudioEncoder,
    audio_projection: Projection,
    text: BertModel,
    text_pooler: Dense,
    text_projection: Projection,
    logit_scale: Tensor,
    front_end: ClapFrontEnd,
    device: Device,
    dtype: DType,
    info: SessionInfo,
}

impl ClapSession {
    pub fn load(ctx: LoadContext<'_>) -> std::result::Result<Box<dyn Session>, EngineError> {
        let cfg: Config = super::parse_config(ctx.source, "CLAP")?;
        let bad =
            |e: serde_json::Error| EngineError::InvalidModel(format!("CLAP text_config: {e}"));
        // ClapTextConfig's defaults for the fields a saved config may leave out; the model type
        // gives the text tower RoBERTa's positions.
        let mut text_json = cfg.text_config.clone();
        if let Some(o) = text_json.as_object_mut() {
            for (k, v) in [
                ("type_vocab_size", serde_json::json!(1)),
                ("layer_norm_eps", serde_json::json!(1e-12)),
                ("hidden_act", serde_json::json!("gelu")),
                ("pad_token_id", serde_json::json!(1)),
                ("model_type", serde_json::json!("clap_text_model")),
            ] {
                o.entry(k).or_insert(v);
            }
        }
        let text_cfg: bert::Config = serde_json::from_value(text_json).map_err(bad)?;
        let proj: TextProjection = serde_json::from_value(cfg.text_config.clone()).map_err(bad)?;
        let (vb, params) = crate::load_var_builder(ctx.source, ctx.dtype, &ctx.device)?;
        let a = &cfg.audio_config;
        let products = ctx.products;
        let build = || -> Result<_> {
            Ok((
                AudioEncoder::load(a, vb.pp("audio_model.audio_encoder"), products)?,
                Projection::load(
                    a.hidden_size,
                    a.projection_dim,
                    a.projection_hidden_act,
                    vb.pp("audio_projection"),
                    products,
                )?,
                BertModel::load(vb.pp("text_model"), &text_cfg, products)?,
                Dense::load(
                    proj.hidden_size,
                    proj.hidden_size,
                    vb.pp("text_model.pooler.dense"),
                    products,
                )?,
                Projection::load(
                    proj.hidden_size,
                    proj.projection_dim,
                    proj.projection_hidden_act,
                    vb.pp("text_projection"),
                    products,
                )?,
                vb.get((), "logit_scale_a")?.to_dtype(DType::F32)?.exp()?,
            ))
        };
        let (audio, audio_projection, text, text_pooler, text_projection, logit_scale) = build()
            .map_err(|e| {
                EngineError::InvalidModel(format!(
                    "cannot build CLAP: {}",
                    crate::candle_message(&e)
                ))
            })?;
        let front_end = ia_engine::features::clap_front_end(ctx.source)?;
        let mut info = ctx.info;
        info.parameter_count = params.load(Ordering::Relaxed);
        info.output_names = vec![
            "audio_embeds".into(),
            "text_embeds".into(),
            "logit_scale".into(),
        ];
        Ok(Box::new(Self {
            audio,
            audio_projection,
            text,
            text_pooler,
            text_projection,
            logit_scale,
            front_end,
            device: ctx.device,
            dtype: ctx.dtype,
            info,
        }))
    }

    fn audio_embeds(&self, rows: &[&[f32]]) -> Result<Tensor> {
        let (data, longer) = self.front_end.batch_features(rows);
        let shape = (
            rows.len(),
            self.front_end.channels(),
            self.front_end.frames(),
            self.front_end.feature_size,
        );
        let x = Tensor::from_vec(data, shape, &self.device)?.to_dtype(self.dtype)?;
        self.audio_projection
            .forward(&self.audio.forward(&x, &longer)?)
    }

    fn text_embeds(&self, batch: usize, seq: usize, ids: &[u32], mask: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, (batch, seq), &self.device)?;
        let mask = Tensor::from_slice(mask, (batch, seq), &self.device)?;
        let types = ids.zeros_like()?;
        let h = self.text.forward(&ids, &types, Some(&mask))?;
        let pooled = self.text_pooler.forward(&h.i((.., 0))?)?.tanh()?;
        self.text_projection.forward(&pooled)
    }

    /// Features as `run` computes them, for parity tests: [batch, channels, frames, mels].
    pub fn sample_rate(&self) -> u32 {
        self.front_end.sampling_rate
    }
}

impl Session for ClapSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> std::result::Result<Outputs, EngineError> {
        let (name, t) = match inputs {
            Inputs::Audio { sample_rate, .. } => {
                if *sample_rate != self.front_end.sampling_rate {
                    return Err(EngineError::InvalidInput(format!(
                        "CLAP needs {} Hz audio, got {sample_rate} Hz",
                        self.front_end.sampling_rate
                    )));
                }
                let rows = inputs.audio_rows()?;
                ("audio_embeds", self.audio_embeds(&rows).map_err(rt)?)
            }
            Inputs::Text {
                batch,
                seq_len,
                input_ids,
                attention_mask,
                ..
            } => (
                "text_embeds",
                self.text_embeds(*batch, *seq_len, input_ids, attention_mask)
                    .map_err(rt)?,
            ),
            Inputs::Image { .. } | Inputs::Video { .. } => {
                return Err(EngineError::InvalidInput("CLAP takes audio or text".into()))
            }
        };
        Ok(Outputs {
            tensors: vec![
                (name.into(), Box::new(CandleOutput(t))),
                (
                    "logit_scale".into(),
                    Box::new(CandleOutput(self.logit_scale.clone())),
                ),
            ],
        })
    }
}
