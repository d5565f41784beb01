//! The rounds' figures side by side: each backend's median round, its ratio to PyTorch eager
//! in the same rounds, its share of what the machine's sgemm allows, the table and the JSON
//! file.

use serde::Serialize;

use crate::measure::{Figures, percentile};

/// The figures of the round with the median training images/s (the lower middle for an even
/// count), so that each row's figures come from one measurement.
fn median_round<'a>(rounds: impl Iterator<Item = &'a Figures>) -> Figures {
    let mut rounds: Vec<&Figures> = rounds.collect();
    rounds.sort_by(|a, b| a.train_images_per_s.total_cmp(&b.train_images_per_s));
    rounds[(rounds.len() - 1) / 2].clone()
}

/// Every backend's figures and PyTorch's, measured one after the other.
#[derive(Serialize)]
pub(crate) struct Round {
    pub(crate) backends: Vec<Figures>,
    pub(crate) pytorch_eager: Option<Figures>,
    pub(crate) pytorch_compile: Option<Figures>,
    /// The machine's single-precision matrix product speed (MKL via torch), this round.
    pub(crate) sgemm_gflops: Option<f64>,
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
pub(crate) struct Report {
    machine: String,
    cores: usize,
    model: String,
    /// For each backend (and PyTorch), the round with its median training images/s.
    backends: Vec<Figures>,
    pytorch_eager: Option<Figures>,
    pytorch_compile: Option<Figures>,
    train_vs_pytorch: Vec<Ratio>,
    /// What the machine's sgemm (median of the rounds) allows if the model's matrix products
    /// were all its work, in training and in inference images/s.
    limit: Option<Limit>,
    rounds: Vec<Round>,
}

#[derive(Serialize)]
struct Limit {
    sgemm_gflops: f64,
    training_mflop_per_image: f64,
    forward_mflop_per_image: f64,
    train_images_per_s: f64,
    infer_images_per_s: f64,
}

/// `pick`'s training images/s relative to PyTorch eager's, round by round; `None` unless
/// every round has both.
fn ratio(
    rounds: &[Round],
    backend: &str,
    pick: impl Fn(&Round) -> Option<&Figures>,
) -> Option<Ratio> {
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|round| {
            let torch = round.pytorch_eager.as_ref()?;
            Some(pick(round)?.train_images_per_s / torch.train_images_per_s)
        })
        .collect::<Option<_>>()?;
    Some(Ratio {
        backend: backend.to_string(),
        median: percentile(&ratios, 50.0),
        min: percentile(&ratios, 0.0),
        max: percentile(&ratios, 100.0),
    })
}

impl Report {
    pub(crate) fn new(rounds: Vec<Round>, workload: &crate::workload::Workload) -> Self {
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
        let pytorch_compile = rounds
            .iter()
            .map(|round| round.pytorch_compile.as_ref())
            .collect::<Option<Vec<_>>>()
            .map(|compiled| median_round(compiled.into_iter()));
        let mut train_vs_pytorch: Vec<Ratio> = (0..count)
            .filter_map(|index| {
                let backend = &rounds[0].backends[index].backend;
                ratio(&rounds, backend, |round| round.backends.get(index))
            })
            .collect();
        if let Some(compiled) = &pytorch_compile {
            train_vs_pytorch.extend(ratio(&rounds, &compiled.backend, |round| {
                round.pytorch_compile.as_ref()
            }));
        }
        let sgemm: Option<Vec<f64>> = rounds.iter().map(|round| round.sgemm_gflops).collect();
        let limit = sgemm.map(|sgemm| {
            let sgemm_gflops = percentile(&sgemm, 50.0);
            let (training, forward) = (workload.training_flop(), workload.forward_flop());
            Limit {
                sgemm_gflops,
                training_mflop_per_image: training / 1e6,
                forward_mflop_per_image: forward / 1e6,
                train_images_per_s: sgemm_gflops * 1e9 / training,
                infer_images_per_s: sgemm_gflops * 1e9 / forward,
            }
        });
        Self {
            machine,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            model: format!(
                "{}: {}x{} inputs, batch {}",
                workload.name, workload.model.image_size, workload.model.image_size, workload.batch
            ),
            backends,
            pytorch_eager,
            pytorch_compile,
            train_vs_pytorch,
            limit,
            rounds,
        }
    }

    pub(crate) fn table(&self) -> String {
        let mut lines = vec![
            format!("{} ({} cores); {}", self.machine, self.cores, self.model),
            format!(
                "| {:<22} | {:>11} | {:>7} | {:>7} | {:>7} | {:>11} | {:>7} | {:>7} | {:>18} |",
                "backend",
                "train img/s",
                "share",
                "p50 ms",
                "p99 ms",
                "infer img/s",
                "share",
                "RSS MiB",
                "vs PyTorch"
            ),
            format!(
                "|{0:-<24}|{0:-<13}|{0:-<9}|{0:-<9}|{0:-<9}|{0:-<13}|{0:-<9}|{0:-<9}|{0:-<20}|",
                ""
            ),
        ];
        let torch = self.pytorch_eager.as_ref();
        let share = |value: f64, limit: Option<f64>| {
            limit.map_or("—".into(), |limit| {
                format!("{:.0} %", 100.0 * value / limit)
            })
        };
        for row in self
            .backends
            .iter()
            .chain(torch)
            .chain(self.pytorch_compile.as_ref())
        {
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
                "| {:<22} | {:>11.0} | {:>7} | {:>7.2} | {:>7.2} | {:>11.0} | {:>7} | {:>7.0} | {:>18} |",
                row.backend,
                row.train_images_per_s,
                share(row.train_images_per_s, self.limit.as_ref().map(|l| l.train_images_per_s)),
                row.latency_p50_ms,
                row.latency_p99_ms,
                row.infer_images_per_s,
                share(row.infer_images_per_s, self.limit.as_ref().map(|l| l.infer_images_per_s)),
                row.peak_rss_mib,
                ratio
            ));
        }
        lines.push(format!(
            "(median of {} rounds; vs PyTorch: training images/s relative to PyTorch eager in the \
             same round, median (range))",
            self.rounds.len()
        ));
        if let Some(limit) = &self.limit {
            lines.push(format!(
                "(share: of the machine's limit if the matrix products were all the work: sgemm \
                 {:.0} GFLOP/s over {:.1} MFLOP per trained image = {:.0} images/s, over {:.1} \
                 MFLOP per inferred image = {:.0} images/s)",
                limit.sgemm_gflops,
                limit.training_mflop_per_image,
                limit.train_images_per_s,
                limit.forward_mflop_per_image,
                limit.infer_images_per_s
            ));
        }
        lines.join("\n")
    }

    pub(crate) fn save(&self, path: &std::path::Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).expect("report serialises");
        vit_model::files::write_atomically(path, |file| file.write_all(json.as_bytes()))
            .map_err(|error| format!("{}: {error}", path.display()))
    }
}
