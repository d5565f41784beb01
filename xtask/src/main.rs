//! Project commands, run as `cargo xtask <command>`:
//!
//! - `train [--backend B] [trainer args…]`: train (default config: the tutorial preset)
//! - `eval  [--backend B] [trainer args…]`: evaluate a run on the test set
//! - `infer [--backend B] [trainer args…]`: predict digits of image files
//! - `augment-preview [trainer args…]`: a PNG grid of augmented training images
//!
//! - `bench [criterion args…]`: the data pipeline against a training step (criterion, flex)
//!
//! Each trainer command builds and runs the trainer with exactly one backend's cargo feature, so the binary
//! holds one backend only; the terminal is passed through so the training dashboard works.

use std::process::{Command, ExitCode};

/// The backends, each the name of a cargo feature of the trainer.
const BACKENDS: [&str; 4] = ["flex", "ndarray", "wgpu", "tch"];
/// The faster CPU backend on the reference machine (README, "Backends").
const DEFAULT_BACKEND: &str = "flex";
const TRAINER_COMMANDS: [&str; 4] = ["train", "eval", "infer", "augment-preview"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err(usage());
    };
    if command == "bench" {
        return bench(rest);
    }
    if !TRAINER_COMMANDS.contains(&command.as_str()) {
        return Err(format!("unknown command `{command}`\n{}", usage()));
    }
    let (backend, trainer_args) = take_backend(rest)?;
    let mut cargo = cargo(&["run", "--quiet", "--package", "vit-trainer"]);
    cargo.args(["--no-default-features", "--features", &backend]);
    cargo.arg("--").arg(command).args(trainer_args);
    exit_code(&mut cargo)
}

/// Criterion benches, in the dev profile whose optimised Burn the tests already built.
fn bench(criterion_args: &[String]) -> Result<ExitCode, String> {
    let packages = ["--package", "vit-data", "--package", "vit-model"];
    let mut cargo = cargo(&["bench", "--profile", "dev", "--benches"]);
    cargo.args(packages).arg("--").args(criterion_args);
    exit_code(&mut cargo)
}

fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args);
    command
}

/// Runs `command` with the terminal passed through and returns its exit status.
fn exit_code(command: &mut Command) -> Result<ExitCode, String> {
    let status = command
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Splits `--backend B` / `--backend=B` out of the arguments meant for the trainer.
fn take_backend(args: &[String]) -> Result<(String, Vec<String>), String> {
    let mut backend = DEFAULT_BACKEND.to_string();
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--backend" {
            backend = args.next().ok_or("--backend needs a value")?.clone();
        } else if let Some(value) = arg.strip_prefix("--backend=") {
            backend = value.to_string();
        } else {
            rest.push(arg.clone());
        }
    }
    if !BACKENDS.contains(&backend.as_str()) {
        return Err(format!(
            "unknown backend `{backend}`; choose one of {}",
            BACKENDS.join(", ")
        ));
    }
    Ok((backend, rest))
}

fn usage() -> String {
    format!(
        "usage: cargo xtask <{}> [--backend {}] [args…]\n       cargo xtask bench [criterion args…]\n\
         (default backend: {DEFAULT_BACKEND}; `cargo xtask train --help` lists the trainer's arguments)",
        TRAINER_COMMANDS.join("|"),
        BACKENDS.join("|"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn backend_is_taken_out_and_the_rest_passed_on() {
        let (backend, rest) =
            take_backend(&strings(&["--config", "c.json", "--backend", "ndarray"])).unwrap();
        assert_eq!(
            (backend.as_str(), rest),
            ("ndarray", strings(&["--config", "c.json"]))
        );
        let (backend, _) = take_backend(&strings(&["--backend=tch"])).unwrap();
        assert_eq!(backend, "tch");
    }

    #[test]
    fn default_backend_and_unknown_backends() {
        assert_eq!(take_backend(&[]).unwrap().0, DEFAULT_BACKEND);
        let error = take_backend(&strings(&["--backend", "cuda"])).unwrap_err();
        assert!(error.contains("cuda") && error.contains("flex"), "{error}");
        assert!(take_backend(&strings(&["--backend"])).is_err());
    }

    #[test]
    fn every_backend_is_a_trainer_feature() {
        let manifest = include_str!("../../crates/trainer/Cargo.toml");
        for backend in BACKENDS {
            assert!(
                manifest.contains(&format!("\n{backend} = [")),
                "trainer has no `{backend}` feature"
            );
        }
    }
}
