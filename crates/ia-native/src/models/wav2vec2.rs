//! Wav2Vec2 (transformers' `Wav2Vec2ForCTC` / `Wav2Vec2Model`), written against
//! `modeling_wav2vec2.py`: a convolutional feature encoder (group-norm or layer-norm variant),
//! a feature projection, a weight-normalised grouped convolution as positional embedding, and
//! a transformer encoder in post-LN (base) or pre-LN ("stable layer norm", large) form; CTC
//! logits from `lm_head`. candle has no Wav2Vec2. Tensor names match the HF checkpoint.

use super::encoder::{Dense, FrameConv, Products, SelfAttention};
use super::LoadContext;
use crate::kernels;
use crate::kernels::LayerNorm;
use crate::{rt, CandleOutput};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{linear, Activation, Linear, VarBuilder};
use ia_engine::features::Wav2Vec2Features;
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use serde::Deserialize;
use std::sync::atomic::Ordering;

/// HF `Wav2Vec2Config`, deserialised from config.json as is.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default)]
    pub hidden_act: Activation,
    #[serde(default)]
    pub feat_extract_activation: Activation,
    #[serde(default = "group")]
    pub feat_extract_norm: String,
    #[serde(default)]
    pub do_stable_layer_norm: bool,
    #[serde(default)]
    pub conv_bias: bool,
    pub conv_dim: Vec<usize>,
    pub conv_stride: Vec<usize>,
    pub conv_kernel: Vec<usize>,
    pub num_conv_pos_embeddings: usize,
    pub num_conv_pos_embedding_groups: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    pub vocab_size: usize,
}

fn group() -> String {
    "group".into()
}
fn eps() -> f64 {
    1e-5
}

enum ConvNorm {
    None,
    /// transformers' `GroupNorm(num_groups=channels)`: each channel normalised over the frames;
    /// `rows` is the convolution's weight over its windows, which the norm folds into.
    PerChannel {
        weight: Tensor,
        bias: Tensor,
        rows: Tensor,
    },
    Layer(LayerNorm),
}

impl ConvNorm {
    /// `GroupNorm`'s epsilon.
    const EPS: f64 = 1e-5;
}

/// One layer of the feature encoder, over channels-last frames.
struct ConvLayer {
    conv: FrameConv,
    norm: ConvNorm,
    act: Activation,
}

impl ConvLayer {
    /// `x`: [frames, channels] of one waveform -> [frames out, channels out].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.norm {
            // Without a norm between them, the activation goes into the convolution's pass.
            ConvNorm::None => self.conv.forward(x, Some(self.act)),
            // Each channel normalised over the frames, a GELU in the same pass.
            ConvNorm::PerChannel { weight, bias, rows } => {
                self.conv
                    .forward_channel_normed(x, rows, (weight, bias), ConvNorm::EPS, self.act)
            }
            ConvNorm::Layer(l) => {
                let y = l.forward(&self.conv.forward(x, None)?)?;
                match self.act {
                    Activation::Gelu => kernels::gelu_erf(&y),
                    act => act.forward(&y),
                }
            }
        }
    }
}

/// The positional embedding: a grouped convolution padded by half its kernel, one
/// [`FrameConv`] per group over its channels (the last output frame dropped for an even
/// kernel, as transformers' `Wav2Vec2SamePadLayer`).
struct PositionalConv {
    groups: Vec<FrameConv>,
    act: Activation,
}

impl PositionalConv {
    /// `weight` [hidden, hidden / groups, kernel] and `bias` [hidden].
    fn new(
        weight: &Tensor,
        bias: &Tensor,
        groups: usize,
        act: Activation,
        products: Products,
    ) -> Result<Self> {
        let (hidden, per_group, kernel) = weight.dims3()?;
        if per_group * groups != hidden {
            candle_core::bail!("{groups} groups of {per_group} channels for {hidden}")
        }
        Ok(Self {
            groups: (0..groups)
                .map(|g| {
                    FrameConv::new(
                        &weight.narrow(0, g * per_group, per_group)?,
                        Some(bias.narrow(0, g * per_group, per_group)?),
                        1,
                        kernel / 2,
                        products,
                    )
                })
                .collect::<Result<_>>()?,
            act,
        })
    }

    /// `act(conv(x))` for one sequence's frames `x` [frames, hidden].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (frames, hidden) = x.dims2()?;
        let per_group = hidden / self.groups.len();
        // One group per task: a group has few output columns (48 in wav2vec2-base, three
        // panels, which two threads split 2:1 when each group's product is divided between
        // them): about 17 -> 14 ms a call on 2 AVX2 cores.
        use rayon::prelude::*;
        let outputs = self
            .groups
            .par_iter()
            .enumerate()
            .map(|(g, conv)| {
                let xg = x.narrow(1, g * per_group, per_group)?.contiguous()?;
                conv.forward(&xg, Some(self.act))?.narrow(0, 0, frames)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outputs, 1)
    }
}

struct EncoderLayer {
    attention: SelfAttention,
    out_proj: Dense,
    layer_norm: LayerNorm,
    intermediate_dense: Dense,
    output_dense: Dense,
    final_layer_norm: LayerNorm,
    act: Activation,
    pre_norm: bool,
}

impl EncoderLayer {
    fn load(cfg: &Config, vb: VarBuilder, products: Products) -> Result<Self> {
        let (h, e, i) = (cfg.hidden_size, cfg.layer_norm_eps, cfg.intermediate_size);
        Ok(Self {
            attention: SelfAttention::load_named(
                h,
                cfg.num_attention_heads,
                [("q_proj", true), ("k_proj", true), ("v_proj", true)],
                vb.pp("attention"),
                products,
            )?,
            out_proj: Dense::load(h, h, vb.pp("attention.out_proj"), products)?,
            layer_norm: LayerNorm::load(h, e, vb.pp("layer_norm"))?,
            intermediate_dense: Dense::load(
                h,
                i,
                vb.pp("feed_forward.intermediate_dense"),
                products,
            )?,
            output_dense: Dense::load(i, h, vb.pp("feed_forward.output_dense"), products)?,
            final_layer_norm: LayerNorm::load(h, e, vb.pp("final_layer_norm"))?,
            act: cfg.hidden_act,
            pre_norm: cfg.do_stable_layer_norm,
        })
    }

    /// `residual + output_dense(act(intermediate_dense(x)))`, the residual added in the
    /// product's pass.
    fn feed_forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.intermediate_dense
            .feed_forward(x, self.act, &self.output_dense, Some(residual))
    }

    /// `residual + out_proj(attention(x))`.
    fn attend(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.out_proj
            .forward_residual(&self.attention.forward(x, None)?, residual)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pre_norm {
            let h = self.attend(&self.layer_norm.forward(x)?, x)?;
            self.feed_forward(&self.final_layer_norm.forward(&h)?, &h)
        } else {
            let h = self.layer_norm.forward(&self.attend(x, x)?)?;
            self.final_layer_norm.forward(&self.feed_forward(&h, &h)?)
        }
    }
}

pub struct Model {
    conv_layers: Vec<ConvLayer>,
    projection_norm: LayerNorm,
    projection: Linear,
    pos_conv: PositionalConv,
    encoder_layer_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    pre_norm: bool,
    lm_head: Option<Linear>,
}

/// `weight_norm(dim=2)`: weight = g * v / ||v||, the norm taken over all axes but the kernel's.
fn weight_norm(vb: &VarBuilder, shape: (usize, usize, usize)) -> Result<Tensor> {
    let (g, v) = if vb.contains_tensor("parametrizations.weight.original0") {
        (
            vb.get((1, 1, shape.2), "parametrizations.weight.original0")?,
            vb.get(shape, "parametrizations.weight.original1")?,
        )
    } else {
        (
            vb.get((1, 1, shape.2), "weight_g")?,
            vb.get(shape, "weight_v")?,
        )
    };
    let norm = v.sqr()?.sum_keepdim(0)?.sum_keepdim(1)?.sqrt()?;
    v.broadcast_div(&norm)?.broadcast_mul(&g)
}

impl Model {
    /// `products`: how the transformer layers' linear layers and attention multiply
    /// ([`Products`]); the convolutions multiply in f32.
    pub fn load(vb: VarBuilder, cfg: &Config, products: Products) -> Result<Self> {
        let n = cfg.conv_dim.len();
        if cfg.conv_stride.len() != n || cfg.conv_kernel.len() != n {
            candle_core::bail!("conv_dim, conv_stride and conv_kernel differ in length");
        }
        let base = if vb.contains_tensor("wav2vec2.feature_projection.projection.weight") {
            vb.pp("wav2vec2")
        } else {
            vb.clone()
        };
        let fe = base.pp("feature_extractor.conv_layers");
        let mut conv_layers = Vec::with_capacity(n);
        for i in 0..n {
            let l = fe.pp(i.to_string());
            let (cin, cout) = (
                if i == 0 { 1 } else { cfg.conv_dim[i - 1] },
                cfg.conv_dim[i],
            );
            // The first convolution's windows (10 samples) are shorter than one bf16 step of
            // 32 inputs: it stays f32.
            let conv = FrameConv::load(
                (cin, cout, cfg.conv_kernel[i]),
                cfg.conv_bias,
                cfg.conv_stride[i],
                0,
                l.pp("conv"),
                if i == 0 { Products::AsLoaded } else { products },
            )?;
            let norm = match cfg.feat_extract_norm.as_str() {
                "layer" => ConvNorm::Layer(LayerNorm::load(cout, 1e-5, l.pp("layer_norm"))?),
                "group" if i == 0 => ConvNorm::PerChannel {
                    weight: l.pp("layer_norm").get(cout, "weight")?,
                    bias: l.pp("layer_norm").get(cout, "bias")?,
                    rows: kernels::window_rows(
                        &l.pp("conv")
                            .get((cout, cin, cfg.conv_kernel[i]), "weight")?,
                    )?,
                },
                "group" => ConvNorm::None,
                other => candle_core::bail!("feat_extract_norm {other} (expected group or layer)"),
            };
            conv_layers.push(ConvLayer {
                conv,
                norm,
                act: cfg.feat_extract_activation,
            });
        }
        let last = *cfg.conv_dim.last().unwrap_or(&cfg.hidden_size);
        let h = cfg.hidden_size;
        let k = cfg.num_conv_pos_embeddings;
        let groups = cfg.num_conv_pos_embedding_groups;
        let pvb = base.pp("encoder.pos_conv_embed.conv");
        let pos_conv = PositionalConv::new(
            &weight_norm(&pvb, (h, h / groups, k))?,
            &pvb.get(h, "bias")?,
            groups,
            cfg.feat_extract_activation,
            products,
        )?;
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            Some(linear(h, cfg.vocab_size, vb.pp("lm_head"))?)
        } else {
            None
        };
        Ok(Self {
            conv_layers,
            projection_norm: LayerNorm::load(
                last,
                cfg.layer_norm_eps,
                base.pp("feature_projection.layer_norm"),
            )?,
            projection: linear(last, h, base.pp("feature_projection.projection"))?,
            pos_conv,
            encoder_layer_norm: LayerNorm::load(
                h,
                cfg.layer_norm_eps,
                base.pp("encoder.layer_norm"),
            )?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::load(cfg, base.pp(format!("encoder.layers.{i}")), products))
                .collect::<Result<_>>()?,
            pre_norm: cfg.do_stable_layer_norm,
            lm_head,
        })
    }

    /// Hidden states [batch, frames, hidden] (and CTC logits when the checkpoint has a head)
    /// for normalised waveforms [batch, samples].
    pub fn forward(&self, input_values: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        // Each waveform as frames of one channel, through the feature encoder channels-last.
        let mut features = Vec::with_capacity(input_values.dim(0)?);
        for b in 0..input_values.dim(0)? {
            let mut x = input_values.get(b)?.unsqueeze(1)?;
            for l in &self.conv_layers {
                x = l.forward(&x)?;
            }
            features.push(x);
        }
        let x = Tensor::stack(&features, 0)?;
        let x = self.projection_norm.forward(&x)?;
        let x = self.projection.forward(&x)?;
        let pos = (0..x.dim(0)?)
            .map(|b| self.pos_conv.forward(&x.get(b)?))
            .collect::<Result<Vec<_>>>()?;
        let mut h = (&x + Tensor::stack(&pos, 0)?)?;
        if !self.pre_norm {
            h = self.encoder_layer_norm.forward(&h)?;
        }
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        if self.pre_norm {
            h = self.encoder_layer_norm.forward(&h)?;
        }
        let logits = self.lm_head.as_ref().map(|l| l.forward(&h)).transpose()?;
        Ok((h, logits))
    }
}

pub struct Wav2Vec2Session {
    model: Model,
    features: Wav2Vec2Features,
    device: Device,
    dtype: DType,
    info: SessionInfo,
}

impl Wav2Vec2Session {
    pub fn load(ctx: LoadContext<'_>) -> std::result::Result<Self, EngineError> {
        let cfg: Config = super::parse_config(ctx.source, "Wav2Vec2")?;
        let (vb, params) = crate::load_var_builder(ctx.source, ctx.dtype, &ctx.device)?;
        let model = Model::load(vb, &cfg, ctx.products).map_err(|e| {
            EngineError::InvalidModel(format!(
                "cannot build Wav2Vec2: {}",
                crate::candle_message(&e)
            ))
        })?;
        let features = Wav2Vec2Features::from_source(ctx.source)?;
        let mut info = ctx.info;
        info.parameter_count = params.load(Ordering::Relaxed);
        info.output_names = if model.lm_head.is_some() {
            vec!["logits".into()]
        } else {
            vec!["last_hidden_state".into()]
        };
        Ok(Self {
            model,
            features,
            device: ctx.device,
            dtype: ctx.dtype,
            info,
        })
    }
}

impl Session for Wav2Vec2Session {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> std::result::Result<Outputs, EngineError> {
        // The feature extractor's `input_values`, as every engine computes them.
        let (rows, len, values) = self.features.input_values(inputs)?;
        let (hidden, logits) = Tensor::from_vec(values, (rows, len), &self.device)
            .and_then(|x| x.to_dtype(self.dtype))
            .and_then(|x| self.model.forward(&x))
            .map_err(rt)?;
        let (name, t) = match logits {
            Some(l) => ("logits", l),
            None => ("last_hidden_state", hidden),
        };
        Ok(Outputs {
            tensors: vec![(name.into(), Box::new(CandleOutput(t)))],
        })
    }
}
