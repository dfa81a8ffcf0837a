//! Parameter counts for results from ONNX Runtime and OpenVINO, which do not report one, and
//! the operations an ONNX graph dispatches ([`onnx_operations`], for the predictor).
//!
//! [`parameter_count`] prefers the checkpoint's safetensors (the model's own parameters, as the
//! native engine counts them): an export stores tied weights twice (Qwen2-0.5B's graph holds
//! 630M elements for 494M parameters). Where a folder has only the export, the graph is counted:
//!
//! * ONNX: the elements of the graph's floating-point and low-bit integer initializers.
//!   Shape constants (int64/int32/bool) are not parameters. The file is read field by field
//!   and the tensor bytes are skipped with seeks, so a 2 GB export is never held in memory.
//! * OpenVINO IR: the elements of the `Const` layers of those element types in the `.xml`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct GraphWeightsError {
    pub path: String,
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> GraphWeightsError {
    GraphWeightsError {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The parameters of the model `graph` (an ONNX file or IR `.xml`) exports: the checkpoint's
/// safetensors where it has them, else the graph's own weights (see the module doc).
pub fn parameter_count(
    source: &crate::ModelSource,
    graph: &Path,
) -> Result<u64, GraphWeightsError> {
    // The runtimes read an initializer's external data from the file its `location` names:
    // that must be a plain name inside the model's folder, whoever counts the parameters.
    if graph.extension().is_some_and(|e| e == "onnx") {
        check_external_data(graph)?;
    }
    if let crate::ModelSource::Checkpoint(c) = source {
        if !c.safetensors.is_empty() {
            return crate::footprint::safetensors_elements(&c.safetensors)
                .map_err(|e| err(graph, e.to_string()));
        }
    }
    if graph.extension().is_some_and(|e| e == "xml") {
        ir_parameter_count(graph)
    } else {
        onnx_parameter_count(graph)
    }
}

/// Elements of every tensor a safetensors file declares (its header only is read, by the one
/// safetensors header reader, [`crate::footprint::read_safetensors_header`]).
pub fn safetensors_parameter_count(path: &Path) -> Result<u64, GraphWeightsError> {
    crate::footprint::safetensors_elements(&[path.to_path_buf()])
        .map_err(|e| err(path, e.to_string()))
}

/// ONNX `TensorProto.DataType` values that hold weights: float, uint8, int8, float16, double,
/// bfloat16, the float8 kinds, uint4, int4, float4.
const ONNX_WEIGHT_TYPES: &[u64] = &[1, 2, 3, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23];

/// Parameters of an ONNX model file (its initializers; see the module doc).
pub fn onnx_parameter_count(path: &Path) -> Result<u64, GraphWeightsError> {
    let file = File::open(path).map_err(|e| err(path, e.to_string()))?;
    let len = file.metadata().map_err(|e| err(path, e.to_string()))?.len();
    onnx_parameter_count_in(BufReader::new(file), len).map_err(|m| err(path, m))
}

/// [`onnx_parameter_count`] over any seekable reader of `len` bytes.
pub fn onnx_parameter_count_in<R: Read + Seek>(inner: R, len: u64) -> Result<u64, String> {
    scan_onnx(inner, len).map(|scan| scan.weights)
}

/// The operations one run of an ONNX model's graph dispatches, by what they compute on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphOperations {
    /// Nodes over the inputs' values (embedding lookups, products, norms, the mask's
    /// arithmetic): the kernels a GPU provider runs.
    pub on_values: u64,
    /// Shape arithmetic: `Shape` and the nodes that compute only on shapes and constants
    /// (the Gather / Unsqueeze / Concat chains that build a reshape's target over a dynamic
    /// length). They run at every call, on the CPU: ONNX Runtime Web's WebGPU provider took 95
    /// of bert-tiny's 155 nodes and left the rest to its CPU provider; 91 are counted here as
    /// on values, 93 as on shapes.
    pub on_shapes: u64,
}

/// [`GraphOperations`] of an ONNX model file's top-level graph. Not counted: nodes whose
/// inputs are all initializers or constants (`Constant` itself, a weight's transpose), which
/// a runtime folds when it loads the graph, and `Identity`, which it drops.
pub fn onnx_operations(path: &Path) -> Result<GraphOperations, GraphWeightsError> {
    let file = File::open(path).map_err(|e| err(path, e.to_string()))?;
    let len = file.metadata().map_err(|e| err(path, e.to_string()))?.len();
    scan_onnx(BufReader::new(file), len)
        .map(|scan| scan.operations())
        .map_err(|m| err(path, m))
}

/// Bytes a runtime reads to load `graph`: the file, its external data beside it
/// (`model.onnx.data`, `model.onnx_data`) or, for IR, its `.bin`.
pub fn graph_file_bytes(graph: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut total = size(graph);
    let name = graph.file_name().map(|n| n.to_string_lossy().into_owned());
    if let (Some(dir), Some(name)) = (graph.parent(), name) {
        for extra in [format!("{name}.data"), format!("{name}_data")] {
            total = total.saturating_add(size(&dir.join(extra)));
        }
        if graph.extension().is_some_and(|e| e == "xml") {
            total = total.saturating_add(size(&graph.with_extension("bin")));
        }
    }
    total
}

/// Refuses an ONNX file whose initializers keep their data outside the file's folder
/// (`external_data` locations that are not plain names inside it).
pub fn check_external_data(path: &Path) -> Result<(), GraphWeightsError> {
    let file = File::open(path).map_err(|e| err(path, e.to_string()))?;
    let len = file.metadata().map_err(|e| err(path, e.to_string()))?.len();
    let locations = scan_onnx(BufReader::new(file), len)
        .map_err(|m| err(path, m))?
        .locations;
    let dir = path.parent().unwrap_or(Path::new("."));
    for location in locations {
        crate::checkpoint::inside(dir, &location)
            .map_err(|m| err(path, format!("an initializer's external data location {m}")))?;
    }
    Ok(())
}

/// What one pass over an ONNX model file finds.
struct OnnxScan {
    /// Weight elements of the graph's initializers.
    weights: u64,
    /// The external-data locations the initializers name.
    locations: Vec<String>,
    initializers: HashSet<String>,
    /// The top-level graph's nodes, in the order the file lists them (topological, as ONNX
    /// requires).
    nodes: Vec<Node>,
}

struct Node {
    op_type: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl OnnxScan {
    /// Classifies each node by its inputs: values known before a run (initializers, and what
    /// is computed from them alone), shapes, or the inputs' values.
    fn operations(&self) -> GraphOperations {
        let mut fixed: HashSet<&str> = self.initializers.iter().map(String::as_str).collect();
        let mut shapes: HashSet<&str> = HashSet::new();
        let mut counted = GraphOperations {
            on_values: 0,
            on_shapes: 0,
        };
        for node in &self.nodes {
            // An optional input left out is an empty name.
            let inputs = || {
                node.inputs
                    .iter()
                    .map(String::as_str)
                    .filter(|i| !i.is_empty())
            };
            let outputs = node.outputs.iter().map(String::as_str);
            if inputs().all(|i| fixed.contains(i)) {
                fixed.extend(outputs);
            } else if matches!(node.op_type.as_str(), "Shape" | "Size")
                || inputs().all(|i| fixed.contains(i) || shapes.contains(i))
            {
                shapes.extend(outputs);
                counted.on_shapes += 1;
            } else if node.op_type != "Identity" {
                counted.on_values += 1;
            }
        }
        counted
    }
}

fn scan_onnx<R: Read + Seek>(inner: R, len: u64) -> Result<OnnxScan, String> {
    let mut r = ProtoReader { inner, pos: 0, len };
    let mut scan = OnnxScan {
        weights: 0,
        locations: Vec::new(),
        initializers: HashSet::new(),
        nodes: Vec::new(),
    };
    let mut saw_graph = false;
    // ModelProto: field 7 is the graph.
    r.fields(len, &mut |r, field, wire| match (field, wire) {
        (7, Wire::Len(n)) => {
            saw_graph = true;
            // GraphProto: field 1 is a node, field 5 an initializer.
            let end = r.end_of(n)?;
            r.fields(end, &mut |r, field, wire| match (field, wire) {
                (1, Wire::Len(n)) => {
                    let end = r.end_of(n)?;
                    // NodeProto: fields 1 and 2 are its inputs and outputs, 4 its op_type.
                    let mut node = Node {
                        op_type: String::new(),
                        inputs: Vec::new(),
                        outputs: Vec::new(),
                    };
                    r.fields(end, &mut |r, field, wire| match (field, wire) {
                        (1, Wire::Len(n)) => {
                            node.inputs.push(r.string(n)?);
                            Ok(())
                        }
                        (2, Wire::Len(n)) => {
                            node.outputs.push(r.string(n)?);
                            Ok(())
                        }
                        (4, Wire::Len(n)) => {
                            node.op_type = r.string(n)?;
                            Ok(())
                        }
                        (_, wire) => r.skip(wire),
                    })?;
                    scan.nodes.push(node);
                    Ok(())
                }
                (5, Wire::Len(n)) => {
                    let end = r.end_of(n)?;
                    let (name, dtype, elements) = r.tensor_header(end, &mut scan.locations)?;
                    scan.initializers.insert(name);
                    if ONNX_WEIGHT_TYPES.contains(&dtype) {
                        scan.weights = scan.weights.saturating_add(elements);
                    }
                    Ok(())
                }
                (_, wire) => r.skip(wire),
            })
        }
        (_, wire) => r.skip(wire),
    })
    .map_err(|m| format!("not a readable ONNX model ({m})"))?;
    if !saw_graph {
        return Err("not an ONNX model (it has no graph)".into());
    }
    Ok(scan)
}

enum Wire {
    Varint(u64),
    Fixed(u64),
    Len(u64),
}

struct ProtoReader<R> {
    inner: R,
    pos: u64,
    /// Bytes in the input: no field may claim more.
    len: u64,
}

impl<R: Read + Seek> ProtoReader<R> {
    /// Where a payload of `n` bytes starting here ends, if it fits the input.
    fn end_of(&self, n: u64) -> Result<u64, String> {
        self.pos
            .checked_add(n)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                format!(
                    "a field of {n} bytes at byte {} runs past the end ({} bytes)",
                    self.pos, self.len
                )
            })
    }

    /// A length-delimited string payload of `n` bytes (at most 64 KiB).
    fn string(&mut self, n: u64) -> Result<String, String> {
        self.end_of(n)?;
        if n > 1 << 16 {
            return Err(format!("a string of {n} bytes at byte {}", self.pos));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| format!("truncated at byte {}", self.pos))?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8];
        self.inner
            .read_exact(&mut b)
            .map_err(|_| format!("truncated at byte {}", self.pos))?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint too long at byte {}", self.pos))
    }

    fn skip(&mut self, wire: Wire) -> Result<(), String> {
        let n = match wire {
            Wire::Varint(_) => return Ok(()),
            Wire::Fixed(n) | Wire::Len(n) => n,
        };
        let end = self.end_of(n)?;
        self.inner
            .seek(SeekFrom::Start(end))
            .map_err(|e| e.to_string())?;
        self.pos = end;
        Ok(())
    }

    /// Calls `each` for every field up to `end`; `each` must consume the field's payload
    /// (length-delimited and fixed-width payloads are not read by this loop).
    fn fields(
        &mut self,
        end: u64,
        each: &mut dyn FnMut(&mut Self, u64, Wire) -> Result<(), String>,
    ) -> Result<(), String> {
        while self.pos < end {
            let key = self.varint()?;
            let wire = match key & 7 {
                0 => Wire::Varint(self.varint()?),
                1 => Wire::Fixed(8),
                2 => Wire::Len(self.varint()?),
                5 => Wire::Fixed(4),
                w => return Err(format!("unknown wire type {w} at byte {}", self.pos)),
            };
            each(self, key >> 3, wire)?;
            if self.pos > end {
                return Err(format!(
                    "a field runs past its message at byte {}",
                    self.pos
                ));
            }
        }
        Ok(())
    }

    /// A TensorProto's name, data type and element count (dims: field 1, packed or not; data
    /// type: field 2; name: field 8), skipping its data.
    fn tensor_header(
        &mut self,
        end: u64,
        locations: &mut Vec<String>,
    ) -> Result<(String, u64, u64), String> {
        let mut dims: Vec<u64> = Vec::new();
        let mut dtype = 0;
        let mut name = String::new();
        self.fields(end, &mut |r, field, wire| match (field, wire) {
            // external_data: StringStringEntryProto {1: key, 2: value}
            (13, Wire::Len(n)) => {
                let stop = r.end_of(n)?;
                let (mut key, mut value) = (String::new(), String::new());
                r.fields(stop, &mut |r, field, wire| match (field, wire) {
                    (1, Wire::Len(n)) => {
                        key = r.string(n)?;
                        Ok(())
                    }
                    (2, Wire::Len(n)) => {
                        value = r.string(n)?;
                        Ok(())
                    }
                    (_, wire) => r.skip(wire),
                })?;
                if key == "location" {
                    locations.push(value);
                }
                Ok(())
            }
            (1, Wire::Varint(d)) => {
                dims.push(d);
                Ok(())
            }
            (1, Wire::Len(n)) => {
                let stop = r.end_of(n)?;
                while r.pos < stop {
                    dims.push(r.varint()?);
                }
                Ok(())
            }
            (2, Wire::Varint(t)) => {
                dtype = t;
                Ok(())
            }
            (8, Wire::Len(n)) => {
                name = r.string(n)?;
                Ok(())
            }
            (_, wire) => r.skip(wire),
        })?;
        Ok((
            name,
            dtype,
            dims.iter().fold(1u64, |a, &d| a.saturating_mul(d)),
        ))
    }
}

/// IR element types that hold weights (see [`ONNX_WEIGHT_TYPES`]).
const IR_WEIGHT_TYPES: &[&str] = &[
    "f64", "f32", "f16", "bf16", "f8e4m3", "f8e5m2", "u8", "i8", "u4", "i4", "nf4",
];

/// Parameters of an OpenVINO IR model (`.xml`; its `Const` layers; see the module doc).
pub fn ir_parameter_count(xml: &Path) -> Result<u64, GraphWeightsError> {
    let text = std::fs::read_to_string(xml).map_err(|e| err(xml, e.to_string()))?;
    ir_parameter_count_in(&text).map_err(|m| err(xml, m))
}

/// [`ir_parameter_count`] of the XML text.
pub fn ir_parameter_count_in(text: &str) -> Result<u64, String> {
    if !text.contains("<net") {
        return Err("not an OpenVINO IR file (no <net> element)".into());
    }
    let mut total = 0u64;
    for layer in text.split("<layer ").skip(1) {
        let head = &layer[..layer.find('>').unwrap_or(layer.len())];
        if !head.contains("type=\"Const\"") {
            continue;
        }
        let Some(data) = layer.find("<data ").map(|i| &layer[i..]) else {
            continue;
        };
        let data = &data[..data.find('>').unwrap_or(data.len())];
        let (Some(ty), Some(shape)) = (attribute(data, "element_type"), attribute(data, "shape"))
        else {
            continue;
        };
        if !IR_WEIGHT_TYPES.contains(&ty) {
            continue;
        }
        let mut elements = 1u64;
        for d in shape.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            elements = elements.saturating_mul(
                d.parse::<u64>()
                    .map_err(|_| format!("a Const layer has shape \"{shape}\""))?,
            );
        }
        total = total.saturating_add(elements);
    }
    Ok(total)
}

fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn len_field(field: u64, body: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn tensor(dims: &[u64], dtype: u64, packed: bool) -> Vec<u8> {
        let mut t = Vec::new();
        if packed {
            let mut p = Vec::new();
            dims.iter().for_each(|&d| varint(d, &mut p));
            len_field(1, &p, &mut t);
        } else {
            for &d in dims {
                varint(1 << 3, &mut t);
                varint(d, &mut t);
            }
        }
        varint(2 << 3, &mut t);
        varint(dtype, &mut t);
        len_field(8, b"weight.name", &mut t);
        len_field(
            9,
            &vec![0u8; 4 * dims.iter().product::<u64>() as usize],
            &mut t,
        );
        t
    }

    #[test]
    fn external_data_must_stay_in_the_model_folder() {
        let entry = |k: &str, v: &str| {
            let mut e = Vec::new();
            len_field(1, k.as_bytes(), &mut e);
            len_field(2, v.as_bytes(), &mut e);
            e
        };
        let model = |location: &str| {
            let mut t = tensor(&[4, 4], 1, false);
            len_field(13, &entry("location", location), &mut t);
            let mut g = Vec::new();
            len_field(5, &t, &mut g);
            let mut m = Vec::new();
            len_field(7, &g, &mut m);
            m
        };
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.onnx");
        std::fs::write(&ok, model("model.onnx.data")).unwrap();
        check_external_data(&ok).unwrap();
        for evil in ["../../etc/passwd", "/etc/passwd"] {
            let bad = dir.path().join("bad.onnx");
            std::fs::write(&bad, model(evil)).unwrap();
            let e = check_external_data(&bad).unwrap_err().to_string();
            assert!(e.contains("not a plain file name"), "{e}");
        }
    }

    #[test]
    fn counts_float_initializers_and_skips_shape_constants() {
        let mut graph = Vec::new();
        len_field(1, &node("Add", &["x", "x"], &["y"]), &mut graph);
        len_field(5, &tensor(&[3, 4], 1, true), &mut graph);
        len_field(5, &tensor(&[5], 10, false), &mut graph);
        len_field(5, &tensor(&[2], 7, true), &mut graph); // int64 shape constant
        let mut model = Vec::new();
        varint(1 << 3, &mut model); // ir_version
        varint(8, &mut model);
        len_field(7, &graph, &mut model);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, &model).unwrap();
        assert_eq!(onnx_parameter_count(&path).unwrap(), 17);

        std::fs::write(&path, &model[..model.len() - 5]).unwrap();
        let e = onnx_parameter_count(&path).unwrap_err().to_string();
        assert!(e.contains("not a readable ONNX model"), "{e}");
        std::fs::write(&path, b"").unwrap();
        let e = onnx_parameter_count(&path).unwrap_err().to_string();
        assert!(e.contains("no graph"), "{e}");
    }

    fn node(op_type: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            len_field(1, i.as_bytes(), &mut n);
        }
        for o in outputs {
            len_field(2, o.as_bytes(), &mut n);
        }
        len_field(4, op_type.as_bytes(), &mut n);
        n
    }

    #[test]
    fn classifies_operations_by_what_they_compute_on() {
        let mut graph = Vec::new();
        for n in [
            node("Constant", &[], &["axes"]),
            node("Transpose", &["weight.name"], &["wt"]), // a weight's: folded on load
            node("Shape", &["x"], &["shape"]),
            node("Gather", &["shape", "axes"], &["rows"]),
            node("Unsqueeze", &["rows", ""], &["target"]), // an optional input left out
            node("MatMul", &["x", "wt"], &["y"]),
            node("Reshape", &["y", "target"], &["z"]),
            node("Identity", &["z"], &["out"]),
        ] {
            len_field(1, &n, &mut graph);
        }
        len_field(5, &tensor(&[4, 4], 1, false), &mut graph);
        let mut model = Vec::new();
        len_field(7, &graph, &mut model);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, &model).unwrap();
        assert_eq!(
            onnx_operations(&path).unwrap(),
            GraphOperations {
                on_values: 2,
                on_shapes: 3
            }
        );
        assert_eq!(onnx_parameter_count(&path).unwrap(), 16);
    }

    /// bert-tiny's export as `scripts/export_onnx_fixtures.py` wrote it: 300 nodes, of which ONNX
    /// Runtime Web's WebGPU provider ran 95 and its CPU provider 60 (the device it records).
    #[test]
    fn counts_the_bert_fixture_export() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/bert-tiny/onnx/model.onnx"
        ));
        assert_eq!(
            onnx_operations(path).unwrap(),
            GraphOperations {
                on_values: 91,
                on_shapes: 93
            }
        );
    }

    #[test]
    fn counts_ir_weight_constants() {
        let xml = r#"<?xml version="1.0"?>
<net name="m" version="11"><layers>
<layer id="0" name="w" type="Const" version="opset1"><data element_type="f16" shape="300, 32" offset="0" size="19200"/></layer>
<layer id="1" name="shape" type="Const" version="opset1"><data element_type="i64" shape="2" offset="0" size="16"/></layer>
<layer id="2" name="scalar" type="Const" version="opset1"><data element_type="f32" shape="" offset="0" size="4"/></layer>
<layer id="3" name="x" type="Parameter" version="opset1"><data shape="?,?" element_type="f32"/></layer>
</layers></net>"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.xml");
        std::fs::write(&path, xml).unwrap();
        assert_eq!(ir_parameter_count(&path).unwrap(), 9601);
        std::fs::write(&path, "hello").unwrap();
        assert!(ir_parameter_count(&path).is_err());
    }
}
