//! The native engine's matmul rate on the product its layers run, timed by the shared
//! protocol (`ia_engine::calibration`): on the CPU our linear-layer kernel (f32 through gemm,
//! bf16 on AMX or AVX512-BF16, q8_0 and q4_k weights in 8-bit integer products), elsewhere
//! candle's matmul; what its tensor operations cost to dispatch; and, off the CPU, what its
//! elementwise operations stream through the device's memory.

use crate::{kernels, rt};
use candle_core::{DType, Device, Tensor};
use ia_engine::calibration::{
    chain_operands, dispatch_costs, operand, seconds_of, stream_bandwidth, time_products,
    DISPATCH_WIDTH, MATMUL_SIZE, STREAM_ELEMENTS, STREAM_INPUTS,
};
use ia_engine::{Bandwidth, DispatchCost, EngineError};

/// (n, median FLOP/s, products timed).
pub fn matmul(device: &Device, dtype: DType) -> Result<(usize, f64, usize), EngineError> {
    if device.is_cpu() && matches!(dtype, DType::F32 | DType::BF16) {
        // f32 operands: bf16 is the kernel's product, its activations and output stay f32.
        return linear_rate(|w| kernels::Weight::new(w, dtype == DType::BF16));
    }
    let n = MATMUL_SIZE;
    let tensor = |offset: f32| -> Result<Tensor, EngineError> {
        Tensor::from_vec(operand(n, offset), (n, n), device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(rt)
    };
    let (a, b) = (tensor(0.5)?, tensor(-0.25)?);
    let (rate, samples) = time_products(n, || {
        let product = a.matmul(&b).map_err(rt)?;
        device.synchronize().map_err(rt)?;
        drop(product);
        Ok(())
    })?;
    Ok((n, rate, samples))
}

/// (n, median FLOP/s, products timed) of the linear-layer kernel with `format` weights: the
/// products a quantised decoder's prefill runs (activations quantised per block of 32 and
/// multiplied in 8-bit integers, on `vpdpbusd` with AVX512-VNNI; see `kernels::quant`).
pub fn quantised_matmul(
    format: kernels::quant::Format,
) -> Result<(usize, f64, usize), EngineError> {
    linear_rate(|w| {
        let matrix = kernels::quant::QuantMatrix::quantize(w, format)?;
        Ok(kernels::Weight::Quant(std::sync::Arc::new(matrix)))
    })
}

/// (n, median FLOP/s, products timed) of the CPU's linear-layer kernel multiplying n x n f32
/// activations by the weight `weight` makes of an n x n f32 matrix.
fn linear_rate(
    weight: impl FnOnce(&Tensor) -> candle_core::Result<kernels::Weight>,
) -> Result<(usize, f64, usize), EngineError> {
    let n = MATMUL_SIZE;
    let tensor = |offset: f32| Tensor::from_vec(operand(n, offset), (n, n), &Device::Cpu);
    let a = tensor(0.5).map_err(rt)?;
    // The layer's weight is [out, in]; the product is a . weight^T.
    let weight = weight(&tensor(-0.25).map_err(rt)?).map_err(rt)?;
    let (rate, samples) = time_products(n, || {
        kernels::linear(&a, &weight, None, kernels::Activation::Identity, None)
            .map_err(rt)
            .map(drop)
    })?;
    Ok((n, rate, samples))
}

/// The dispatch costs of chains of candle's tiny products on `device` (named `name`): what
/// each tensor operation of a layer costs beyond its arithmetic (allocation, dispatch, a
/// kernel launch off the CPU).
pub fn dispatch(device: &Device, name: String) -> Result<DispatchCost, EngineError> {
    let w = DISPATCH_WIDTH;
    let (x, weights) = chain_operands(w);
    let x = Tensor::from_vec(x, (1, w), device).map_err(rt)?;
    let weights = Tensor::from_vec(weights, (w, w), device).map_err(rt)?;
    dispatch_costs(name, |ops| {
        seconds_of(|| {
            let mut h = x.clone();
            for _ in 0..ops {
                h = h.matmul(&weights).map_err(rt)?;
            }
            device.synchronize().map_err(rt)
        })
    })
}

/// What chains of candle's additions of [`STREAM_ELEMENTS`]-element f32 arrays stream through
/// `device`'s memory (named `name`), by the shared protocol. The arrays are made on the device.
pub fn bandwidth(device: &Device, name: String) -> Result<Bandwidth, EngineError> {
    bandwidth_of(device, name, STREAM_ELEMENTS)
}

fn bandwidth_of(device: &Device, name: String, n: usize) -> Result<Bandwidth, EngineError> {
    let [(_, x), (_, b)] = STREAM_INPUTS;
    let x = Tensor::full(x, n, device).map_err(rt)?;
    let b = Tensor::full(b, n, device).map_err(rt)?;
    stream_bandwidth(name, n, |ops| {
        seconds_of(|| {
            let mut sum = (&x + &b).map_err(rt)?;
            for _ in 1..ops {
                sum = (&sum + &b).map_err(rt)?;
            }
            device.synchronize().map_err(rt)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol through candle's own additions (on the CPU, the one device every machine
    /// has; the engine calibrates it off the CPU only): a rate, and the arrays it moved.
    #[test]
    fn candle_additions_give_a_bandwidth() {
        let n = 1 << 20;
        let b = bandwidth_of(&Device::Cpu, "cpu".into(), n).unwrap();
        assert_eq!(b.array_bytes, 4 * n);
        eprintln!("{b:?}");
        assert!(b.bytes_per_s > 1e8, "{b:?}");
        assert!(b.samples >= 60, "{b:?}");
    }
}
