//! Project commands, run as `cargo xtask <command>`:
//!
//! - `train [--backend B] [trainer args…]`: train (default config: the tutorial preset)
//! - `eval  [--backend B] [trainer args…]`: evaluate a run on the test set (or its validation split)
//! - `infer [--backend B] [trainer args…]`: predict digits of image files
//! - `import [--backend B] [trainer args…]`: a run directory from PyTorch-made weights
//! - `augment-preview [trainer args…]`: a PNG grid of augmented training images
//! - `reference <check|train|fixture> [args…]`: the PyTorch reference, with the venv's Python
//! - `setup [--backend B]…`: install what wgpu (a Vulkan driver) and tch (libtorch) need
//! - `test [--backend B]… [cargo test args…]`: the workspace's tests, with every backend
//! - `bench [--backend B]… [--rounds N] [--out FILE]`: speed and peak memory per backend beside
//!   PyTorch eager, in interleaved rounds
//! - `bench --criterion [criterion args…]`: the data pipeline against a training step (flex)
//! - `bench --serve --run-dir R [--clients C] [--requests N] [--rounds N]`: requests/s and
//!   latency of `serve`, batched and unbatched
//! - `gpu-check [--dry-run] [--data-dir DIR] [--out DIR] [--epochs N]`: wgpu and tch on an
//!   NVIDIA GPU beside PyTorch CUDA eager, and the tutorial on the faster (module `gpu_check`)
//!
//! Each trainer command builds and runs the trainer with exactly one backend's cargo feature,
//! so the binary holds one backend only; the terminal is passed through so the training
//! dashboard works.

mod backend;
mod gpu_check;
mod setup;

use std::process::{Command, ExitCode};

use backend::{BACKENDS, DEFAULT_BACKEND, Torch, prepare, take_backend, take_backends};

const TRAINER_COMMANDS: [&str; 7] = [
    "train",
    "eval",
    "infer",
    "explain",
    "serve",
    "import",
    "augment-preview",
];
/// The PyTorch twin of the model, run by `cargo xtask reference`.
const REFERENCE_SCRIPT: &str = "tools/torch_reference.py";
/// Always in the test build: the unit tests are written against them and they need nothing.
const CPU_BACKENDS: [&str; 2] = ["flex", "ndarray"];

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
    match command.as_str() {
        "bench" => bench(rest),
        "setup" => {
            let (backends, rest) = take_backends(rest)?;
            if let Some(unexpected) = rest.first() {
                return Err(format!("setup takes only --backend, not `{unexpected}`"));
            }
            setup::run(&backends).map(|()| ExitCode::SUCCESS)
        }
        "test" => test(rest),
        "gpu-check" => gpu_check::run(rest),
        "reference" => reference(rest),
        command if TRAINER_COMMANDS.contains(&command) => trainer(command, rest),
        _ => Err(format!("unknown command `{command}`\n{}", usage())),
    }
}

fn trainer(command: &str, args: &[String]) -> Result<ExitCode, String> {
    let (backend, trainer_args) = take_backend(args)?;
    // Not `--quiet`: the first build of Burn takes minutes, and cargo's progress shows it.
    eprintln!(
        "building the trainer with the {backend} backend (the first build compiles Burn: \
         about 15 minutes on 2 cores; later ones take seconds)"
    );
    let mut cargo = cargo(&["run", "--package", "vit-trainer"]);
    cargo.args(["--no-default-features", "--features", &backend]);
    cargo.arg("--").arg(command).args(trainer_args);
    prepare(&backend, &mut cargo)?;
    replace_process(&mut cargo)
}

/// Runs `command` in place of xtask where the platform allows it (Unix `exec`), so a signal
/// sent to `cargo xtask serve` or `train` (SIGTERM from a supervisor, not only a terminal's
/// Ctrl-C) reaches the trainer itself: `cargo run` execs the binary in turn.
#[cfg(unix)]
fn replace_process(command: &mut Command) -> Result<ExitCode, String> {
    use std::os::unix::process::CommandExt;
    let error = command.exec();
    Err(format!("cannot run {:?}: {error}", command.get_program()))
}

#[cfg(not(unix))]
fn replace_process(command: &mut Command) -> Result<ExitCode, String> {
    exit_code(command)
}

/// The workspace's tests in one build holding flex, ndarray and the named backends (every
/// backend when none is named); each test picks its device at run time.
fn test(args: &[String]) -> Result<ExitCode, String> {
    let (mut backends, cargo_args) = take_backends(args)?;
    if backends.is_empty() {
        backends = BACKENDS.iter().map(ToString::to_string).collect();
    }
    let mut cargo = cargo(&["test", "--workspace", "--locked"]);
    let extra: Vec<String> = backends
        .iter()
        .filter(|backend| !CPU_BACKENDS.contains(&backend.as_str()))
        .map(|backend| format!("vit-trainer/{backend}"))
        .collect();
    if !extra.is_empty() {
        cargo.args(["--features", &extra.join(",")]);
    }
    cargo.args(cargo_args);
    for backend in &backends {
        prepare(backend, &mut cargo)?;
    }
    exit_code(&mut cargo)
}

/// `tools/torch_reference.py` with the Python that `setup --backend tch` prepared.
fn reference(args: &[String]) -> Result<ExitCode, String> {
    let python = Torch::find()?.python().ok_or(
        "the PyTorch reference needs the venv of `cargo xtask setup --backend tch` \
         (LIBTORCH alone has no Python)",
    )?;
    let mut command = Command::new(python);
    command.arg(REFERENCE_SCRIPT).args(args);
    exit_code(&mut command)
}

/// `bench [--backend B]…`: each backend's speed and memory beside PyTorch eager's (the
/// trainer's `backends` bench, in the test build); `bench --criterion [args…]`: the criterion
/// benches of the data pipeline and the training step.
fn bench(args: &[String]) -> Result<ExitCode, String> {
    if let Some((_, criterion_args)) = args
        .split_first()
        .filter(|(first, _)| *first == "--criterion")
    {
        let packages = ["--package", "vit-data", "--package", "vit-model"];
        let mut cargo = cargo(&["bench", "--profile", "dev", "--benches"]);
        // The training step as the trainer runs it: with flex's fused LayerNorm and softmax.
        cargo.args(packages).args(["--features", "vit-model/flex"]);
        cargo.arg("--").args(criterion_args);
        return exit_code(&mut cargo);
    }
    let serve = args.first().is_some_and(|first| first == "--serve");
    let args = if serve { &args[1..] } else { args };
    exit_code(&mut bench_command(serve, args)?)
}

/// The `cargo bench` of the trainer's `backends` bench (`serve` false) or its `serve` bench,
/// with `args` for it.
fn bench_command(serve: bool, args: &[String]) -> Result<Command, String> {
    let (backends, rest) = take_backends(args)?;
    if serve && backends.len() > 1 {
        return Err("bench --serve runs the server on one backend: name at most one".into());
    }
    let mut cargo = bench_build(serve)?;
    cargo.arg("--");
    let measured = if backends.is_empty() && !serve {
        BACKENDS.iter().map(ToString::to_string).collect()
    } else {
        backends
    };
    for backend in &measured {
        cargo.args(["--backend", backend]);
    }
    // cargo runs benches in their package's directory: make `--out`, `--config` and
    // `--run-dir` mean what the user meant.
    let here = std::env::current_dir().map_err(|error| error.to_string())?;
    let mut rest = rest.into_iter();
    while let Some(arg) = rest.next() {
        let is_path = arg == "--out" || arg == "--config" || arg == "--run-dir";
        cargo.arg(arg);
        if is_path && let Some(path) = rest.next() {
            cargo.arg(here.join(path));
        }
    }
    Ok(cargo)
}

/// The `cargo bench` of the `backends` or `serve` bench without arguments for the bench, with
/// every backend's environment. Built like the tests (every backend the test build holds), so
/// nothing is rebuilt.
fn bench_build(serve: bool) -> Result<Command, String> {
    let mut cargo = cargo(&["bench", "--profile", "dev", "--workspace", "--bench"]);
    cargo.arg(if serve { "serve" } else { "backends" });
    cargo.args(["--features", "vit-trainer/wgpu,vit-trainer/tch"]);
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
fn test_build_trainer(args: &[String]) -> Result<Command, String> {
    let mut build = bench_build(false)?;
    build.args([
        "--no-run",
        "--locked",
        "--message-format",
        "json-render-diagnostics",
    ]);
    build.stderr(std::process::Stdio::inherit());
    let output = build
        .output()
        .map_err(|error| format!("cannot run {:?}: {error}", build.get_program()))?;
    if !output.status.success() {
        return Err(format!("the trainer's build failed ({})", output.status));
    }
    let binary = trainer_executable(&String::from_utf8_lossy(&output.stdout))
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

/// The `vit-trainer` binary's path in cargo's JSON messages (one JSON object per line).
fn trainer_executable(messages: &str) -> Option<std::path::PathBuf> {
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

fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args);
    command
}

/// Runs `command` with the terminal passed through and returns its exit status.
fn run_status(command: &mut Command) -> Result<std::process::ExitStatus, String> {
    command
        .status()
        .map_err(|error| format!("cannot run {:?}: {error}", command.get_program()))
}

/// [`run_status`] as this program's exit code.
fn exit_code(command: &mut Command) -> Result<ExitCode, String> {
    let status = run_status(command)?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn usage() -> String {
    format!(
        "usage: cargo xtask <{}> [--backend {}] [args…]\n       \
         cargo xtask setup [--backend B]…\n       \
         cargo xtask test [--backend B]… [cargo test args…]\n       \
         cargo xtask reference <check|train|fixture> [args…]\n       \
         cargo xtask bench [--backend B]… [--rounds N] [--out FILE] | bench --criterion [args…]\n       \
         cargo xtask bench --serve --run-dir R [--backend B] [--clients C] [--requests N]\n       \
         cargo xtask gpu-check [--dry-run] [--data-dir DIR] [--out DIR] [--epochs N]\n\
         (default backend: {DEFAULT_BACKEND}; `cargo xtask train --help` lists the trainer's arguments)",
        TRAINER_COMMANDS.join("|"),
        BACKENDS.join("|"),
    )
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
