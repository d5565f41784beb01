//! The model's side of the server: one thread owns the network and answers requests in
//! batches. Requests that arrive within a short window, up to a batch, run as one forward pass;
//! a bounded queue refuses work beyond it instead of growing.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;
use vit_data::IMAGE_SIDE;
use vit_model::Vit;
use vit_model::explain::explain;

const PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;

/// How requests are queued and batched (`serve` options).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Batching {
    /// Images in one forward pass at most (1: every request alone).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch: u16,
    /// Requests waiting at most; beyond it a request is answered 503.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub queue: u16,
    /// How long, in milliseconds, the first request of a batch waits for company (at most 1000).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub window_ms: u64,
}

/// What `POST /api/predict` answers.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub digit: usize,
    pub probabilities: Vec<f32>,
    /// The class token's attention rollout on each input pixel, 28 rows of 28, largest 1.
    pub attention: Vec<Vec<f32>>,
    /// The 28×28 image the model saw (after MNIST-style preprocessing), 0–255.
    pub input: Vec<Vec<u8>>,
}

struct Job {
    pixels: [u8; PIXELS],
    /// Test hook: the model's thread sleeps this long when it takes this job.
    hold: Option<Duration>,
    reply: oneshot::Sender<Answer>,
}

/// Where handlers send images; cheap to clone.
#[derive(Clone)]
pub struct Inference {
    jobs: mpsc::SyncSender<Job>,
}

/// Why an image got no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is full: try again later.
    Busy,
    /// The model's thread is gone.
    Stopped,
}

impl Inference {
    /// Starts the model's thread.
    pub fn start(vit: Vit, device: Device, batching: Batching) -> Self {
        let (jobs, queue) = mpsc::sync_channel(usize::from(batching.queue));
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || run(vit, device, batching, queue))
            .expect("a thread starts");
        Self { jobs }
    }

    /// The answer for one 28×28 image; `hold` is a test hook (see [`Job`]).
    pub async fn predict(
        &self,
        pixels: [u8; PIXELS],
        hold: Option<Duration>,
    ) -> Result<Answer, Refusal> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job {
                pixels,
                hold,
                reply,
            })
            .map_err(|error| match error {
                mpsc::TrySendError::Full(_) => Refusal::Busy,
                mpsc::TrySendError::Disconnected(_) => Refusal::Stopped,
            })?;
        answer.await.map_err(|_| Refusal::Stopped)
    }
}

/// Takes a batch from the queue (blocked until the first job, then at most the window for
/// more) and answers it, until every sender is gone.
fn run(vit: Vit, device: Device, batching: Batching, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        if let Some(hold) = first.hold {
            std::thread::sleep(hold);
        }
        let mut batch = vec![first];
        let deadline = Instant::now() + Duration::from_millis(batching.window_ms);
        while batch.len() < usize::from(batching.batch) {
            let left = deadline.saturating_duration_since(Instant::now());
            match queue.recv_timeout(left) {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        answer(&vit, &device, batch);
    }
}

fn answer(vit: &Vit, device: &Device, batch: Vec<Job>) {
    let values: Vec<f32> = batch
        .iter()
        .flat_map(|job| job.pixels.map(vit_data::normalise))
        .collect();
    let images = Tensor::<4>::from_data(
        TensorData::new(values, [batch.len(), 1, IMAGE_SIDE, IMAGE_SIDE]),
        device,
    );
    for (job, explanation) in batch.into_iter().zip(explain(vit, images)) {
        let (digit, _) = vit_model::best(&explanation.probabilities);
        let attention = explanation
            .rollout_pixels(IMAGE_SIDE)
            .chunks(IMAGE_SIDE)
            .map(<[f32]>::to_vec)
            .collect();
        let input = job.pixels.chunks(IMAGE_SIDE).map(<[u8]>::to_vec).collect();
        // The client may have gone; its answer is then dropped.
        let _ = job.reply.send(Answer {
            digit,
            probabilities: explanation.probabilities,
            attention,
            input,
        });
    }
}
