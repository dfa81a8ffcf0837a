//! Channels-last images (`[batch, height, width, channels]`) for convolutional backbones
//! (DETR's ResNet): a convolution is a linear layer over each output pixel's window read as
//! one row ([`image_windows`], im2col), and max pooling ([`max_pool`]).
//!
//! In this layout a window's row of pixels is `kernel * channels` consecutive values, so a
//! window is `kernel` copies of contiguous runs; candle's NCHW `conv2d` gathers every value
//! of its im2col matrix one at a time, which was most of DETR's time.

use super::with_f32;
use candle_core::{DType, Result, Tensor};
use std::ops::Range;

/// Output positions along a side of `len` for a window of `kernel`, `stride` apart, with
/// `padding` zeros before and after.
pub fn windows_along(len: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (len + 2 * padding).saturating_sub(kernel) / stride.max(1) + 1
}

/// The `kernel` x `kernel` windows of `x` [batch, h, w, channels] for the output rows
/// `rows`, `stride` apart with `padding` zeros around: [batch, rows, out_w, kernel * kernel *
/// channels], a window's values row by row, pixel by pixel (a `[out, in, kh, kw]` weight
/// permuted to `[out, kh, kw, in]` multiplies it).
pub fn image_windows(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    rows: Range<usize>,
) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (out_h, out_w) = (
        windows_along(h, kernel, stride, padding),
        windows_along(w, kernel, stride, padding),
    );
    if kernel == 0 || stride == 0 || h + 2 * padding < kernel || w + 2 * padding < kernel {
        candle_core::bail!("image windows: a {h} x {w} image, kernel {kernel}, stride {stride}")
    }
    if rows.start > rows.end || rows.end > out_h {
        candle_core::bail!("image windows: rows {rows:?} of {out_h}")
    }
    let n = rows.len();
    let width = kernel * kernel * c;
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let out = with_f32("image windows", &x, |x| {
        let mut out = vec![0f32; b * n * out_w * width];
        use rayon::prelude::*;
        out.par_chunks_mut(out_w * width.max(1))
            .enumerate()
            .for_each(|(i, row)| {
                let (image, oy) = (i / n, rows.start + i % n);
                let image = &x[image * h * w * c..(image + 1) * h * w * c];
                for (ox, window) in row.chunks_exact_mut(width).enumerate() {
                    for (ky, line) in window.chunks_exact_mut(kernel * c).enumerate() {
                        // Rows and columns before the image are padding (zeros already).
                        let iy = (oy * stride + ky).wrapping_sub(padding);
                        if iy >= h {
                            continue;
                        }
                        let x0 = (ox * stride) as isize - padding as isize;
                        let first = x0.max(0) as usize;
                        let last = ((x0 + kernel as isize).min(w as isize)).max(0) as usize;
                        if first < last {
                            let skip = (first as isize - x0) as usize;
                            line[skip * c..(skip + last - first) * c]
                                .copy_from_slice(&image[(iy * w + first) * c..(iy * w + last) * c]);
                        }
                    }
                }
            });
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, n, out_w, width), x.device())?.to_dtype(dtype)
}

/// Max pooling of `x` [batch, h, w, channels] over `kernel` x `kernel` windows `stride`
/// apart, `padding` outside taking no part (torch's `MaxPool2d`).
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if kernel == 0
        || stride == 0
        || padding >= kernel
        || h + 2 * padding < kernel
        || w + 2 * padding < kernel
    {
        candle_core::bail!("max pool: a {h} x {w} image, kernel {kernel}, stride {stride}")
    }
    let (out_h, out_w) = (
        windows_along(h, kernel, stride, padding),
        windows_along(w, kernel, stride, padding),
    );
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let out = with_f32("max pool", &x, |x| {
        let mut out = vec![f32::NEG_INFINITY; b * out_h * out_w * c];
        use rayon::prelude::*;
        out.par_chunks_mut(out_w * c.max(1))
            .enumerate()
            .for_each(|(i, row)| {
                let (image, oy) = (i / out_h, i % out_h);
                let image = &x[image * h * w * c..(image + 1) * h * w * c];
                let ys =
                    (oy * stride).saturating_sub(padding)..(oy * stride + kernel - padding).min(h);
                for (ox, pixel) in row.chunks_exact_mut(c).enumerate() {
                    let xs = (ox * stride).saturating_sub(padding)
                        ..(ox * stride + kernel - padding).min(w);
                    for iy in ys.clone() {
                        for ix in xs.clone() {
                            let src = &image[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                            for (m, &v) in pixel.iter_mut().zip(src) {
                                *m = m.max(v);
                            }
                        }
                    }
                }
            });
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, out_h, out_w, c), x.device())?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    /// Windows times the permuted weight equal candle's conv2d, for 1x1 / 3x3 / 7x7 kernels,
    /// strides 1 and 2, with and without padding, odd sides, in two blocks of rows.
    #[test]
    fn windows_times_the_weight_equal_candles_conv2d() {
        let dev = Device::Cpu;
        for (k, s, p, h, w, c) in [
            (1, 1, 0, 5, 4, 3),
            (1, 2, 0, 7, 5, 4),
            (3, 1, 1, 6, 7, 5),
            (3, 2, 1, 9, 6, 2),
            (7, 2, 3, 11, 13, 3),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (6, c, k, k), &dev).unwrap();
            let want = x.conv2d(&weight, p, s, 1, 1).unwrap();
            let nhwc = x.permute((0, 2, 3, 1)).unwrap();
            let out_h = windows_along(h, k, s, p);
            let split = out_h / 2;
            let rows = [0..split, split..out_h]
                .into_iter()
                .map(|r| image_windows(&nhwc, k, s, p, r).unwrap())
                .collect::<Vec<_>>();
            let windows = Tensor::cat(&rows, 1).unwrap();
            let wt = weight
                .permute((0, 2, 3, 1))
                .unwrap()
                .reshape((6, k * k * c))
                .unwrap();
            let ours = windows
                .broadcast_matmul(&wt.t().unwrap())
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            assert_eq!(ours.dims(), want.dims(), "k {k} s {s} p {p}");
            let d = crate::kernels::max_abs_diff(&ours, &want);
            assert!(d < 1e-4, "k {k} s {s} p {p}: {d}");
        }
    }

    #[test]
    fn max_pool_equals_candles_over_negative_values() {
        let dev = Device::Cpu;
        // Negative values: a zero-padded pool would differ at the borders.
        let x = (Tensor::randn(0f32, 1.0, (2, 3, 9, 8), &dev).unwrap() - 5.0).unwrap();
        let ours = max_pool(&x.permute((0, 2, 3, 1)).unwrap(), 3, 2, 1).unwrap();
        let padded = x
            .pad_with_same(2, 1, 1)
            .unwrap()
            .pad_with_same(3, 1, 1)
            .unwrap();
        let want = padded.max_pool2d_with_stride(3, 2).unwrap();
        let ours = ours.permute((0, 3, 1, 2)).unwrap();
        assert_eq!(ours.dims(), want.dims());
        assert_eq!(crate::kernels::max_abs_diff(&ours, &want), 0.0);
        assert!(max_pool(&x.i((.., .., ..2, ..2)).unwrap(), 3, 2, 3).is_err());
    }
}
