//! The matmul calibration every engine runs (`hardware --calibrate`): one protocol for timing
//! dense products, and the ONNX graph of one product for the runtimes that run graphs.
//!
//! The protocol: two untimed products, then products timed one by one until at least five
//! and half a second (at most 50); the rate is `2 n^3` over the median time.

use crate::EngineError;
use std::time::{Duration, Instant};

/// n of the n x n products: 2 GFLOP each, large enough to leave the caches and reach the
/// sustained rate, small enough for well under a second on two cores.
pub const MATMUL_SIZE: usize = 1024;

/// Times `product` (one complete n x n product, waited for) by the protocol above; returns the
/// median rate in FLOP/s and how many products were timed.
pub fn time_products(
    n: usize,
    mut product: impl FnMut() -> Result<(), EngineError>,
) -> Result<(f64, usize), EngineError> {
    rate_of_products(n, || {
        let t = Instant::now();
        product()?;
        Ok(t.elapsed().as_secs_f64())
    })
}

/// The same protocol for a runtime that times each product itself (a page, with
/// `performance.now()`): `product` runs one and returns its seconds.
pub fn rate_of_products(
    n: usize,
    mut product: impl FnMut() -> Result<f64, EngineError>,
) -> Result<(f64, usize), EngineError> {
    for _ in 0..2 {
        product()?;
    }
    let mut seconds = Vec::new();
    let start = Instant::now();
    while seconds.len() < 5 || (start.elapsed() < Duration::from_millis(500) && seconds.len() < 50)
    {
        seconds.push(product()?);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    Ok((2.0 * (n as f64).powi(3) / median, seconds.len()))
}

/// The deterministic operands of the product: small values, so no runtime takes a shortcut
/// on zeros or overflows in half precision.
pub fn operand(n: usize, offset: f32) -> Vec<f32> {
    (0..n * n)
        .map(|i| (i % 1024) as f32 * 1e-3 + offset)
        .collect()
}

/// An ONNX model (IR 8, opset 13) computing `c = MatMul(a, b)` for f32 inputs `a` and `b` of
/// shape n x n: the graph runtimes' calibration, built here so that no file is needed.
pub fn matmul_onnx(n: usize) -> Vec<u8> {
    let dim = message(&[field_varint(1, n as u64)]);
    let shape = message(&[field_bytes(1, &dim), field_bytes(1, &dim)]);
    // TypeProto.Tensor: elem_type 1 = FLOAT.
    let tensor = message(&[field_varint(1, 1), field_bytes(2, &shape)]);
    let value_type = message(&[field_bytes(1, &tensor)]);
    let value_info =
        |name: &str| message(&[field_bytes(1, name.as_bytes()), field_bytes(2, &value_type)]);
    let node = message(&[
        field_bytes(1, b"a"),
        field_bytes(1, b"b"),
        field_bytes(2, b"c"),
        field_bytes(3, b"product"),
        field_bytes(4, b"MatMul"),
    ]);
    let graph = message(&[
        field_bytes(1, &node),
        field_bytes(2, b"calibration"),
        field_bytes(11, &value_info("a")),
        field_bytes(11, &value_info("b")),
        field_bytes(12, &value_info("c")),
    ]);
    let opset = message(&[field_bytes(1, b""), field_varint(2, 13)]);
    message(&[
        field_varint(1, 8),
        field_bytes(2, b"ipfs-accelerate"),
        field_bytes(7, &graph),
        field_bytes(8, &opset),
    ])
}

// Protocol-buffer encoding, the little ONNX needs: varints and length-delimited fields.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(field: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(field << 3, &mut out);
    varint(v, &mut out);
    out
}

fn field_bytes(field: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((field << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn message(fields: &[Vec<u8>]) -> Vec<u8> {
    fields.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_the_protobuf_encoding() {
        let mut out = Vec::new();
        varint(300, &mut out);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(field_varint(1, 8), [0x08, 0x08]);
        assert_eq!(field_bytes(4, b"MatMul")[..2], [0x22, 6]);
    }

    #[test]
    fn the_matmul_graph_names_its_operator_inputs_and_size() {
        let model = matmul_onnx(1024);
        let find = |needle: &[u8]| model.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"MatMul") && find(b"calibration"));
        // dim_value 1024 as a varint.
        assert!(find(&[0x08, 0x80, 0x08]));
    }

    #[test]
    fn the_protocol_times_at_least_five_products() {
        let mut calls = 0;
        let (rate, samples) = time_products(8, || {
            calls += 1;
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        })
        .unwrap();
        assert!(samples >= 5 && calls == samples + 2);
        assert!(rate > 0.0 && rate < 2.0 * 512.0 / 1e-3);
    }
}
