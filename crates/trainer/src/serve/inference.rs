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
/// Requests waiting at most; one more is answered 503.
pub const QUEUE: usize = 256;
/// Images in one forward pass at most.
const BATCH: usize = 64;
/// How long the first request of a batch waits for company.
const WINDOW: Duration = Duration::from_millis(2);

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
    pub fn start(vit: Vit, device: Device) -> Self {
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || run(vit, device, queue))
            .expect("a thread starts");
        Self { jobs }
    }

    /// The answer for one 28×28 image.
    pub async fn predict(&self, pixels: [u8; PIXELS]) -> Result<Answer, Refusal> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { pixels, reply })
            .map_err(|error| match error {
                mpsc::TrySendError::Full(_) => Refusal::Busy,
                mpsc::TrySendError::Disconnected(_) => Refusal::Stopped,
            })?;
        answer.await.map_err(|_| Refusal::Stopped)
    }
}

/// Takes a batch from the queue (blocked until the first job, then at most [`WINDOW`] for more)
/// and answers it, until every sender is gone.
fn run(vit: Vit, device: Device, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + WINDOW;
        while batch.len() < BATCH {
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
