//! The parts of the trainer that its benchmarks and tests use too: the compiled-in backends, the
//! optimizer, the training step's data parallelism and weight averaging.

pub mod averaging;
pub mod backend;
pub mod optim;
pub mod parallel;
