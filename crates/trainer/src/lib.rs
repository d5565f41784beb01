//! The parts of the trainer that its benchmarks and tests use too: the optimizer.

pub mod optim;
