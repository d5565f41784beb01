//! The parts of the trainer that its benchmarks and tests use too: the optimizer, the training
//! step's data parallelism and weight averaging.

pub mod averaging;
pub mod optim;
pub mod parallel;
