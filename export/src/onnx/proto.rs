//! A small protobuf encoder and the ONNX messages bertkit writes (`onnx.proto`, IR version 8).
//!
//! Only encoding is needed, and only these wire types: varints (int32/int64/enum), 32-bit
//! fixed (float) and length-delimited fields (strings, bytes, sub-messages, packed repeated
//! int64). Weights are `TensorProto.raw_data` (little-endian) and are streamed straight from the
//! host tensors to the file, so a model is never held twice in memory: every message knows its
//! encoded length before it is written.

use std::io::{self, Write};

/// Wire type of varint fields.
const VARINT: u32 = 0;
/// Wire type of strings, bytes, sub-messages and packed repeated fields.
const LEN: u32 = 2;
/// Wire type of `float` fields.
const FIXED32: u32 = 5;

/// Appends `v` as a base-128 varint.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// The number of bytes of `v` as a varint.
pub fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The encoded bytes of one message, built field by field.
#[derive(Debug, Default, Clone)]
pub struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    pub fn new() -> Self {
        Msg::default()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn key(&mut self, field: u32, wire_type: u32) {
        put_varint(&mut self.buf, u64::from((field << 3) | wire_type));
    }

    /// An `int64`, `int32` or enum field (negative values take ten bytes, as protobuf encodes
    /// them: sign-extended to 64 bits).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, VARINT);
        put_varint(&mut self.buf, v as u64);
        self
    }

    /// A `float` field.
    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `bytes` field.
    pub fn bytes_field(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.len_prefix(field, v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes_field(field, v.as_bytes())
    }

    /// A sub-message field.
    pub fn message(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes_field(field, &m.buf)
    }

    /// A packed `repeated int64` field (nothing when empty).
    pub fn packed_ints(&mut self, field: u32, vs: &[i64]) -> &mut Self {
        if vs.is_empty() {
            return self;
        }
        let len: usize = vs.iter().map(|&v| varint_len(v as u64)).sum();
        self.len_prefix(field, len as u64);
        for &v in vs {
            put_varint(&mut self.buf, v as u64);
        }
        self
    }

    /// The key and length of a length-delimited field whose `len` bytes are written later
    /// (streamed payloads).
    pub fn len_prefix(&mut self, field: u32, len: u64) -> &mut Self {
        self.key(field, LEN);
        put_varint(&mut self.buf, len);
        self
    }
}

/// The size of a length-delimited field holding `len` bytes.
fn field_len(field: u32, len: u64) -> u64 {
    (varint_len(u64::from(field << 3)) + varint_len(len)) as u64 + len
}

/// `TensorProto.DataType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Int64 = 7,
}

/// The values of a tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl TensorData {
    pub fn data_type(&self) -> DataType {
        match self {
            TensorData::F32(_) => DataType::Float,
            TensorData::I64(_) => DataType::Int64,
        }
    }

    fn raw_len(&self) -> u64 {
        match self {
            TensorData::F32(v) => 4 * v.len() as u64,
            TensorData::I64(v) => 8 * v.len() as u64,
        }
    }

    fn num_elements(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// Writes the values little-endian, in chunks.
    fn write_raw<W: Write>(&self, w: &mut W) -> io::Result<()> {
        const CHUNK: usize = 16 * 1024;
        let mut buf = Vec::with_capacity(8 * CHUNK);
        match self {
            TensorData::F32(v) => {
                for chunk in v.chunks(CHUNK) {
                    buf.clear();
                    chunk
                        .iter()
                        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                    w.write_all(&buf)?;
                }
            }
            TensorData::I64(v) => {
                for chunk in v.chunks(CHUNK) {
                    buf.clear();
                    chunk
                        .iter()
                        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                    w.write_all(&buf)?;
                }
            }
        }
        Ok(())
    }
}

/// `TensorProto` with `raw_data`: an initializer.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: TensorData,
    pub doc_string: Option<String>,
}

impl Tensor {
    pub fn new(name: impl Into<String>, dims: Vec<i64>, data: TensorData) -> Self {
        Tensor {
            name: name.into(),
            dims,
            data,
            doc_string: None,
        }
    }

    /// Whether the dims hold exactly as many elements as the data.
    pub fn is_consistent(&self) -> bool {
        let n: i64 = self.dims.iter().product();
        self.dims.iter().all(|&d| d >= 0) && n as usize == self.data.num_elements()
    }

    /// Every field but the raw data, then the key and length of `raw_data` (field 9).
    fn head(&self) -> Msg {
        let mut m = Msg::new();
        m.packed_ints(1, &self.dims)
            .int(2, self.data.data_type() as i64)
            .string(8, &self.name);
        if let Some(doc) = &self.doc_string {
            m.string(12, doc);
        }
        m.len_prefix(9, self.data.raw_len());
        m
    }

    /// The encoded size of the message.
    pub fn encoded_len(&self) -> u64 {
        self.head().len() as u64 + self.data.raw_len()
    }

    pub fn write<W: Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(self.head().bytes())?;
        self.data.write_raw(w)
    }

    /// The encoded message in memory (small tensors, attributes).
    pub fn to_msg(&self) -> Msg {
        let mut buf = Vec::with_capacity(self.encoded_len() as usize);
        // Writing to a Vec cannot fail.
        let _ = self.write(&mut buf);
        Msg { buf }
    }
}

/// `AttributeProto` values bertkit uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    Ints(Vec<i64>),
    String(String),
    Tensor(Tensor),
}

impl Attr {
    fn encode(&self, name: &str) -> Msg {
        // AttributeProto.AttributeType: FLOAT 1, INT 2, STRING 3, TENSOR 4, INTS 7.
        let mut m = Msg::new();
        m.string(1, name);
        match self {
            Attr::Float(v) => m.float(2, *v).int(20, 1),
            Attr::Int(v) => m.int(3, *v).int(20, 2),
            Attr::String(s) => m.string(4, s).int(20, 3),
            Attr::Tensor(t) => m.message(5, &t.to_msg()).int(20, 4),
            // `ints` is a proto2 `repeated int64` (unpacked); parsers accept both encodings, but
            // write it as onnx's own serializer does.
            Attr::Ints(vs) => {
                for &v in vs {
                    m.int(8, v);
                }
                m.int(20, 7)
            }
        };
        m
    }
}

/// `NodeProto`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op_type: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<(String, Attr)>,
}

impl Node {
    fn encode(&self) -> Msg {
        let mut m = Msg::new();
        for i in &self.inputs {
            m.string(1, i);
        }
        for o in &self.outputs {
            m.string(2, o);
        }
        m.string(3, &self.name).string(4, &self.op_type);
        for (name, attr) in &self.attributes {
            m.message(5, &attr.encode(name));
        }
        m
    }
}

/// A dimension of a graph input or output: fixed, or named and free (`batch`, `sequence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Value(i64),
    Param(String),
}

/// `ValueInfoProto` of a tensor: name, element type, shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: DataType,
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    fn encode(&self) -> Msg {
        let mut shape = Msg::new();
        for d in &self.dims {
            let mut dim = Msg::new();
            match d {
                Dim::Value(v) => dim.int(1, *v),
                Dim::Param(p) => dim.string(2, p),
            };
            shape.message(1, &dim);
        }
        let mut tensor_type = Msg::new();
        tensor_type.int(1, self.elem_type as i64).message(2, &shape);
        let mut type_proto = Msg::new();
        type_proto.message(1, &tensor_type);
        let mut m = Msg::new();
        m.string(1, &self.name).message(2, &type_proto);
        m
    }
}

/// `GraphProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    pub doc_string: String,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Graph {
    /// Every field but the initializers.
    fn head(&self) -> Msg {
        let mut m = Msg::new();
        for n in &self.nodes {
            m.message(1, &n.encode());
        }
        m.string(2, &self.name);
        if !self.doc_string.is_empty() {
            m.string(10, &self.doc_string);
        }
        for i in &self.inputs {
            m.message(11, &i.encode());
        }
        for o in &self.outputs {
            m.message(12, &o.encode());
        }
        m
    }

    fn encoded_len_with(&self, head: &Msg) -> u64 {
        head.len() as u64
            + self
                .initializers
                .iter()
                .map(|t| field_len(5, t.encoded_len()))
                .sum::<u64>()
    }

    /// The encoded size of the message.
    pub fn encoded_len(&self) -> u64 {
        self.encoded_len_with(&self.head())
    }

    /// Writes the message body; the caller has written its key and length.
    fn write<W: Write>(&self, head: &Msg, w: &mut W) -> io::Result<()> {
        w.write_all(head.bytes())?;
        for t in &self.initializers {
            let mut prefix = Msg::new();
            prefix.len_prefix(5, t.encoded_len());
            w.write_all(prefix.bytes())?;
            t.write(w)?;
        }
        Ok(())
    }
}

/// `ModelProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub ir_version: i64,
    /// (domain, version); the default domain is "".
    pub opset_imports: Vec<(String, i64)>,
    pub producer_name: String,
    pub producer_version: String,
    pub doc_string: String,
    pub graph: Graph,
    pub metadata_props: Vec<(String, String)>,
}

impl Model {
    /// Every field but the graph.
    fn head(&self) -> Msg {
        let mut m = Msg::new();
        m.int(1, self.ir_version)
            .string(2, &self.producer_name)
            .string(3, &self.producer_version);
        if !self.doc_string.is_empty() {
            m.string(6, &self.doc_string);
        }
        for (domain, version) in &self.opset_imports {
            let mut opset = Msg::new();
            opset.string(1, domain).int(2, *version);
            m.message(8, &opset);
        }
        for (key, value) in &self.metadata_props {
            let mut entry = Msg::new();
            entry.string(1, key).string(2, value);
            m.message(14, &entry);
        }
        m
    }

    /// The size of the file.
    pub fn encoded_len(&self) -> u64 {
        self.head().len() as u64 + field_len(7, self.graph.encoded_len())
    }

    /// Writes the model; returns the number of bytes written.
    pub fn write<W: Write>(&self, w: &mut W) -> io::Result<u64> {
        let head = self.head();
        let graph_head = self.graph.head();
        let graph_len = self.graph.encoded_len_with(&graph_head);
        w.write_all(head.bytes())?;
        let mut prefix = Msg::new();
        prefix.len_prefix(7, graph_len);
        w.write_all(prefix.bytes())?;
        self.graph.write(&graph_head, w)?;
        Ok(head.len() as u64 + field_len(7, graph_len))
    }

    /// The encoded model in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len() as usize);
        // Writing to a Vec cannot fail.
        let _ = self.write(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf field as read back: (number, value).
    #[derive(Debug, Clone, PartialEq)]
    enum Value {
        Varint(u64),
        Fixed32(u32),
        Bytes(Vec<u8>),
    }

    fn read_varint(b: &[u8], pos: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*pos];
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    /// Decodes one message level; panics on malformed input (a test helper).
    fn decode(b: &[u8]) -> Vec<(u32, Value)> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < b.len() {
            let key = read_varint(b, &mut pos);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u32);
            let value = match wire {
                VARINT => Value::Varint(read_varint(b, &mut pos)),
                FIXED32 => {
                    let v = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap());
                    pos += 4;
                    Value::Fixed32(v)
                }
                LEN => {
                    let len = read_varint(b, &mut pos) as usize;
                    let v = b[pos..pos + len].to_vec();
                    pos += len;
                    Value::Bytes(v)
                }
                w => panic!("wire type {w}"),
            };
            out.push((field, value));
        }
        assert_eq!(pos, b.len(), "message overruns its length");
        out
    }

    fn field(fields: &[(u32, Value)], n: u32) -> Vec<Value> {
        fields
            .iter()
            .filter(|(f, _)| *f == n)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn bytes(v: &Value) -> &[u8] {
        match v {
            Value::Bytes(b) => b,
            other => panic!("not bytes: {other:?}"),
        }
    }

    #[test]
    fn varints_are_protobuf_varints() {
        let enc = |v: u64| {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "length of {v}");
            b
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        for v in [0, 1, 127, 128, 16383, 16384, 1 << 35, u64::MAX] {
            assert_eq!(read_varint(&enc(v), &mut 0), v);
        }
        // A negative int64 is ten bytes, sign-extended.
        let mut m = Msg::new();
        m.int(1, -1);
        assert_eq!(
            m.bytes(),
            [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn scalar_and_length_delimited_fields() {
        let mut m = Msg::new();
        m.float(2, 1.0)
            .string(1, "ab")
            .packed_ints(3, &[1, 300, -1]);
        let f = decode(m.bytes());
        assert_eq!(f[0], (2, Value::Fixed32(1.0f32.to_bits())));
        assert_eq!(f[1], (1, Value::Bytes(b"ab".to_vec())));
        let mut pos = 0;
        let packed = bytes(&f[2].1);
        let vals: Vec<i64> = (0..3)
            .map(|_| read_varint(packed, &mut pos) as i64)
            .collect();
        assert_eq!(vals, [1, 300, -1]);
        assert_eq!(pos, packed.len());
    }

    #[test]
    fn tensors_stream_raw_little_endian_data() {
        let t = Tensor::new(
            "w",
            vec![2, 3],
            TensorData::F32(vec![1.0, -2.0, 0.5, 0.0, 3.0, 4.0]),
        );
        assert!(t.is_consistent());
        let msg = t.to_msg();
        assert_eq!(msg.len() as u64, t.encoded_len());
        let f = decode(msg.bytes());
        assert_eq!(field(&f, 2), [Value::Varint(1)]);
        assert_eq!(bytes(&field(&f, 8)[0]), b"w");
        let raw = bytes(&field(&f, 9)[0]).to_vec();
        let back: Vec<f32> = raw
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, [1.0, -2.0, 0.5, 0.0, 3.0, 4.0]);
        let bad = Tensor::new("x", vec![4], TensorData::I64(vec![1, 2]));
        assert!(!bad.is_consistent());
    }

    /// A model large enough that lengths take several varint bytes decodes back to its parts,
    /// and `encoded_len` is exactly what `write` writes.
    #[test]
    fn models_encode_with_exact_lengths() {
        let big = Tensor::new("big", vec![100, 50], TensorData::F32(vec![0.25; 5000]));
        let model = Model {
            ir_version: 8,
            opset_imports: vec![(String::new(), 17)],
            producer_name: "bertkit".into(),
            producer_version: "0.1.0".into(),
            doc_string: "doc".into(),
            graph: Graph {
                name: "g".into(),
                doc_string: String::new(),
                nodes: vec![Node {
                    op_type: "Transpose".into(),
                    name: "t".into(),
                    inputs: vec!["x".into()],
                    outputs: vec!["y".into()],
                    attributes: vec![
                        ("perm".into(), Attr::Ints(vec![1, 0])),
                        ("eps".into(), Attr::Float(1e-12)),
                    ],
                }],
                initializers: vec![big.clone()],
                inputs: vec![ValueInfo {
                    name: "x".into(),
                    elem_type: DataType::Float,
                    dims: vec![Dim::Param("batch".into()), Dim::Value(50)],
                }],
                outputs: vec![],
            },
            metadata_props: vec![("task".into(), "base".into())],
        };
        let bytes_ = model.to_bytes();
        assert_eq!(bytes_.len() as u64, model.encoded_len());
        let top = decode(&bytes_);
        assert_eq!(field(&top, 1), [Value::Varint(8)]);
        assert_eq!(bytes(&field(&top, 2)[0]), b"bertkit");
        let opset = decode(bytes(&field(&top, 8)[0]));
        assert_eq!(field(&opset, 2), [Value::Varint(17)]);
        let graph = decode(bytes(&field(&top, 7)[0]));
        let init = bytes(&field(&graph, 5)[0]).to_vec();
        assert_eq!(init, big.to_msg().bytes());
        let node = decode(bytes(&field(&graph, 1)[0]));
        assert_eq!(bytes(&field(&node, 4)[0]), b"Transpose");
        let perm = decode(bytes(&field(&node, 5)[0]));
        assert_eq!(
            field(&perm, 8),
            [Value::Varint(1), Value::Varint(0)],
            "ints unpacked"
        );
        assert_eq!(field(&perm, 20), [Value::Varint(7)]);
        let input = decode(bytes(&field(&graph, 11)[0]));
        let type_proto = decode(bytes(&field(&input, 2)[0]));
        let tensor_type = decode(bytes(&field(&type_proto, 1)[0]));
        let shape = decode(bytes(&field(&tensor_type, 2)[0]));
        let dims: Vec<_> = field(&shape, 1).iter().map(|d| decode(bytes(d))).collect();
        assert_eq!(dims[0], [(2, Value::Bytes(b"batch".to_vec()))]);
        assert_eq!(dims[1], [(1, Value::Varint(50))]);
    }
}
