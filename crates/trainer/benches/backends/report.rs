//! The rounds' figures side by side: each backend's median round, its ratio to PyTorch eager
//! in the same rounds, the table and the JSON file.

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
    train_vs_pytorch: Vec<Ratio>,
    rounds: Vec<Round>,
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
            model: format!(
                "{}: {}x{} inputs, batch {}",
                workload.name, workload.model.image_size, workload.model.image_size, workload.batch
            ),
            backends,
            pytorch_eager,
            train_vs_pytorch,
            rounds,
        }
    }

    pub(crate) fn table(&self) -> String {
        let mut lines = vec![
            format!("{} ({} cores); {}", self.machine, self.cores, self.model),
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

    pub(crate) fn save(&self, path: &std::path::Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).expect("report serialises");
        vit_model::artifact::write_atomically(path, |file| file.write_all(json.as_bytes()))
            .map_err(|error| format!("{}: {error}", path.display()))
    }
}
