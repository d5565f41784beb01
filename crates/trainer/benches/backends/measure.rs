//! One backend's figures, measured in this process: training at batch 100 (as the trainer
//! steps), latency at batch 1, inference at batch 1000, peak RSS; and the `--phases` mode.

use std::ops::Range;
use std::time::{Duration, Instant};

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};
use vit_model::Vit;
use vit_ops::{Adam, AdamSettings, WeightDecay};
use vit_trainer::parallel::{sliced_gradients, step_slices};

use crate::workload::Workload;

const LARGE_BATCH: usize = 1000;

/// One backend's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Figures {
    pub(crate) backend: String,
    pub(crate) train_images_per_s: f64,
    pub(crate) train_steps_timed: usize,
    pub(crate) latency_p50_ms: f64,
    pub(crate) latency_p99_ms: f64,
    pub(crate) latency_runs: usize,
    pub(crate) infer_images_per_s: f64,
    pub(crate) peak_rss_mib: f64,
}

/// How long to spend on each measurement: at least `min` runs, at most `max`, and no more
/// runs once `budget` is spent (the software Vulkan of a GPU-less machine is ~1000× slower).
struct Plan {
    warm_up: usize,
    min: usize,
    max: usize,
    budget: Duration,
}

/// `backend`'s figures on `device` for `workload`.
pub(crate) fn measure(backend: &str, device: &Device, workload: &Workload) -> Figures {
    let slow = backend == "wgpu" && std::env::var_os("VIT_BENCH_FULL").is_none();
    let plan = |warm_up, min, max, seconds| Plan {
        warm_up: if slow { 1 } else { warm_up },
        min: if slow { 2 } else { min },
        max,
        budget: Duration::from_secs(seconds),
    };
    let config = &workload.model;
    let side = config.image_size;

    // Training: one Adam step per timed run, synchronised by reading the loss.
    let mut training = TrainingStep::new(device, workload);
    let train = time(&plan(3, 10, 30, 60), || {
        let (gradients, loss) = training.gradients();
        let _ = loss.into_scalar::<f32>();
        training.update(gradients);
    });
    drop(training);

    // Inference on the plain device.
    let model = config
        .init(device)
        .expect("the workload's config is validated");
    let one = Tensor::<4>::random(
        [1, config.channels, side, side],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let latency = time(&plan(10, 50, 500, 20), || {
        let _ = model.predict(one.clone()).into_data();
    });
    let large = Tensor::<4>::random(
        [LARGE_BATCH, config.channels, side, side],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let throughput = time(&plan(1, 3, 10, 30), || {
        let _ = model.predict(large.clone()).into_data();
    });

    let train_median = percentile(&train, 50.0);
    Figures {
        backend: backend.to_string(),
        train_images_per_s: workload.batch as f64 / train_median,
        train_steps_timed: train.len(),
        latency_p50_ms: 1e3 * percentile(&latency, 50.0),
        latency_p99_ms: 1e3 * percentile(&latency, 99.0),
        latency_runs: latency.len(),
        infer_images_per_s: LARGE_BATCH as f64 / percentile(&throughput, 50.0),
        peak_rss_mib: peak_rss_mib(),
    }
}

/// The workload's model with Adam, a fixed batch of random images and its labels, on the
/// autodiff version of a device; the batch is cut into slices on threads as the trainer cuts
/// it.
struct TrainingStep {
    model: Option<Vit>,
    batch: usize,
    slices: usize,
    optimiser: ModuleOptimizer,
    images: Tensor<4>,
    targets: Tensor<1, Int>,
    loss_fn: CrossEntropyLoss,
}

impl TrainingStep {
    fn new(device: &Device, workload: &Workload) -> Self {
        let device = device.clone().autodiff();
        let (config, batch) = (&workload.model, workload.batch);
        let side = config.image_size;
        let images = Tensor::<4>::random(
            [batch, config.channels, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let classes = config.num_classes as i64;
        let labels: Vec<i64> = (0..batch as i64).map(|i| i % classes).collect();
        Self {
            model: Some(
                config
                    .init(&device)
                    .expect("the workload's config is validated"),
            ),
            batch,
            slices: step_slices(&device, batch),
            // The trainer's Adam, with PyTorch's defaults.
            optimiser: ModuleOptimizer::from(Adam::new(AdamSettings {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                weight_decay: WeightDecay::None,
            })),
            images,
            targets: Tensor::from_data(TensorData::new(labels, [batch]), &device),
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
        let (gradients, loss, _) =
            sliced_gradients(self.model(), self.batch, self.slices, |model, range| {
                (self.loss(model, range), ())
            });
        (gradients, loss)
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
pub(crate) fn phases(device: &Device, steps: usize, workload: &Workload) {
    let mut training = TrainingStep::new(device, workload);
    let mut seconds = [Vec::new(), Vec::new(), Vec::new()];
    for step in 0..steps + 3 {
        let start = Instant::now();
        let (forward, gradients) = if training.slices == 1 {
            let loss = training.loss(training.model(), 0..training.batch);
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

/// The `p`-th percentile (nearest rank) of `values`.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
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
