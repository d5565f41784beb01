//! Stops a run whose loss is no longer a number. The check sits in the training step, so the
//! learner stops within the epoch; the epoch is then not checkpointed, and the last good
//! checkpoint is the one a resume starts from.
//!
//! A read makes the step wait until its device has caught up, and on a compute server (or a
//! GPU) the device then idles while the step issues its next operations: reading every
//! step's loss cost remote training about a fifth of its speed. So the losses are read
//! [`READ_EVERY`] steps at a time, and at the epoch's last step, in one read each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

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
    unread: Mutex<Vec<Unread>>,
    /// Test hook: pretend the loss is NaN from this global step on (see
    /// [`crate::test_hooks::INJECT_NAN_VAR`]).
    inject_at: Option<usize>,
    /// Test hook: end the process at this (epoch, step) (see [`crate::test_hooks`]).
    kill_at: Option<(usize, usize)>,
}

/// Steps whose losses are read together (and the most a divergence is seen late by).
pub const READ_EVERY: usize = 10;

/// The losses of one device's steps not read yet, with their steps' global indices. Each
/// device's steps run on a thread of their own (the learner's, or a burn-train multi-device
/// worker), so the thread tells the devices apart; devices themselves can compare equal (two
/// Burn devices on one wgpu adapter).
struct Unread {
    thread: ThreadId,
    losses: Vec<(usize, Tensor<1>)>,
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

    /// Called with each training step's loss: reads it with the other unread ones of its
    /// device at every [`READ_EVERY`]-th of them and at the epoch's last step.
    pub fn check(&self, loss: &Tensor<1>) {
        let index = self.state.steps.fetch_add(1, Ordering::Relaxed);
        let last_of_epoch =
            self.position(index).1 == self.state.steps_per_epoch.load(Ordering::Relaxed);
        let thread = std::thread::current().id();
        let due = {
            let mut unread = self.state.unread.lock().expect("guard lock");
            let at = unread
                .iter()
                .position(|u| u.thread == thread)
                .unwrap_or_else(|| {
                    unread.push(Unread {
                        thread,
                        losses: Vec::with_capacity(READ_EVERY),
                    });
                    unread.len() - 1
                });
            unread[at].losses.push((index, own_copy(loss)));
            if unread[at].losses.len() < READ_EVERY && !last_of_epoch {
                return;
            }
            // Removed once read: burn-train starts new workers each epoch.
            unread.swap_remove(at).losses
        };
        self.judge(due);
    }

    /// Reads `losses` in one read; the first that is not finite stops the run.
    fn judge(&self, losses: Vec<(usize, Tensor<1>)>) {
        let (indices, tensors): (Vec<usize>, Vec<Tensor<1>>) = losses.into_iter().unzip();
        let values = Tensor::cat(tensors, 0).into_data();
        let found = indices
            .into_iter()
            .zip(values.iter::<f32>())
            .find_map(|(index, value)| {
                let value = if self.state.inject_at.is_some_and(|at| index + 1 >= at) {
                    f32::NAN
                } else {
                    value
                };
                (!value.is_finite()).then_some((index, value))
            });
        let Some((index, value)) = found else {
            return;
        };
        let mut divergence = self.state.divergence.lock().expect("guard lock");
        if divergence.is_some() {
            return;
        }
        let (epoch, step) = self.position(index);
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

/// A tensor of `loss`'s value that only the guard holds.
///
/// The step's loss also goes to burn-train's metric thread, and on a compute server two threads
/// must not both consume handles of one tensor: Burn's router decides whether an operation may
/// free its input from the handle count when the operation is built, and sends it a moment
/// later, so the other thread's last use can reach the server first and free the tensor under
/// this one's (`Should have handle for tensor`, docs/remote.md). A reshape, issued here before
/// the loss leaves this thread, is a new tensor on the server.
fn own_copy(loss: &Tensor<1>) -> Tensor<1> {
    loss.clone().detach().reshape(loss.dims())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard armed for one device, epochs of `steps_per_epoch` from `first_epoch` on, and its
    /// interrupter.
    fn armed(steps_per_epoch: usize, first_epoch: usize) -> (DivergenceGuard, Interrupter) {
        let (guard, interrupter) = (DivergenceGuard::default(), Interrupter::new());
        guard.arm(interrupter.clone(), steps_per_epoch, first_epoch, 1);
        (guard, interrupter)
    }

    fn loss(value: f32) -> Tensor<1> {
        Tensor::<1>::from_floats([value], &Device::flex())
    }

    #[test]
    fn the_first_non_finite_loss_is_located_and_stops_the_run() {
        let (guard, interrupter) = armed(10, 3);

        for _ in 0..12 {
            guard.check(&loss(0.5));
        }
        assert_eq!(guard.divergence(), None);
        assert!(!interrupter.should_stop());

        guard.check(&loss(f32::INFINITY));
        guard.check(&loss(f32::NAN));
        // Read with the losses up to the epoch's last step.
        assert!(!interrupter.should_stop());
        for _ in 0..6 {
            guard.check(&loss(0.5));
        }

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

    /// Within a long epoch a loss is read at the latest with the [`READ_EVERY`]-th unread one.
    #[test]
    fn losses_are_read_every_few_steps_within_an_epoch() {
        let (guard, interrupter) = armed(100, 1);

        guard.check(&loss(f32::NAN));
        for _ in 2..READ_EVERY {
            guard.check(&loss(0.5));
        }
        assert!(!interrupter.should_stop());
        guard.check(&loss(0.5));
        assert!(interrupter.should_stop());
        assert_eq!(guard.divergence().map(|d| (d.epoch, d.step)), Some((1, 1)));
    }
}
