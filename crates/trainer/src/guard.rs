//! Stops a run whose loss is no longer a number. The check sits in the training step, so the
//! learner stops within the epoch; the epoch is then not checkpointed, and the last good
//! checkpoint is the one a resume starts from.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::train::Interrupter;

use crate::test_hooks;

/// Where the loss first stopped being finite.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Divergence {
    pub epoch: usize,
    /// 1-based step within the epoch.
    pub step: usize,
    pub loss: f32,
}

/// Shared between the training step and the code that launched the run.
#[derive(Clone, Default)]
pub struct DivergenceGuard {
    state: Arc<GuardState>,
}

impl std::fmt::Debug for DivergenceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DivergenceGuard")
            .field("divergence", &self.divergence())
            .finish()
    }
}

#[derive(Default)]
struct GuardState {
    interrupter: Mutex<Option<Interrupter>>,
    steps_per_epoch: AtomicUsize,
    /// Devices that each run every step (and call the guard once per step).
    devices: AtomicUsize,
    first_epoch: AtomicUsize,
    steps: AtomicUsize,
    divergence: Mutex<Option<Divergence>>,
    /// Test hook: pretend the loss is NaN from this global step on (see
    /// [`crate::test_hooks::INJECT_NAN_VAR`]).
    inject_at: Option<usize>,
    /// Test hook: end the process at this (epoch, step) (see [`crate::test_hooks`]).
    kill_at: Option<(usize, usize)>,
}

impl DivergenceGuard {
    pub fn new() -> Self {
        let inject_at = test_hooks::nan_at_step();
        let kill_at = match test_hooks::KillPoint::from_env() {
            Some(test_hooks::KillPoint::Step { epoch, step }) => Some((epoch, step)),
            _ => None,
        };
        Self {
            state: Arc::new(GuardState {
                inject_at,
                kill_at,
                ..GuardState::default()
            }),
        }
    }

    /// Arms the guard for a run on `devices` devices that starts at `first_epoch` (1-based).
    pub fn arm(
        &self,
        interrupter: Interrupter,
        steps_per_epoch: usize,
        first_epoch: usize,
        devices: usize,
    ) {
        self.state.devices.store(devices.max(1), Ordering::Relaxed);
        *self.state.interrupter.lock().expect("guard lock") = Some(interrupter);
        self.state
            .steps_per_epoch
            .store(steps_per_epoch.max(1), Ordering::Relaxed);
        self.state.first_epoch.store(first_epoch, Ordering::Relaxed);
    }

    /// Where the `index`-th call (0-based) of this launch falls: (epoch, 1-based step).
    fn position(&self, index: usize) -> (usize, usize) {
        let index = index / self.state.devices.load(Ordering::Relaxed).max(1);
        let per_epoch = self.state.steps_per_epoch.load(Ordering::Relaxed).max(1);
        let first_epoch = self.state.first_epoch.load(Ordering::Relaxed);
        (first_epoch + index / per_epoch, index % per_epoch + 1)
    }

    /// Called before each training step.
    pub fn before_step(&self) {
        let index = self.state.steps.load(Ordering::Relaxed);
        if let Some((epoch, step)) = self.state.kill_at
            && self.position(index) == (epoch, step)
        {
            test_hooks::kill(&format!("epoch {epoch}, step {step}"));
        }
    }

    /// Called with each training step's loss.
    pub fn check(&self, loss: &Tensor<1>) {
        let step = self.state.steps.fetch_add(1, Ordering::Relaxed);
        let mut value = loss.clone().into_scalar::<f32>();
        if self.state.inject_at.is_some_and(|at| step + 1 >= at) {
            value = f32::NAN;
        }
        if value.is_finite() {
            return;
        }
        let mut divergence = self.state.divergence.lock().expect("guard lock");
        if divergence.is_some() {
            return;
        }
        let (epoch, step) = self.position(step);
        let found = Divergence {
            epoch,
            step,
            loss: value,
        };
        *divergence = Some(found);
        if let Some(interrupter) = self.state.interrupter.lock().expect("guard lock").as_ref() {
            interrupter.stop(Some(&format!(
                "loss became {} at epoch {}, step {}",
                found.loss, found.epoch, found.step
            )));
        }
    }

    pub fn divergence(&self) -> Option<Divergence> {
        *self.state.divergence.lock().expect("guard lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_loss_is_located_and_stops_the_run() {
        let device = Device::flex();
        let guard = DivergenceGuard::default();
        let interrupter = Interrupter::new();
        guard.arm(interrupter.clone(), 10, 3, 1);
        let loss = |v: f32| Tensor::<1>::from_floats([v], &device);

        for _ in 0..12 {
            guard.check(&loss(0.5));
        }
        assert_eq!(guard.divergence(), None);
        assert!(!interrupter.should_stop());

        guard.check(&loss(f32::INFINITY));
        guard.check(&loss(f32::NAN));

        // Step 13 of the run is step 3 of its second epoch, the run's fourth.
        assert_eq!(
            guard.divergence(),
            Some(Divergence {
                epoch: 4,
                step: 3,
                loss: f32::INFINITY
            })
        );
        assert!(interrupter.should_stop());
    }
}
