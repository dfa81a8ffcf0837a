//! ViT with its classification head for training, after transformers'
//! `ViTForImageClassification`: `vit.*` and `classifier.*`.

use super::bert::{EncoderLayer, EncoderNames, EncoderShape};
use super::layers::{self, checkpoint, Ctx, LayerFn, LayerNorm, Linear};
use super::{Batch, TrainingModel};
use crate::models::vit::Config;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

pub(crate) struct VitForImageClassification {
    cls_token: Tensor,
    position_embeddings: Tensor,
    /// The patch convolution as a product over flattened patches: [hidden, channels * p * p].
    patch_projection: Linear,
    patch: usize,
    layers: Vec<LayerFn>,
    norm: LayerNorm,
    classifier: Linear,
}

impl VitForImageClassification {
    pub fn load(vb: VarBuilder, cfg: &Config, labels: usize, ctx: &Ctx) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let (p, c) = (cfg.patch_size, cfg.num_channels);
        let patches = (cfg.image_size / p).pow(2);
        let e = vb.pp("vit.embeddings");
        let proj = e.pp("patch_embeddings.projection");
        let weight = proj.get((h, c, p, p), "weight")?.reshape((h, c * p * p))?;
        let shape = EncoderShape {
            hidden: h,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
            eps,
        };
        let names = EncoderNames {
            query: "attention.attention.query",
            key: "attention.attention.key",
            value: "attention.attention.value",
            attention_norm: "layernorm_before",
            output_norm: "layernorm_after",
            qkv_bias: cfg.qkv_bias,
            pre_norm: true,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                EncoderLayer::load(&shape, &names, vb.pp(format!("vit.encoder.layer.{i}")))
                    .map(|l| Arc::new(l).as_fn(ctx))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cls_token: e.get((1, 1, h), "cls_token")?,
            position_embeddings: e.get((1, patches + 1, h), "position_embeddings")?,
            patch_projection: Linear::new(weight, Some(proj.get(h, "bias")?)),
            patch: p,
            layers,
            norm: LayerNorm::load(h, eps, vb.pp("vit.layernorm"))?,
            classifier: Linear::load(h, labels, true, vb.pp("classifier"))?,
        })
    }
}

impl TrainingModel for VitForImageClassification {
    fn loss(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let Batch::Pixels {
            shape,
            pixel_values,
            labels,
        } = batch
        else {
            candle_core::bail!("ViT trains on image batches");
        };
        let [b, c, height, width] = *shape;
        let p = self.patch;
        let (gh, gw) = (height / p, width / p);
        let device = self.cls_token.device();
        // Patches in row-major order, each flattened as the convolution's weight is:
        // channel, then row, then column.
        let patches = Tensor::from_slice(pixel_values, (b, c, gh, p, gw, p), device)?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, gh * gw, c * p * p))?;
        let x = self.patch_projection.forward(&patches, ctx)?;
        let cls = self.cls_token.broadcast_as((b, 1, x.dim(2)?))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embeddings)?;
        for layer in &self.layers {
            x = checkpoint(layer.clone(), &[&x], ctx)?;
        }
        let pooled = self.norm.forward(&x)?.narrow(1, 0, 1)?.squeeze(1)?;
        let logits = self.classifier.forward(&pooled, ctx)?;
        layers::cross_entropy(&logits, labels)
    }
}
