//! One Adam step on a parameter's values: the arithmetic the in-place update runs.

use std::mem::MaybeUninit;

/// How the parameters decay towards zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightDecay {
    None,
    /// Adam's L2 penalty: `rate · parameter` is added to the gradient.
    L2(f32),
    /// AdamW's decoupled decay: the parameter shrinks by `learning rate · rate` each step.
    Decoupled(f32),
}

/// The constants of one update, as the fused kernels take them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamSettings {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: WeightDecay,
}

/// The coefficients of step `time` (counted from 1) at learning rate `lr`.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub settings: AdamSettings,
    pub lr: f64,
    pub time: usize,
}

impl AdamStep {
    /// Updates one parameter and its moments in place, element by element, as Burn's and
    /// PyTorch's Adam do with whole tensors: with `g` the gradient (plus the L2 penalty),
    /// `m = β₁m + (1-β₁)g`, `v = β₂v + (1-β₂)g²`, and the parameter moves by
    /// `-lr · m̂ / (√v̂ + ε)` after AdamW's decay.
    pub fn apply(
        &self,
        parameter: &mut [f32],
        grad: &[f32],
        moment_1: &mut [f32],
        moment_2: &mut [f32],
    ) {
        let update = self.update();
        let values = parameter
            .iter_mut()
            .zip(grad)
            .zip(moment_1.iter_mut().zip(moment_2.iter_mut()));
        for ((p, &g), (m, v)) in values {
            *p = update(*p, g, m, v);
        }
    }

    /// [`AdamStep::apply`] for a parameter that may not be overwritten: its updated values are
    /// written to `updated` (one per value of `parameter`), the moments in place.
    pub fn apply_into(
        &self,
        parameter: &[f32],
        updated: &mut [MaybeUninit<f32>],
        grad: &[f32],
        moment_1: &mut [f32],
        moment_2: &mut [f32],
    ) {
        assert_eq!(
            updated.len(),
            parameter.len(),
            "one updated value per value"
        );
        let update = self.update();
        let values = parameter
            .iter()
            .zip(updated.iter_mut())
            .zip(grad)
            .zip(moment_1.iter_mut().zip(moment_2.iter_mut()));
        for (((&p, updated), &g), (m, v)) in values {
            updated.write(update(p, g, m, v));
        }
    }

    /// One value's update: its new value from the old one and its gradient, its moments
    /// updated in place.
    fn update(&self) -> impl Fn(f32, f32, &mut f32, &mut f32) -> f32 {
        let AdamSettings {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } = self.settings;
        let time = self.time as i32;
        let lr = self.lr as f32;
        let step_size = lr / (1.0 - beta_1.powi(time));
        let bias_correction_2 = (1.0 - beta_2.powi(time)).sqrt();
        let (l2, keep) = match weight_decay {
            WeightDecay::None => (0.0, 1.0),
            WeightDecay::L2(rate) => (rate, 1.0),
            WeightDecay::Decoupled(rate) => (0.0, 1.0 - lr * rate),
        };
        move |p, g, m, v| {
            let g = g + l2 * p;
            *m = beta_1 * *m + (1.0 - beta_1) * g;
            *v = beta_2 * *v + (1.0 - beta_2) * g * g;
            p * keep - step_size * *m / (v.sqrt() / bias_correction_2 + epsilon)
        }
    }
}
