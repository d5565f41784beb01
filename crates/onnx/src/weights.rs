//! The trained weights, read by name in PyTorch's layout (the names and shapes
//! `vit_model::interchange` documents), each checked against the shape the graph needs.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::ExportError;

/// Every weight tensor of a model: its shape and values.
pub struct Weights {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    /// Reads the safetensors bytes of `vit_model::interchange::safetensors_bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ExportError> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|error| ExportError::Weights(error.to_string()))?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(ExportError::Weights(format!(
                    "`{name}` is {:?}, the exporter writes float32 weights only",
                    view.dtype()
                )));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Self { tensors })
    }

    /// The values of `name`, which must have `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ExportError> {
        let (found, values) = self
            .tensors
            .remove(name)
            .ok_or_else(|| ExportError::Weights(format!("no `{name}` tensor")))?;
        if found != shape {
            return Err(ExportError::Weights(format!(
                "`{name}` is {found:?}, the config makes it {shape:?}"
            )));
        }
        Ok(values)
    }

    /// A linear layer's `[out, in]` weight as the `[in, out]` matrix `x · W` multiplies by.
    pub fn take_transposed(
        &mut self,
        name: &str,
        [rows, cols]: [usize; 2],
    ) -> Result<Vec<f32>, ExportError> {
        let values = self.take(name, &[rows, cols])?;
        Ok((0..cols * rows)
            .map(|i| values[(i % rows) * cols + i / rows])
            .collect())
    }

    /// Fails when a tensor was left unread: the graph would not compute the model.
    pub fn finish(self) -> Result<(), ExportError> {
        let mut left: Vec<String> = self.tensors.into_keys().collect();
        if left.is_empty() {
            return Ok(());
        }
        left.sort();
        Err(ExportError::Weights(format!(
            "tensors the exporter does not place: {}",
            left.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposing_turns_out_by_in_into_in_by_out() {
        let mut weights = Weights {
            tensors: HashMap::from([(
                "w".to_string(),
                (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            )]),
        };
        let transposed = weights.take_transposed("w", [2, 3]).unwrap();
        assert_eq!(transposed, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        weights.finish().unwrap();
    }

    #[test]
    fn a_wrong_shape_or_a_missing_or_extra_tensor_is_named() {
        let tensors = || {
            HashMap::from([
                ("a".to_string(), (vec![2], vec![0.0; 2])),
                ("b".to_string(), (vec![1], vec![0.0])),
            ])
        };
        let mut weights = Weights { tensors: tensors() };
        let error = weights.take("a", &[3]).unwrap_err().to_string();
        assert!(
            error.contains("`a` is [2]") && error.contains("[3]"),
            "{error}"
        );
        let error = weights.take("c", &[1]).unwrap_err().to_string();
        assert!(error.contains("no `c`"), "{error}");
        let error = weights.finish().unwrap_err().to_string();
        assert!(error.contains('b'), "{error}");
    }
}
