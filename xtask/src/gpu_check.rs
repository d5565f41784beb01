//! `cargo xtask gpu-check [--dry-run] [--data-dir DIR] [--out DIR] [--epochs N]`: the GPU
//! backends beside PyTorch CUDA eager in one table, then the tutorial trained on the fastest of
//! them, unattended, with everything written as JSON.
//!
//! 1. `setup` for wgpu and tch (nothing to do where their driver and libtorch are there);
//! 2. `bench --backend wgpu --backend tch --rounds 1 --cuda`: training images/s at the
//!    tutorial's batch, batch-1 latency and batch-1000 images/s, with PyTorch eager
//!    (`tools/torch_bench.py --device cuda`) in the same round;
//! 3. the tutorial (`configs/vit-mnist-tutorial.json`, 10 epochs) on whichever of wgpu and tch
//!    trained faster, with the trainer binary of the bench's build (nothing is rebuilt), timed
//!    from start to report.
//!
//! `--dry-run` runs the same steps without a GPU (tch and PyTorch on the CPU, wgpu on whatever
//! Vulkan driver there is, lavapipe here) and one epoch, to prove the script on a CPU machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use serde_json::{Value, json};

use crate::builds::{bench_command, run_status, test_build_trainer};
use crate::setup;

/// The GPU backends this check compares, in the bench's order.
const GPU_BACKENDS: [&str; 2] = ["wgpu", "tch"];

/// The arguments of `cargo xtask gpu-check`.
#[derive(clap::Args)]
pub struct Args {
    /// Run the same steps without a GPU (tch and PyTorch on the CPU, wgpu on any adapter).
    #[arg(long)]
    dry_run: bool,
    /// The MNIST directory for the training run [default: the trainer's].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where the figures and runs go [default: artifacts/gpu-check-<unix time>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Epochs of the tutorial run [default: 10, 1 with --dry-run].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
}

struct Options {
    dry_run: bool,
    data_dir: Option<PathBuf>,
    out: PathBuf,
    epochs: usize,
}

impl Options {
    /// `args` with the defaults filled in and the paths made absolute.
    fn new(args: Args) -> Result<Self, String> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let here = std::env::current_dir().map_err(|error| error.to_string())?;
        let out = args
            .out
            .unwrap_or_else(|| format!("artifacts/gpu-check-{stamp}").into());
        let default_epochs = if args.dry_run { 1 } else { 10 };
        Ok(Self {
            dry_run: args.dry_run,
            data_dir: args.data_dir.map(|dir| here.join(dir)),
            out: here.join(out),
            epochs: args.epochs.map_or(default_epochs, |epochs| epochs as usize),
        })
    }
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let options = Options::new(args)?;
    let started = Instant::now();
    let step = |what: &str| eprintln!("== gpu-check: {what} ({} s)", started.elapsed().as_secs());
    let gpu = nvidia_gpu();
    let cuda = !options.dry_run;
    match (&gpu, cuda) {
        (None, true) => {
            return Err(
                "gpu-check: nvidia-smi finds no NVIDIA GPU here; `cargo xtask \
                        gpu-check --dry-run` runs the same steps on the CPU (tch, PyTorch) and \
                        the Vulkan driver there is (wgpu)"
                    .into(),
            );
        }
        (Some(name), true) => eprintln!("gpu-check: {name}"),
        (_, false) => eprintln!("gpu-check: dry run, on the CPU and the Vulkan driver here"),
    }
    std::fs::create_dir_all(&options.out)
        .map_err(|error| format!("cannot create {}: {error}", options.out.display()))?;

    step("setup (wgpu, tch)");
    let backends: Vec<String> = GPU_BACKENDS.iter().map(ToString::to_string).collect();
    setup::run(&backends)?;

    step("bench: wgpu, tch and PyTorch eager, one round");
    let bench_file = options.out.join("bench.json");
    let mut bench_args: Vec<String> = GPU_BACKENDS
        .iter()
        .flat_map(|backend| ["--backend", backend])
        .chain(["--rounds", "1", "--no-compile", "--out"])
        .map(String::from)
        .collect();
    bench_args.push(bench_file.display().to_string());
    if cuda {
        bench_args.push("--cuda".into());
    }
    let mut bench = bench_command(false, &bench_args)?;
    if cuda {
        // The bench's short plan for wgpu is for software Vulkan; a GPU gets the full one.
        bench.env("VIT_BENCH_FULL", "1");
    }
    succeed(&mut bench, "the bench")?;
    let bench = read_json(&bench_file)?;
    let fastest = fastest(&bench)?;

    step(&format!(
        "the tutorial on {fastest}: the bench build's trainer"
    ));
    let runs = options.out.join("runs");
    let run_name = format!("tutorial-{fastest}");
    let mut train_args: Vec<String> = [
        "train",
        "--artifacts",
        &runs.display().to_string(),
        "--run",
        &run_name,
        "--epochs",
        &options.epochs.to_string(),
    ]
    .map(String::from)
    .to_vec();
    if let Some(dir) = &options.data_dir {
        train_args.extend(["--data-dir".into(), dir.display().to_string()]);
    }
    if fastest == "tch" {
        let device = if cuda { "cuda" } else { "cpu" };
        train_args.extend(["--device".into(), device.into()]);
    }
    let mut train = test_build_trainer(&train_args)?;
    train.env("BURN_DEVICE", &fastest);
    step(&format!(
        "the tutorial on {fastest}: {} epoch(s), timed",
        options.epochs
    ));
    let timer = Instant::now();
    succeed(&mut train, "the tutorial run")?;
    let wall_seconds = timer.elapsed().as_secs_f64();
    let report = read_json(&runs.join(&run_name).join("report.json"))?;

    let summary = json!({
        "gpu": gpu,
        "dry_run": options.dry_run,
        "bench": bench,
        "tutorial": {
            "backend": fastest,
            "epochs": options.epochs,
            "wall_seconds": wall_seconds,
            "learner_seconds_per_epoch": report["learner_seconds"].as_f64()
                .map(|seconds| seconds / options.epochs as f64),
            "test_accuracy": report["test"]["accuracy"],
            "run_dir": runs.join(&run_name),
        },
    });
    println!("{}", table(&summary));
    let file = options.out.join("gpu-check.json");
    let text = serde_json::to_string_pretty(&summary).expect("a JSON value serialises");
    std::fs::write(&file, text + "\n")
        .map_err(|error| format!("cannot write {}: {error}", file.display()))?;
    step(&format!("done; wrote {}", file.display()));
    Ok(ExitCode::SUCCESS)
}

/// The first NVIDIA GPU's name, as `nvidia-smi` gives it; `None` without one.
fn nvidia_gpu() -> Option<String> {
    let output = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let names = String::from_utf8_lossy(&output.stdout);
    names
        .lines()
        .next()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

fn succeed(command: &mut Command, what: &str) -> Result<(), String> {
    let status = run_status(command)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("gpu-check: {what} failed ({status})"))
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
}

/// The GPU backend with the most training images/s in the bench's report.
fn fastest(bench: &Value) -> Result<String, String> {
    let rows = bench["backends"].as_array().cloned().unwrap_or_default();
    rows.iter()
        .filter_map(|row| {
            Some((
                row["backend"].as_str()?,
                row["train_images_per_s"].as_f64()?,
            ))
        })
        .filter(|(backend, _)| GPU_BACKENDS.contains(backend))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(backend, _)| backend.to_string())
        .ok_or_else(|| "gpu-check: the bench's report has no wgpu or tch figures".into())
}

/// One table: each backend's figures and its training speed against PyTorch's, then the
/// tutorial run.
fn table(summary: &Value) -> String {
    let bench = &summary["bench"];
    let torch = bench["pytorch_eager"]["train_images_per_s"].as_f64();
    let mut rows: Vec<&Value> = bench["backends"]
        .as_array()
        .map(|rows| rows.iter().collect())
        .unwrap_or_default();
    rows.extend(bench.get("pytorch_eager").filter(|row| !row.is_null()));
    let number = |value: &Value, digits: usize| {
        value
            .as_f64()
            .map_or("-".to_string(), |number| format!("{number:.digits$}"))
    };
    let mut lines = vec![
        format!(
            "GPU check: {} ({})",
            summary["gpu"].as_str().unwrap_or("no GPU"),
            if summary["dry_run"] == true {
                "dry run: CPU libtorch and PyTorch, wgpu on the Vulkan driver here"
            } else {
                "tch and PyTorch on CUDA"
            }
        ),
        "| backend | train images/s (batch 100) | vs PyTorch eager | batch-1 p50 ms | batch-1000 images/s |".into(),
        "|---|---|---|---|---|".into(),
    ];
    for row in rows {
        let ratio = match (row["train_images_per_s"].as_f64(), torch) {
            (Some(ours), Some(theirs)) => format!("{:.2}×", ours / theirs),
            _ => "-".into(),
        };
        lines.push(format!(
            "| {} | {} | {ratio} | {} | {} |",
            row["backend"].as_str().unwrap_or("?"),
            number(&row["train_images_per_s"], 0),
            number(&row["latency_p50_ms"], 2),
            number(&row["infer_images_per_s"], 0),
        ));
    }
    let tutorial = &summary["tutorial"];
    lines.push(format!(
        "tutorial on {}: {} epoch(s) in {} s from start to report ({} s of training and \
         validation per epoch), test accuracy {} %",
        tutorial["backend"].as_str().unwrap_or("?"),
        tutorial["epochs"],
        number(&tutorial["wall_seconds"], 1),
        number(&tutorial["learner_seconds_per_epoch"], 2),
        number(&tutorial["test_accuracy"], 2),
    ));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_gpu_backend_is_picked_and_cpu_rows_are_ignored() {
        let bench = json!({"backends": [
            {"backend": "flex", "train_images_per_s": 9000.0},
            {"backend": "wgpu", "train_images_per_s": 30.0},
            {"backend": "tch", "train_images_per_s": 2500.0},
        ]});
        assert_eq!(fastest(&bench).unwrap(), "tch");
        let error = fastest(&json!({"backends": []})).unwrap_err();
        assert!(error.contains("no wgpu or tch"), "{error}");
    }

    #[test]
    fn the_table_has_a_row_per_backend_and_the_tutorial_line() {
        let summary = json!({
            "gpu": "NVIDIA H200",
            "dry_run": false,
            "bench": {
                "backends": [
                    {"backend": "wgpu", "train_images_per_s": 20000.0,
                     "latency_p50_ms": 1.5, "infer_images_per_s": 90000.0},
                ],
                "pytorch_eager": {"backend": "pytorch 2.9.0 cuda",
                                  "train_images_per_s": 40000.0,
                                  "latency_p50_ms": 0.9, "infer_images_per_s": 200000.0},
            },
            "tutorial": {"backend": "wgpu", "epochs": 10, "wall_seconds": 42.0,
                         "learner_seconds_per_epoch": 3.5, "test_accuracy": 98.7},
        });
        let table = table(&summary);
        assert!(
            table.contains("| wgpu | 20000 | 0.50× | 1.50 | 90000 |"),
            "{table}"
        );
        assert!(
            table.contains("| pytorch 2.9.0 cuda | 40000 | 1.00× |"),
            "{table}"
        );
        assert!(
            table.contains("10 epoch(s) in 42.0 s") && table.contains("98.70 %"),
            "{table}"
        );
    }

    #[test]
    fn options_take_their_values_and_refuse_the_unknown() {
        use clap::Parser;
        #[derive(Parser)]
        struct Command {
            #[command(flatten)]
            args: Args,
        }
        let parse = |args: &[&str]| {
            let argv = std::iter::once("gpu-check").chain(args.iter().copied());
            Command::try_parse_from(argv).map(|command| Options::new(command.args).unwrap())
        };
        let options = parse(&["--dry-run", "--out", "x"]).unwrap();
        assert!(options.dry_run && options.out.ends_with("x") && options.epochs == 1);
        assert_eq!(parse(&[]).unwrap().epochs, 10);
        for bad in [&["--epochs", "0"][..], &["--epochs"], &["--gpu"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
