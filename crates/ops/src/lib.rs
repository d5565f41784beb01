//! The operations the ViT is made of, as single operations with backward passes of their own:
//! the linear layer, LayerNorm, GELU, softmax and multi-head self-attention, and an Adam update
//! that writes each parameter in one pass.
//!
//! Burn's autodiff records a LayerNorm as nine operations and a softmax as five, each with its
//! own backward step, where PyTorch records one; in training that op count, not the
//! arithmetic, is what costs. Here each layer is one node of the graph. The routing is Burn's
//! backend-extension machinery, decided once per device in `route.rs`:
//!
//! - flex and ndarray run host kernels (`host/`): one sweep over the rows, the attention with
//!   the heads as the lanes of the CPU's vectors, and on flex the linear layers' products into
//!   buffers of their own;
//! - libtorch and wgpu run the extension's defaults, Burn's own operations (libtorch its own
//!   backward kernels for LayerNorm and softmax);
//! - a compute server's device (feature `remote`) ships each operation to the server, whose
//!   backend runs it as above (`remote.rs`), and a whole encoder block as one operation forward
//!   and one backward (`block/`), since there each operation is a message;
//! - any other backend, and tensors that are not `f32`, take Burn's composed operations, so the
//!   result never depends on how the crate was built, only the speed.
//!
//! The model calls the layer-level forms ([`linear`], [`layer_norm`], [`gelu`],
//! [`self_attention`], [`encoder_block`]); lane orders and where the attention's scale goes
//! stay in here.
// ndarray and tch are deprecated upstream; this project still supports both.
#![allow(deprecated)]

pub mod adam;
pub mod attention;
mod autodiff;
mod backends;
pub mod block;
mod composed;
mod extension;
pub mod functional;
mod host;
mod layers;
#[cfg(feature = "tch")]
mod libtorch;
#[cfg(feature = "remote")]
pub mod remote;
mod route;
pub mod slices;

pub use adam::{Adam, AdamSettings, WeightDecay};
pub use attention::{self_attention, self_attention_with_weights};
pub use block::{BlockOps, EncoderLayers, encoder_block};
pub use extension::{FusedOps, HostOps};
pub use functional::{gelu, softmax};
pub use layers::{layer_norm, linear};
pub use route::{compiled_devices, runs_on_host, supports};
