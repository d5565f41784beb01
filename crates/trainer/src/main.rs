//! `vit-trainer`: train, evaluate and run the MNIST ViT on the backend it was compiled with
//! (cargo features `flex`, `ndarray`, `wgpu`, `tch`; with several, Burn picks one and the
//! `BURN_DEVICE` variable can name another). The commands live in `commands/`.

use std::process::ExitCode;

use clap::Parser;
use vit_trainer::commands::{self, Cli};

/// Errors end the program with their whole chain of causes on stderr and a non-zero status,
/// never a backtrace, whatever `RUST_BACKTRACE` says.
fn main() -> ExitCode {
    vit_trainer::memory::keep_freed_memory();
    match commands::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
