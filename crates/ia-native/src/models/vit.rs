//! ViT image classification (transformers' `ViTForImageClassification`), after
//! `modeling_vit.py`, tensor names as in the checkpoint (`vit.embeddings.*`,
//! `vit.encoder.layer.N.*`, `vit.layernorm`, `classifier`). Output: `logits`
//! [batch, num_labels]. The layers are [`super::encoder`]'s, pre-norm.

use super::encoder::{Dense, ImageConv, PreNormLayer, Products, SelfAttention};
use super::{parse_config, LoadContext};
use crate::kernels::LayerNorm;
use crate::{rt, CandleOutput};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Activation, VarBuilder};
use ia_engine::{EngineError, Inputs, Outputs, Session, SessionInfo};
use serde::Deserialize;
use serde_json::Value;

/// transformers' `ViTConfig` fields the forward pass reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
}

fn yes() -> bool {
    true
}

struct Embeddings {
    cls_token: Tensor,
    /// The patch embedding, a convolution with the patch as kernel and stride.
    projection: ImageConv,
    position_embeddings: Tensor,
}

impl Embeddings {
    fn load(cfg: &Config, vb: VarBuilder, products: Products) -> Result<Self> {
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        let patches = (cfg.image_size / p).pow(2);
        let conv = vb.pp("patch_embeddings.projection");
        Ok(Self {
            cls_token: vb.get((1, 1, h), "cls_token")?,
            projection: ImageConv::new(
                &conv.get((h, cfg.num_channels, p, p), "weight")?,
                Some(conv.get(h, "bias")?),
                p,
                0,
                products,
            )?,
            position_embeddings: vb.get((1, patches + 1, h), "position_embeddings")?,
        })
    }

    /// [batch, channels, height, width] -> [batch, 1 + patches, hidden].
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let patches = self.projection.patches(pixels)?;
        let cls = self
            .cls_token
            .broadcast_as((b, 1, self.cls_token.dim(2)?))?;
        Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embeddings)
    }
}

/// transformers' `ViTLayer` under `vb`.
fn load_layer(cfg: &Config, vb: VarBuilder, products: Products) -> Result<PreNormLayer> {
    let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
    Ok(PreNormLayer {
        norm_before: LayerNorm::load(h, eps, vb.pp("layernorm_before"))?,
        attention: SelfAttention::load(
            h,
            cfg.num_attention_heads,
            cfg.qkv_bias,
            vb.pp("attention.attention"),
            products,
        )?,
        attention_output: Dense::load(h, h, vb.pp("attention.output.dense"), products)?,
        norm_after: LayerNorm::load(h, eps, vb.pp("layernorm_after"))?,
        intermediate: Dense::load(
            h,
            cfg.intermediate_size,
            vb.pp("intermediate.dense"),
            products,
        )?,
        act: cfg.hidden_act.into(),
        output: Dense::load(cfg.intermediate_size, h, vb.pp("output.dense"), products)?,
    })
}

pub struct Model {
    embeddings: Embeddings,
    layers: Vec<PreNormLayer>,
    layernorm: LayerNorm,
    classifier: Dense,
}

impl Model {
    /// `products`: how the linear layers multiply ([`Products`]).
    pub fn new(
        cfg: &Config,
        num_labels: usize,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let v = vb.pp("vit");
        Ok(Self {
            embeddings: Embeddings::load(cfg, v.pp("embeddings"), products)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| load_layer(cfg, v.pp(format!("encoder.layer.{i}")), products))
                .collect::<Result<_>>()?,
            layernorm: LayerNorm::load(cfg.hidden_size, cfg.layer_norm_eps, v.pp("layernorm"))?,
            classifier: Dense::load(cfg.hidden_size, num_labels, vb.pp("classifier"), products)?,
        })
    }

    /// Logits [batch, num_labels] from the class token.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.embeddings.forward(pixels)?;
        let first = PreNormLayer::first_token_after(&self.layers, &x)?.squeeze(1)?;
        self.classifier.forward(&self.layernorm.forward(&first)?)
    }
}

pub struct VitSession {
    model: Model,
    device: candle_core::Device,
    dtype: candle_core::DType,
    info: SessionInfo,
}

/// transformers derives num_labels from id2label when it is present.
pub(crate) fn num_labels(config: &Value) -> usize {
    config
        .get("id2label")
        .and_then(Value::as_object)
        .map(|m| m.len())
        .or_else(|| {
            config
                .get("num_labels")
                .and_then(Value::as_u64)
                .map(|n| n as usize)
        })
        .unwrap_or(2)
}

impl VitSession {
    pub fn load(ctx: LoadContext<'_>) -> std::result::Result<Box<dyn Session>, EngineError> {
        let cfg: Config = parse_config(ctx.source, "ViT")?;
        let labels = num_labels(ctx.source.config());
        let (model, info) = ctx.build("ViT", &["logits"], |vb| {
            Model::new(&cfg, labels, vb, ctx.products)
        })?;
        Ok(Box::new(Self {
            model,
            device: ctx.device,
            dtype: ctx.dtype,
            info,
        }))
    }
}

impl Session for VitSession {
    fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn run(&mut self, inputs: &Inputs) -> std::result::Result<Outputs, EngineError> {
        let Inputs::Image {
            shape,
            pixel_values,
        } = inputs
        else {
            return Err(EngineError::InvalidInput("ViT takes image inputs".into()));
        };
        let xs = Tensor::from_slice(pixel_values, shape.to_vec(), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(rt)?;
        let logits = self.model.forward(&xs).map_err(rt)?;
        Ok(Outputs {
            tensors: vec![("logits".into(), Box::new(CandleOutput(logits)))],
        })
    }
}
