//! Burn 0.22.1, a reproduction: two threads that each consume a handle of one tensor on a
//! remote device can free it under each other. burn-router's `RouterTensor::into_ir` decides
//! from the handle count whether the operation may free its input (one handle left: yes), and
//! the operation reaches the device queue only later. When thread 1 builds its operation (two
//! handles: read only), drops its handle, and thread 2 then builds and sends its own (one
//! handle: may free) before thread 1 sends, the server frees the tensor and thread 1's
//! operation names a tensor it no longer has: the session panics (`burn-ir handle.rs`,
//! `Should have handle for tensor`) and every later read fails.
//!
//! `cargo xtask test -p vit-trainer --no-run` builds it; run
//! `target/debug/examples/shared_tensor_race [ROUNDS] [--copy]`. It serves a flex device from
//! this process on loopback, and in each round two threads add one to the same tensor at once.
//! With `--copy` the second thread gets a reshape of the tensor instead, made before it starts
//! (what the divergence guard does). Exits 1 with the round the server lost a tensor, 0 if it
//! never did.
use std::sync::{Arc, Barrier};

use burn::tensor::{Device, Tensor};
use vit_trainer::commands::compute_server;

fn main() {
    let copy = std::env::args().any(|arg| arg == "--copy");
    let rounds = std::env::args().skip(1).find(|arg| arg != "--copy");
    let rounds: usize = match rounds.as_deref().map(str::parse) {
        None => 20_000,
        Some(Ok(rounds)) => rounds,
        Some(Err(error)) => {
            let given = rounds.unwrap_or_default();
            eprintln!("ROUNDS must be a number of rounds, not `{given}`: {error}");
            std::process::exit(2);
        }
    };
    let device = served(Device::flex());
    for round in 1..=rounds {
        let tensor = Tensor::<1>::ones([4], &device);
        let start = Arc::new(Barrier::new(2));
        let other = {
            let tensor = if copy {
                tensor.clone().reshape([4])
            } else {
                tensor.clone()
            };
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                (tensor + 1.0).try_into_data()
            })
        };
        start.wait();
        let here = (tensor + 1.0).try_into_data();
        let there = other.join().expect("the other thread");
        if let Err(error) = here.and(there) {
            println!("round {round} of {rounds}: the server lost a tensor: {error}");
            std::process::exit(1);
        }
    }
    let shared = if copy { "a copied" } else { "the shared" };
    println!("{rounds} rounds, the server never lost {shared} tensor");
}

/// A remote device on a compute server for `device`, served from a thread of this process
/// (Burn's `RemoteServer` on a loopback WebSocket; the trainer's own instance of it, which
/// also carries the model's layer operations, unused here).
fn served(device: Device) -> Device {
    compute_server::in_this_process(&device).expect("a compute server in this process")
}
