//! Speed and memory of the tutorial ViT on each compiled-in backend, side by side with PyTorch
//! eager (`tools/torch_bench.py`) when a Python with torch is given. Run it as
//! `cargo xtask bench [--backend B]…`; it prints a table and writes JSON under `artifacts/`.
//!
//! Each backend runs in a child process of its own, so its peak RSS is its own. Measured:
//! training images/s at batch 100 (Adam, cross-entropy; steady state, warm-up steps excluded),
//! inference latency p50/p99 at batch 1, inference images/s at batch 1000, peak RSS.
//! `--rounds N` (default 3) measures everything N times, interleaved; each row is the round with
//! that backend's median training figure, and the ratio to PyTorch is the median of the
//! per-round ratios.
//!
//! `--phases <backend> [steps]` is the profiling mode: it only trains, and prints the median time
//! of the forward pass with the loss, the backward pass and the optimiser step (forward and
//! backward as one figure where the batch runs in slices on threads). Run it under
//! `perf record` to see which kernels each phase spends its time in.

use std::ops::Range;
use std::process::Command;
use std::time::{Duration, Instant};

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};
use vit_model::{Vit, VitConfig};
use vit_trainer::optim::{AdamSettings, FusedAdam, WeightDecay};
use vit_trainer::parallel::{sliced_gradients, step_slices};

const TRAIN_BATCH: usize = 100;
const LARGE_BATCH: usize = 1000;

/// One backend's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Figures {
    backend: String,
    train_images_per_s: f64,
    train_steps_timed: usize,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_runs: usize,
    infer_images_per_s: f64,
    peak_rss_mib: f64,
}

/// How long to spend on each measurement: at least `min` runs, at most `max`, and no more
/// runs once `budget` is spent (the software Vulkan of a GPU-less machine is ~1000× slower).
struct Plan {
    warm_up: usize,
    min: usize,
    max: usize,
    budget: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; the child mode is `--child <backend>`.
    if let Some(position) = args.iter().position(|arg| arg == "--child") {
        let backend = &args[position + 1];
        let figures = measure(backend, &device(backend));
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
        phases(&device(backend), steps);
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
            match child(backend) {
                Ok(figures) => backends.push(figures),
                Err(message) => {
                    eprintln!("error: {backend}: {message}");
                    std::process::exit(1);
                }
            }
        }
        let pytorch_eager = options.python.as_ref().map(|python| {
            eprintln!(
                "round {round}/{}: measuring PyTorch eager …",
                options.rounds
            );
            pytorch(python).unwrap_or_else(|message| {
                eprintln!("error: PyTorch: {message}");
                std::process::exit(1);
            })
        });
        rounds.push(Round {
            backends,
            pytorch_eager,
        });
    }
    let report = Report::new(rounds);
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
            python: std::env::var("VIT_BENCH_PYTHON").ok(),
            out: out.unwrap_or_else(|| {
                let artifacts = concat!(env!("CARGO_MANIFEST_DIR"), "/../../artifacts");
                format!("{artifacts}/bench-{stamp}.json").into()
            }),
        }
    }
}

fn compiled() -> Vec<&'static str> {
    let mut names = vec!["flex", "ndarray"];
    if cfg!(feature = "tch") {
        names.push("tch");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    names
}

#[allow(deprecated)]
fn device(backend: &str) -> Device {
    match backend {
        "flex" => Device::flex(),
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "tch")]
        "tch" => Device::libtorch(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(Default::default()),
        other => {
            eprintln!(
                "error: backend {other} is not in this build ({:?})",
                compiled()
            );
            std::process::exit(1);
        }
    }
}

/// Runs this program again as `--child backend` and reads its figures.
fn child(backend: &str) -> Result<Figures, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let output = Command::new(exe)
        .args(["--child", backend])
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

/// `tools/torch_bench.py`, same model, batches and thread count, with `python`.
fn pytorch(python: &str) -> Result<Figures, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/torch_bench.py");
    let output = Command::new(python)
        .arg(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|error| format!("cannot run {python}: {error}"))?;
    if !output.status.success() {
        return Err(format!("{script} failed ({})", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|error| format!("{error}: {stdout}"))
}

fn measure(backend: &str, device: &Device) -> Figures {
    let slow = backend == "wgpu" && std::env::var_os("VIT_BENCH_FULL").is_none();
    let plan = |warm_up, min, max, seconds| Plan {
        warm_up: if slow { 1 } else { warm_up },
        min: if slow { 2 } else { min },
        max,
        budget: Duration::from_secs(seconds),
    };
    let config = VitConfig::tutorial();

    // Training: one Adam step per timed run, synchronised by reading the loss.
    let mut training = TrainingStep::new(device);
    let train = time(&plan(3, 10, 30, 60), || {
        let (gradients, loss) = training.gradients();
        let _ = loss.into_scalar::<f32>();
        training.update(gradients);
    });
    drop(training);

    // Inference on the plain device.
    let model = config.init(device).expect("tutorial config is valid");
    let one = Tensor::<4>::random([1, 1, 28, 28], Distribution::Normal(0.0, 1.0), device);
    let latency = time(&plan(10, 50, 500, 20), || {
        let _ = model.predict(one.clone()).into_data();
    });
    let large = Tensor::<4>::random(
        [LARGE_BATCH, 1, 28, 28],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let throughput = time(&plan(1, 3, 10, 30), || {
        let _ = model.predict(large.clone()).into_data();
    });

    let train_median = percentile(&train, 50.0);
    Figures {
        backend: backend.to_string(),
        train_images_per_s: TRAIN_BATCH as f64 / train_median,
        train_steps_timed: train.len(),
        latency_p50_ms: 1e3 * percentile(&latency, 50.0),
        latency_p99_ms: 1e3 * percentile(&latency, 99.0),
        latency_runs: latency.len(),
        infer_images_per_s: LARGE_BATCH as f64 / percentile(&throughput, 50.0),
        peak_rss_mib: peak_rss_mib(),
    }
}

/// The tutorial model with Adam, a fixed batch of random images and its labels, on the
/// autodiff version of a device; the batch is cut into slices on threads as the trainer cuts
/// it.
struct TrainingStep {
    model: Option<Vit>,
    slices: usize,
    optimiser: ModuleOptimizer,
    images: Tensor<4>,
    targets: Tensor<1, Int>,
    loss_fn: CrossEntropyLoss,
}

impl TrainingStep {
    fn new(device: &Device) -> Self {
        let device = device.clone().autodiff();
        let images = Tensor::<4>::random(
            [TRAIN_BATCH, 1, 28, 28],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let labels: Vec<i64> = (0..TRAIN_BATCH as i64).map(|i| i % 10).collect();
        Self {
            model: Some(
                VitConfig::tutorial()
                    .init(&device)
                    .expect("tutorial config is valid"),
            ),
            slices: step_slices(&device, TRAIN_BATCH),
            // The trainer's Adam, with PyTorch's defaults.
            optimiser: ModuleOptimizer::from(FusedAdam::new(AdamSettings {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: WeightDecay::None,
            })),
            images,
            targets: Tensor::from_data(TensorData::new(labels, [TRAIN_BATCH]), &device),
            loss_fn: CrossEntropyLossConfig::new().init(&device),
        }
    }

    fn model(&self) -> &Vit {
        self.model
            .as_ref()
            .expect("the model is back after every update")
    }

    /// The mean loss over the images in `range`.
    fn loss(&self, model: &Vit, range: Range<usize>) -> Tensor<1> {
        let logits = model.forward(self.images.clone().slice(range.clone()));
        self.loss_fn
            .forward(logits, self.targets.clone().slice(range))
    }

    /// The batch's gradients and mean loss, as the trainer's step computes them.
    fn gradients(&self) -> (GradientsParams, Tensor<1>) {
        let (gradients, losses) =
            sliced_gradients(self.model(), TRAIN_BATCH, self.slices, |model, range| {
                let share = range.len() as f32 / TRAIN_BATCH as f32;
                let loss = self.loss(model, range);
                (loss.clone(), loss.detach().mul_scalar(share))
            });
        (gradients, Tensor::cat(losses, 0).sum())
    }

    fn update(&mut self, gradients: GradientsParams) {
        let model = self
            .model
            .take()
            .expect("the model is back after every update");
        self.model = Some(self.optimiser.step(3e-3, model, gradients));
    }
}

/// Prints the median forward, backward and optimiser time of `steps` training steps at the
/// training batch, after three warm-up steps.
fn phases(device: &Device, steps: usize) {
    let mut training = TrainingStep::new(device);
    let mut seconds = [Vec::new(), Vec::new(), Vec::new()];
    for step in 0..steps + 3 {
        let start = Instant::now();
        let (forward, gradients) = if training.slices == 1 {
            let loss = training.loss(training.model(), 0..TRAIN_BATCH);
            let _ = loss.clone().into_scalar::<f32>();
            let forward = start.elapsed();
            (
                forward,
                GradientsParams::from_grads(loss.backward(), training.model()),
            )
        } else {
            // The slices' forward and backward passes overlap on their threads.
            let (gradients, _) = training.gradients();
            (Duration::ZERO, gradients)
        };
        let backward = start.elapsed();
        training.update(gradients);
        let optimise = start.elapsed();
        if step >= 3 {
            seconds[0].push(forward.as_secs_f64());
            seconds[1].push((backward - forward).as_secs_f64());
            seconds[2].push((optimise - backward).as_secs_f64());
        }
    }
    let mut rows = Vec::new();
    if training.slices == 1 {
        rows.push(("forward + loss".to_string(), &seconds[0]));
        rows.push(("backward".to_string(), &seconds[1]));
    } else {
        let slices = training.slices;
        rows.push((format!("both, {slices} slices"), &seconds[1]));
    }
    rows.push(("optimiser".to_string(), &seconds[2]));
    for (name, values) in rows {
        println!("{name:>15}: {:7.2} ms", 1e3 * percentile(values, 50.0));
    }
}

/// Seconds taken by each timed run of `run`, after the warm-up runs.
fn time(plan: &Plan, mut run: impl FnMut()) -> Vec<f64> {
    for _ in 0..plan.warm_up {
        run();
    }
    let started = Instant::now();
    let mut seconds = Vec::new();
    while seconds.len() < plan.max && (seconds.len() < plan.min || started.elapsed() < plan.budget)
    {
        let start = Instant::now();
        run();
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds
}

/// The figures of the round with the median training images/s (the lower middle for an even
/// count), so that each row's figures come from one measurement.
fn median_round<'a>(rounds: impl Iterator<Item = &'a Figures>) -> Figures {
    let mut rounds: Vec<&Figures> = rounds.collect();
    rounds.sort_by(|a, b| a.train_images_per_s.total_cmp(&b.train_images_per_s));
    rounds[(rounds.len() - 1) / 2].clone()
}

/// The `p`-th percentile (nearest rank) of `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The process's peak resident set (Linux `VmHWM`), in MiB; 0 where the kernel does not say.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Every backend's figures and PyTorch's, measured one after the other.
#[derive(Serialize)]
struct Round {
    backends: Vec<Figures>,
    pytorch_eager: Option<Figures>,
}

/// A backend's training images/s relative to PyTorch eager's in the same round.
#[derive(Serialize)]
struct Ratio {
    backend: String,
    median: f64,
    min: f64,
    max: f64,
}

#[derive(Serialize)]
struct Report {
    machine: String,
    cores: usize,
    model: &'static str,
    /// For each backend (and PyTorch), the round with its median training images/s.
    backends: Vec<Figures>,
    pytorch_eager: Option<Figures>,
    train_vs_pytorch: Vec<Ratio>,
    rounds: Vec<Round>,
}

impl Report {
    fn new(rounds: Vec<Round>) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let machine = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|name| name.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let count = rounds.first().map_or(0, |round| round.backends.len());
        let backends = (0..count)
            .map(|index| median_round(rounds.iter().map(|round| &round.backends[index])))
            .collect();
        let pytorch_eager = rounds
            .iter()
            .map(|round| round.pytorch_eager.as_ref())
            .collect::<Option<Vec<_>>>()
            .map(|torch| median_round(torch.into_iter()));
        let train_vs_pytorch = (0..count)
            .filter_map(|index| {
                let ratios: Vec<f64> = rounds
                    .iter()
                    .map(|round| {
                        let torch = round.pytorch_eager.as_ref()?;
                        Some(round.backends[index].train_images_per_s / torch.train_images_per_s)
                    })
                    .collect::<Option<_>>()?;
                Some(Ratio {
                    backend: rounds[0].backends[index].backend.clone(),
                    median: percentile(&ratios, 50.0),
                    min: percentile(&ratios, 0.0),
                    max: percentile(&ratios, 100.0),
                })
            })
            .collect();
        Self {
            machine,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            model: "tutorial ViT (213,642 parameters), 28x28 inputs",
            backends,
            pytorch_eager,
            train_vs_pytorch,
            rounds,
        }
    }

    fn table(&self) -> String {
        let mut lines = vec![
            format!("{} ({} cores)", self.machine, self.cores),
            format!(
                "| {:<13} | {:>14} | {:>9} | {:>9} | {:>15} | {:>9} | {:>18} |",
                "backend",
                "train img/s",
                "p50 ms",
                "p99 ms",
                "infer img/s",
                "RSS MiB",
                "vs PyTorch"
            ),
            format!(
                "|{0:-<15}|{0:-<16}|{0:-<11}|{0:-<11}|{0:-<17}|{0:-<11}|{0:-<20}|",
                ""
            ),
        ];
        let torch = self.pytorch_eager.as_ref();
        for row in self.backends.iter().chain(torch) {
            let ratio = match self
                .train_vs_pytorch
                .iter()
                .find(|r| r.backend == row.backend)
            {
                Some(r) if r.min < r.max => {
                    format!("{:.2}× ({:.2}–{:.2})", r.median, r.min, r.max)
                }
                Some(r) => format!("{:.2}×", r.median),
                None if torch.is_some_and(|torch| std::ptr::eq(torch, row)) => "1.00×".into(),
                None => "—".into(),
            };
            lines.push(format!(
                "| {:<13} | {:>14.0} | {:>9.2} | {:>9.2} | {:>15.0} | {:>9.0} | {:>18} |",
                row.backend,
                row.train_images_per_s,
                row.latency_p50_ms,
                row.latency_p99_ms,
                row.infer_images_per_s,
                row.peak_rss_mib,
                ratio
            ));
        }
        lines.push(format!(
            "(median of {} rounds; vs PyTorch: training images/s relative to PyTorch eager in the \
             same round, median (range))",
            self.rounds.len()
        ));
        lines.join("\n")
    }

    fn save(&self, path: &std::path::Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).expect("report serialises");
        vit_model::artifact::write_atomically(path, json.as_bytes())
            .map_err(|error| error.to_string())
    }
}
