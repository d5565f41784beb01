//! Test hooks that end the process at a chosen point, the way a kill or a power cut would: no
//! destructor runs and nothing is flushed. The only way to test, without timing-dependent
//! sleeps, that a run stopped anywhere continues with `train --resume` as if it never stopped.

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
