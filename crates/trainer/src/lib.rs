//! The parts of the trainer that its benchmarks and tests use too: the compiled-in backends, the
//! optimizer, the training step's data parallelism, weight averaging and the allocator's settings.

pub mod averaging;
pub mod backend;
pub mod memory;
pub mod optim;
pub mod parallel;
