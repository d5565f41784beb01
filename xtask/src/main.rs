//! Project commands, run as `cargo xtask <command>` (`cargo xtask --help` lists them, one line
//! each): the trainer's commands built with one backend's cargo feature (the binary holds that
//! backend only, and the terminal is passed through so the training dashboard works), the
//! tests and benchmarks in one build with every backend, setup, the PyTorch reference and the
//! GPU check (module `gpu_check`).

mod backend;
mod builds;
mod gpu_check;
mod setup;
mod testing;
mod web;

use std::path::Path;
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

use backend::{BACKENDS, DEFAULT_BACKEND, REMOTE_FEATURE, Torch, prepare, take_backends};
use builds::{
    bench_command, cargo, exit_code, remote_bench_command, run_status, test_build_features,
    test_build_trainer,
};

/// The PyTorch twin of the model, run by `cargo xtask reference`.
const REFERENCE_SCRIPT: &str = "tools/torch_reference.py";
/// The exported model in ONNX Runtime, run by `cargo xtask onnx`.
const ONNX_SCRIPT: &str = "tools/onnx_runtime.py";
/// Set (to anything but `0`), every trainer command runs the test build's trainer (every
/// backend and compute-server support, the backend asked for chosen at run time): CI sets it
/// so its training and export steps reuse the test build instead of compiling Burn again.
/// `cargo run -p vit-trainer` with the same features would not: without the workspace's
/// dev-dependencies (criterion turns on ciborium's defaults) cargo resolves cubecl's
/// features differently and compiles Burn a second time.
const TEST_BUILD_ENV: &str = "VIT_TRAINER_TEST_BUILD";

/// Project commands. Trainer commands take `--backend flex|ndarray|wgpu|tch` (default flex)
/// and pass the rest to the trainer: `cargo xtask train --help` lists its arguments.
#[derive(Parser)]
#[command(bin_name = "cargo xtask")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train a model (default config: the tutorial preset).
    Train(Passed),
    /// Evaluate a run on the test set (or its validation split).
    Eval(Passed),
    /// Predict the digits of image files or IDX files.
    Infer(Passed),
    /// Draw what a model looks at in images of digits.
    Explain(Passed),
    /// Serve a model over HTTP: a drawing page and a JSON API.
    Serve(Passed),
    /// Make a run directory from PyTorch-made weights.
    Import(Passed),
    /// Host a backend's device for trainers elsewhere (`train --device ws://HOST:PORT`).
    ComputeServer(Passed),
    /// Write a run's model as ONNX (`--format onnx`: model.onnx, opset 17).
    Export(Passed),
    /// A static folder with a page that classifies digits in the browser (ONNX Runtime Web).
    Web(web::Args),
    /// The exported model in ONNX Runtime (Python): `check` (checker, probe, batches) or `bench`.
    Onnx(Passed),
    /// Draw a PNG grid of augmented training images.
    AugmentPreview(Passed),
    /// The PyTorch reference (`check|train|fixture`), with the venv's Python.
    Reference(Passed),
    /// Install what wgpu (a Vulkan driver) and tch (libtorch) need.
    Setup {
        /// A backend to prepare (repeat for several) [default: every one].
        #[arg(
            long = "backend",
            value_name = "B",
            value_parser = clap::builder::PossibleValuesParser::new(BACKENDS)
        )]
        backends: Vec<String>,
    },
    /// The workspace's tests, in one build with every backend.
    ///
    /// `cargo xtask test [--backend B]… [cargo test args…]`
    Test(Passed),
    /// Speed and memory per backend beside PyTorch eager (docs/benchmarks.md).
    ///
    /// `cargo xtask bench [--backend B]… [--rounds N] [--out FILE] [--config FILE]`,
    /// `bench --criterion [args…]`, `bench --serve --run-dir R [--clients C] [--requests N]`,
    /// `bench --remote [--config F] [--data-dir D] [--images N]` (compute servers)
    Bench(Passed),
    /// wgpu and tch on an NVIDIA GPU beside PyTorch CUDA eager, and the tutorial on the faster.
    GpuCheck(gpu_check::Args),
}

/// Arguments handed on as they are, `--help` included.
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
struct Passed {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    match run(Xtask::parse().task) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode, String> {
    match task {
        Task::Train(passed) => trainer("train", &passed.args),
        Task::Eval(passed) => trainer("eval", &passed.args),
        Task::Infer(passed) => trainer("infer", &passed.args),
        Task::Explain(passed) => trainer("explain", &passed.args),
        Task::Serve(passed) => trainer("serve", &passed.args),
        Task::Import(passed) => trainer("import", &passed.args),
        Task::ComputeServer(passed) => trainer("compute-server", &passed.args),
        Task::Export(passed) => trainer("export", &passed.args),
        Task::Web(args) => {
            web::run(&args, |path| export_onnx(&args.run_dir, path)).map(|()| ExitCode::SUCCESS)
        }
        Task::Onnx(passed) => python_tool(ONNX_SCRIPT, &passed.args),
        Task::AugmentPreview(passed) => trainer("augment-preview", &passed.args),
        Task::Reference(passed) => python_tool(REFERENCE_SCRIPT, &passed.args),
        Task::Setup { backends } => setup::run(&backends).map(|()| ExitCode::SUCCESS),
        Task::Test(passed) => test(&passed.args),
        Task::Bench(passed) => bench(&passed.args),
        Task::GpuCheck(args) => gpu_check::run(args),
    }
}

fn trainer(command: &str, args: &[String]) -> Result<ExitCode, String> {
    replace_process(&mut trainer_command(command, args)?)
}

/// The values a trainer's arguments give `--device` (`--device D` and `--device=D`).
fn device_values(args: &[String]) -> impl Iterator<Item = &str> {
    let spaced = args
        .windows(2)
        .filter(|pair| pair[0] == "--device")
        .map(|pair| pair[1].as_str());
    let joined = args.iter().filter_map(|arg| arg.strip_prefix("--device="));
    spaced.chain(joined)
}

/// Whether a trainer's arguments name a compute server (`--device ws://…` or `iroh://…`).
fn names_compute_server(args: &[String]) -> bool {
    device_values(args).any(|value| value.starts_with("ws://") || value.starts_with("iroh://"))
}

/// Whether a trainer's arguments name a wgpu adapter (`--device wgpu…`).
fn names_wgpu_adapter(args: &[String]) -> bool {
    device_values(args).any(|value| value.to_lowercase().starts_with("wgpu"))
}

/// The backend a trainer is built with: the last `--backend` named, else wgpu when `--device`
/// names a wgpu adapter, else the default.
fn trainer_backend(named: &[String], trainer_args: &[String]) -> String {
    match named.last() {
        Some(backend) => backend.clone(),
        None if names_wgpu_adapter(trainer_args) => "wgpu".into(),
        None => DEFAULT_BACKEND.into(),
    }
}

/// `cargo run` of the trainer's `command`, built with the backend `args` name (or their wgpu
/// adapters imply) and compute-server support when the command serves or uses one; or, with
/// [`TEST_BUILD_ENV`] set, the trainer binary of the test build, with `BURN_DEVICE` naming
/// that backend.
fn trainer_command(command: &str, args: &[String]) -> Result<Command, String> {
    let (named, trainer_args) = take_backends(args)?;
    let backend = trainer_backend(&named, &trainer_args);
    // Not `--quiet`: the first build of Burn takes minutes, and cargo's progress shows it.
    eprintln!(
        "building the trainer with the {backend} backend (the first build compiles Burn: \
         about 15 minutes on 2 cores; later ones take seconds)"
    );
    if std::env::var_os(TEST_BUILD_ENV).is_some_and(|value| value != "0") {
        let mut passed = vec![command.to_string()];
        passed.extend(trainer_args);
        let mut trainer = test_build_trainer(&passed)?;
        // The trainer's choice among compiled-in backends (Burn would pick wgpu first).
        if std::env::var_os("BURN_DEVICE").is_none() {
            trainer.env("BURN_DEVICE", &backend);
        }
        return Ok(trainer);
    }
    let features = trainer_features(command, &backend, &trainer_args);
    let mut cargo = cargo(&["run", "--package", "vit-trainer"]);
    cargo.args(["--no-default-features", "--features", &features]);
    cargo.arg("--").arg(command).args(trainer_args);
    prepare(&backend, &mut cargo)?;
    Ok(cargo)
}

/// The trainer's cargo features for `command` on `backend`: the backend, with compute-server
/// support when the command serves or uses one.
fn trainer_features(command: &str, backend: &str, args: &[String]) -> String {
    if command == "compute-server" || names_compute_server(args) {
        format!("{backend},{REMOTE_FEATURE}")
    } else {
        backend.to_string()
    }
}

/// The trainer's `export --format onnx` of `run_dir` to `out` (replacing it), waited for.
fn export_onnx(run_dir: &Path, out: &Path) -> Result<(), String> {
    let args = [
        "--run-dir".into(),
        run_dir.display().to_string(),
        "--format".into(),
        "onnx".into(),
        "--out".into(),
        out.display().to_string(),
        "--force".into(),
    ];
    let status = run_status(&mut trainer_command("export", &args)?)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the export of {} failed ({status})",
            run_dir.display()
        ))
    }
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

/// The workspace's tests in one build holding flex, ndarray, the named backends (every backend
/// when none is named; each test picks its device at run time) and compute-server support.
fn test(args: &[String]) -> Result<ExitCode, String> {
    let (mut backends, cargo_args) = take_backends(args)?;
    if backends.is_empty() {
        backends = BACKENDS.iter().map(ToString::to_string).collect();
    }
    let split = cargo_args.iter().position(|arg| arg == "--");
    let (cargo_part, binary_args) = match split {
        Some(at) => (&cargo_args[..at], &cargo_args[at + 1..]),
        None => (&cargo_args[..], &[][..]),
    };
    let test_build = |cargo_args: &[String]| -> Result<Command, String> {
        let mut cargo = cargo(&["test", "--workspace", "--locked"]);
        cargo.args(["--features", &test_build_features(&backends)]);
        cargo.args(cargo_args);
        for backend in &backends {
            prepare(backend, &mut cargo)?;
        }
        Ok(cargo)
    };
    if !testing::runs_side_by_side(cargo_part) {
        return exit_code(&mut test_build(&cargo_args)?);
    }
    testing::run_side_by_side(
        test_build(cargo_part)?,
        binary_args,
        test_build(cargo_part)?,
    )
}

/// A script of `tools/` with the Python that `setup --backend tch` prepared (torch, onnx,
/// onnxruntime).
fn python_tool(script: &str, args: &[String]) -> Result<ExitCode, String> {
    let python = Torch::find()?.python().ok_or(
        "the Python tools need the venv of `cargo xtask setup --backend tch` \
         (LIBTORCH alone has no Python)",
    )?;
    let mut command = Command::new(python);
    command.arg(script).args(args);
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
    if args.first().is_some_and(|first| first == "--remote") {
        return exit_code(&mut remote_bench_command(&args[1..])?);
    }
    let serve = args.first().is_some_and(|first| first == "--serve");
    let args = if serve { &args[1..] } else { args };
    exit_code(&mut bench_command(serve, args)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks of the command line (names, conflicts, defaults).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Xtask::command().debug_assert();
    }

    #[test]
    fn a_trainer_of_compute_servers_gets_the_remote_feature() {
        let args = |list: &[&str]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(names_compute_server(&args(&["--device", "ws://h:1"])));
        assert!(names_compute_server(&args(&["--device=ws://h:1"])));
        assert!(names_compute_server(&args(&["--device", "iroh://0a@h:1"])));
        assert!(!names_compute_server(&args(&["--device", "cuda:1"])));
        let client = args(&["--device", "ws://h:1"]);
        // wgpu (fused) and the remote client share a build since op fusion is asked of
        // burn-wgpu alone (crates/ops/Cargo.toml).
        for backend in ["flex", "wgpu"] {
            assert_eq!(
                trainer_features("train", backend, &client),
                format!("{backend},remote")
            );
        }
        assert_eq!(trainer_features("compute-server", "tch", &[]), "tch,remote");
        assert_eq!(trainer_features("train", "ndarray", &[]), "ndarray");
        let command = trainer_command("train", &client).unwrap();
        let line: Vec<_> = command
            .get_args()
            .map(|arg| arg.to_string_lossy())
            .collect();
        assert!(line.iter().any(|arg| arg.ends_with("remote")), "{line:?}");
    }

    #[test]
    fn a_wgpu_adapter_builds_the_trainer_with_wgpu_unless_a_backend_is_named() {
        let args = |list: &[&str]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        let none: Vec<String> = Vec::new();
        for devices in [
            &["--device", "wgpu:0", "--device", "wgpu:1"][..],
            &["--device=WGPU:cpu"],
        ] {
            assert_eq!(
                trainer_backend(&none, &args(devices)),
                "wgpu",
                "{devices:?}"
            );
        }
        assert_eq!(
            trainer_backend(&args(&["tch"]), &args(&["--device", "wgpu"])),
            "tch"
        );
        for others in [&["--run", "wgpu"][..], &["--device", "cuda:0"], &[]] {
            assert_eq!(trainer_backend(&none, &args(others)), DEFAULT_BACKEND);
        }
    }

    /// `--help` and `-h` list every task, one line each, and exit 0.
    #[test]
    fn help_lists_every_task_and_exits_zero() {
        use clap::CommandFactory;
        for flag in ["--help", "-h"] {
            let Err(help) = Xtask::try_parse_from(["xtask", flag]) else {
                panic!("{flag} parsed as a task");
            };
            assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
            assert_eq!(help.exit_code(), 0);
            let text = help.to_string();
            for task in Xtask::command().get_subcommands() {
                let line = text
                    .lines()
                    .find(|line| line.trim_start().starts_with(task.get_name()));
                assert!(
                    line.is_some(),
                    "{flag}: no line for {}:\n{text}",
                    task.get_name()
                );
            }
        }
    }

    /// Trainer commands hand every argument on, `--help` and hyphenated values included.
    #[test]
    fn trainer_commands_pass_their_arguments_on() {
        let parsed = Xtask::try_parse_from(["xtask", "train", "--backend", "tch", "--help"]);
        let Ok(Xtask {
            task: Task::Train(passed),
        }) = parsed
        else {
            panic!("train did not parse");
        };
        assert_eq!(passed.args, ["--backend", "tch", "--help"]);
        assert!(Xtask::try_parse_from(["xtask", "no-such-task"]).is_err());
    }
}
