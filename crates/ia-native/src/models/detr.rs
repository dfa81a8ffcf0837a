//! DETR object detection (transformers' `DetrForObjectDetection`), written against
//! `modeling_detr.py` and `modeling_resnet.py` for the backbone: a ResNet with frozen batch
//! norm, a 1x1 input projection, sine position embeddings, a post-LN encoder, a decoder over
//! learned object queries, and class / box heads. candle has no DETR.
//!
//! Checkpoint layouts read: the hub's (`out_proj`, `fc1`, backbone under
//! `model.backbone.conv_encoder.model`), with a transformers ResNet backbone
//! (`embedder`/`encoder.stages`) or a timm one (`conv1`/`layer1`..., `use_timm_backbone`, as
//! facebook/detr-resnet-50 ships), and transformers 5's in-memory names (`o_proj`, `mlp.fc1`).
//!
//! The backbone runs channels-last: each convolution, its frozen batch norm folded in, is an
//! [`ImageConv`] (a [`Dense`] over every output pixel's window), with the ReLU (or the
//! block's residual) in the product's pass; every linear layer is a [`Dense`] too, so
//! `--precision bf16` multiplies in bf16 throughout (attention, norms and pooling f32).
//!
//! Outputs `logits` [batch, queries, labels + 1] (the last class is "no object") and
//! `pred_boxes` [batch, queries, 4] as (cx, cy, w, h) relative to the image. Images in a batch
//! are taken as unpadded (pixel mask all ones).

use super::attention::{Mlp, MultiHeadAttention};
use super::encoder::{Dense, ImageConv, Products};
use super::LoadContext;
use crate::kernels::{self, LayerNorm};
use crate::{rt, CandleOutput};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Activation, Embedding, VarBuilder};
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use serde::Deserialize;

/// HF `DetrConfig`, deserialised from config.json as is.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub num_queries: usize,
    #[serde(default = "relu")]
    pub activation_function: Activation,
    #[serde(default = "sine")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub use_timm_backbone: bool,
    /// timm backbone name ("resnet50") when use_timm_backbone is set.
    #[serde(default)]
    pub backbone: Option<String>,
    /// A transformers ResNet config, or (transformers 5) a timm backbone's name.
    pub backbone_config: Option<serde_json::Value>,
}

/// HF `ResNetConfig` (the backbone).
#[derive(Debug, Clone, Deserialize)]
pub struct ResNetConfig {
    #[serde(default = "three")]
    pub num_channels: usize,
    #[serde(default = "sixty_four")]
    pub embedding_size: usize,
    pub hidden_sizes: Vec<usize>,
    pub depths: Vec<usize>,
    #[serde(default = "bottleneck")]
    pub layer_type: String,
    #[serde(default = "relu")]
    pub hidden_act: Activation,
    #[serde(default)]
    pub downsample_in_first_stage: bool,
    #[serde(default)]
    pub downsample_in_bottleneck: bool,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ResNetConfig {
    /// The torchvision/timm ResNets DETR checkpoints name (v1.5: stride in the 3x3 conv).
    fn timm(name: &str) -> Result<Self> {
        let (layer_type, depths, hidden_sizes) = match name {
            "resnet18" => ("basic", vec![2, 2, 2, 2], vec![64, 128, 256, 512]),
            "resnet34" => ("basic", vec![3, 4, 6, 3], vec![64, 128, 256, 512]),
            "resnet50" => ("bottleneck", vec![3, 4, 6, 3], vec![256, 512, 1024, 2048]),
            "resnet101" => ("bottleneck", vec![3, 4, 23, 3], vec![256, 512, 1024, 2048]),
            other => candle_core::bail!("timm backbone {other} (resnet18/34/50/101 are supported)"),
        };
        Ok(Self {
            num_channels: 3,
            embedding_size: 64,
            hidden_sizes,
            depths,
            layer_type: layer_type.into(),
            hidden_act: Activation::Relu,
            downsample_in_first_stage: false,
            downsample_in_bottleneck: false,
            model_type: Some("resnet".into()),
        })
    }
}

fn relu() -> Activation {
    Activation::Relu
}
fn sine() -> String {
    "sine".into()
}
fn three() -> usize {
    3
}
fn sixty_four() -> usize {
    64
}
fn bottleneck() -> String {
    "bottleneck".into()
}

/// Where a backbone's tensors live: transformers' ResNet names or timm's.
#[derive(Clone, Copy, PartialEq)]
enum Naming {
    Transformers,
    Timm,
}

/// Conv2d (no bias) + frozen batch norm (eps 1e-5) + optional activation, channels-last: the
/// norm's scale folded into the weight and its shift the bias of one [`ImageConv`].
struct ConvBn {
    conv: ImageConv,
    act: Option<Activation>,
}

impl ConvBn {
    /// `(cin, cout, kernel, stride)`; `conv` and `norm` point at the two modules.
    fn load(
        (cin, cout, kernel, stride): (usize, usize, usize, usize),
        act: Option<Activation>,
        conv: VarBuilder,
        norm: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let n = norm;
        let scale = (n.get(cout, "weight")? / (n.get(cout, "running_var")? + 1e-5)?.sqrt()?)?;
        let shift = (n.get(cout, "bias")? - (n.get(cout, "running_mean")? * &scale)?)?;
        let weight = conv
            .get((cout, cin, kernel, kernel), "weight")?
            .broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        Ok(Self {
            conv: ImageConv::new(&weight, Some(shift), stride, kernel / 2, products)?,
            act,
        })
    }

    /// `x` [batch, h, w, cin] -> [batch, h', w', cout]; with `residual`, act(conv + residual).
    fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.conv.forward(x, self.act, residual)
    }
}

/// A ResNet block: bottleneck (1x1, 3x3, 1x1) or basic (3x3, 3x3), with a projection shortcut
/// where the shape changes.
struct ResBlock {
    layers: Vec<ConvBn>,
    shortcut: Option<ConvBn>,
    act: Activation,
}

impl ResBlock {
    fn load(
        cfg: &ResNetConfig,
        (cin, cout, stride): (usize, usize, usize),
        naming: Naming,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let act = Some(cfg.hidden_act);
        // The i-th convolution of the block and its batch norm.
        let conv = |shape, act, i: usize| {
            let (c, n) = match naming {
                Naming::Transformers => {
                    let l = vb.pp(format!("layer.{i}"));
                    (l.pp("convolution"), l.pp("normalization"))
                }
                Naming::Timm => (
                    vb.pp(format!("conv{}", i + 1)),
                    vb.pp(format!("bn{}", i + 1)),
                ),
            };
            ConvBn::load(shape, act, c, n, products)
        };
        let layers = if cfg.layer_type == "bottleneck" {
            let mid = cout / 4;
            let (s1, s2) = if cfg.downsample_in_bottleneck {
                (stride, 1)
            } else {
                (1, stride)
            };
            vec![
                conv((cin, mid, 1, s1), act, 0)?,
                conv((mid, mid, 3, s2), act, 1)?,
                conv((mid, cout, 1, 1), None, 2)?,
            ]
        } else {
            vec![
                conv((cin, cout, 3, stride), act, 0)?,
                conv((cout, cout, 3, 1), None, 1)?,
            ]
        };
        let (sc, sn) = match naming {
            Naming::Transformers => (
                vb.pp("shortcut.convolution"),
                vb.pp("shortcut.normalization"),
            ),
            Naming::Timm => (vb.pp("downsample.0"), vb.pp("downsample.1")),
        };
        let shortcut = (cin != cout || stride != 1)
            .then(|| ConvBn::load((cin, cout, 1, stride), None, sc, sn, products))
            .transpose()?;
        Ok(Self {
            layers,
            shortcut,
            act: cfg.hidden_act,
        })
    }

    /// Channels-last, as [`ConvBn::forward`]; the last convolution adds the shortcut, then
    /// the activation.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let residual = match &self.shortcut {
            Some(s) => s.forward(x, None)?,
            None => x.clone(),
        };
        let (last, first) = self.layers.split_last().expect("a block has convolutions");
        let mut h = x.clone();
        for l in first {
            h = l.forward(&h, None)?;
        }
        let y = last.forward(&h, Some(&residual))?;
        self.act.forward(&y)
    }
}

struct ResNet {
    stem: ConvBn,
    blocks: Vec<ResBlock>,
    out_channels: usize,
}

impl ResNet {
    fn load(
        cfg: &ResNetConfig,
        naming: Naming,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let (sc, sn) = match naming {
            Naming::Transformers => (
                vb.pp("embedder.embedder.convolution"),
                vb.pp("embedder.embedder.normalization"),
            ),
            Naming::Timm => (vb.pp("conv1"), vb.pp("bn1")),
        };
        let stem = ConvBn::load(
            (cfg.num_channels, cfg.embedding_size, 7, 2),
            Some(cfg.hidden_act),
            sc,
            sn,
            products,
        )?;
        let mut blocks = Vec::new();
        let mut cin = cfg.embedding_size;
        for (s, (&cout, &depth)) in cfg.hidden_sizes.iter().zip(&cfg.depths).enumerate() {
            let stride = if s == 0 && !cfg.downsample_in_first_stage {
                1
            } else {
                2
            };
            let stage = match naming {
                Naming::Transformers => vb.pp(format!("encoder.stages.{s}.layers")),
                Naming::Timm => vb.pp(format!("layer{}", s + 1)),
            };
            for l in 0..depth {
                let (i, st) = if l == 0 { (cin, stride) } else { (cout, 1) };
                blocks.push(ResBlock::load(
                    cfg,
                    (i, cout, st),
                    naming,
                    stage.pp(l.to_string()),
                    products,
                )?);
            }
            cin = cout;
        }
        Ok(Self {
            stem,
            blocks,
            out_channels: cin,
        })
    }

    /// The last stage's feature map, channels-last, for pixels [batch, 3, H, W].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.permute((0, 2, 3, 1))?.contiguous()?;
        let mut h = kernels::max_pool(&self.stem.forward(&x, None)?, 3, 2, 1)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        Ok(h)
    }
}

struct EncoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_layer_norm: LayerNorm,
    mlp: Mlp,
    final_layer_norm: LayerNorm,
}

struct DecoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: MultiHeadAttention,
    encoder_attn_layer_norm: LayerNorm,
    mlp: Mlp,
    final_layer_norm: LayerNorm,
}

pub struct Model {
    backbone: ResNet,
    /// The 1x1 convolution to d_model, over channels-last pixels.
    input_projection: Dense,
    query_position_embeddings: Embedding,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    decoder_layernorm: LayerNorm,
    class_labels_classifier: Dense,
    bbox_predictor: Vec<Dense>,
    d_model: usize,
    num_queries: usize,
}

impl Model {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_labels: usize,
        products: Products,
    ) -> Result<Self> {
        if cfg.position_embedding_type != "sine" {
            candle_core::bail!(
                "position_embedding_type {} (the native DETR implements sine)",
                cfg.position_embedding_type
            );
        }
        let timm_name = match &cfg.backbone_config {
            Some(b) if b.get("model_type").and_then(|t| t.as_str()) == Some("timm_backbone") => {
                Some(
                    b.get("backbone")
                        .and_then(|n| n.as_str())
                        .unwrap_or("resnet50")
                        .to_string(),
                )
            }
            None if cfg.use_timm_backbone => {
                Some(cfg.backbone.clone().unwrap_or("resnet50".into()))
            }
            _ => None,
        };
        let bcfg = match (&cfg.backbone_config, &timm_name) {
            (_, Some(name)) => ResNetConfig::timm(name)?,
            (Some(b), None) => serde_json::from_value::<ResNetConfig>(b.clone())
                .map_err(|e| candle_core::Error::Msg(format!("backbone_config: {e}")))?,
            (None, None) => candle_core::bail!("config has no backbone_config"),
        };
        if bcfg.model_type.as_deref().is_some_and(|t| t != "resnet") {
            candle_core::bail!(
                "backbone {:?} (the native DETR implements resnet)",
                bcfg.model_type
            );
        }
        let m = vb.pp("model");
        let d = cfg.d_model;
        let naming = if cfg.use_timm_backbone || timm_name.is_some() {
            Naming::Timm
        } else {
            Naming::Transformers
        };
        let bb = if m.contains_tensor("backbone.model.embedder.embedder.convolution.weight") {
            m.pp("backbone.model")
        } else {
            m.pp("backbone.conv_encoder.model")
        };
        let backbone = ResNet::load(&bcfg, naming, bb, products)?;
        let input_projection = {
            let p = m.pp("input_projection");
            let weight = p.get((d, backbone.out_channels, 1, 1), "weight")?;
            Dense::new(
                weight.reshape((d, backbone.out_channels))?,
                Some(p.get(d, "bias")?),
                products,
            )?
        };
        // transformers 5 in memory: o_proj and mlp.fc1; the hub files: out_proj and fc1.
        let attn = |heads, vb: VarBuilder| {
            let out = if vb.contains_tensor("o_proj.weight") {
                "o_proj"
            } else {
                "out_proj"
            };
            MultiHeadAttention::load_named(d, heads, true, out, vb, products)
        };
        let mlp = |ffn, l: &VarBuilder| {
            let vb = if l.contains_tensor("mlp.fc1.weight") {
                l.pp("mlp")
            } else {
                l.clone()
            };
            Mlp::load(d, ffn, cfg.activation_function, &vb, products)
        };
        let ln = |vb: VarBuilder| LayerNorm::load(d, 1e-5, vb);
        let encoder = (0..cfg.encoder_layers)
            .map(|i| {
                let l = m.pp(format!("encoder.layers.{i}"));
                Ok(EncoderLayer {
                    self_attn: attn(cfg.encoder_attention_heads, l.pp("self_attn"))?,
                    self_attn_layer_norm: ln(l.pp("self_attn_layer_norm"))?,
                    mlp: mlp(cfg.encoder_ffn_dim, &l)?,
                    final_layer_norm: ln(l.pp("final_layer_norm"))?,
                })
            })
            .collect::<Result<_>>()?;
        let decoder = (0..cfg.decoder_layers)
            .map(|i| {
                let l = m.pp(format!("decoder.layers.{i}"));
                Ok(DecoderLayer {
                    self_attn: attn(cfg.decoder_attention_heads, l.pp("self_attn"))?,
                    self_attn_layer_norm: ln(l.pp("self_attn_layer_norm"))?,
                    encoder_attn: attn(cfg.decoder_attention_heads, l.pp("encoder_attn"))?,
                    encoder_attn_layer_norm: ln(l.pp("encoder_attn_layer_norm"))?,
                    mlp: mlp(cfg.decoder_ffn_dim, &l)?,
                    final_layer_norm: ln(l.pp("final_layer_norm"))?,
                })
            })
            .collect::<Result<_>>()?;
        let bb = vb.pp("bbox_predictor.layers");
        Ok(Self {
            backbone,
            input_projection,
            query_position_embeddings: embedding(
                cfg.num_queries,
                d,
                m.pp("query_position_embeddings"),
            )?,
            encoder,
            decoder,
            decoder_layernorm: ln(m.pp("decoder.layernorm"))?,
            class_labels_classifier: Dense::load(
                d,
                num_labels + 1,
                vb.pp("class_labels_classifier"),
                products,
            )?,
            bbox_predictor: vec![
                Dense::load(d, d, bb.pp("0"), products)?,
                Dense::load(d, d, bb.pp("1"), products)?,
                Dense::load(d, 4, bb.pp("2"), products)?,
            ],
            d_model: d,
            num_queries: cfg.num_queries,
        })
    }

    /// (logits, pred_boxes) for pixel values [batch, 3, H, W].
    pub fn forward(&self, pixel_values: &Tensor) -> Result<(Tensor, Tensor)> {
        let features = self.backbone.forward(pixel_values)?;
        let proj = self.input_projection.forward(&features)?;
        // Channels-last pixels are the sequence, row by row.
        let (b, h, w, d) = proj.dims4()?;
        let src = proj.reshape((b, h * w, d))?;
        let pos = sine_position_embedding(h, w, d / 2, proj.device(), proj.dtype())?
            .unsqueeze(0)?
            .repeat((b, 1, 1))?;
        let mut x = src;
        for l in &self.encoder {
            let qk = (&x + &pos)?;
            let a = l.self_attn.attend_inputs(&qk, &qk, &x, None)?;
            x = l.self_attn_layer_norm.forward(&(x + a)?)?;
            x = l.final_layer_norm.forward(&(&x + l.mlp.forward(&x)?)?)?;
        }
        let memory = x;
        let memory_keys = (&memory + &pos)?;
        let query_pos = self
            .query_position_embeddings
            .embeddings()
            .unsqueeze(0)?
            .repeat((b, 1, 1))?;
        let mut q = Tensor::zeros(
            (b, self.num_queries, self.d_model),
            memory.dtype(),
            memory.device(),
        )?;
        for l in &self.decoder {
            let qk = (&q + &query_pos)?;
            let a = l.self_attn.attend_inputs(&qk, &qk, &q, None)?;
            q = l.self_attn_layer_norm.forward(&(q + a)?)?;
            let a =
                l.encoder_attn
                    .attend_inputs(&(&q + &query_pos)?, &memory_keys, &memory, None)?;
            q = l.encoder_attn_layer_norm.forward(&(q + a)?)?;
            q = l.final_layer_norm.forward(&(&q + l.mlp.forward(&q)?)?)?;
        }
        let q = self.decoder_layernorm.forward(&q)?;
        let logits = self.class_labels_classifier.forward(&q)?;
        let (last, hidden) = self.bbox_predictor.split_last().expect("three layers");
        let mut bx = q;
        for l in hidden {
            bx = l.forward_activated(&bx, Activation::Relu)?;
        }
        let bx = last.forward(&bx)?;
        Ok((logits, candle_nn::ops::sigmoid(&bx)?))
    }
}

/// DETR's normalised sine embedding for an unpadded h x w map: [h * w, 2 * feats], y features
/// then x features, sin/cos interleaved.
fn sine_position_embedding(
    h: usize,
    w: usize,
    feats: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let scale = 2.0 * std::f64::consts::PI;
    let dim_t: Vec<f64> = (0..feats)
        .map(|k| 10000f64.powf(2.0 * (k / 2) as f64 / feats as f64))
        .collect();
    let embed = |v: f64, out: &mut Vec<f32>| {
        for (k, dt) in dim_t.iter().enumerate() {
            let a = v / dt;
            out.push(if k % 2 == 0 { a.sin() } else { a.cos() } as f32);
        }
    };
    let mut data = Vec::with_capacity(h * w * 2 * feats);
    for i in 0..h {
        for j in 0..w {
            embed((i + 1) as f64 / (h as f64 + 1e-6) * scale, &mut data);
            embed((j + 1) as f64 / (w as f64 + 1e-6) * scale, &mut data);
        }
    }
    Tensor::from_vec(data, (h * w, 2 * feats), device)?.to_dtype(dtype)
}

pub struct DetrSession {
    model: Model,
    device: Device,
    dtype: DType,
    info: SessionInfo,
}

impl DetrSession {
    pub fn load(ctx: LoadContext<'_>) -> std::result::Result<Box<dyn Session>, EngineError> {
        let cfg: Config = super::parse_config(ctx.source, "DETR")?;
        let num_labels = super::vit::num_labels(ctx.source.config());
        let outputs = ["logits", "pred_boxes"];
        let (model, info) = ctx.build("DETR", &outputs, |vb| {
            Model::load(vb, &cfg, num_labels, ctx.products)
        })?;
        Ok(Box::new(Self {
            model,
            device: ctx.device,
            dtype: ctx.dtype,
            info,
        }))
    }
}

impl Session for DetrSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> std::result::Result<Outputs, EngineError> {
        let Inputs::Image {
            shape,
            pixel_values,
        } = inputs
        else {
            return Err(EngineError::InvalidInput("DETR takes image inputs".into()));
        };
        let xs = Tensor::from_slice(pixel_values, shape.to_vec(), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(rt)?;
        let (logits, boxes) = self.model.forward(&xs).map_err(rt)?;
        Ok(Outputs {
            tensors: vec![
                ("logits".into(), Box::new(CandleOutput(logits))),
                ("pred_boxes".into(), Box::new(CandleOutput(boxes))),
            ],
        })
    }
}
