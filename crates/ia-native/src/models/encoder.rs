//! The pieces BERT-style encoders share (BERT, ViT, CLIP, and Whisper's and Wav2Vec2's
//! encoder layers and convolutions; [`PreNormLayer`] is the whole layer of ViT, CLIP and
//! Whisper's encoder), written for CPU speed without changing
//! the function: every projection is one matrix product over all `batch x seq` rows,
//! query/key/value are one product (weights stacked at load, the 1/sqrt(head) scale folded
//! into the query's), bias, GELU and residual adds happen in the product's pass
//! ([`crate::kernels::linear`]), and attention reads the stacked projection in place
//! ([`crate::kernels::attention`]).

use crate::kernels::{self, LayerNorm};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Activation, VarBuilder};

/// How an encoder's linear layers multiply: in the dtype the weights were loaded in, or
/// (`--precision bf16` on a CPU with AMX or AVX512-BF16) in bf16 with f32 accumulation, the
/// rest of the model in f32 ([`kernels::bf16`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Products {
    #[default]
    AsLoaded,
    Bf16,
}

/// A linear layer applied to rows: `x [.., in] -> [.., out]` as one matrix product over all
/// leading dimensions (candle's `Linear` multiplies per batch item), [`kernels::linear`].
pub(crate) struct Dense {
    weight: kernels::Weight,
    bias: Option<Tensor>,
}

impl Dense {
    /// `weight` [out, in] as checkpoints keep it.
    pub fn new(weight: Tensor, bias: Option<Tensor>, products: Products) -> Result<Self> {
        Ok(Self {
            weight: kernels::Weight::new(&weight, products == Products::Bf16)?,
            bias,
        })
    }

    /// A language model's output head tied to the token embeddings' `table` [vocab, hidden]
    /// ([`kernels::Weight::tied`]: the table itself, or a bf16 copy under `--precision bf16`).
    pub fn tied(table: &Tensor, products: Products) -> Result<Self> {
        Ok(Self {
            weight: kernels::Weight::tied(table, products == Products::Bf16)?,
            bias: None,
        })
    }

    /// `weight` [outputs, inputs] and, where `bias`, `bias` [outputs] under `vb` (candle_nn's
    /// `linear_b`).
    pub fn load_b(
        inputs: usize,
        outputs: usize,
        bias: bool,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let b = bias.then(|| vb.get(outputs, "bias")).transpose()?;
        Self::new(vb.get((outputs, inputs), "weight")?, b, products)
    }

    /// `weight` [outputs, inputs] and `bias` [outputs] under `vb`.
    pub fn load(inputs: usize, outputs: usize, vb: VarBuilder, products: Products) -> Result<Self> {
        Self::load_b(inputs, outputs, true, vb, products)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::linear(
            x,
            &self.weight,
            self.bias.as_ref(),
            kernels::Activation::Identity,
            None,
        )
    }

    /// Where the weight is held packed in bf16 rather than in the session's dtype: its
    /// parameters and the bytes they take.
    pub fn packed_bf16(&self) -> Option<(u64, u64)> {
        match &self.weight {
            kernels::Weight::Bf16(p) => Some(((p.inputs() * p.outputs()) as u64, p.bytes())),
            _ => None,
        }
    }

    /// `act` of the output; GELU (transformers' erf form, "gelu") and CLIP's quick GELU in
    /// the same pass as the product and bias.
    pub fn forward_activated(&self, x: &Tensor, act: impl Into<FeedForwardAct>) -> Result<Tensor> {
        let (in_pass, after) = act.into().split();
        FeedForwardAct::finish(self.forward_fused(x, in_pass)?, after)
    }

    /// `act` of the output in the same pass as the product and bias (CLIP's quick GELU,
    /// which candle_nn's activations do not have).
    pub fn forward_fused(&self, x: &Tensor, act: kernels::Activation) -> Result<Tensor> {
        kernels::linear(x, &self.weight, self.bias.as_ref(), act, None)
    }

    /// A feed-forward block: `residual + second(act(self(x)))`, through
    /// [`kernels::feed_forward`] where the kernel applies `act` (in bf16 on AMX the inner
    /// rows then stay in bf16 between the two products), else as two layers.
    pub fn feed_forward(
        &self,
        x: &Tensor,
        act: impl Into<FeedForwardAct>,
        second: &Dense,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        match act.into() {
            FeedForwardAct::Fused(act) => kernels::feed_forward(
                x,
                (&self.weight, self.bias.as_ref()),
                act,
                (&second.weight, second.bias.as_ref()),
                residual,
            ),
            act @ FeedForwardAct::Candle(_) => {
                let inner = self.forward_activated(x, act)?;
                match residual {
                    Some(r) => second.forward_residual(&inner, r),
                    None => second.forward(&inner),
                }
            }
        }
    }

    /// `residual + x . W + bias`, the residual added in the same pass.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        kernels::linear(
            x,
            &self.weight,
            self.bias.as_ref(),
            kernels::Activation::Identity,
            Some(residual),
        )
    }
}

/// The activation between a feed-forward block's two products.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FeedForwardAct {
    /// Applied by the linear kernel in the product's pass (GELU, CLIP's quick GELU).
    Fused(kernels::Activation),
    /// candle's, after the product.
    Candle(Activation),
}

impl FeedForwardAct {
    /// The part a kernel applies in its pass and the part candle applies after it.
    pub fn split(self) -> (kernels::Activation, Option<Activation>) {
        match self {
            Self::Fused(act) => (act, None),
            Self::Candle(act) => (kernels::Activation::Identity, Some(act)),
        }
    }

    /// `y` with the part applied after the kernel's pass ([`Self::split`]).
    pub fn finish(y: Tensor, after: Option<Activation>) -> Result<Tensor> {
        match after {
            Some(act) => act.forward(&y),
            None => Ok(y),
        }
    }
}

impl From<Activation> for FeedForwardAct {
    fn from(act: Activation) -> Self {
        match act {
            Activation::Gelu => Self::Fused(kernels::Activation::GeluErf),
            act => Self::Candle(act),
        }
    }
}

/// The pre-norm transformer layer of ViT, CLIP's towers and Whisper's encoder, which differ
/// only in their tensor names (each model file loads it under its own):
/// x = x + attention_output(attention(norm_before(x)));
/// x = x + output(act(intermediate(norm_after(x)))).
pub(crate) struct PreNormLayer {
    pub norm_before: LayerNorm,
    pub attention: SelfAttention,
    pub attention_output: Dense,
    pub norm_after: LayerNorm,
    pub intermediate: Dense,
    pub act: FeedForwardAct,
    pub output: Dense,
}

impl PreNormLayer {
    /// `x` [batch, seq, hidden], every token attending to every other.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_attending(x, false)
    }

    /// With `causal`, each token attends to itself and the tokens before it only (CLIP's
    /// text tower).
    pub fn forward_attending(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let normed = self.norm_before.forward(x)?;
        let attended = match causal {
            true => self.attention.forward_causal(&normed)?,
            false => self.attention.forward(&normed, None)?,
        };
        self.after_attention(&attended, x)
    }

    /// The stack's output at each sequence's first token only, [batch, 1, hidden], for
    /// `layers` run in turn on `x` [batch, seq, hidden]: where nothing reads the other
    /// tokens' (a head on the class token: ViT's classifier, CLIP's pooled image), the last
    /// layer's queries, keys and values still come from every token, but its output
    /// projection, feed-forward block and residuals run on one row per sequence: 9 of a
    /// ViT-base layer's 13 parts by FLOPs (q/k/v 3, attention about 1, output 1,
    /// feed-forward 8) skipped in one layer of twelve.
    pub fn first_token_after(layers: &[Self], x: &Tensor) -> Result<Tensor> {
        let Some((last, before)) = layers.split_last() else {
            return x.narrow(1, 0, 1);
        };
        let mut x = x.clone();
        for layer in before {
            x = layer.forward(&x)?;
        }
        let first = |t: &Tensor| t.narrow(1, 0, 1)?.contiguous();
        let attended = last
            .attention
            .forward(&last.norm_before.forward(&x)?, None)?;
        last.after_attention(&first(&attended)?, &first(&x)?)
    }

    /// The output projection and residual, then the feed-forward block and its residual, on
    /// the rows of `x` that `attended` holds the attention of.
    fn after_attention(&self, attended: &Tensor, x: &Tensor) -> Result<Tensor> {
        let x = self.attention_output.forward_residual(attended, x)?;
        let normed = self.norm_after.forward(&x)?;
        self.intermediate
            .feed_forward(&normed, self.act, &self.output, Some(&x))
    }
}

/// Multi-head self-attention with query, key and value projected by one product.
pub(crate) struct SelfAttention {
    qkv: Dense,
    heads: usize,
    /// The two products of attention in bf16 too ([`kernels::attention`]).
    bf16: bool,
}

impl SelfAttention {
    /// `query`, `key`, `value` (each `weight` [hidden, hidden] and, with `bias`, `bias`) under
    /// `vb`, as transformers' BertSelfAttention / ViTSelfAttention keep them.
    pub fn load(
        hidden: usize,
        heads: usize,
        bias: bool,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let names = [("query", bias), ("key", bias), ("value", bias)];
        Self::load_named(hidden, heads, names, vb, products)
    }

    /// The query, key and value projections under `vb` by their names, each with or without
    /// a bias (BART-style `q_proj`, `k_proj`, `v_proj`; Whisper's `k_proj` has none, which
    /// is a bias of zeros).
    pub fn load_named(
        hidden: usize,
        heads: usize,
        names: [(&str, bool); 3],
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let scale = 1.0 / ((hidden / heads) as f64).sqrt();
        let mut weights = vec![];
        let mut biases = vec![];
        for ((name, bias), factor) in names.into_iter().zip([scale, 1.0, 1.0]) {
            let p = vb.pp(name);
            weights.push((p.get((hidden, hidden), "weight")? * factor)?);
            biases.push(match bias {
                true => (p.get(hidden, "bias")? * factor)?,
                false => Tensor::zeros(hidden, weights[0].dtype(), weights[0].device())?,
            });
        }
        let bias = if names.iter().any(|(_, b)| *b) {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self {
            qkv: Dense::new(Tensor::cat(&weights, 0)?, bias, products)?,
            heads,
            bf16: products == Products::Bf16,
        })
    }

    /// `x` [batch, seq, hidden]; `key_mask` [batch, seq] is added to every query's scores
    /// for that key (0 attends, transformers' large negative value masks; None attends
    /// everywhere). [`kernels::attention`].
    pub fn forward(&self, x: &Tensor, key_mask: Option<&Tensor>) -> Result<Tensor> {
        kernels::attention(
            &self.qkv.forward(x)?,
            self.heads,
            key_mask,
            false,
            self.bf16,
        )
    }

    /// `bias` [groups, heads, seq, seq] added to the scores, sequence i taking group
    /// i % groups (Swin's windows, [`kernels::biased_attention`]); the products in f32.
    pub fn forward_biased(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        kernels::biased_attention(&self.qkv.forward(x)?, self.heads, bias)
    }

    /// Each query attends to its own and the earlier keys only (CLIP's text tower).
    pub fn forward_causal(&self, x: &Tensor) -> Result<Tensor> {
        kernels::attention(&self.qkv.forward(x)?, self.heads, None, true, self.bf16)
    }
}

/// A 2-D convolution over channels-last images `[batch, h, w, channels]`: one [`Dense`] over
/// every output pixel's window ([`kernels::image_windows`]), in blocks of output rows whose
/// windows stay in cache. DETR's ResNet and the patch embeddings of ViT and CLIP.
pub(crate) struct ImageConv {
    conv: Dense,
    kernel: usize,
    stride: usize,
    padding: usize,
}

/// Window values per block of output rows (2 MiB; ResNet-50's first 3x3 convolutions at
/// 800 x 800 would take 92 MB at once).
const WINDOW_VALUES: usize = 1 << 19;

impl ImageConv {
    /// `weight` [out, in, kernel, kernel] as checkpoints keep a Conv2d's, and `bias` [out].
    pub fn new(
        weight: &Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
        products: Products,
    ) -> Result<Self> {
        let (outputs, inputs, kernel, kw) = weight.dims4()?;
        if kw != kernel {
            candle_core::bail!("a {kernel} x {kw} kernel: only square kernels are supported")
        }
        // [out, in, kh, kw] -> [out, kh, kw, in], as a window holds its values.
        let weight = weight
            .permute((0, 2, 3, 1))?
            .reshape((outputs, kernel * kernel * inputs))?;
        Ok(Self {
            conv: Dense::new(weight, bias, products)?,
            kernel,
            stride,
            padding,
        })
    }

    /// `x` [batch, h, w, in] -> [batch, h', w', out]: `act(conv(x) + residual)`, the
    /// activation in the product's pass where there is no residual.
    pub fn forward(
        &self,
        x: &Tensor,
        act: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let apply = |rows: &Tensor, residual: Option<Tensor>| match (residual, act) {
            (None, Some(act)) => self.conv.forward_activated(rows, act),
            (None, None) => self.conv.forward(rows),
            (Some(r), act) => {
                let y = self.conv.forward_residual(rows, &r)?;
                match act {
                    Some(a) => a.forward(&y),
                    None => Ok(y),
                }
            }
        };
        let (k, s, pad) = (self.kernel, self.stride, self.padding);
        // A 1x1 window unpadded is the pixel itself: no windows to copy.
        if k == 1 && s == 1 && pad == 0 {
            return apply(x, residual.cloned());
        }
        let (_, h, w, c) = x.dims4()?;
        let out_h = kernels::windows_along(h, k, s, pad);
        let per_row = kernels::windows_along(w, k, s, pad) * k * k * c;
        let block = (WINDOW_VALUES / per_row.max(1)).max(1);
        let blocks = (0..out_h)
            .step_by(block)
            .map(|y0| {
                let rows = y0..(y0 + block).min(out_h);
                let windows = kernels::image_windows(x, k, s, pad, rows.clone())?;
                let residual = residual.map(|r| r.narrow(1, y0, rows.len())).transpose()?;
                apply(&windows, residual)
            })
            .collect::<Result<Vec<_>>>()?;
        match blocks.as_slice() {
            [one] => Ok(one.clone()),
            _ => Tensor::cat(&blocks, 1),
        }
    }

    /// Pixels [batch, channels, height, width] (as processors give them) -> the patches'
    /// features [batch, patches, out], row by row: transformers' patch embedding
    /// (`conv(x).flatten(2).transpose(1, 2)`).
    pub fn patches(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = pixels.permute((0, 2, 3, 1))?.contiguous()?;
        let y = self.forward(&x, None, None)?;
        let (b, h, w, d) = y.dims4()?;
        y.reshape((b, h * w, d))
    }
}

/// A 1-D convolution over channels-last frames `[frames, channels]`, zero-padded by
/// `padding` frames on both sides, its activation in the product's pass where it is GELU
/// ([`kernels::conv1d_frames`]: the windows are read in place, no im2col).
pub(crate) struct FrameConv {
    weight: kernels::Weight,
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl FrameConv {
    /// `weight` [out, in, kernel] as checkpoints keep a Conv1d's.
    pub fn new(
        weight: &Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
        products: Products,
    ) -> Result<Self> {
        Ok(Self {
            weight: kernels::conv_weight(weight, products == Products::Bf16)?,
            bias,
            kernel: weight.dim(2)?,
            stride,
            padding,
        })
    }

    /// `weight` [outputs, inputs, kernel] and, with `bias`, `bias` [outputs] under `vb`.
    pub fn load(
        (inputs, outputs, kernel): (usize, usize, usize),
        bias: bool,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
        products: Products,
    ) -> Result<Self> {
        let b = bias.then(|| vb.get(outputs, "bias")).transpose()?;
        Self::new(
            &vb.get((outputs, inputs, kernel), "weight")?,
            b,
            stride,
            padding,
            products,
        )
    }

    /// `act(conv(x))`; `act` None leaves the output as it is.
    pub fn forward(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let (in_pass, after) = act.map_or((kernels::Activation::Identity, None), |act| {
            FeedForwardAct::from(act).split()
        });
        let y = kernels::conv1d_frames(
            &self.padded(x)?,
            &self.weight,
            self.bias.as_ref(),
            self.kernel,
            self.stride,
            in_pass,
        )?;
        FeedForwardAct::finish(y, after)
    }

    /// `act(norm(conv(x)))`, `norm` transformers' `GroupNorm(num_groups=channels)` with
    /// `weight`, `bias` and `eps` ([`kernels::channel_normed_conv1d_frames`]); `rows` is this
    /// convolution's weight as [`kernels::window_rows`] gives it.
    pub fn forward_channel_normed(
        &self,
        x: &Tensor,
        rows: &Tensor,
        (weight, bias): (&Tensor, &Tensor),
        eps: f64,
        act: Activation,
    ) -> Result<Tensor> {
        let (in_pass, after) = FeedForwardAct::from(act).split();
        let y = kernels::channel_normed_conv1d_frames(
            &self.padded(x)?,
            rows,
            self.bias.as_ref(),
            (self.kernel, self.stride),
            (weight, bias),
            eps,
            in_pass,
        )?;
        FeedForwardAct::finish(y, after)
    }

    /// `x` with `padding` zero frames before and after.
    fn padded(&self, x: &Tensor) -> Result<Tensor> {
        match self.padding {
            0 => Ok(x.clone()),
            p => {
                let zeros = Tensor::zeros((p, x.dim(1)?), x.dtype(), x.device())?;
                Tensor::cat(&[&zeros, x, &zeros], 0)
            }
        }
    }
}
