//! GroupNorm with one group per channel over channels-last frames (Wav2Vec2's first
//! feature-encoder layer), with its GELU, in three passes over the frames: channel means,
//! channel variances around them, then normalise, scale, shift and activate. candle's steps
//! make about ten passes, and reduce over the strided frame dimension.

use super::linear::{activate_body, activate_with_candle, Activation};
use super::{applies, isa, multiversion};
use candle_core::{Result, Tensor};

/// `act((x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c)` for `x` [frames, channels],
/// mean and (biased) variance of each channel over the frames, as transformers'
/// `GroupNorm(num_groups=channels)` on the channels-first layout. f32 on the CPU runs the
/// kernel; elsewhere candle's operations.
pub fn channel_norm_frames(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    let (frames, channels) = x.dims2()?;
    if weight.dims() != [channels] || bias.dims() != [channels] {
        candle_core::bail!("channel_norm_frames: weight and bias of {channels} channels")
    }
    if !([x, weight, bias].into_iter().all(applies)) || frames == 0 {
        let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
        let var = centred.sqr()?.mean_keepdim(0)?;
        let y = centred
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(weight)?
            .broadcast_add(bias)?;
        return activate_with_candle(y, act);
    }
    let mut values = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (weight, bias) = (weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?);
    let isa = isa();
    use rayon::prelude::*;
    // Rows per task: enough to amortise the per-task sums, few enough to split the frames.
    let rows = frames.div_ceil(4 * rayon::current_num_threads()).max(64);
    let sums = |f: &(dyn Fn(&[f32], &mut [f64]) + Sync)| -> Vec<f64> {
        values
            .par_chunks(rows * channels)
            .map(|chunk| {
                let mut acc = vec![0f64; channels];
                f(chunk, &mut acc);
                acc
            })
            .reduce(
                || vec![0f64; channels],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            )
    };
    let n = frames as f64;
    let mean: Vec<f64> = sums(&|chunk, acc| channel_sums(isa, chunk, acc, None))
        .into_iter()
        .map(|s| s / n)
        .collect();
    let var = sums(&|chunk, acc| channel_sums(isa, chunk, acc, Some(&mean)));
    // y = x * scale + shift, with scale = weight / std and shift = bias - mean * scale.
    let scale: Vec<f32> = var
        .iter()
        .zip(&weight)
        .map(|(v, w)| (*w as f64 / (v / n + eps).sqrt()) as f32)
        .collect();
    let shift: Vec<f32> = mean
        .iter()
        .zip(&scale)
        .zip(&bias)
        .map(|((m, s), b)| (*b as f64 - m * *s as f64) as f32)
        .collect();
    values
        .par_chunks_mut(rows * channels)
        .for_each(|chunk| scale_shift(isa, chunk, &scale, &shift, act));
    Tensor::from_vec(values, (frames, channels), x.device())
}

/// Per channel, the sum over the rows of `chunk` of x (`mean` None) or of (x - mean)^2.
#[inline(always)]
fn channel_sums_body(chunk: &[f32], acc: &mut [f64], mean: Option<&[f64]>) {
    let channels = acc.len();
    for row in chunk.chunks_exact(channels) {
        match mean {
            None => acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x as f64),
            Some(mean) => acc
                .iter_mut()
                .zip(row)
                .zip(mean)
                .for_each(|((a, &x), &m)| *a += (x as f64 - m) * (x as f64 - m)),
        }
    }
}

multiversion!(fn channel_sums(chunk: &[f32], acc: &mut [f64], mean: Option<&[f64]>) => channel_sums_body);

#[inline(always)]
fn scale_shift_body(chunk: &mut [f32], scale: &[f32], shift: &[f32], act: Activation) {
    for row in chunk.chunks_exact_mut(scale.len()) {
        for ((y, &s), &t) in row.iter_mut().zip(scale).zip(shift) {
            *y = y.mul_add(s, t);
        }
        activate_body(row, act);
    }
}

multiversion!(fn scale_shift(chunk: &mut [f32], scale: &[f32], shift: &[f32], act: Activation) => scale_shift_body);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The kernel equals candle's steps (the fallback, run in f64), with and without GELU,
    /// on a frame count that leaves a partial last task.
    #[test]
    fn equals_candles_steps() {
        let dev = Device::Cpu;
        let (frames, channels) = (1001, 24);
        let x = Tensor::randn(0f32, 1.0, (frames, channels), &dev)
            .unwrap()
            .affine(3.0, 1.5)
            .unwrap();
        let w = Tensor::randn(0f32, 1.0, channels, &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, channels, &dev).unwrap();
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        for act in [Activation::Identity, Activation::GeluErf] {
            let got = channel_norm_frames(&x, &w, &b, 1e-5, act).unwrap();
            let want = channel_norm_frames(&f64s(&x), &f64s(&w), &f64s(&b), 1e-5, act)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let d = crate::kernels::max_abs_diff(&got, &want);
            assert!(d < 1e-5, "{act:?}: {d}");
        }
    }
}
