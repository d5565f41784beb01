//! The trainer: the command line (`commands`, one module per command), training with Burn's
//! `Learner` (`training`), evaluation, the HTTP server, the charts, and the parts its
//! benchmarks and tests use too: the compiled-in backends, the training step's data
//! parallelism, weight averaging and the allocator's settings. Test hooks are read in one
//! place, `test_hooks`.

pub mod averaging;
pub mod backend;
mod charts;
pub mod commands;
mod config;
pub mod devices;
mod evaluation;
mod guard;
mod history;
pub mod memory;
mod mistakes;
pub mod parallel;
mod renderer;
mod run_dir;
mod serve;
pub mod test_hooks;
mod training;
