//! The parts of the trainer that its benchmarks and tests use too: the optimizer and the
//! training step's data parallelism.

pub mod optim;
pub mod parallel;
