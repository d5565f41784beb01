//! What an exported file promises: the opset, the names and meaning of its input and outputs,
//! its metadata keys and the operators it may use (docs/onnx.md lists the same).

use vit_model::VitConfig;
use vit_model::input::{PIXEL_MEAN, PIXEL_STD};

/// The ONNX operator set the graph uses (the default domain only).
pub const OPSET: i64 = 17;
/// The ONNX IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// The graph's input: raw gray values, `[N, channels, side, side]`.
pub const INPUT: &str = "pixels";
/// The graph's first output: class logits `[N, classes]`.
pub const LOGITS: &str = "logits";
/// The graph's second output: the softmax of the logits `[N, classes]`.
pub const PROBABILITIES: &str = "probabilities";
/// Metadata key: what the input holds.
pub const METADATA_INPUT: &str = "vit_mnist.input";
/// Metadata key: what the outputs hold.
pub const METADATA_OUTPUTS: &str = "vit_mnist.outputs";
/// Metadata key: the model's `VitConfig`, as JSON.
pub const METADATA_CONFIG: &str = "vit_mnist.model_config";
/// The operators the graph may contain: the list docs/onnx.md gives.
pub const OPERATORS: [&str; 17] = [
    "Add",
    "Concat",
    "Conv",
    "Div",
    "Erf",
    "Expand",
    "Identity",
    "LayerNormalization",
    "MatMul",
    "Mul",
    "Reshape",
    "Shape",
    "Slice",
    "Softmax",
    "Squeeze",
    "Sub",
    "Transpose",
];

/// What [`INPUT`] holds, in words.
pub fn input_contract(config: &VitConfig) -> String {
    let side = config.image_size;
    format!(
        "float32 [N, {channels}, {side}, {side}]: N images, gray values 0 (background) to 255 \
         (ink) as MNIST stores them, row-major; not normalised: the graph divides by 255, \
         subtracts {PIXEL_MEAN} and divides by {PIXEL_STD}. A picture of a digit is made \
         MNIST-like first: cropped to its ink, scaled to fit 20x20, centred by its centre of \
         mass in {side}x{side} (vit_model::mnist_style; the web page does the same)",
        channels = config.channels
    )
}

pub fn outputs_contract(config: &VitConfig) -> String {
    let classes = config.num_classes;
    format!(
        "{LOGITS}: float32 [N, {classes}], class logits; {PROBABILITIES}: float32 [N, \
         {classes}], their softmax. Column d is digit d"
    )
}
