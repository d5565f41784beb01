//! The autodiff side of the extensions: each operation is one node of the graph, with the
//! backward step that calls the inner backend's gradient operations.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend};

use crate::block::{BlockActivations, BlockOps, BlockParameters, BlockSizes};
use crate::extension::{FusedOps, HostOps};

/// The backward step of a one-input operation that keeps one tensor of its forward pass (its
/// input for GELU, its output for softmax): the function turns that tensor and the gradient of
/// the output into the gradient of the input.
struct SavedTensorBackward<B: Backend>(fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>);

impl<B: Backend> std::fmt::Debug for SavedTensorBackward<B> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SavedTensorBackward")
    }
}

impl<B: FusedOps> Backward<B, 1> for SavedTensorBackward<B> {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = x_node {
            grads.register::<B>(node.id, (self.0)(ops.state, grad));
        }
    }
}

/// The backward step of [`FusedOps::fused_linear`], whose parents are the input, the weight and,
/// when `N` is 3, the bias.
#[derive(Debug)]
struct LinearBackward;

impl<B: FusedOps, const N: usize> Backward<B, N> for LinearBackward {
    /// The input, kept where the weight's gradient is wanted, and the weight, kept where the
    /// input's is.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        if let (Some(node), Some(weight)) = (&ops.parents[0], weight) {
            grads.register::<B>(node.id, B::linear_x_gradient(weight, grad.clone()));
        }
        if let (Some(node), Some(x)) = (&ops.parents[1], x) {
            grads.register::<B>(node.id, B::linear_weight_gradient(x, grad.clone()));
        }
        if let Some(Some(node)) = ops.parents.get(2) {
            grads.register::<B>(node.id, B::linear_bias_gradient(grad));
        }
    }
}

/// [`FusedOps::fused_linear`] on autodiff, recorded with the parents `nodes`: the input's and
/// the weight's, then the bias's when there is one.
fn tracked_linear<B: FusedOps, C: CheckpointStrategy, const N: usize>(
    nodes: [NodeGuard; N],
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
    let (x, weight) = (x.into_primitive(), weight.into_primitive());
    match LinearBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let kept_x = weight_tracked.then(|| x.clone());
            let kept_weight = x_tracked.then(|| weight.clone());
            prep.finish((kept_x, kept_weight), inner_linear::<B>(x, weight, bias))
        }
        OpsKind::UnTracked(prep) => prep.finish(inner_linear::<B>(x, weight, bias)),
    }
}

/// `B`'s [`FusedOps::fused_linear`], or its unbiased form without a bias.
fn inner_linear<B: FusedOps>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    match bias {
        Some(bias) => B::fused_linear(x, weight, bias),
        None => B::fused_linear_unbiased(x, weight),
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: FusedOps> Backward<B, 3> for LayerNormBackward {
            /// The input, gamma and epsilon.
            type State = (NodeId, NodeId, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [x_node, gamma_node, beta_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, gamma_state, epsilon) = ops.state;
                let x = checkpointer.retrieve_node_output(x_state);
                let gamma = checkpointer.retrieve_node_output(gamma_state);
                let (grad_x, grad_gamma, grad_beta) =
                    B::layer_norm_backward(x, gamma, grad, epsilon);
                let registered = [
                    (x_node, grad_x),
                    (gamma_node, grad_gamma),
                    (beta_node, grad_beta),
                ];
                for (node, grad) in registered {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), epsilon);
                let output = B::fused_layer_norm(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        tracked_linear::<B, C, 3>(nodes, x, weight, Some(bias.into_primitive()))
    }

    fn fused_linear_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked_linear::<B, C, 2>([x.node(), weight.node()], x, weight, None)
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let backward = SavedTensorBackward::<B>(B::fused_gelu_backward);
        match backward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                prep.finish(x.clone(), B::fused_gelu(x))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.into_primitive())),
        }
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let backward = SavedTensorBackward::<B>(B::softmax_backward);
        match backward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::fused_softmax(x.into_primitive());
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_softmax(x.into_primitive())),
        }
    }
}

impl<B: HostOps, C: CheckpointStrategy> HostOps for Autodiff<B, C> {
    fn fused_attention(
        qkv: FloatTensor<Self>,
        images: usize,
        heads: usize,
        kept: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: HostOps> Backward<B, 1> for AttentionBackward {
            /// The projection, the attention weights, and images, heads and kept tokens.
            type State = (FloatTensor<B>, FloatTensor<B>, [usize; 3]);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [qkv_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (qkv, weights, [images, heads, kept]) = ops.state;
                if let Some(node) = qkv_node {
                    let grad = B::attention_backward(qkv, weights, grad, images, heads, kept);
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = qkv.into_primitive();
                let (context, weights) =
                    B::attention_with_weights(qkv.clone(), images, heads, kept);
                prep.finish((qkv, weights, [images, heads, kept]), context)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_attention(
                qkv.into_primitive(),
                images,
                heads,
                kept,
            )),
        }
    }

    fn transpose_groups(
        x: FloatTensor<Self>,
        rows: usize,
        columns: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        /// The gradient moves back: the transpose with `rows` and `columns` swapped.
        #[derive(Debug)]
        struct TransposeGroupsBackward;

        impl<B: HostOps> Backward<B, 1> for TransposeGroupsBackward {
            /// `rows`, `columns` and `width` of the forward pass.
            type State = (usize, usize, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (rows, columns, width) = ops.state;
                if let Some(node) = x_node {
                    let moved_back = B::transpose_groups(grad, columns, rows, width);
                    grads.register::<B>(node.id, moved_back);
                }
            }
        }

        let prepared = TransposeGroupsBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let output = B::transpose_groups(x.into_primitive(), rows, columns, width);
        match prepared {
            OpsKind::Tracked(prep) => prep.finish((rows, columns, width), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

impl<B: BlockOps, C: CheckpointStrategy> BlockOps for Autodiff<B, C> {
    fn encoder_block(
        x: FloatTensor<Self>,
        parameters: BlockParameters<Self>,
        sizes: BlockSizes,
    ) -> FloatTensor<Self> {
        /// One node for the whole block: its parents are the input's node, then the
        /// parameters' in [`BlockParameters`]' order.
        #[derive(Debug)]
        struct EncoderBlockBackward;

        const PARENTS: usize = 1 + BlockParameters::<burn::backend::Dispatch>::LEN;

        impl<B: BlockOps> Backward<B, PARENTS> for EncoderBlockBackward {
            /// The input, the parameters, the saved activations, and the sizes.
            type State = (
                FloatTensor<B>,
                Vec<FloatTensor<B>>,
                Vec<FloatTensor<B>>,
                BlockSizes,
            );

            fn backward(
                self,
                ops: Ops<Self::State, PARENTS>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, parameters, activations, sizes) = ops.state;
                let (grad_x, grad_parameters) = B::encoder_block_backward(
                    x,
                    BlockParameters::from_vec(parameters),
                    BlockActivations::from_vec(activations),
                    grad,
                    sizes,
                );
                let gradients = std::iter::once(grad_x).chain(grad_parameters.into_vec());
                for (node, gradient) in ops.parents.into_iter().zip(gradients) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, gradient);
                    }
                }
            }
        }

        let parameters = parameters.into_vec();
        let nodes: Vec<NodeGuard> = std::iter::once(x.node())
            .chain(parameters.iter().map(|parameter| parameter.node()))
            .collect();
        let Ok(nodes) = <[NodeGuard; PARENTS]>::try_from(nodes) else {
            unreachable!("a block's input and its parameters")
        };
        let prepared = EncoderBlockBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        let parameters: Vec<FloatTensor<B>> = parameters
            .into_iter()
            .map(|parameter| parameter.into_primitive())
            .collect();
        match prepared {
            OpsKind::Tracked(prep) => {
                let (output, activations) = B::encoder_block_saving(
                    x.clone(),
                    BlockParameters::from_vec(parameters.clone()),
                    sizes,
                );
                prep.finish((x, parameters, activations.into_vec(), sizes), output)
            }
            OpsKind::UnTracked(prep) => {
                let parameters = BlockParameters::from_vec(parameters);
                prep.finish(B::encoder_block(x, parameters, sizes))
            }
        }
    }
}
