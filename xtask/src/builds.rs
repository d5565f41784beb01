//! The cargo commands the tasks run: the benches and the trainer binary of the test build
//! (every backend in one build, so nothing is built twice), and running a command with the
//! terminal passed through.

use std::process::{Command, ExitCode};

use crate::backend::{BACKENDS, CPU_BACKENDS, REMOTE_FEATURE, Torch, prepare, take_backends};

/// The `cargo bench` of the trainer's `backends` bench (`serve` false) or its `serve` bench,
/// with `args` for it.
pub fn bench_command(serve: bool, args: &[String]) -> Result<Command, String> {
    let (backends, rest) = take_backends(args)?;
    if serve && backends.len() > 1 {
        return Err("bench --serve runs the server on one backend: name at most one".into());
    }
    let mut cargo = bench_build(if serve { "serve" } else { "backends" })?;
    cargo.arg("--");
    let measured = if backends.is_empty() && !serve {
        BACKENDS.iter().map(ToString::to_string).collect()
    } else {
        backends
    };
    for backend in &measured {
        cargo.args(["--backend", backend]);
    }
    pass_paths(&mut cargo, rest)?;
    Ok(cargo)
}

/// The `cargo bench` of the `remote` bench (compute servers against local training) with
/// `args` for it.
pub fn remote_bench_command(args: &[String]) -> Result<Command, String> {
    let mut cargo = bench_build("remote")?;
    cargo.arg("--");
    pass_paths(&mut cargo, args.to_vec())?;
    Ok(cargo)
}

/// The workspace features of a test build with `backends` (flex and ndarray, the trainer's
/// defaults, are always in it) and compute-server support.
pub fn test_build_features(backends: &[String]) -> String {
    let mut features: Vec<String> = backends
        .iter()
        .filter(|backend| !CPU_BACKENDS.contains(&backend.as_str()))
        .map(|backend| format!("vit-trainer/{backend}"))
        .collect();
    features.push(format!("vit-trainer/{REMOTE_FEATURE}"));
    features.join(",")
}

/// Adds `args` to `cargo`'s command line. cargo runs benches in their package's directory:
/// the paths after `--out`, `--config`, `--run-dir` and `--data-dir`, and `MNIST_DIR`, are
/// made to mean what the user meant.
fn pass_paths(cargo: &mut Command, args: Vec<String>) -> Result<(), String> {
    let here = std::env::current_dir().map_err(|error| error.to_string())?;
    if let Some(mnist) = std::env::var_os("MNIST_DIR") {
        cargo.env("MNIST_DIR", here.join(mnist));
    }
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let is_path = ["--out", "--config", "--run-dir", "--data-dir"].contains(&arg.as_str());
        cargo.arg(arg);
        if is_path && let Some(path) = args.next() {
            cargo.arg(here.join(path));
        }
    }
    Ok(())
}

/// The `cargo bench` of the trainer's bench `name` without arguments for the bench, with
/// every backend's environment. Built like the tests (every backend and compute-server
/// support), so nothing is rebuilt.
pub fn bench_build(name: &str) -> Result<Command, String> {
    let mut cargo = cargo(&["bench", "--profile", "dev", "--workspace", "--bench"]);
    cargo.arg(name);
    let every: Vec<String> = BACKENDS.iter().map(ToString::to_string).collect();
    cargo.args(["--features", &test_build_features(&every)]);
    for backend in BACKENDS {
        prepare(backend, &mut cargo)?;
    }
    if let Some(python) = Torch::find().ok().and_then(|torch| torch.python()) {
        cargo.env("VIT_BENCH_PYTHON", python);
    }
    Ok(cargo)
}

/// The trainer binary of the bench's build (every backend in one binary; `BURN_DEVICE` picks
/// one), built if it is not there yet, with the environment of every backend and `args` for it.
///
/// `cargo build -p vit-trainer` would not do: without the test and bench targets cargo resolves
/// Burn's features without the dev-dependencies and builds a second copy of Burn. So the binary
/// comes from the bench's own build, `--no-run`, whose JSON messages name it.
pub fn test_build_trainer(args: &[String]) -> Result<Command, String> {
    let mut build = bench_build("backends")?;
    build.arg("--locked");
    let messages = build_messages(&mut build, "the trainer's build")?;
    let binary = trainer_executable(&messages)
        .ok_or("the trainer's build names no vit-trainer binary in its messages")?;
    let mut trainer = Command::new(binary);
    trainer.args(args);
    trainer.envs(
        build
            .get_envs()
            .filter_map(|(key, value)| Some((key, value?))),
    );
    Ok(trainer)
}

/// Runs `build` (a `cargo test` or `cargo bench`) with `--no-run`, its diagnostics on the
/// terminal, and returns cargo's JSON messages; `what` names it in the error if it fails.
pub fn build_messages(build: &mut Command, what: &str) -> Result<String, String> {
    build.args(["--no-run", "--message-format", "json-render-diagnostics"]);
    build.stderr(std::process::Stdio::inherit());
    let output = build
        .output()
        .map_err(|error| format!("cannot run {:?}: {error}", build.get_program()))?;
    if !output.status.success() {
        return Err(format!("{what} failed ({})", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The `vit-trainer` binary's path in cargo's JSON messages (one JSON object per line).
pub fn trainer_executable(messages: &str) -> Option<std::path::PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "vit-trainer")
        .filter(|message| {
            let kinds = message["target"]["kind"].as_array();
            kinds.is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
        })
        .find_map(|message| message["executable"].as_str().map(Into::into))
}

/// A cargo command. Without the `CARGO_MANIFEST_DIR` that `cargo run` gave this xtask: ring's
/// build script tracks that variable, so with it a build through the xtask and one without
/// (or through a clone elsewhere) would each find the other's ring stale and rebuild it and
/// everything above it, Burn's remote crates included.
pub fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args).env_remove("CARGO_MANIFEST_DIR");
    command
}

/// Runs `command` with the terminal passed through and returns its exit status.
pub fn run_status(command: &mut Command) -> Result<std::process::ExitStatus, String> {
    command
        .status()
        .map_err(|error| format!("cannot run {:?}: {error}", command.get_program()))
}

/// [`run_status`] as this program's exit code.
pub fn exit_code(command: &mut Command) -> Result<ExitCode, String> {
    let status = run_status(command)?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trainer_binary_is_found_among_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"vit-trainer","kind":["lib"]},"executable":null}"#,
            "not JSON: a line cargo's build script printed",
            r#"{"reason":"compiler-artifact","target":{"name":"backends","kind":["bench"]},"executable":"/t/deps/backends-1"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"vit-trainer","kind":["bin"]},"executable":"/t/debug/vit-trainer"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let found = trainer_executable(&messages);
        assert_eq!(found, Some("/t/debug/vit-trainer".into()));
        assert_eq!(
            trainer_executable(&messages.lines().take(3).collect::<Vec<_>>().join("\n")),
            None
        );
    }
}
