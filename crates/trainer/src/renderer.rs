//! Plain line-oriented progress for when stdout is not a terminal (CI, a pipe, a log file): a
//! progress line every tenth of a split with images/s and ETA, and one summary line per split
//! with every metric's epoch value.

use std::collections::HashMap;
use std::time::Instant;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// How often a split reports progress, as a fraction of its items.
const REPORTS_PER_SPLIT: usize = 10;

#[derive(Default)]
pub struct LineRenderer {
    names: HashMap<MetricId, String>,
    /// Metric name → (sum, count) over the current split, or the epoch's final value.
    values: Vec<(String, Mean)>,
    epoch: usize,
    epochs: usize,
    split: String,
    split_items: usize,
    split_start: Option<Instant>,
    next_report: usize,
}

#[derive(Default, Clone, Copy)]
struct Mean {
    sum: f64,
    count: f64,
    last: f64,
    fin: Option<f64>,
}

impl Mean {
    fn add(&mut self, entry: &NumericEntry) {
        match entry {
            NumericEntry::Value(v) => {
                (self.sum, self.count, self.last) = (self.sum + v, self.count + 1.0, *v)
            }
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => {
                self.sum += aggregated_value * *count as f64;
                self.count += *count as f64;
                self.last = *aggregated_value;
            }
            NumericEntry::Final(v) => self.fin = Some(*v),
        }
    }

    fn value(&self) -> f64 {
        self.fin.unwrap_or(if self.count > 0.0 {
            self.sum / self.count
        } else {
            self.last
        })
    }
}

impl LineRenderer {
    fn record(&mut self, state: MetricState) {
        let MetricState::Numeric(entry, Some(value)) = state else {
            return;
        };
        let name = self
            .names
            .get(&entry.metric_id)
            .cloned()
            .unwrap_or_else(|| "metric".into());
        match self.values.iter_mut().find(|(n, _)| *n == name) {
            Some((_, mean)) => mean.add(&value),
            None => {
                let mut mean = Mean::default();
                mean.add(&value);
                self.values.push((name, mean));
            }
        }
    }

    fn elapsed(&self) -> f64 {
        self.split_start
            .map_or(0.0, |start| start.elapsed().as_secs_f64())
    }
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }
}

impl TrainingProgressLogger for LineRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epochs = total_epochs;
        self.epoch = starting_epoch.max(1);
    }

    fn update_epoch(&mut self, epoch: usize) {
        self.epoch = epoch + 1;
    }

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_string();
        self.split_items = total_items;
        self.split_start = Some(Instant::now());
        self.next_report = total_items.div_ceil(REPORTS_PER_SPLIT);
        self.values.clear();
    }

    fn update_split(&mut self, items: usize) {
        if items < self.next_report || items >= self.split_items {
            return;
        }
        self.next_report += self.split_items.div_ceil(REPORTS_PER_SPLIT);
        let seconds = self.elapsed();
        let rate = items as f64 / seconds.max(1e-9);
        let eta = (self.split_items - items) as f64 / rate.max(1e-9);
        let metric = |name: &str| self.values.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
        let loss = metric("Loss");
        let accuracy = metric("Accuracy").map(|m| m.value());
        println!(
            "epoch {}/{} {:<5} step {:>4} {:>3.0}% ({items}/{}) loss {} acc {} {rate:.0} img/s ETA {}",
            self.epoch,
            self.epochs,
            self.split,
            loss.map_or(0.0, |m| m.count),
            100.0 * items as f64 / self.split_items as f64,
            self.split_items,
            loss.map_or("-".into(), |m| format!("{:.4}", m.value())),
            accuracy.map_or("-".into(), |a| format!("{a:.2} %")),
            minutes_seconds(eta),
        );
    }

    fn end_split(&mut self) {
        // An empty split (validation with `data.valid_size` 0) has no figures to report.
        if self.split_items == 0 {
            return;
        }
        let seconds = self.elapsed();
        let metrics: Vec<String> = self
            .values
            .iter()
            .map(|(name, mean)| format!("{name} {}", format_value(name, mean.value())))
            .collect();
        println!(
            "epoch {}/{} {:<5} done in {}: {} ({:.0} img/s)",
            self.epoch,
            self.epochs,
            self.split,
            minutes_seconds(seconds),
            metrics.join(", "),
            self.split_items as f64 / seconds.max(1e-9),
        );
    }

    fn end(&mut self) {}

    /// Per-iteration events would flood a log; the progress lines above stand in for them.
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for LineRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for LineRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}

fn format_value(name: &str, value: f64) -> String {
    match name {
        "Accuracy" => format!("{value:.2} %"),
        "Learning Rate" => format!("{value:.2e}"),
        _ => format!("{value:.4}"),
    }
}

pub fn minutes_seconds(seconds: f64) -> String {
    let total = seconds.round() as u64;
    format!("{}:{:02}", total / 60, total % 60)
}
