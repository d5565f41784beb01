//! A small builder over the ONNX protobuf messages: nodes named after the layer they belong to,
//! weights as initializers, and typed inputs and outputs. It knows nothing about the ViT.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::Dimension;
use onnx_protobuf::type_proto::Tensor as TensorType;
use onnx_protobuf::{
    AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A graph under construction. Every value is named; [`Graph::node`] returns its output's name.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

/// A node attribute.
pub enum Attribute {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
}

/// One dimension of a graph input or output: fixed, or named and free (the batch).
pub enum Dim {
    Fixed(usize),
    Free(&'static str),
}

impl Graph {
    /// Adds the node `op(inputs)` whose one output is called `output`, and returns that name.
    pub fn node(
        &mut self,
        output: impl Into<String>,
        op: &str,
        inputs: &[&str],
        attributes: Vec<Attribute>,
    ) -> String {
        let output = output.into();
        self.nodes.push(NodeProto {
            name: output.clone(),
            op_type: op.into(),
            input: inputs.iter().map(ToString::to_string).collect(),
            output: vec![output.clone()],
            attribute: attributes.into_iter().map(Attribute::into_proto).collect(),
            ..NodeProto::default()
        });
        output
    }

    /// A float32 initializer: a weight or a constant operand.
    pub fn floats(&mut self, name: impl Into<String>, shape: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name.into(), shape, DataType::FLOAT, raw_data)
    }

    /// An int64 initializer: a shape, an index or an axis list.
    pub fn ints(&mut self, name: impl Into<String>, values: &[i64]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name.into(), &[values.len()], DataType::INT64, raw_data)
    }

    /// A float32 scalar initializer.
    pub fn scalar(&mut self, name: impl Into<String>, value: f32) -> String {
        self.floats(name, &[], &[value])
    }

    fn initializer(
        &mut self,
        name: String,
        shape: &[usize],
        data_type: DataType,
        raw_data: Vec<u8>,
    ) -> String {
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..TensorProto::default()
        });
        name
    }

    /// The finished graph with its typed float32 `inputs` and `outputs` (name, doc, shape).
    pub fn finish(
        self,
        name: &str,
        inputs: Vec<(&str, &str, Vec<Dim>)>,
        outputs: Vec<(&str, &str, Vec<Dim>)>,
    ) -> GraphProto {
        let values = |list: Vec<(&str, &str, Vec<Dim>)>| {
            list.into_iter()
                .map(|(name, doc, dims)| float_value(name, doc, dims))
                .collect()
        };
        GraphProto {
            name: name.into(),
            node: self.nodes,
            initializer: self.initializers,
            input: values(inputs),
            output: values(outputs),
            ..GraphProto::default()
        }
    }
}

impl Attribute {
    fn into_proto(self) -> AttributeProto {
        let mut proto = AttributeProto::default();
        match self {
            Attribute::Int(name, value) => {
                proto.name = name.into();
                proto.i = value;
                proto.type_ = AttributeType::INT.into();
            }
            Attribute::Ints(name, values) => {
                proto.name = name.into();
                proto.ints = values;
                proto.type_ = AttributeType::INTS.into();
            }
            Attribute::Float(name, value) => {
                proto.name = name.into();
                proto.f = value;
                proto.type_ = AttributeType::FLOAT.into();
            }
        }
        proto
    }
}

fn float_value(name: &str, doc: &str, dims: Vec<Dim>) -> ValueInfoProto {
    let dim = dims
        .into_iter()
        .map(|dim| {
            let mut proto = Dimension::default();
            match dim {
                Dim::Fixed(size) => proto.set_dim_value(size as i64),
                Dim::Free(name) => proto.set_dim_param(name.into()),
            }
            proto
        })
        .collect();
    let mut value_type = TypeProto::default();
    value_type.set_tensor_type(TensorType {
        elem_type: DataType::FLOAT as i32,
        shape: Some(TensorShapeProto {
            dim,
            ..TensorShapeProto::default()
        })
        .into(),
        ..TensorType::default()
    });
    ValueInfoProto {
        name: name.into(),
        doc_string: doc.into(),
        type_: Some(value_type).into(),
        ..ValueInfoProto::default()
    }
}
