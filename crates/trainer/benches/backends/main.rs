//! Speed and memory of the tutorial ViT (or the model and batch of `--config FILE`) on each
//! compiled-in backend, side by side with PyTorch eager (`tools/torch_bench.py`) when a Python
//! with torch is given. Run it as `cargo xtask bench [--backend B]… [--config FILE]`; it prints a
//! table and writes JSON under `artifacts/`.
//!
//! Each backend runs in a child process of its own, so its peak RSS is its own. Measured:
//! training images/s at the training batch (Adam, cross-entropy; steady state, warm-up excluded),
//! inference latency p50/p99 at batch 1, inference images/s at batch 1000, peak RSS.
//! `--rounds N` (default 3) measures everything N times, interleaved; each row is the round with
//! that backend's median training figure, and the ratio to PyTorch is the median of the
//! per-round ratios. `--cuda` measures tch and PyTorch on the first CUDA device (and leaves out
//! the CPU's sgemm yardstick); wgpu takes the GPU its default device finds either way.
//!
//! `--phases <backend> [steps]` is the profiling mode: it only trains, and prints the median time
//! of the forward pass with the loss, the backward pass and the optimiser step (forward and
//! backward as one figure where the batch runs in slices on threads). Run it under
//! `perf record` to see which kernels each phase spends its time in.

mod measure;
mod report;
mod workload;

use std::process::Command;

use burn::prelude::*;

use vit_trainer::backend::{TorchDevice, compiled, compiled_devices, torch_device};

use measure::{Figures, measure, phases};
use report::{Report, Round};
use workload::Workload;

fn main() {
    // As the trainer runs, so that the figures are the trainer's.
    vit_trainer::memory::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = args
        .iter()
        .position(|arg| arg == "--config")
        .map(|position| args.get(position + 1).cloned().unwrap_or_default());
    let workload = match &config {
        None => Workload::tutorial(),
        Some(path) => Workload::from_file(std::path::Path::new(path)).unwrap_or_else(|message| {
            eprintln!("error: --config {message}");
            std::process::exit(1);
        }),
    };
    // `cargo bench` passes `--bench`; the child mode is `--child <backend>`.
    let cuda = args.iter().any(|arg| arg == "--cuda");
    if let Some(position) = args.iter().position(|arg| arg == "--child") {
        let backend = &args[position + 1];
        let figures = measure(backend, &device(backend, cuda), &workload);
        println!(
            "{}",
            serde_json::to_string(&figures).expect("figures serialise")
        );
        return;
    }
    if let Some(position) = args.iter().position(|arg| arg == "--phases") {
        let operand = |offset| {
            args.get(position + offset)
                .filter(|arg: &&String| !arg.starts_with("--"))
        };
        let Some(backend) = operand(1) else {
            eprintln!("error: --phases needs a backend: --phases <backend> [steps]");
            std::process::exit(1);
        };
        let steps = match operand(2) {
            None => 30,
            Some(steps) => steps.parse().unwrap_or_else(|_| {
                eprintln!("error: --phases steps `{steps}` is not a whole number");
                std::process::exit(1);
            }),
        };
        phases(&device(backend, cuda), steps, &workload);
        return;
    }
    let options = Options::parse(&args);
    // Sittings on a shared machine differ by tens of per cent, and a backend measured a minute
    // after PyTorch may see another machine: rounds interleave the backends and PyTorch, and
    // each ratio compares figures from the same round.
    let mut rounds = Vec::new();
    for round in 1..=options.rounds {
        let mut backends = Vec::new();
        for backend in &options.backends {
            eprintln!("round {round}/{}: measuring {backend} …", options.rounds);
            match child(backend, config.as_deref(), cuda) {
                Ok(figures) => backends.push(figures),
                Err(message) => {
                    eprintln!("error: {backend}: {message}");
                    std::process::exit(1);
                }
            }
        }
        let python = options.python.as_deref();
        let on_device: &[&str] = if cuda { &["--device", "cuda"] } else { &[] };
        let pytorch_eager = python.map(|python| {
            eprintln!(
                "round {round}/{}: measuring PyTorch eager …",
                options.rounds
            );
            pytorch(python, config.as_deref(), on_device).unwrap_or_else(|message| {
                eprintln!("error: PyTorch: {message}");
                std::process::exit(1);
            })
        });
        // torch.compile needs a C++ compiler and may fail where eager works: a failure leaves
        // its row out, with the reason on stderr.
        let pytorch_compile = python.filter(|_| options.compile).and_then(|python| {
            eprintln!(
                "round {round}/{}: measuring PyTorch with torch.compile …",
                options.rounds
            );
            let flags = [on_device, &["--compile"]].concat();
            pytorch(python, config.as_deref(), &flags)
                .map_err(|message| eprintln!("torch.compile left out: {message}"))
                .ok()
        });
        // The CPU's matrix product speed is no yardstick for a GPU.
        let sgemm_gflops = python.filter(|_| !cuda).and_then(|python| {
            sgemm(python)
                .map_err(|message| eprintln!("sgemm left out: {message}"))
                .ok()
        });
        rounds.push(Round {
            backends,
            pytorch_eager,
            pytorch_compile,
            sgemm_gflops,
        });
    }
    let report = Report::new(rounds, &workload);
    println!("{}", report.table());
    if let Err(message) = report.save(&options.out) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
    println!("wrote {}", options.out.display());
}

struct Options {
    backends: Vec<String>,
    rounds: usize,
    /// Also measure PyTorch under `torch.compile` (off with `--no-compile`).
    compile: bool,
    python: Option<String>,
    out: std::path::PathBuf,
}

/// Rounds when `--rounds` is not given.
const DEFAULT_ROUNDS: usize = 3;

impl Options {
    fn parse(args: &[String]) -> Self {
        let mut backends = Vec::new();
        let mut out = None;
        let mut rounds = DEFAULT_ROUNDS;
        let mut compile = true;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--backend" => backends.extend(args.next().cloned()),
                "--rounds" => {
                    let value = args.next().map(String::as_str).unwrap_or_default();
                    rounds = value
                        .parse()
                        .ok()
                        .filter(|&rounds| rounds > 0)
                        .unwrap_or_else(|| {
                            eprintln!("error: --rounds `{value}` is not a positive whole number");
                            std::process::exit(1);
                        });
                }
                "--out" => out = args.next().map(Into::into),
                "--no-compile" => compile = false,
                _ => {} // `--bench` and whatever else cargo adds
            }
        }
        if backends.is_empty() {
            backends = compiled().into_iter().map(String::from).collect();
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        Self {
            backends,
            rounds,
            compile,
            python: std::env::var("VIT_BENCH_PYTHON").ok(),
            out: out.unwrap_or_else(|| {
                let artifacts = concat!(env!("CARGO_MANIFEST_DIR"), "/../../artifacts");
                format!("{artifacts}/bench-{stamp}.json").into()
            }),
        }
    }
}

/// `backend`'s device; tch's is the first CUDA device with `--cuda`, else the CPU.
fn device(backend: &str, cuda: bool) -> Device {
    if backend == "tch" {
        let requested = if cuda {
            TorchDevice::Cuda(0)
        } else {
            TorchDevice::Cpu
        };
        return torch_device(Some(requested)).unwrap_or_else(|error| {
            eprintln!("error: {error}");
            std::process::exit(1);
        });
    }
    let found = compiled_devices()
        .into_iter()
        .find(|(name, _)| *name == backend);
    match found {
        Some((_, device)) => device,
        None => {
            eprintln!(
                "error: backend {backend} is not in this build ({:?})",
                compiled()
            );
            std::process::exit(1);
        }
    }
}

/// Runs this program again as `--child backend` and reads its figures.
fn child(backend: &str, config: Option<&str>, cuda: bool) -> Result<Figures, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let output = Command::new(exe)
        .args(["--child", backend])
        .args(config.into_iter().flat_map(|path| ["--config", path]))
        .args(cuda.then_some("--cuda"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|error| error.to_string())?;
    if !output.status.success() {
        return Err(format!("the measuring process failed ({})", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|error| format!("{error}: {stdout}"))
}

/// `tools/torch_bench.py` with `python` and `flags`, same model, batches and thread count.
fn pytorch(python: &str, config: Option<&str>, flags: &[&str]) -> Result<Figures, String> {
    let args: Vec<&str> = config
        .into_iter()
        .flat_map(|path| ["--config", path])
        .chain(flags.iter().copied())
        .collect();
    let line = torch_bench(python, &args)?;
    serde_json::from_str(&line).map_err(|error| format!("{error}: {line}"))
}

/// The machine's sgemm GFLOP/s, measured by `tools/torch_bench.py --sgemm`.
fn sgemm(python: &str) -> Result<f64, String> {
    let line = torch_bench(python, &["--sgemm"])?;
    let json: serde_json::Value =
        serde_json::from_str(&line).map_err(|error| format!("{error}: {line}"))?;
    json["sgemm_gflops"]
        .as_f64()
        .ok_or_else(|| format!("no sgemm_gflops in {line}"))
}

/// The last line `tools/torch_bench.py args` prints.
fn torch_bench(python: &str, args: &[&str]) -> Result<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/torch_bench.py");
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|error| format!("cannot run {python}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{script} {} failed ({})",
            args.join(" "),
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().last().unwrap_or_default().to_string())
}
