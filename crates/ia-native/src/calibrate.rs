//! The native engine's matmul rate: candle's own product on the device, the kernels the
//! layers run on, timed after a warm-up until half a second or 50 products.

use candle_core::{DType, Device, Tensor};
use ia_engine::EngineError;
use std::time::{Duration, Instant};

/// n of the n x n products: 2 GFLOP each, large enough to leave the caches and reach the
/// sustained rate, small enough for well under a second on two cores.
const SIZE: usize = 1024;

/// (n, median FLOP/s, products timed).
pub fn matmul(device: &Device, dtype: DType) -> Result<(usize, f64, usize), EngineError> {
    let rt = |e: candle_core::Error| EngineError::Runtime(crate::candle_message(&e));
    let operand = |seed: f64| -> Result<Tensor, EngineError> {
        let t = Tensor::arange(0f32, (SIZE * SIZE) as f32, device)
            .and_then(|t| t.affine(1e-6, seed))
            .and_then(|t| t.reshape((SIZE, SIZE)))
            .and_then(|t| t.to_dtype(dtype))
            .map_err(rt)?;
        Ok(t)
    };
    let (a, b) = (operand(0.5)?, operand(-0.25)?);
    for _ in 0..2 {
        a.matmul(&b).map_err(rt)?;
    }
    device.synchronize().map_err(rt)?;
    let mut seconds = Vec::new();
    let start = Instant::now();
    while seconds.len() < 5 || (start.elapsed() < Duration::from_millis(500) && seconds.len() < 50)
    {
        let t = Instant::now();
        let product = a.matmul(&b).map_err(rt)?;
        device.synchronize().map_err(rt)?;
        seconds.push(t.elapsed().as_secs_f64());
        drop(product);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    let flops = 2.0 * (SIZE as f64).powi(3);
    Ok((SIZE, flops / median, seconds.len()))
}
