//! Weight averaging: one model whose every parameter is the mean of that parameter over several
//! checkpoints of the same network (the last epochs of a run, as in stochastic weight
//! averaging). The ViT has no batch statistics, so the mean needs no recalibration pass.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// Why models could not be averaged.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AveragingError {
    #[error("no models to average")]
    Empty,
    #[error("model {index} does not have the first model's parameters: {detail}")]
    Mismatch { index: usize, detail: String },
}

/// The parameter-wise mean of `models`, which must be the same network: the same parameters,
/// visited in the same order, with the same shapes. The result keeps the first model's
/// parameter ids.
pub fn average<M: Module>(models: &[M]) -> Result<M, AveragingError> {
    let (first, rest) = models.split_first().ok_or(AveragingError::Empty)?;
    let mut sums = flatten(first);
    for (offset, model) in rest.iter().enumerate() {
        let index = offset + 1;
        let params = flatten(model);
        if params.len() != sums.len() {
            return Err(AveragingError::Mismatch {
                index,
                detail: format!("{} parameter tensors, not {}", params.len(), sums.len()),
            });
        }
        for (position, (sum, param)) in sums.iter_mut().zip(params).enumerate() {
            if param.shape != sum.shape {
                return Err(AveragingError::Mismatch {
                    index,
                    detail: format!(
                        "parameter tensor {position} has shape {:?}, not {:?}",
                        param.shape, sum.shape
                    ),
                });
            }
            sum.values = sum.values.clone() + param.values;
        }
    }
    let count = models.len() as f64;
    let mut means = sums.into_iter().map(|sum| sum.values.div_scalar(count));
    Ok(first.clone().map(&mut Replace(&mut means)))
}

/// One float parameter, flattened, with the shape it had.
struct Flat {
    shape: Vec<usize>,
    values: Tensor<1>,
}

/// Every float parameter of `model`, in visiting order.
fn flatten<M: Module>(model: &M) -> Vec<Flat> {
    let mut visitor = Flatten(Vec::new());
    model.visit(&mut visitor);
    visitor.0
}

struct Flatten(Vec<Flat>);

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let values = tensor.reshape([shape.iter().product::<usize>()]);
        self.0.push(Flat { shape, values });
    }
}

/// Gives each float parameter, in visiting order, the next of the flattened values.
struct Replace<'a, I: Iterator<Item = Tensor<1>>>(&'a mut I);

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for Replace<'_, I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let values = self
            .0
            .next()
            .expect("the mean has one entry per parameter of the model it came from");
        param.map(|tensor| values.reshape(tensor.dims()))
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};

    use super::*;

    fn weights(model: &Linear) -> Vec<f32> {
        let mut values = model.weight.val().into_data().try_to_vec::<f32>().unwrap();
        let bias = model.bias.as_ref().unwrap().val().into_data();
        values.extend(bias.try_to_vec::<f32>().unwrap());
        values
    }

    #[test]
    fn every_parameter_becomes_the_mean_of_the_models() {
        let device = Device::default();
        let models: Vec<Linear> = (0..3)
            .map(|_| LinearConfig::new(3, 2).init(&device))
            .collect();
        let mean = average(&models).unwrap();
        let each: Vec<Vec<f32>> = models.iter().map(weights).collect();
        for (i, value) in weights(&mean).into_iter().enumerate() {
            let expected = (each[0][i] + each[1][i] + each[2][i]) / 3.0;
            assert!(
                (value - expected).abs() < 1e-6,
                "{i}: {value} vs {expected}"
            );
        }
        assert_eq!(mean.weight.val().dims(), [3, 2]);
        assert_eq!(mean.weight.id, models[0].weight.id);
    }

    #[test]
    fn different_networks_are_refused_by_name() {
        let device = Device::default();
        let models = [
            LinearConfig::new(3, 2).init(&device),
            LinearConfig::new(2, 3).init(&device),
        ];
        let error = average(&models).unwrap_err();
        assert!(
            matches!(error, AveragingError::Mismatch { index: 1, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("[2, 3]"), "{error}");
        assert_eq!(average::<Linear>(&[]).unwrap_err(), AveragingError::Empty);
    }
}
