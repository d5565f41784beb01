//! Every test hook of the trainer, each driven by an environment variable and read here only:
//!
//! - [`KILL_VAR`] ends the process at a chosen point, the way a kill or a power cut would: no
//!   destructor runs and nothing is flushed. The only way to test, without timing-dependent
//!   sleeps, that a run stopped anywhere continues with `train --resume` as if it never stopped.
//! - [`INJECT_NAN_VAR`] makes the divergence guard see a NaN loss at a chosen step.
//! - [`SERVE_HOOKS_VAR`] gives the server a route that panics, to test that a failed request is
//!   a 500 and the server goes on.

/// `EPOCH:STEP` ends the run at that training step (1-based, the step does not run); a stage
/// name (`fitted`, `exported`, `tested`) ends it just after that stage.
pub const KILL_VAR: &str = "VIT_TRAINER_KILL_AT";

/// The exit status of a run ended by the hook (a SIGKILL's, as a shell reports it).
pub const KILLED_STATUS: i32 = 137;

/// Where the hook is set to end the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KillPoint {
    Step { epoch: usize, step: usize },
    After(String),
}

impl KillPoint {
    pub fn from_env() -> Option<Self> {
        let value = std::env::var(KILL_VAR).ok()?;
        Some(match value.split_once(':') {
            Some((epoch, step)) => Self::Step {
                epoch: epoch.trim().parse().ok()?,
                step: step.trim().parse().ok()?,
            },
            None => Self::After(value.trim().to_string()),
        })
    }
}

/// Ends the process if the hook names `stage`.
pub fn after_stage(stage: &str) {
    if KillPoint::from_env() == Some(KillPoint::After(stage.into())) {
        kill(stage);
    }
}

/// Ends the process now.
pub fn kill(at: &str) -> ! {
    eprintln!("{KILL_VAR}: ending the process at {at}");
    std::process::exit(KILLED_STATUS)
}

/// Set to N to make the divergence guard see a NaN loss at the N-th step of the run: the only
/// way to test the divergence path end to end without a recipe that happens to diverge.
pub const INJECT_NAN_VAR: &str = "VIT_TRAINER_INJECT_NAN_AT_STEP";

/// The step [`INJECT_NAN_VAR`] names, if any.
pub fn nan_at_step() -> Option<usize> {
    std::env::var(INJECT_NAN_VAR).ok()?.parse().ok()
}

/// Set (to anything) to turn the server's test hooks on: a request with the header
/// `x-test-panic` panics in its handler; one with `x-test-hold-ms: N` keeps the model's thread
/// asleep N ms when it takes the request, so that the queue fills.
pub const SERVE_HOOKS_VAR: &str = "VIT_TRAINER_SERVE_TEST_HOOKS";

/// Whether [`SERVE_HOOKS_VAR`] is set.
pub fn serve_hooks() -> bool {
    std::env::var_os(SERVE_HOOKS_VAR).is_some()
}
