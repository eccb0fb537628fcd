//! A small imperative builder for ONNX graphs: every `op` call appends one node and returns
//! the name of its output, so graph code reads like the forward pass it describes.

use crate::proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto, attribute_type, data_type,
};

/// Element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    I64,
    U8,
}

impl TensorType {
    fn onnx(self) -> i32 {
        match self {
            Self::F32 => data_type::FLOAT,
            Self::I64 => data_type::INT64,
            Self::U8 => data_type::UINT8,
        }
    }
}

/// One dimension of a declared input/output shape: fixed or symbolic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Self::Fixed(v)
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Self {
        Self::Fixed(v as i64)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Self::Named(v.to_string())
    }
}

/// A node attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(String),
    Tensor(TensorProto),
}

impl Attr {
    fn proto(self, name: &str) -> AttributeProto {
        let mut a = AttributeProto { name: name.to_string(), ..Default::default() };
        match self {
            Attr::Int(i) => {
                a.r#type = attribute_type::INT;
                a.i = i;
            }
            Attr::Float(f) => {
                a.r#type = attribute_type::FLOAT;
                a.f = f;
            }
            Attr::Ints(v) => {
                a.r#type = attribute_type::INTS;
                a.ints = v;
            }
            Attr::Str(s) => {
                a.r#type = attribute_type::STRING;
                a.s = s.into_bytes();
            }
            Attr::Tensor(t) => {
                a.r#type = attribute_type::TENSOR;
                a.t = Some(t);
            }
        }
        a
    }
}

#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    next_id: usize,
    /// Name prefix for generated values (e.g. `layer3/`), so graphs stay readable in Netron.
    scope: String,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            graph: GraphProto { name: name.to_string(), ..Default::default() },
            ..Default::default()
        }
    }

    /// Sets the prefix of generated value names.
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = scope.to_string();
    }

    /// A new unique value name (for nodes declared with [`GraphBuilder::node`]).
    pub fn fresh_name(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{}{}_{}", self.scope, hint, self.next_id)
    }

    pub fn input(&mut self, name: &str, ty: TensorType, shape: &[Dim]) -> String {
        self.graph.input.push(value_info(name, ty, shape));
        name.to_string()
    }

    /// Declares `value` a graph output under `name` (through an Identity node when they differ).
    pub fn output(&mut self, value: &str, name: &str, ty: TensorType, shape: &[Dim]) {
        if value != name {
            self.node("Identity", "", &[value], &[name], vec![]);
        }
        self.graph.output.push(value_info(name, ty, shape));
    }

    /// Adds an initializer and returns its name.
    pub fn initializer(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name.clone();
        self.graph.initializer.push(tensor);
        name
    }

    pub fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh_name("const");
        self.initializer(TensorProto::i64(&name, &[values.len() as i64], values))
    }

    pub fn const_f32_scalar(&mut self, value: f32) -> String {
        let name = self.fresh_name("const");
        self.initializer(TensorProto::f32(&name, &[], &[value]))
    }

    /// Appends a standard-domain node with one output and returns the output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh_name(&op_type.to_ascii_lowercase());
        self.node(op_type, "", inputs, &[&out], attrs);
        out
    }

    /// Appends a node with explicit domain and output names (empty string = omitted output).
    pub fn node(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) {
        let name = self.fresh_name(op_type);
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name,
            op_type: op_type.to_string(),
            domain: domain.to_string(),
            attribute: attrs.into_iter().map(|(n, a)| a.proto(n)).collect(),
        });
    }

    /// Like [`GraphBuilder::node`] but with generated output names, returned in order.
    pub fn op_multi(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&str],
        n_outputs: usize,
        attrs: Vec<(&str, Attr)>,
    ) -> Vec<String> {
        let outs: Vec<String> =
            (0..n_outputs).map(|_| self.fresh_name(&op_type.to_ascii_lowercase())).collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.node(op_type, domain, inputs, &refs, attrs);
        outs
    }

    /// Finishes the graph into a model importing the given `(domain, version)` operator sets.
    pub fn finish(self, opsets: &[(&str, i64)], metadata: &[(&str, String)]) -> ModelProto {
        ModelProto {
            ir_version: 10,
            opset_import: opsets
                .iter()
                .map(|(d, v)| OperatorSetIdProto { domain: d.to_string(), version: *v })
                .collect(),
            producer_name: "ce-collm".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            doc_string: String::new(),
            graph: Some(self.graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: k.to_string(), value: v.clone() })
                .collect(),
        }
    }
}

fn value_info(name: &str, ty: TensorType, shape: &[Dim]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => DimensionValue::DimValue(*v),
                Dim::Named(s) => DimensionValue::DimParam(s.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: ty.onnx(),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_model_survives_an_encode_decode_round_trip() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", TensorType::F32, &["n".into(), 4i64.into()]);
        let two = g.const_f32_scalar(2.0);
        let y = g.op("Mul", &[&x, &two], vec![]);
        g.output(&y, "y", TensorType::F32, &["n".into(), 4i64.into()]);
        let model = g.finish(&[("", 23)], &[("k", "v".to_string())]);
        let back = crate::decode(&crate::encode(&model)).expect("decodes");
        assert_eq!(back, model);
        let graph = back.graph.expect("graph");
        assert_eq!(graph.node.len(), 2, "Mul plus the Identity naming the output");
        assert_eq!(graph.output[0].name, "y");
    }

    #[test]
    fn replacing_an_initializer_checks_its_shape() {
        let mut g = GraphBuilder::new("t");
        g.initializer(TensorProto::f32("w", &[2], &[1.0, 2.0]));
        let mut model = g.finish(&[("", 23)], &[]);
        assert!(crate::replace_f32_initializer(&mut model, "w", &[3], &[0.0; 3]).is_err());
        crate::replace_f32_initializer(&mut model, "w", &[2], &[5.0, 6.0]).expect("replaced");
        let w = &model.graph.expect("graph").initializer[0];
        assert_eq!(w.f32_values(), Some(vec![5.0, 6.0]));
    }
}
