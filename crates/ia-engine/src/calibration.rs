//! The calibrations every engine runs (`hardware --calibrate`), one protocol each, with the
//! ONNX graphs they run on for the runtimes that run graphs:
//!
//! * matmul: two untimed products, then products timed one by one until at least five and
//!   half a second (at most 50); the rate is `2 n^3` over the median time. `hardware
//!   --calibrate` times every engine's rates in rounds, one pass over the engines apart, and
//!   keeps each one's fastest round: a shared machine's slow spells outlast a window;
//! * dispatch: what a call and each operation in it cost beyond their arithmetic. A chain of
//!   one and a chain of [`DISPATCH_OPS`] tiny products are timed call by call (at least ten
//!   and a quarter of a second each); the difference of the medians is the chain's extra
//!   operations. The pair is timed in [`DISPATCH_ROUNDS`] rounds, and each cost is the median
//!   of the rounds'. On a software WebGPU adapter this, not FLOP/s, is what a small model's
//!   latency is made of; no roofline sees it;
//! * bandwidth, on a device whose memory is not the host's: a chain of one and a chain of
//!   [`STREAM_OPS`] additions of [`STREAM_ELEMENTS`]-element f32 arrays (each reading two
//!   arrays and writing one) timed like the dispatch chains; the difference of the medians is
//!   the chain's extra additions, each `3 x 4 x STREAM_ELEMENTS` bytes. The arrays are made
//!   on the device from one-element inputs and the output is their sum, so nothing large
//!   crosses a GPU's bus; making them and summing are in both chains and cancel. The fastest
//!   of [`BANDWIDTH_ROUNDS`] rounds is kept, as for the matmul rates.

use crate::{Bandwidth, DispatchCost, EngineError};
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
    rate_of_products(n, || seconds_of(&mut product))
}

/// The same protocol for a runtime that times each product itself (a page, with
/// `performance.now()`): `product` runs one and returns its seconds.
pub fn rate_of_products(
    n: usize,
    product: impl FnMut() -> Result<f64, EngineError>,
) -> Result<(f64, usize), EngineError> {
    let (median, samples) = median_seconds(product, 5, Duration::from_millis(500), 50)?;
    Ok((2.0 * (n as f64).powi(3) / median, samples))
}

/// The median of `timed` (which returns its own seconds) and how many were timed: two
/// untimed, then at least `min` and until `budget` has passed (at most `max`).
fn median_seconds(
    mut timed: impl FnMut() -> Result<f64, EngineError>,
    min: usize,
    budget: Duration,
    max: usize,
) -> Result<(f64, usize), EngineError> {
    for _ in 0..2 {
        timed()?;
    }
    let mut seconds = Vec::new();
    let start = Instant::now();
    while seconds.len() < min || (start.elapsed() < budget && seconds.len() < max) {
        seconds.push(timed()?);
    }
    seconds.sort_by(f64::total_cmp);
    Ok((seconds[seconds.len() / 2], seconds.len()))
}

/// Products in the long chain of the dispatch calibration.
pub const DISPATCH_OPS: usize = 64;
/// Width of the dispatch chain: a 1 x 16 by 16 x 16 product (512 FLOPs), nothing next to the
/// cost of dispatching it.
pub const DISPATCH_WIDTH: usize = 16;

/// Rounds of the dispatch protocol. One round read WebGPU's cost of an operation anywhere
/// from 0.69 to 2.07 ms on one machine (eleven calibrations, software adapter), while the
/// models' own operations there took 0.67 ms: a round that meets a slow spell of a shared
/// machine, or a page whose adapter threads start badly, reads high, and the median of three
/// rounds does not follow one such round (four calibrations of three rounds: 0.62-0.74 ms).
pub const DISPATCH_ROUNDS: usize = 3;

/// Times single calls of a chain by the dispatch protocol on `device`: `call(ops)` runs one
/// call of the chain of `ops` products (waited for) and returns its seconds.
pub fn dispatch_costs(
    device: String,
    mut call: impl FnMut(usize) -> Result<f64, EngineError>,
) -> Result<DispatchCost, EngineError> {
    dispatch_in_rounds(device, || {
        let short = median_call(|| call(1))?;
        let long = median_call(|| call(DISPATCH_OPS))?;
        Ok((short, long))
    })
}

/// The dispatch protocol over `round`, which times one round: the [`median_call`]s (median
/// seconds, calls timed) of the one-operation and the [`DISPATCH_OPS`]-operation chains. For
/// a runtime that cannot time both chains through one callback (a page holds one graph).
pub fn dispatch_in_rounds<E>(
    device: String,
    mut round: impl FnMut() -> Result<((f64, usize), (f64, usize)), E>,
) -> Result<DispatchCost, E> {
    let mut rounds = Vec::with_capacity(DISPATCH_ROUNDS);
    for _ in 0..DISPATCH_ROUNDS {
        let (short, long) = round()?;
        rounds.push(dispatch_from_medians(device.clone(), short, long));
    }
    let median = |cost: fn(&DispatchCost) -> f64| -> f64 {
        let mut values: Vec<f64> = rounds.iter().map(cost).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Ok(DispatchCost {
        device,
        call_seconds: median(|r| r.call_seconds),
        op_seconds: median(|r| r.op_seconds),
        samples: rounds.iter().map(|r| r.samples).sum(),
    })
}

/// The cost of a call and of each operation from one round's medians of the one-operation
/// and the [`DISPATCH_OPS`]-operation chains; neither below zero, since noise can invert them.
fn dispatch_from_medians(device: String, short: (f64, usize), long: (f64, usize)) -> DispatchCost {
    let op = ((long.0 - short.0) / (DISPATCH_OPS - 1) as f64).max(0.0);
    DispatchCost {
        device,
        call_seconds: (short.0 - op).max(0.0),
        op_seconds: op,
        samples: short.1 + long.1,
    }
}

/// Elements of each array of the bandwidth chain: 32 MiB of f32, beyond the caches of the
/// devices calibrated (a GPU's L2 holds up to 50 MiB, but its chain's arrays alternate with
/// the next addition's: three arrays per addition, 96 MiB).
pub const STREAM_ELEMENTS: usize = 8 << 20;
/// Additions in the long chain of the bandwidth calibration.
pub const STREAM_OPS: usize = 5;
/// Rounds of the bandwidth protocol; the fastest is kept.
pub const BANDWIDTH_ROUNDS: usize = 3;

/// Times single calls of the bandwidth chains by the protocol on `device`: `call(ops)` runs
/// one call of the chain of `ops` additions of `elements`-element arrays (waited for) and
/// returns its seconds.
pub fn stream_bandwidth(
    device: String,
    elements: usize,
    mut call: impl FnMut(usize) -> Result<f64, EngineError>,
) -> Result<Bandwidth, EngineError> {
    bandwidth_in_rounds(device, elements, || {
        let short = median_call(|| call(1))?;
        let long = median_call(|| call(STREAM_OPS))?;
        Ok((short, long))
    })
}

/// The bandwidth protocol over `round`, which times one round: the [`median_call`]s (median
/// seconds, calls timed) of the one-addition and the [`STREAM_OPS`]-addition chains of
/// `elements`-element arrays. An error where the long chain did not take longer than the
/// short one (a runtime that fused the additions, or noise larger than the additions): no
/// figure is better than a wrong one. For a runtime that cannot time both chains through one
/// callback (a page holds one graph).
pub fn bandwidth_in_rounds(
    device: String,
    elements: usize,
    mut round: impl FnMut() -> Result<((f64, usize), (f64, usize)), EngineError>,
) -> Result<Bandwidth, EngineError> {
    let bytes_per_addition = 3.0 * 4.0 * elements as f64;
    let mut best: Option<Bandwidth> = None;
    let mut samples = 0;
    for _ in 0..BANDWIDTH_ROUNDS {
        let (short, long) = round()?;
        samples += short.1 + long.1;
        let addition = (long.0 - short.0) / (STREAM_OPS - 1) as f64;
        if addition <= 0.0 {
            continue;
        }
        let bytes_per_s = bytes_per_addition / addition;
        if best.as_ref().is_none_or(|b| bytes_per_s > b.bytes_per_s) {
            best = Some(Bandwidth {
                device: device.clone(),
                array_bytes: 4 * elements,
                bytes_per_s,
                samples: 0,
            });
        }
    }
    let mut best = best.ok_or_else(|| {
        EngineError::Runtime(format!(
            "the bandwidth chain of {STREAM_OPS} additions took no longer than one addition in \
             any of {BANDWIDTH_ROUNDS} rounds on {device} (fused by the runtime?)"
        ))
    })?;
    best.samples = samples;
    Ok(best)
}

/// The bandwidth chain: two one-element inputs `x` and `b` expanded on the device to 1 x n
/// arrays, `x + b` then `+ b` again, `ops` additions each reading the previous one's output,
/// and the sum of the last as the output `y` (1 x 1). The expansions and the sum are in
/// every chain and cancel; nothing large is fed or fetched.
pub fn addition_chain_onnx(ops: usize, n: usize) -> Vec<u8> {
    let mut fields = vec![
        field_bytes(
            1,
            &binary_node("Expand", "x", "shape", "wide_x", "expand_x"),
        ),
        field_bytes(
            1,
            &binary_node("Expand", "b", "shape", "wide_b", "expand_b"),
        ),
    ];
    for i in 1..=ops {
        let input = if i == 1 {
            "wide_x".into()
        } else {
            format!("s{}", i - 1)
        };
        let node = binary_node(
            "Add",
            &input,
            "wide_b",
            &format!("s{i}"),
            &format!("sum{i}"),
        );
        fields.push(field_bytes(1, &node));
    }
    let total = message(&[
        field_bytes(1, format!("s{ops}").as_bytes()),
        field_bytes(2, b"y"),
        field_bytes(3, b"total"),
        field_bytes(4, b"ReduceSum"),
    ]);
    fields.push(field_bytes(1, &total));
    fields.push(field_bytes(2, b"bandwidth"));
    fields.push(field_bytes(5, &int64_tensor("shape", &[1, n as i64])));
    fields.push(field_bytes(11, &value_info("x", 1, 1)));
    fields.push(field_bytes(11, &value_info("b", 1, 1)));
    fields.push(field_bytes(12, &value_info("y", 1, 1)));
    model(&message(&fields))
}

/// The bandwidth chain's inputs: `x` one and `b` 1/1024 (exact in f32 through the chain).
pub const STREAM_INPUTS: [(&str, f32); 2] = [("x", 1.0), ("b", 1.0 / 1024.0)];

/// The median seconds of `call` (returning its own seconds) and the calls timed: two untimed,
/// then at least ten and a quarter of a second (at most 100).
pub fn median_call(
    call: impl FnMut() -> Result<f64, EngineError>,
) -> Result<(f64, usize), EngineError> {
    median_seconds(call, 10, Duration::from_millis(250), 100)
}

/// Times one call of `f` in seconds: the [`dispatch_costs`] callback of an engine that does
/// not time calls itself.
pub fn seconds_of(f: impl FnOnce() -> Result<(), EngineError>) -> Result<f64, EngineError> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
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
    let node = binary_node("MatMul", "a", "b", "c", "product");
    let graph = message(&[
        field_bytes(1, &node),
        field_bytes(2, b"calibration"),
        field_bytes(11, &value_info("a", n, n)),
        field_bytes(11, &value_info("b", n, n)),
        field_bytes(12, &value_info("c", n, n)),
    ]);
    model(&graph)
}

/// The dispatch chain: `x` (1 x w) multiplied `ops` times by `w` (w x w), each product an
/// operation of its own that no runtime can fuse with the next; output `y`.
pub fn chain_onnx(ops: usize, w: usize) -> Vec<u8> {
    let mut fields = Vec::new();
    for i in 1..=ops {
        let input = if i == 1 {
            "x".into()
        } else {
            format!("h{}", i - 1)
        };
        let output = if i == ops {
            "y".into()
        } else {
            format!("h{i}")
        };
        let node = binary_node("MatMul", &input, "w", &output, &format!("product{i}"));
        fields.push(field_bytes(1, &node));
    }
    fields.push(field_bytes(2, b"dispatch"));
    fields.push(field_bytes(11, &value_info("x", 1, w)));
    fields.push(field_bytes(11, &value_info("w", w, w)));
    fields.push(field_bytes(12, &value_info("y", 1, w)));
    model(&message(&fields))
}

/// The dispatch chain's operands: `x` all ones and `w` with columns summing to one, so the
/// values stay at one through any number of products.
pub fn chain_operands(w: usize) -> (Vec<f32>, Vec<f32>) {
    (vec![1.0; w], vec![1.0 / w as f32; w * w])
}

/// NodeProto of `c = op(a, b)`.
fn binary_node(op: &str, a: &str, b: &str, c: &str, name: &str) -> Vec<u8> {
    message(&[
        field_bytes(1, a.as_bytes()),
        field_bytes(1, b.as_bytes()),
        field_bytes(2, c.as_bytes()),
        field_bytes(3, name.as_bytes()),
        field_bytes(4, op.as_bytes()),
    ])
}

/// TensorProto of a one-dimensional INT64 initializer.
fn int64_tensor(name: &str, values: &[i64]) -> Vec<u8> {
    let mut packed = Vec::new();
    for &v in values {
        varint(v as u64, &mut packed);
    }
    message(&[
        field_varint(1, values.len() as u64),
        // data_type 7 = INT64.
        field_varint(2, 7),
        field_bytes(7, &packed),
        field_bytes(8, name.as_bytes()),
    ])
}

/// ValueInfoProto of an f32 tensor of shape rows x cols.
fn value_info(name: &str, rows: usize, cols: usize) -> Vec<u8> {
    let dim = |n: usize| field_bytes(1, &message(&[field_varint(1, n as u64)]));
    let shape = message(&[dim(rows), dim(cols)]);
    // TypeProto.Tensor: elem_type 1 = FLOAT.
    let tensor = message(&[field_varint(1, 1), field_bytes(2, &shape)]);
    let value_type = message(&[field_bytes(1, &tensor)]);
    message(&[field_bytes(1, name.as_bytes()), field_bytes(2, &value_type)])
}

/// ModelProto around `graph`.
fn model(graph: &[u8]) -> Vec<u8> {
    let opset = message(&[field_bytes(1, b""), field_varint(2, 13)]);
    message(&[
        field_varint(1, 8),
        field_bytes(2, b"ipfs-accelerate"),
        field_bytes(7, graph),
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

    /// How often `needle` occurs in the encoded `model`.
    fn occurrences(model: &[u8], needle: &[u8]) -> usize {
        model.windows(needle.len()).filter(|w| *w == needle).count()
    }

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
        let find = |needle: &[u8]| occurrences(&model, needle) > 0;
        assert!(find(b"MatMul") && find(b"calibration"));
        // dim_value 1024 as a varint.
        assert!(find(&[0x08, 0x80, 0x08]));
    }

    #[test]
    fn the_chain_graph_has_one_product_per_operation() {
        let model = chain_onnx(3, 16);
        let count = |needle: &[u8]| occurrences(&model, needle);
        assert_eq!(count(b"MatMul"), 3);
        assert_eq!(count(b"product"), 3);
        // h1 and h2 link the products; y is the output.
        assert_eq!(count(b"h1"), 2);
        assert_eq!(count(b"h2"), 2);
    }

    /// A round that reads high (a slow spell, a page started badly) does not move the costs.
    #[test]
    fn dispatch_costs_are_the_median_of_the_rounds() {
        let ops = DISPATCH_OPS as f64;
        // 1 ms a call and 0.1 ms an operation, but one round at twice the cost of everything.
        let mut slow = [false, true, false].into_iter();
        let cost = dispatch_in_rounds("test".into(), || {
            let factor = if slow.next().unwrap() { 2.0 } else { 1.0 };
            Ok::<_, EngineError>(((factor * 1.1e-3, 10), (factor * (1e-3 + 0.1e-3 * ops), 12)))
        })
        .unwrap();
        assert_eq!(cost.samples, DISPATCH_ROUNDS * 22);
        assert!((cost.call_seconds - 1e-3).abs() < 1e-9, "{cost:?}");
        assert!((cost.op_seconds - 0.1e-3).abs() < 1e-9, "{cost:?}");
    }

    #[test]
    fn the_addition_chain_adds_b_once_per_operation() {
        let model = addition_chain_onnx(3, 8);
        let count = |needle: &[u8]| occurrences(&model, needle);
        assert_eq!(count(b"Add"), 3);
        assert_eq!(count(b"Expand"), 2);
        // s1 and s2 link the additions, s3 feeds the sum; the expanded b feeds each addition.
        assert_eq!(count(b"s1"), 2);
        assert_eq!(count(b"s2"), 2);
        assert_eq!(count(b"s3"), 1 + 1);
        assert_eq!(count(b"wide_b"), 1 + 3);
        // The shape initializer: two INT64 dims, 1 and 8, packed.
        assert!(model.windows(4).any(|w| w == [0x3a, 2, 1, 8]));
    }

    /// 4 ms of feeding and fetching a call, 1 ms an addition of 32 MiB arrays (96 MiB moved):
    /// about 100 GB/s, from the fastest round.
    #[test]
    fn bandwidth_is_the_chains_extra_additions_in_the_fastest_round() {
        let n = 8 << 20;
        let chain = |ops: f64, slow: f64| 4e-3 * slow + ops * 1e-3 * slow;
        let mut slowdown = [1.5, 1.0, 2.0].into_iter();
        let b = bandwidth_in_rounds("test".into(), n, || {
            let slow = slowdown.next().unwrap();
            Ok(((chain(1.0, slow), 10), (chain(STREAM_OPS as f64, slow), 10)))
        })
        .unwrap();
        let expected = 3.0 * 4.0 * n as f64 / 1e-3;
        assert!((b.bytes_per_s / expected - 1.0).abs() < 1e-9, "{b:?}");
        assert_eq!((b.array_bytes, b.samples), (4 * n, 60));
        // A runtime that fuses the chain into one pass: an error, not an infinite bandwidth.
        let fused = stream_bandwidth("test".into(), n, |_| Ok(5e-3));
        assert!(fused.unwrap_err().to_string().contains("fused"));
    }

    #[test]
    fn dispatch_splits_the_call_from_its_operations() {
        // 1 ms a call, 0.1 ms an operation.
        let split = |short, long| {
            let c = dispatch_from_medians("test".into(), (short, 10), (long, 12));
            assert_eq!(c.samples, 22);
            (c.call_seconds, c.op_seconds)
        };
        let (call, op) = split(1.1e-3, 1e-3 + 0.1e-3 * DISPATCH_OPS as f64);
        assert!((call - 1e-3).abs() < 1e-9 && (op - 0.1e-3).abs() < 1e-9);
        // A long chain measured faster than the short one: no negative cost.
        assert_eq!(split(2e-3, 1e-3), (2e-3, 0.0));
        let mut calls = [0; 2];
        let c = dispatch_costs("test".into(), |ops| {
            calls[(ops > 1) as usize] += 1;
            Ok(1e-3 + ops as f64 * 1e-5)
        })
        .unwrap();
        let (call, op, samples) = (c.call_seconds, c.op_seconds, c.samples);
        assert!((call - 1e-3).abs() < 1e-9 && (op - 1e-5).abs() < 1e-12);
        // Two untimed calls of each chain in each round.
        assert_eq!(samples + 4 * DISPATCH_ROUNDS, calls[0] + calls[1]);
        assert!(calls[0] >= 12 && calls[1] >= 12);
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
