//! The ViT of `vit_model::Vit` as ONNX operators, layer by layer as `crates/model/src/vit.rs`
//! computes it: pixel normalisation, the stem's 3×3 convolutions with GELU, the patches cut as
//! `(row in patch, column in patch, channel)`, the class token and positions, pre-norm blocks
//! (the last one for the class token only) and the MLP head. Tokens are `[N, tokens, dim]`.

use vit_model::VitConfig;
use vit_model::input::{PIXEL_MEAN, PIXEL_STD};

use crate::contract::{INPUT, LOGITS, PROBABILITIES};
use crate::error::ExportError;
use crate::graph::{Attribute, Graph};
use crate::weights::Weights;

/// The LayerNorms' epsilon, as the model's (PyTorch's default).
const LAYER_NORM_EPSILON: f32 = 1e-5;

/// Builds the nodes from `INPUT` to `LOGITS` and `PROBABILITIES`, taking every weight.
pub fn build(
    config: &VitConfig,
    weights: &mut Weights,
    graph: &mut Graph,
) -> Result<(), ExportError> {
    let shared = Shared::new(config, graph);
    let mut net = Network {
        config,
        weights,
        graph,
        shared,
    };
    let images = net.normalise(INPUT);
    let map = net.stem(images)?;
    let mut x = net.embed(&map)?;
    for block in 0..config.depth {
        let class_token_only = block + 1 == config.depth;
        x = net.block(block, &x, class_token_only)?;
    }
    // [N, 1, dim] -> [N, dim]
    let token_axis = net.shared.token_axis.clone();
    let class_output = net
        .graph
        .node("class_output", "Squeeze", &[&x, &token_axis], vec![]);
    let hidden = net.linear("head.hidden", &class_output, [config.dim, config.mlp_dim])?;
    let hidden = net.gelu("head.hidden.gelu", &hidden);
    let logits = net.linear("head.output", &hidden, [config.mlp_dim, config.num_classes])?;
    let logits = net.graph.node(LOGITS, "Identity", &[&logits], vec![]);
    net.graph.node(
        PROBABILITIES,
        "Softmax",
        &[&logits],
        vec![Attribute::Int("axis", -1)],
    );
    Ok(())
}

struct Network<'a> {
    config: &'a VitConfig,
    weights: &'a mut Weights,
    graph: &'a mut Graph,
    shared: Shared,
}

/// The names of the constant operands every block and every GELU use, placed once.
struct Shared {
    /// √2, 1 and ½ of `x · ½ · (1 + erf(x / √2))`.
    sqrt_two: String,
    one: String,
    half: String,
    /// `[0, 0, heads, head_dim]`: the heads split off the last axis.
    heads_shape: String,
    /// `[0, 0, dim]`: the heads merged back.
    merged_shape: String,
    /// √head_dim, what the attention scores are divided by.
    sqrt_head_dim: String,
    /// `[1]`: the token axis of `[N, tokens, dim]`, and the `[0]`, `[1]` bounds of its first row.
    token_axis: String,
    first_start: String,
    first_end: String,
}

impl Shared {
    fn new(config: &VitConfig, g: &mut Graph) -> Self {
        let (dim, heads, head_dim) = (config.dim as i64, config.heads as i64, config.head_dim());
        Self {
            sqrt_two: g.scalar("gelu.sqrt_two", std::f32::consts::SQRT_2),
            one: g.scalar("gelu.one", 1.0),
            half: g.scalar("gelu.half", 0.5),
            heads_shape: g.ints("attention.heads_shape", &[0, 0, heads, head_dim as i64]),
            merged_shape: g.ints("attention.merged_shape", &[0, 0, dim]),
            sqrt_head_dim: g.scalar("attention.sqrt_head_dim", (head_dim as f32).sqrt()),
            token_axis: g.ints("token_axis", &[1]),
            first_start: g.ints("first_token.start", &[0]),
            first_end: g.ints("first_token.end", &[1]),
        }
    }
}

impl Network<'_> {
    /// Gray values 0..=255 to the network's input, `(x / 255 - mean) / std`, in the order of
    /// `vit_model::input::normalise`.
    fn normalise(&mut self, pixels: &str) -> String {
        let g = &mut *self.graph;
        let full = g.scalar("pixel_max", 255.0);
        let mean = g.scalar("pixel_mean", PIXEL_MEAN);
        let std = g.scalar("pixel_std", PIXEL_STD);
        let scaled = g.node("pixels_scaled", "Div", &[pixels, &full], vec![]);
        let centred = g.node("pixels_centred", "Sub", &[&scaled, &mean], vec![]);
        g.node("images", "Div", &[&centred, &std], vec![])
    }

    /// The stem's convolutions (3×3, stride 1, padding 1), each followed by GELU.
    fn stem(&mut self, images: String) -> Result<String, ExportError> {
        let widths = [&[self.config.channels][..], &self.config.stem_channels].concat();
        let mut map = images;
        for (i, pair) in widths.windows(2).enumerate() {
            let name = format!("stem.{i}");
            let (inputs, outputs) = (pair[0], pair[1]);
            let weight = self.weight(&format!("{name}.weight"), &[outputs, inputs, 3, 3])?;
            let bias = self.weight(&format!("{name}.bias"), &[outputs])?;
            let convolved = self.graph.node(
                format!("{name}.conv"),
                "Conv",
                &[&map, &weight, &bias],
                vec![
                    Attribute::Ints("kernel_shape", vec![3, 3]),
                    Attribute::Ints("pads", vec![1, 1, 1, 1]),
                    Attribute::Ints("strides", vec![1, 1]),
                ],
            );
            map = self.gelu(&format!("{name}.gelu"), &convolved);
        }
        Ok(map)
    }

    /// Patches, their embedding, the class token in front and the positions added:
    /// `[N, tokens, dim]`.
    fn embed(&mut self, map: &str) -> Result<String, ExportError> {
        let c = self.config;
        let (patch, channels, dim) = (c.patch_size as i64, c.patch_channels() as i64, c.dim);
        let side = (c.image_size / c.patch_size) as i64;
        let g = &mut *self.graph;
        // [N, C, H, W] -> [N, C, rows, p, cols, p] -> [N, rows, cols, p, p, C] -> [N, 16, 49]
        let cut = g.ints("patch_grid", &[-1, channels, side, patch, side, patch]);
        let cut = g.node("patches_grid", "Reshape", &[map, &cut], vec![]);
        let ordered = g.node(
            "patches_ordered",
            "Transpose",
            &[&cut],
            vec![Attribute::Ints("perm", vec![0, 2, 4, 3, 5, 1])],
        );
        let flat = g.ints("patch_rows", &[-1, side * side, patch * patch * channels]);
        let patches = g.node("patches", "Reshape", &[&ordered, &flat], vec![]);
        let tokens = self.linear("patch_embedding", &patches, [c.patch_values(), dim])?;

        let class_token = self.weight("class_token", &[1, 1, dim])?;
        let positions = self.weight("position_embedding", &[1, c.num_patches() + 1, dim])?;
        let g = &mut *self.graph;
        // The class token repeated over the batch: [N, 1, dim].
        let batch = g.node(
            "batch_size",
            "Shape",
            &[INPUT],
            vec![Attribute::Int("start", 0), Attribute::Int("end", 1)],
        );
        let rest = g.ints("class_token_rest", &[1, dim as i64]);
        let shape = g.node(
            "class_tokens_shape",
            "Concat",
            &[&batch, &rest],
            vec![Attribute::Int("axis", 0)],
        );
        let class_tokens = g.node("class_tokens", "Expand", &[&class_token, &shape], vec![]);
        let sequence = g.node(
            "sequence",
            "Concat",
            &[&class_tokens, &tokens],
            vec![Attribute::Int("axis", 1)],
        );
        Ok(g.node("embedded", "Add", &[&sequence, &positions], vec![]))
    }

    /// `x + attention(norm(x))`, then `x + mlp(norm(x))`. With `class_token_only`, only the
    /// class token's queries are computed and only its row leaves the block: `[N, 1, dim]`.
    fn block(&mut self, i: usize, x: &str, class_token_only: bool) -> Result<String, ExportError> {
        let name = format!("blocks.{i}");
        let normed = self.layer_norm(&format!("{name}.attention_norm"), x)?;
        let (queries_from, residual) = if class_token_only {
            let first = |net: &mut Self, what: &str, from: &str| {
                net.first_token(&format!("{name}.{what}"), from)
            };
            (
                first(self, "class_query_input", &normed),
                first(self, "class_residual", x),
            )
        } else {
            (normed.clone(), x.to_string())
        };
        let attended = self.attention(&format!("{name}.attention"), &queries_from, &normed)?;
        let x = self.graph.node(
            format!("{name}.attended"),
            "Add",
            &[&residual, &attended],
            vec![],
        );
        let normed = self.layer_norm(&format!("{name}.mlp_norm"), &x)?;
        let (dim, hidden) = (self.config.dim, self.config.mlp_dim);
        let inner = self.linear(&format!("{name}.mlp.linear_inner"), &normed, [dim, hidden])?;
        let inner = self.gelu(&format!("{name}.mlp.gelu"), &inner);
        let outer = self.linear(&format!("{name}.mlp.linear_outer"), &inner, [hidden, dim])?;
        Ok(self
            .graph
            .node(format!("{name}.output"), "Add", &[&x, &outer], vec![]))
    }

    /// Burn's `MultiHeadAttention` without q/k/v biases: queries from `queries_from`
    /// `[N, q, dim]`, keys and values from `x` `[N, tokens, dim]`, scores / √head_dim.
    fn attention(
        &mut self,
        name: &str,
        queries_from: &str,
        x: &str,
    ) -> Result<String, ExportError> {
        let dim = self.config.dim;
        let projection = |net: &mut Self, what: &str, from: &str| -> Result<String, ExportError> {
            let weight = net.transposed_weight(&format!("{name}.{what}.weight"), [dim, dim])?;
            Ok(net
                .graph
                .node(format!("{name}.{what}"), "MatMul", &[from, &weight], vec![]))
        };
        let query = projection(self, "query", queries_from)?;
        let key = projection(self, "key", x)?;
        let value = projection(self, "value", x)?;
        let Shared {
            heads_shape: split,
            merged_shape: merged,
            sqrt_head_dim: root,
            ..
        } = &self.shared;
        let g = &mut *self.graph;
        // [N, t, dim] -> [N, t, heads, head_dim]; 0 keeps the input's size.
        let mut heads_of = |what: &str, from: &str, perm: Vec<i64>| {
            let split = g.node(
                format!("{name}.{what}_heads"),
                "Reshape",
                &[from, split],
                vec![],
            );
            g.node(
                format!("{name}.{what}_by_head"),
                "Transpose",
                &[&split],
                vec![Attribute::Ints("perm", perm)],
            )
        };
        let query = heads_of("query", &query, vec![0, 2, 1, 3]); // [N, heads, q, head_dim]
        let key = heads_of("key", &key, vec![0, 2, 3, 1]); // [N, heads, head_dim, tokens]
        let value = heads_of("value", &value, vec![0, 2, 1, 3]); // [N, heads, tokens, head_dim]
        let scores = g.node(format!("{name}.scores"), "MatMul", &[&query, &key], vec![]);
        let scores = g.node(
            format!("{name}.scaled_scores"),
            "Div",
            &[&scores, root],
            vec![],
        );
        let weights = g.node(
            format!("{name}.weights"),
            "Softmax",
            &[&scores],
            vec![Attribute::Int("axis", -1)],
        );
        let context = g.node(
            format!("{name}.context"),
            "MatMul",
            &[&weights, &value],
            vec![],
        );
        let context = g.node(
            format!("{name}.context_by_token"),
            "Transpose",
            &[&context],
            vec![Attribute::Ints("perm", vec![0, 2, 1, 3])],
        );
        let context = g.node(
            format!("{name}.context_merged"),
            "Reshape",
            &[&context, merged],
            vec![],
        );
        self.linear(&format!("{name}.output"), &context, [dim, dim])
    }

    /// The trained tensor `name`, which must have `shape`, as an initializer of that name.
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<String, ExportError> {
        let values = self.weights.take(name, shape)?;
        Ok(self.graph.floats(name, shape, &values))
    }

    /// The `[out, in]` weight `name` of a linear layer as an `[in, out]` initializer, the
    /// matrix `MatMul` multiplies by.
    fn transposed_weight(
        &mut self,
        name: &str,
        [outputs, inputs]: [usize; 2],
    ) -> Result<String, ExportError> {
        let values = self.weights.take_transposed(name, [outputs, inputs])?;
        Ok(self.graph.floats(name, &[inputs, outputs], &values))
    }

    /// `x · Wᵀ + b` for a linear layer whose PyTorch-layout weight is `[out, in]`.
    fn linear(
        &mut self,
        name: &str,
        x: &str,
        [inputs, outputs]: [usize; 2],
    ) -> Result<String, ExportError> {
        let weight = self.transposed_weight(&format!("{name}.weight"), [outputs, inputs])?;
        let bias = self.weight(&format!("{name}.bias"), &[outputs])?;
        let product = self
            .graph
            .node(format!("{name}.matmul"), "MatMul", &[x, &weight], vec![]);
        Ok(self
            .graph
            .node(name.to_string(), "Add", &[&product, &bias], vec![]))
    }

    /// LayerNormalization over the last axis (opset 17).
    fn layer_norm(&mut self, name: &str, x: &str) -> Result<String, ExportError> {
        let dim = self.config.dim;
        let scale = self.weight(&format!("{name}.weight"), &[dim])?;
        let shift = self.weight(&format!("{name}.bias"), &[dim])?;
        Ok(self.graph.node(
            name.to_string(),
            "LayerNormalization",
            &[x, &scale, &shift],
            vec![
                Attribute::Int("axis", -1),
                Attribute::Float("epsilon", LAYER_NORM_EPSILON),
            ],
        ))
    }

    /// The exact GELU, `x · ½ · (1 + erf(x / √2))`, as Burn's: ONNX Runtime fuses it into one
    /// operation, and opset 17 has no Gelu of its own.
    fn gelu(&mut self, name: &str, x: &str) -> String {
        let Shared {
            sqrt_two,
            one,
            half,
            ..
        } = &self.shared;
        let g = &mut *self.graph;
        let scaled = g.node(format!("{name}.scaled"), "Div", &[x, sqrt_two], vec![]);
        let erf = g.node(format!("{name}.erf"), "Erf", &[&scaled], vec![]);
        let shifted = g.node(format!("{name}.shifted"), "Add", &[&erf, one], vec![]);
        let gated = g.node(format!("{name}.gated"), "Mul", &[x, &shifted], vec![]);
        g.node(name.to_string(), "Mul", &[&gated, half], vec![])
    }

    /// The class token's row of `x` `[N, tokens, dim]`: `[N, 1, dim]`.
    fn first_token(&mut self, name: &str, x: &str) -> String {
        let Shared {
            first_start,
            first_end,
            token_axis,
            ..
        } = &self.shared;
        let inputs = [x, first_start, first_end, token_axis];
        self.graph.node(name.to_string(), "Slice", &inputs, vec![])
    }
}
