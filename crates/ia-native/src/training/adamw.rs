//! AdamW in place, as `torch.optim.AdamW` computes it on the CPU (`_single_tensor_adam` with
//! decoupled weight decay), in the same order of f32 operations:
//!
//! ```text
//! param *= 1 - lr * weight_decay
//! m = m + (1 - beta1) * (g - m)                  (lerp)
//! v = v * beta2 + (1 - beta2) * g * g            (addcmul)
//! param += -lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)   (addcdiv)
//! ```
//!
//! candle's `AdamW` builds each new value from a dozen tensor operations, each allocating a
//! tensor the size of the parameter; these three passes write the parameter and its moments
//! where they are, so the optimiser step allocates nothing (a transposed gradient is copied
//! once to be read in order).

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, Var};
use ia_engine::training::AdamW as Settings;
use rayon::prelude::*;

/// Elements one rayon task updates.
const CHUNK: usize = 1 << 16;

struct Moments {
    var: Var,
    m: Tensor,
    v: Tensor,
}

pub(crate) struct AdamW {
    params: Vec<Moments>,
    settings: Settings,
    step: i32,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, settings: Settings) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|var| {
                let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
                Ok(Moments {
                    m: zeros()?,
                    v: zeros()?,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            settings,
            step: 0,
        })
    }

    /// One update of every parameter that has a gradient (PyTorch skips the others too).
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.step += 1;
        let s = self.settings;
        let bias_correction1 = 1.0 - s.beta1.powi(self.step);
        let bias_correction2 = 1.0 - s.beta2.powi(self.step);
        let update = Update {
            decay: (1.0 - s.lr * s.weight_decay) as f32,
            step_size: (-(s.lr / bias_correction1)) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: s.eps as f32,
        };
        for p in &self.params {
            let Some(g) = grads.get(&p.var) else { continue };
            let g = g.contiguous()?;
            p.m.inplace_op2(&g, &Lerp((1.0 - s.beta1) as f32))?;
            p.v.inplace_op2(
                &g,
                &AddSquare {
                    beta2: s.beta2 as f32,
                    weight: (1.0 - s.beta2) as f32,
                },
            )?;
            p.var.as_tensor().inplace_op3(&p.m, &p.v, &update)?;
        }
        Ok(())
    }
}

/// The contiguous f32 slice a storage and layout describe.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("AdamW updates f32 tensors");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("AdamW updates contiguous tensors");
    };
    Ok(&v[start..end])
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("AdamW updates f32 tensors");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("AdamW updates contiguous tensors");
    };
    Ok(&mut v[start..end])
}

/// `f(d, s)` for every element of `dst` and its partner in `src`, in parallel chunks.
fn each_pair(dst: &mut [f32], src: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                f(d, s);
            }
        });
}

/// `m.lerp_(g, weight)`: m + weight * (g - m) (torch's form for weight < 0.5).
struct Lerp(f32);

impl candle_core::InplaceOp2 for Lerp {
    fn name(&self) -> &'static str {
        "adamw-first-moment"
    }

    fn cpu_fwd(&self, m: &mut CpuStorage, lm: &Layout, g: &CpuStorage, lg: &Layout) -> Result<()> {
        let w = self.0;
        each_pair(slice_mut(m, lm)?, slice(g, lg)?, |m, g| *m += w * (g - *m));
        Ok(())
    }
}

/// `v.mul_(beta2).addcmul_(g, g, value=weight)`.
struct AddSquare {
    beta2: f32,
    weight: f32,
}

impl candle_core::InplaceOp2 for AddSquare {
    fn name(&self) -> &'static str {
        "adamw-second-moment"
    }

    fn cpu_fwd(&self, v: &mut CpuStorage, lv: &Layout, g: &CpuStorage, lg: &Layout) -> Result<()> {
        let (beta2, w) = (self.beta2, self.weight);
        each_pair(slice_mut(v, lv)?, slice(g, lg)?, |v, g| {
            *v = *v * beta2 + w * g * g
        });
        Ok(())
    }
}

/// Weight decay, then `param.addcdiv_(m, sqrt(v) / bc2_sqrt + eps, value=step_size)`.
struct Update {
    decay: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
}

impl candle_core::InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        lp: &Layout,
        m: &CpuStorage,
        lm: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<()> {
        let (p, m, v) = (slice_mut(p, lp)?, slice(m, lm)?, slice(v, lv)?);
        let u = self;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((p, m), v)| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    let denom = v.sqrt() / u.bias_correction2_sqrt + u.eps;
                    *p *= u.decay;
                    *p += u.step_size * m / denom;
                }
            });
        Ok(())
    }
}
