//! Moving a model's parameters, or its gradients, to another device in one transfer.
//!
//! burn-train's multi-device strategy moves them one tensor at a time (`Module::fork`,
//! `GradientsParams::to_device`), and burn-remote makes each move between two compute servers
//! wait for both servers' queues to drain (`RemoteTensorHandle::change_backend_remote`): 86
//! waits a step in each direction for the tutorial network. Here the tensors are flattened into
//! one, moved once, and cut back apart on the other side.

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;

/// `module` forked to `device` as `Module::fork` does (the same parameter ids, values and
/// gradient requirements, detached from any graph), with one transfer for all its float
/// parameters. A module already on `device`, or with parameters not initialised yet or of
/// several float types, is forked the usual way.
pub fn fork<M: Module>(module: M, device: &Device) -> M {
    if module.devices().iter().all(|on| on == device) {
        return module.fork(device);
    }
    let mut packer = Packer::default();
    module.visit(&mut ParameterPacker(&mut packer));
    let Some(packed) = packer.move_to(device) else {
        return module.fork(device);
    };
    module.map(&mut Unpacker { packed, device })
}

/// `grads` of `module`'s parameters moved to `device` in one transfer. Gradients already there,
/// or of several float types, are moved the usual way.
pub fn gradients<M: Module>(
    mut grads: GradientsParams,
    module: &M,
    device: &Device,
) -> GradientsParams {
    let mut packer = Packer::default();
    module.visit(&mut GradientPacker {
        grads: &grads,
        packer: &mut packer,
        device,
    });
    let Some(packed) = packer.move_to(device) else {
        return grads.to_device(device, module);
    };
    module.visit(&mut GradientUnpacker {
        grads: &mut grads,
        packed,
    });
    grads
}

/// Float tensors flattened in the order a visitor meets them, with where each one lands.
#[derive(Default)]
struct Packer {
    parts: Vec<Tensor<1>>,
    places: HashMap<ParamId, Range<usize>>,
    length: usize,
    dtype: Option<DType>,
    /// Set when a tensor cannot go into the one transfer (another float type, a parameter not
    /// initialised yet); the caller then moves everything the usual way.
    refused: bool,
}

impl Packer {
    fn add(&mut self, id: ParamId, tensor: Tensor<1>) {
        let dtype = tensor.dtype();
        if *self.dtype.get_or_insert(dtype) != dtype {
            self.refused = true;
        }
        let length = tensor.shape().num_elements();
        self.places.insert(id, self.length..self.length + length);
        self.length += length;
        self.parts.push(tensor);
    }

    /// The tensors in one, moved to `device`; `None` when nothing, or not everything, can go.
    fn move_to(self, device: &Device) -> Option<Packed> {
        if self.refused || self.parts.is_empty() {
            return None;
        }
        Some(Packed {
            flat: Tensor::cat(self.parts, 0).to_device(device),
            places: self.places,
        })
    }
}

/// The packed tensors after the move.
struct Packed {
    flat: Tensor<1>,
    places: HashMap<ParamId, Range<usize>>,
}

impl Packed {
    /// Parameter `id`'s tensor, in `shape`; `None` if it was not packed.
    fn part<const D: usize>(&self, id: ParamId, shape: Shape) -> Option<Tensor<D>> {
        let range = self.places.get(&id)?.clone();
        Some(self.flat.clone().slice(range).reshape(shape))
    }
}

fn flat<const D: usize>(tensor: Tensor<D>) -> Tensor<1> {
    let length = tensor.shape().num_elements();
    tensor.reshape([length])
}

struct ParameterPacker<'a>(&'a mut Packer);

impl ModuleVisitor for ParameterPacker<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.is_initialized() {
            self.0.add(param.id, flat(param.base().detach()));
        } else {
            self.0.refused = true;
        }
    }
}

/// Puts each float parameter's slice of the moved tensor in its place, as `Param::fork` puts
/// the moved parameter: detached, requiring gradients if it did. Other parameters fork.
struct Unpacker<'a> {
    packed: Packed,
    device: &'a Device,
}

impl ModuleMapper for Unpacker<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(moved) = self.packed.part::<D>(param.id, param.lazy_shape()) else {
            return param.fork(self.device);
        };
        param.map(|tensor| {
            let moved = moved.detach();
            if tensor.is_require_grad() {
                moved.require_grad()
            } else {
                moved
            }
        })
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        param.fork(self.device)
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        param.fork(self.device)
    }
}

struct GradientPacker<'a> {
    grads: &'a GradientsParams,
    packer: &'a mut Packer,
    device: &'a Device,
}

impl ModuleVisitor for GradientPacker<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id)
            && grad.device() != *self.device
        {
            self.packer.add(param.id, flat(grad));
        }
    }
}

struct GradientUnpacker<'a> {
    grads: &'a mut GradientsParams,
    packed: Packed,
}

impl ModuleVisitor for GradientUnpacker<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(moved) = self.packed.part::<D>(param.id, param.lazy_shape()) {
            self.grads.register::<D>(param.id, moved);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};

    use super::*;

    /// A layer on ndarray whose parameters hold distinct values, so a slice put in the wrong
    /// place shows. ndarray is deprecated upstream; this project still supports it, and it is the
    /// second device every test build has.
    #[allow(deprecated)]
    fn layer() -> Linear {
        let device = Device::ndarray().autodiff();
        let layer = LinearConfig::new(3, 2).init(&device);
        let weight = Tensor::arange(0..6, &device).float().reshape([3, 2]);
        let bias = Tensor::arange(10..12, &device).float();
        Linear {
            weight: layer.weight.map(|_| weight.require_grad()),
            bias: layer.bias.map(|param| param.map(|_| bias.require_grad())),
        }
    }

    fn gradients_of(model: &Linear) -> GradientsParams {
        let input = Tensor::<2>::from_floats([[1.0, -2.0, 3.0]], &model.weight.device());
        let loss = model.forward(input).powi_scalar(2).sum();
        GradientsParams::from_grads(loss.backward(), model)
    }

    #[test]
    fn a_fork_in_one_transfer_is_the_usual_fork() {
        let (model, flex) = (layer(), Device::flex().autodiff());

        let usual = model.clone().fork(&flex);
        let packed = fork(model, &flex);

        assert_eq!(packed.devices(), vec![flex]);
        let usual_bias = usual.bias.as_ref().expect("the layer has a bias");
        let packed_bias = packed.bias.as_ref().expect("the layer has a bias");
        assert_eq!(
            (packed.weight.id, packed_bias.id),
            (usual.weight.id, usual_bias.id)
        );
        packed
            .weight
            .val()
            .into_data()
            .assert_eq(&usual.weight.val().into_data(), true);
        packed_bias
            .val()
            .into_data()
            .assert_eq(&usual_bias.val().into_data(), true);
        assert!(packed.weight.val().is_require_grad() && packed_bias.val().is_require_grad());
    }

    #[test]
    fn gradients_moved_in_one_transfer_are_the_gradients_moved_one_by_one() {
        let (model, flex) = (layer(), Device::flex());

        let usual = gradients_of(&model).to_device(&flex, &model);
        let packed = gradients(gradients_of(&model), &model, &flex);

        let bias_id = model.bias.as_ref().expect("the layer has a bias").id;
        let (weight, bias) = (
            packed.get::<2>(model.weight.id).expect("a weight gradient"),
            packed.get::<1>(bias_id).expect("a bias gradient"),
        );
        assert_eq!((weight.device(), bias.device()), (flex.clone(), flex));
        let expected = usual.get::<2>(model.weight.id).expect("a weight gradient");
        weight.into_data().assert_eq(&expected.into_data(), true);
        let expected = usual.get::<1>(bias_id).expect("a bias gradient");
        bias.into_data().assert_eq(&expected.into_data(), true);
    }
}
