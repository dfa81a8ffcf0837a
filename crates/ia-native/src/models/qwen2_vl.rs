//! Qwen2-VL, Qwen2.5-VL and Qwen3-VL (transformers' `Qwen2VLForConditionalGeneration`,
//! `Qwen2_5_VLForConditionalGeneration`, `Qwen3VLForConditionalGeneration`:
//! `modeling_qwen2_vl.py`, `modeling_qwen2_5_vl.py`, `modeling_qwen3_vl.py`).
//!
//! Images come at their own resolution (the processor's `smart_resize`), cut into patches
//! whose 2 x 2 blocks the vision transformer merges into one language-model token. The
//! vision blocks rotate queries and keys by each patch's row and column (a 2D rotary
//! embedding); the language model is our Qwen2 decoder with M-RoPE: a prompt's text tokens
//! take one position each, an image's tokens share a temporal position and spread over its
//! rows and columns, and the tokens after continue from the largest (`get_rope_index`).
//! Qwen2.5-VL's tower differs in its blocks (RMSNorm, a gated SiLU MLP) and attends within
//! windows of merged tokens except in its `fullatt_block_indexes` (`get_vision_window_index`).
//! Qwen3-VL's tower adds a learned grid of position embeddings, resampled to each image's
//! patch grid, and DeepStack: features of some blocks, merged like the last one's, are added
//! to the image tokens' hidden states after the language model's first layers; its language
//! model is a Qwen3 decoder whose M-RoPE interleaves the three axes.

use super::decoder::{Deepstack, Embedded};
use super::encoder::{Dense, Products};
use super::llava::{layout, merge_image_features};
use super::{decoder, LoadContext};
use crate::kernels::{LayerNorm, RmsNorm};
use crate::rt;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::Activation as ClipActivation;
use ia_engine::generation::ImageBatch;
use ia_engine::{EngineError, SessionInfo, TextGenerator};
use ia_preprocess::image::PatchGrid;
use serde::Deserialize;
use serde_json::Value;

/// `Qwen2VLVisionConfig` / `Qwen2_5_VLVisionConfig`. The two name the same things
/// differently: Qwen2-VL's width is `embed_dim` and its `hidden_size` the language model's;
/// Qwen2.5-VL's width is `hidden_size` and the language model's `out_hidden_size`.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default)]
    pub embed_dim: Option<usize>,
    pub hidden_size: usize,
    #[serde(default)]
    pub out_hidden_size: Option<usize>,
    /// Qwen2.5-VL's MLP width (Qwen2-VL's is embed_dim x mlp_ratio).
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default)]
    pub hidden_act: Option<String>,
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
    /// Qwen2.5-VL: a window's side in pixels, and the blocks that attend over the image.
    #[serde(default)]
    pub window_size: Option<usize>,
    #[serde(default)]
    pub fullatt_block_indexes: Option<Vec<usize>>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Qwen3-VL: the learned position grid (a square of this many), and the blocks whose
    /// outputs feed DeepStack.
    #[serde(default)]
    pub num_position_embeddings: Option<usize>,
    #[serde(default)]
    pub deepstack_visual_indexes: Option<Vec<usize>>,
}

/// Which tower: they differ in their blocks, window attention, position embeddings and
/// DeepStack.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    Qwen2,
    Qwen25,
    Qwen3,
}

// Qwen2VLVisionConfig's defaults (Qwen2-VL-7B's tower).
fn default_depth() -> usize {
    32
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
/// Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints, which this file runs.
pub fn is_qwen_vl(config: &Value) -> bool {
    Family::of(config).is_some()
}

impl Family {
    fn of(config: &Value) -> Option<Self> {
        match config.get("model_type").and_then(Value::as_str)? {
            "qwen2_vl" => Some(Family::Qwen2),
            "qwen2_5_vl" => Some(Family::Qwen25),
            "qwen3_vl" => Some(Family::Qwen3),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Qwen2 => "Qwen2-VL",
            Family::Qwen25 => "Qwen2.5-VL",
            Family::Qwen3 => "Qwen3-VL",
        }
    }
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
    /// The tower's width.
    fn width(&self, family: Family) -> usize {
        match family {
            Family::Qwen2 => self.embed_dim.unwrap_or(1280),
            Family::Qwen25 | Family::Qwen3 => self.hidden_size,
        }
    }

    /// The language model's width, which the merger projects to.
    fn out(&self, family: Family) -> usize {
        match family {
            Family::Qwen2 => self.hidden_size,
            Family::Qwen25 | Family::Qwen3 => self.out_hidden_size.unwrap_or(3584),
        }
    }

    fn mlp_width(&self, family: Family) -> usize {
        match family {
            Family::Qwen2 => (self.width(family) as f64 * self.mlp_ratio) as usize,
            Family::Qwen25 => self.intermediate_size.unwrap_or(3420),
            Family::Qwen3 => self.intermediate_size.unwrap_or(4304),
        }
    }

    /// The MLP's activation, the one each tower implements.
    fn expected_act(family: Family) -> &'static str {
        match family {
            Family::Qwen2 => "quick_gelu",
            Family::Qwen25 => "silu",
            Family::Qwen3 => "gelu_pytorch_tanh",
        }
    }

    fn act(&self, family: Family) -> &str {
        self.hidden_act
            .as_deref()
            .unwrap_or(Self::expected_act(family))
    }

    /// Qwen3-VL: the learned position grid's side, and the DeepStack blocks.
    fn qwen3_extras(&self, family: Family) -> Option<(usize, Vec<usize>)> {
        (family == Family::Qwen3).then(|| {
            let count = self.num_position_embeddings.unwrap_or(2304);
            let side = (count as f64).sqrt() as usize;
            let deepstack = self
                .deepstack_visual_indexes
                .clone()
                .unwrap_or_else(|| vec![8, 16, 24]);
            (side, deepstack)
        })
    }

    /// Qwen2.5-VL's windows: merged tokens per window side, and the full-attention blocks.
    fn windows(&self, family: Family) -> Option<(usize, Vec<usize>)> {
        (family == Family::Qwen25).then(|| {
            let side = self.window_size.unwrap_or(112) / self.spatial_merge_size / self.patch_size;
            let full = self
                .fullatt_block_indexes
                .clone()
                .unwrap_or_else(|| vec![7, 15, 23, 31]);
            (side.max(1), full)
        })
    }

    fn check(&self, family: Family) -> Result<(), EngineError> {
        let width = self.width(family);
        let head = width / self.num_heads.max(1);
        if self.num_heads == 0
            || !width.is_multiple_of(self.num_heads)
            || !head.is_multiple_of(4)
            || self.patch_size == 0
            || self.spatial_merge_size == 0
            || self.temporal_patch_size == 0
        {
            return Err(EngineError::InvalidModel(format!(
                "Qwen-VL vision config: width {width} over {} heads (head size a multiple of 4), patch {}, merge {}, temporal patch {}",
                self.num_heads, self.patch_size, self.spatial_merge_size, self.temporal_patch_size
            )));
        }
        if let Some((side, deepstack)) = self.qwen3_extras(family) {
            if side < 2 || deepstack.iter().any(|&b| b >= self.depth) {
                return Err(EngineError::InvalidModel(format!(
                    "Qwen3-VL vision config: a position grid of {side}x{side} (at least 2x2) and DeepStack blocks {deepstack:?} among {} blocks",
                    self.depth
                )));
            }
        }
        let expected = Self::expected_act(family);
        if self.act(family) != expected {
            return Err(EngineError::Unsupported(format!(
                "Qwen-VL vision hidden_act {} ({expected} is implemented for this tower)",
                self.act(family)
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
            "Qwen-VL's text config has no rope mrope_section".into(),
        ));
    }
    Ok(cfg)
}

/// Qwen2-VL's LayerNorm or Qwen2.5-VL's RMSNorm (both eps 1e-6).
enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn load(family: Family, d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(match family {
            Family::Qwen2 | Family::Qwen3 => Norm::Layer(LayerNorm::load(d, 1e-6, vb)?),
            Family::Qwen25 => Norm::Rms(RmsNorm::load(d, 1e-6, vb)?),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

/// Qwen2-VL's fc1 -> quick_gelu -> fc2 (Qwen3-VL's with tanh-approximated GELU), or
/// Qwen2.5-VL's gated SiLU MLP (with biases).
enum Ffn {
    Plain {
        fc1: Dense,
        fc2: Dense,
        tanh_gelu: bool,
    },
    Gated {
        gate: Dense,
        up: Dense,
        down: Dense,
    },
}

impl Ffn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Ffn::Plain {
                fc1,
                fc2,
                tanh_gelu,
            } => {
                let h = fc1.forward(x)?;
                let h = match tanh_gelu {
                    true => h.gelu()?,
                    false => ClipActivation::QuickGelu.forward(&h)?,
                };
                fc2.forward(&h)
            }
            Ffn::Gated { gate, up, down } => {
                down.forward(&(gate.forward(x)?.silu()? * up.forward(x)?)?)
            }
        }
    }
}

/// `VisionAttention` + the vision block.
struct Block {
    norm1: Norm,
    qkv: Dense,
    proj: Dense,
    norm2: Norm,
    ffn: Ffn,
    heads: usize,
}

impl Block {
    fn load(
        v: &VisionConfig,
        family: Family,
        vb: VarBuilder,
        products: Products,
    ) -> candle_core::Result<Self> {
        let d = v.width(family);
        let hidden = v.mlp_width(family);
        let ffn = match family {
            Family::Qwen2 => Ffn::Plain {
                fc1: Dense::load(d, hidden, vb.pp("mlp.fc1"), products)?,
                fc2: Dense::load(hidden, d, vb.pp("mlp.fc2"), products)?,
                tanh_gelu: false,
            },
            Family::Qwen3 => Ffn::Plain {
                fc1: Dense::load(d, hidden, vb.pp("mlp.linear_fc1"), products)?,
                fc2: Dense::load(hidden, d, vb.pp("mlp.linear_fc2"), products)?,
                tanh_gelu: true,
            },
            Family::Qwen25 => Ffn::Gated {
                gate: Dense::load(d, hidden, vb.pp("mlp.gate_proj"), products)?,
                up: Dense::load(d, hidden, vb.pp("mlp.up_proj"), products)?,
                down: Dense::load(hidden, d, vb.pp("mlp.down_proj"), products)?,
            },
        };
        Ok(Self {
            norm1: Norm::load(family, d, vb.pp("norm1"))?,
            qkv: Dense::load(d, 3 * d, vb.pp("attn.qkv"), products)?,
            proj: Dense::load(d, d, vb.pp("attn.proj"), products)?,
            norm2: Norm::load(family, d, vb.pp("norm2"))?,
            ffn,
            heads: v.num_heads,
        })
    }

    /// `x`: [patches, width] of one image, rotated by `cos`/`sin` [patches, head/2];
    /// attention runs within each of `spans` (start, length): the whole image, or windows.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
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
        let attend = |&(start, len): &(usize, usize)| -> candle_core::Result<Tensor> {
            let (q, k, v) = (
                q.narrow(1, start, len)?,
                k.narrow(1, start, len)?,
                v.narrow(1, start, len)?,
            );
            let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
            let probs =
                candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
            probs.matmul(&v)
        };
        let parts = spans
            .iter()
            .map(attend)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let attended = self
            .proj
            .forward(&Tensor::cat(&parts, 1)?.transpose(0, 1)?.reshape((n, d))?)?;
        let x = (x + attended)?;
        let ffn = self.ffn.forward(&self.norm2.forward(&x)?)?;
        &x + ffn
    }
}

/// `get_vision_window_index` for one image of `rows` x `cols` merged tokens: the merged
/// tokens window by window (row-major inside each), and each non-empty window's length.
fn window_order(rows: usize, cols: usize, side: usize) -> (Vec<usize>, Vec<usize>) {
    // transformers pads by a whole window even when the grid divides evenly; those windows
    // are empty and dropped, so the windows per axis are the rounded-up quotient.
    let (wh, ww) = (rows.div_ceil(side), cols.div_ceil(side));
    let mut order = Vec::with_capacity(rows * cols);
    let mut lengths = Vec::new();
    for i in 0..wh {
        for j in 0..ww {
            let before = order.len();
            for r in i * side..((i + 1) * side).min(rows) {
                for c in j * side..((j + 1) * side).min(cols) {
                    order.push(r * cols + c);
                }
            }
            if order.len() > before {
                lengths.push(order.len() - before);
            }
        }
    }
    (order, lengths)
}

/// `PatchMerger` / `Qwen3VLVisionPatchMerger`: each merge block of patches -> one
/// language-model token (norm, linear, GELU, linear). Qwen3-VL's DeepStack mergers normalise
/// the block's concatenated patches instead of each patch (`use_postshuffle_norm`).
struct Merger {
    norm: Norm,
    fc1: Dense,
    fc2: Dense,
    unit: usize,
    postshuffle: bool,
}

impl Merger {
    fn load(
        v: &VisionConfig,
        family: Family,
        postshuffle: bool,
        vb: VarBuilder,
        products: Products,
    ) -> candle_core::Result<Self> {
        let width = v.width(family);
        let unit = v.spatial_merge_size * v.spatial_merge_size;
        let merged = width * unit;
        let (norm, fc1, fc2) = match family {
            Family::Qwen3 => ("norm", "linear_fc1", "linear_fc2"),
            _ => ("ln_q", "mlp.0", "mlp.2"),
        };
        let normed = if postshuffle { merged } else { width };
        Ok(Self {
            norm: Norm::load(family, normed, vb.pp(norm))?,
            fc1: Dense::load(merged, merged, vb.pp(fc1), products)?,
            fc2: Dense::load(merged, v.out(family), vb.pp(fc2), products)?,
            unit,
            postshuffle,
        })
    }

    /// [patches, width] in the patchified order -> [patches / unit, language hidden].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, d) = x.dims2()?;
        let shape = (n / self.unit, d * self.unit);
        let x = match self.postshuffle {
            true => self.norm.forward(&x.reshape(shape)?)?,
            false => self.norm.forward(x)?.reshape(shape)?,
        };
        self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)
    }
}

/// One axis of `get_vision_interpolation_indices_and_weights` (bilinear, align_corners):
/// the two cells of a `side`-long table that position `index` of `size` reads, and their
/// weights, computed in f32 as transformers does.
fn axis_taps(index: usize, size: usize, side: usize) -> ([usize; 2], [f32; 2]) {
    let src = index as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
    let floor = src.floor();
    let taps = [floor as usize, floor as usize + 1].map(|t| t.min(side - 1));
    let weights = [0.0, 1.0].map(|o: f32| (1.0 - (src - floor - o).abs()).max(0.0));
    (taps, weights)
}

/// `Qwen2VisionTransformerPretrainedModel` and its successors: patches of one image -> its
/// merged tokens (and Qwen3-VL's DeepStack features).
struct Vision {
    patch_embed: Dense,
    /// Qwen3-VL: the learned position grid [side * side, width] and its side.
    pos_embed: Option<(Tensor, usize)>,
    blocks: Vec<Block>,
    merger: Merger,
    /// Qwen3-VL: the blocks whose outputs feed DeepStack, each with its merger.
    deepstack: Vec<(usize, Merger)>,
    grid: PatchGrid,
    /// Inverse frequencies of the 2D rotary embedding: head/4 per axis.
    inv_freq: Vec<f32>,
    /// Qwen2.5-VL: merged tokens per window side, and the blocks that attend over the image.
    windows: Option<(usize, Vec<usize>)>,
    device: Device,
}

impl Vision {
    fn load(
        v: &VisionConfig,
        family: Family,
        vb: VarBuilder,
        device: &Device,
        products: Products,
    ) -> candle_core::Result<Self> {
        let width = v.width(family);
        let patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
        // Conv3d with kernel = stride = (temporal, patch, patch) on one patch is a matmul.
        let w = vb.get(
            (
                width,
                v.in_channels,
                v.temporal_patch_size,
                v.patch_size,
                v.patch_size,
            ),
            "patch_embed.proj.weight",
        )?;
        let extras = v.qwen3_extras(family);
        let bias = match extras {
            Some(_) => Some(vb.get(width, "patch_embed.proj.bias")?),
            None => None,
        };
        let (pos_embed, deepstack) = match extras {
            Some((side, blocks)) => {
                let table = vb.get((side * side, width), "pos_embed.weight")?;
                let mergers = blocks
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| {
                        let vb = vb.pp(format!("deepstack_merger_list.{i}"));
                        Ok((b, Merger::load(v, family, true, vb, products)?))
                    })
                    .collect::<candle_core::Result<_>>()?;
                (Some((table, side)), mergers)
            }
            None => (None, Vec::new()),
        };
        let spatial = width / v.num_heads / 2;
        let theta = v.rope_theta();
        Ok(Self {
            patch_embed: Dense::new(w.reshape((width, patch_dim))?, bias, products)?,
            pos_embed,
            blocks: (0..v.depth)
                .map(|i| Block::load(v, family, vb.pp(format!("blocks.{i}")), products))
                .collect::<candle_core::Result<_>>()?,
            merger: Merger::load(v, family, false, vb.pp("merger"), products)?,
            deepstack,
            grid: v.grid(),
            inv_freq: (0..spatial)
                .step_by(2)
                .map(|i| 1.0 / theta.powf(i as f64 / spatial as f64) as f32)
                .collect(),
            windows: v.windows(family),
            device: device.clone(),
        })
    }

    /// The patchified order (merge blocks adjacent): each patch's (row, column).
    fn patch_order(&self, grid_h: usize, grid_w: usize) -> Vec<(usize, usize)> {
        let m = self.grid.merge;
        let mut order = Vec::with_capacity(grid_h * grid_w);
        for bi in 0..grid_h / m {
            for bj in 0..grid_w / m {
                for mi in 0..m {
                    for mj in 0..m {
                        order.push((bi * m + mi, bj * m + mj));
                    }
                }
            }
        }
        order
    }

    /// The rotary cos and sin of each patch of `order`: its row's angles, then its
    /// column's. [patches, head/2].
    fn rotary(&self, order: &[(usize, usize)]) -> candle_core::Result<(Tensor, Tensor)> {
        let mut angles = Vec::with_capacity(order.len() * 2 * self.inv_freq.len());
        for &(h, w) in order {
            angles.extend(self.inv_freq.iter().map(|f| h as f32 * f));
            angles.extend(self.inv_freq.iter().map(|f| w as f32 * f));
        }
        let n = order.len();
        let angles = Tensor::from_vec(angles, (n, 2 * self.inv_freq.len()), &self.device)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// Qwen3-VL: the learned position grid resampled bilinearly to the image's
    /// `grid_h` x `grid_w` patches, at the patches of `order`. [patches, width].
    fn positions(
        &self,
        table: &Tensor,
        side: usize,
        (grid_h, grid_w): (usize, usize),
        order: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let n = order.len();
        let (mut cells, mut weights) = (Vec::with_capacity(4 * n), Vec::with_capacity(4 * n));
        for &(r, c) in order {
            let (rows, row_w) = axis_taps(r, grid_h, side);
            let (cols, col_w) = axis_taps(c, grid_w, side);
            for a in 0..2 {
                for b in 0..2 {
                    cells.push((rows[a] * side + cols[b]) as u32);
                    weights.push(row_w[a] * col_w[b]);
                }
            }
        }
        let width = table.dim(1)?;
        let cells = Tensor::from_vec(cells, 4 * n, &self.device)?;
        let weights = Tensor::from_vec(weights, (n, 4, 1), &self.device)?;
        table
            .to_dtype(DType::F32)?
            .index_select(&cells, 0)?
            .reshape((n, 4, width))?
            .broadcast_mul(&weights)?
            .sum(1)
    }

    /// One processed image (CHW, `height` x `width`) -> its tokens [tokens, language hidden]
    /// and, for Qwen3-VL, the DeepStack features of each of its blocks (same shape).
    fn forward(
        &self,
        chw: &[f32],
        height: usize,
        width: usize,
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let p = self.grid.patch;
        let (gh, gw) = (height / p, width / p);
        let patches = self.grid.patchify(chw, height, width);
        let n = gh * gw;
        let unit = self.grid.merge * self.grid.merge;
        let x = Tensor::from_vec(patches, (n, ()), &self.device)?.to_dtype(dtype)?;
        let mut x = self.patch_embed.forward(&x)?;
        let order = self.patch_order(gh, gw);
        if let Some((table, side)) = &self.pos_embed {
            x = (x + self
                .positions(table, *side, (gh, gw), &order)?
                .to_dtype(dtype)?)?;
        }
        let (mut cos, mut sin) = self.rotary(&order)?;
        let whole = [(0, n)];
        // Qwen2.5-VL: merged tokens (each `unit` patches) regrouped window by window.
        let windows = match &self.windows {
            Some((side, full)) => {
                let m = self.grid.merge;
                let (order, lengths) = window_order(gh / m, gw / m, *side);
                let rows: Vec<u32> = order
                    .iter()
                    .flat_map(|&u| (u * unit..(u + 1) * unit).map(|r| r as u32))
                    .collect();
                let rows = Tensor::from_vec(rows, n, &self.device)?;
                x = x.index_select(&rows, 0)?;
                cos = cos.index_select(&rows, 0)?;
                sin = sin.index_select(&rows, 0)?;
                let mut start = 0;
                let spans: Vec<(usize, usize)> = lengths
                    .iter()
                    .map(|&l| {
                        start += l * unit;
                        (start - l * unit, l * unit)
                    })
                    .collect();
                Some((order, spans, full))
            }
            None => None,
        };
        let mut deepstack = Vec::with_capacity(self.deepstack.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let spans = match &windows {
                Some((_, spans, full)) if !full.contains(&i) => &spans[..],
                _ => &whole[..],
            };
            x = block.forward(&x, &cos, &sin, spans)?;
            for (_, merger) in self.deepstack.iter().filter(|(b, _)| *b == i) {
                deepstack.push(merger.forward(&x)?);
            }
        }
        let out = self.merger.forward(&x)?;
        match windows {
            // Back to raster order: merged token order[j] is row j of `out`.
            Some((order, _, _)) => {
                let mut back = vec![0u32; order.len()];
                for (j, &u) in order.iter().enumerate() {
                    back[u] = j as u32;
                }
                let back = Tensor::from_vec(back, order.len(), &self.device)?;
                let deepstack = deepstack
                    .iter()
                    .map(|d| d.index_select(&back, 0))
                    .collect::<candle_core::Result<_>>()?;
                Ok((out.index_select(&back, 0)?, deepstack))
            }
            None => Ok((out, deepstack)),
        }
    }
}

struct Attached {
    features: Tensor,
    grids: Vec<(usize, usize)>,
    deepstack: Vec<Tensor>,
}

pub struct Qwen2Vl {
    vision: Vision,
    language: decoder::Decoder,
    image_token: u32,
    /// Features of the attached images, each one's merged token grid (rows, columns), and
    /// Qwen3-VL's DeepStack features (per DeepStack block, all the images' rows).
    attached: Option<Attached>,
    dtype: DType,
}

impl Qwen2Vl {
    pub fn load(ctx: LoadContext<'_>) -> Result<Box<dyn TextGenerator>, EngineError> {
        let config = ctx.source.config();
        let cfg: Config = serde_json::from_value(config.clone()).map_err(|e| {
            EngineError::InvalidModel(format!(
                "config.json does not describe a Qwen-VL model: {e}"
            ))
        })?;
        let family = Family::of(config).ok_or_else(|| {
            EngineError::InvalidModel(
                "config.json's model_type is none of qwen2_vl, qwen2_5_vl, qwen3_vl".into(),
            )
        })?;
        cfg.vision_config.check(family)?;
        let text = text_config(config)?;
        if cfg.vision_config.out(family) != text.hidden_size {
            return Err(EngineError::InvalidModel(format!(
                "the vision merger projects to {} but the language model is {} wide",
                cfg.vision_config.out(family),
                text.hidden_size
            )));
        }
        let device = ctx.device.clone();
        let ((vision, weights), mut info) = ctx.build(family.name(), &["logits"], |vb| {
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
            // `--precision bf16`: the vision blocks' and mergers' linear layers and the
            // decoder's in bf16 (the patch embedding, a convolution, and attention's products
            // in the vision blocks f32).
            let vision = Vision::load(
                &cfg.vision_config,
                family,
                vb.pp(visual),
                &device,
                ctx.products,
            )?;
            let storage = decoder::Storage::for_products(ctx.products);
            let weights =
                decoder::Weights::load(&text, vb.pp(language), vb.pp("lm_head"), &storage)?;
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
        let (features, grids, deepstack) = match self.attached.take() {
            Some(a) => (Some(a.features), a.grids, a.deepstack),
            None => (None, Vec::new(), Vec::new()),
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
                let deepstack = match deepstack.is_empty() {
                    true => None,
                    false => {
                        let rows: Vec<u32> = prompts
                            .concat()
                            .iter()
                            .enumerate()
                            .filter(|(_, &t)| t == self.image_token)
                            .map(|(i, _)| i as u32)
                            .collect();
                        let count = rows.len();
                        let rows = Tensor::from_vec(rows, count, x.device()).map_err(rt)?;
                        Some(Deepstack {
                            rows,
                            layers: deepstack,
                        })
                    }
                };
                let embedded = Embedded {
                    embeds: x,
                    deepstack,
                };
                self.language
                    .prefill_embedded_at(prompts, embedded, &positions)
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

    /// Images as the processor resized them (NCHW all one size, or each at its own size):
    /// each becomes (height / patch / merge) x (width / patch / merge) tokens.
    fn attach_images(&mut self, images: &ImageBatch) -> Result<Vec<usize>, EngineError> {
        let [n, channels, height, width] = images.shape;
        let unit = self.vision.grid.patch * self.vision.grid.merge;
        let sizes = match &images.each {
            Some(each) => each.clone(),
            None => vec![(height, width); n],
        };
        let pixels: usize = sizes.iter().map(|&(h, w)| channels * h * w).sum();
        if n == 0
            || sizes.len() != n
            || channels != 3
            || pixels != images.pixel_values.len()
            || sizes
                .iter()
                .any(|&(h, w)| h == 0 || w == 0 || h % unit != 0 || w % unit != 0)
        {
            return Err(EngineError::InvalidInput(format!(
                "{n} images of {channels} channels at {sizes:?}: Qwen-VL takes RGB images whose sides are multiples of {unit} (its processor's smart_resize)"
            )));
        }
        let mut features = Vec::with_capacity(n);
        let mut deepstack: Vec<Vec<Tensor>> = Vec::new();
        let mut start = 0;
        for &(h, w) in &sizes {
            let chw = &images.pixel_values[start..start + channels * h * w];
            start += chw.len();
            let (f, d) = self.vision.forward(chw, h, w, self.dtype).map_err(rt)?;
            features.push(f);
            deepstack.resize_with(d.len(), Vec::new);
            for (layer, d) in deepstack.iter_mut().zip(d) {
                layer.push(d);
            }
        }
        let grids: Vec<(usize, usize)> = sizes.iter().map(|&(h, w)| (h / unit, w / unit)).collect();
        let tokens = grids.iter().map(|&(r, c)| r * c).collect();
        self.attached = Some(Attached {
            features: Tensor::cat(&features, 0).map_err(rt)?,
            grids,
            deepstack: deepstack
                .iter()
                .map(|d| Tensor::cat(d, 0))
                .collect::<candle_core::Result<_>>()
                .map_err(rt)?,
        });
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' get_vision_window_index for a 12x18-patch image (6x9 merged tokens,
    /// windows of 2x2): the first merged tokens and every window's length.
    #[test]
    fn windows_follow_get_vision_window_index() {
        let (order, lengths) = window_order(6, 9, 2);
        assert_eq!(
            order[..20],
            [0, 1, 9, 10, 2, 3, 11, 12, 4, 5, 13, 14, 6, 7, 15, 16, 8, 17, 18, 19]
        );
        assert_eq!(lengths, [4, 4, 4, 4, 2, 4, 4, 4, 4, 2, 4, 4, 4, 4, 2]);
        assert_eq!(order.len(), 54);
    }
}
