//! The MNIST ViT as an ONNX model, written in Rust from a trained `vit_model::Vit`: for ONNX
//! Runtime (servers, phones, onnxruntime-web in browsers), TensorRT, OpenVINO. Burn reads ONNX
//! but cannot write it, so the graph is built here with the `onnx-protobuf` messages.
//!
//! - One standard opset, [`OPSET`] (17: `LayerNormalization` is there; GELU is spelled with
//!   `Erf`, which ONNX Runtime fuses back into one operation).
//! - Input [`INPUT`], float32 `[N, channels, side, side]` with a free batch `N`: gray values
//!   0 (background) to 255 (ink), not normalised; the graph normalises as training did.
//!   Outputs [`LOGITS`] and [`PROBABILITIES`], `[N, classes]`. The contract is also written
//!   into the model's metadata ([`METADATA_INPUT`], [`METADATA_OUTPUTS`], [`METADATA_CONFIG`]).
//! - `contract.rs` holds those promises, `network.rs` lays out the layers, `graph.rs` wraps the
//!   protobuf messages, `weights.rs` reads the weights by their PyTorch names
//!   (`vit_model::interchange`).

mod contract;
mod error;
mod graph;
mod network;
mod weights;

use std::collections::BTreeSet;
use std::path::Path;

use onnx_protobuf::{Message, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use vit_model::{Vit, VitConfig, files, interchange};

pub use contract::{
    INPUT, IR_VERSION, LOGITS, METADATA_CONFIG, METADATA_INPUT, METADATA_OUTPUTS, OPERATORS, OPSET,
    PROBABILITIES, input_contract, outputs_contract,
};
pub use error::ExportError;
use graph::{Dim, Graph};
use weights::Weights;

/// `model`, built from `config`, as an ONNX model.
pub fn to_model(model: &Vit, config: &VitConfig) -> Result<ModelProto, ExportError> {
    let bytes = interchange::safetensors_bytes(model).map_err(ExportError::Weights)?;
    let mut weights = Weights::parse(&bytes)?;
    let mut graph = Graph::default();
    network::build(config, &mut weights, &mut graph)?;
    weights.finish()?;

    let side = config.image_size;
    let input_shape = vec![
        Dim::Free("N"),
        Dim::Fixed(config.channels),
        Dim::Fixed(side),
        Dim::Fixed(side),
    ];
    let output_shape = || vec![Dim::Free("N"), Dim::Fixed(config.num_classes)];
    let input_doc = input_contract(config);
    let graph = graph.finish(
        "vit_mnist",
        vec![(INPUT, &input_doc, input_shape)],
        vec![
            (LOGITS, "class logits", output_shape()),
            (PROBABILITIES, "softmax of the logits", output_shape()),
        ],
    );
    let config_json = serde_json::to_string(config).expect("a VitConfig always serialises");
    let metadata = [
        (METADATA_INPUT, input_doc.as_str()),
        (METADATA_OUTPUTS, &outputs_contract(config)),
        (METADATA_CONFIG, &config_json),
    ];
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..OperatorSetIdProto::default()
        }],
        producer_name: "vit-mnist".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "A Vision Transformer for MNIST digits, trained with Burn (vit-mnist)".into(),
        graph: Some(graph).into(),
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.into(),
                value: value.into(),
                ..StringStringEntryProto::default()
            })
            .collect(),
        ..ModelProto::default()
    })
}

/// [`to_model`] as the bytes of a `.onnx` file.
pub fn to_bytes(model: &Vit, config: &VitConfig) -> Result<Vec<u8>, ExportError> {
    let proto = to_model(model, config)?;
    Ok(proto
        .write_to_bytes()
        .expect("a model of in-memory messages always encodes"))
}

/// Writes [`to_bytes`] to `path`, whole or not at all (a file already there is replaced).
pub fn write(model: &Vit, config: &VitConfig, path: &Path) -> Result<(), ExportError> {
    let bytes = to_bytes(model, config)?;
    files::write_atomically(path, |file| file.write_all(&bytes)).map_err(|source| ExportError::Io {
        path: path.into(),
        source,
    })
}

/// The operators `model`'s graph uses.
pub fn operators(model: &ModelProto) -> BTreeSet<String> {
    model
        .graph
        .node
        .iter()
        .map(|node| node.op_type.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;

    fn small(stem_channels: Vec<usize>) -> VitConfig {
        VitConfig {
            dim: 32,
            depth: 2,
            heads: 4,
            mlp_dim: 64,
            stem_channels,
            ..VitConfig::tutorial()
        }
    }

    fn parse(bytes: &[u8]) -> ModelProto {
        ModelProto::parse_from_bytes(bytes).unwrap()
    }

    /// Every weight is an initializer, once: the float initializers that are not scalar
    /// constants hold exactly the model's parameters.
    #[test]
    fn every_parameter_is_placed_once() {
        let device = Device::flex();
        for stem in [vec![], vec![4, 8]] {
            let config = small(stem);
            let model = config.init(&device).unwrap();
            let proto = parse(&to_bytes(&model, &config).unwrap());
            let floats: usize = proto
                .graph
                .initializer
                .iter()
                .filter(|tensor| tensor.data_type == 1 && !tensor.dims.is_empty())
                .map(|tensor| tensor.raw_data.len() / 4)
                .sum();
            assert_eq!(floats, model.num_params(), "{config:?}");
        }
    }

    #[test]
    fn the_graph_uses_the_listed_operators_of_one_opset() {
        let device = Device::flex();
        let config = small(vec![4]);
        let proto = to_model(&config.init(&device).unwrap(), &config).unwrap();
        assert_eq!(proto.opset_import.len(), 1);
        assert_eq!(proto.opset_import[0].version, OPSET);
        assert_eq!(proto.opset_import[0].domain, "");
        let listed: BTreeSet<String> = OPERATORS.iter().map(ToString::to_string).collect();
        assert_eq!(operators(&proto), listed);
    }

    #[test]
    fn the_batch_is_free_and_the_contract_is_in_the_metadata() {
        let device = Device::flex();
        let config = small(vec![]);
        let proto = to_model(&config.init(&device).unwrap(), &config).unwrap();
        let input = &proto.graph.input[0];
        assert_eq!(input.name, INPUT);
        let dims = &input.type_.tensor_type().shape.dim;
        assert_eq!(dims[0].dim_param(), "N");
        assert_eq!(
            dims.iter()
                .skip(1)
                .map(|d| d.dim_value())
                .collect::<Vec<_>>(),
            [1, 28, 28]
        );
        let outputs: Vec<_> = proto.graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, [LOGITS, PROBABILITIES]);
        let metadata = |key: &str| {
            proto
                .metadata_props
                .iter()
                .find(|entry| entry.key == key)
                .map(|entry| entry.value.clone())
                .unwrap_or_else(|| panic!("no {key} in the metadata"))
        };
        assert!(metadata(METADATA_INPUT).contains("0 (background) to 255"));
        let saved: VitConfig = serde_json::from_str(&metadata(METADATA_CONFIG)).unwrap();
        assert_eq!(saved, config);
    }

    #[test]
    fn exporting_twice_writes_the_same_bytes() {
        let device = Device::flex();
        let config = small(vec![4]);
        let model = config.init(&device).unwrap();
        assert_eq!(
            to_bytes(&model, &config).unwrap(),
            to_bytes(&model, &config).unwrap()
        );
    }

    #[test]
    fn a_config_that_does_not_describe_the_weights_names_a_tensor() {
        let device = Device::flex();
        let model = small(vec![]).init(&device).unwrap();
        let wider = VitConfig {
            mlp_dim: 96,
            ..small(vec![])
        };
        let error = to_bytes(&model, &wider).unwrap_err().to_string();
        assert!(error.contains("linear_inner.weight"), "{error}");
        let deeper = VitConfig {
            depth: 1,
            ..small(vec![])
        };
        let error = to_bytes(&model, &deeper).unwrap_err().to_string();
        assert!(error.contains("blocks.1."), "{error}");
    }

    #[test]
    fn write_replaces_a_file_whole() {
        let device = Device::flex();
        let config = small(vec![]);
        let model = config.init(&device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"old").unwrap();
        write(&model, &config, &path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            to_bytes(&model, &config).unwrap()
        );
    }
}
