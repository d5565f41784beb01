//! Training on Burn compute servers against training locally, on the same cores: the trainer's
//! own images/s (its report) for a local run on both cores and on one, a run on one compute
//! server pinned to one core (the trainer on the other), and on two servers pinned to a core
//! each; the bytes that crossed each server's link per training step, and the CPU time the
//! trainer and the servers spent per step (the whole run's, start-up and validation included,
//! so compare settings with each other rather than with a step's time). The servers and
//! the trainer are on hosts of their own (network namespaces joined by veth pairs), as in the
//! tests. Run it as `cargo xtask bench --remote [--config F] [--images N] [--rounds R]`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;

#[path = "../tests/common/netns.rs"]
#[allow(dead_code)]
mod netns;

#[derive(Parser)]
#[command(about = "Training images/s and bytes per step on compute servers, against local")]
struct Options {
    /// The training config (its model, batch size and optimiser; one epoch is trained)
    /// [default: the tutorial preset].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The MNIST directory [default: $MNIST_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Training images in the epoch.
    #[arg(long, default_value_t = 5000)]
    images: usize,
    /// Rounds; each runs every setting once, in the same order.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// `cargo bench` passes it; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Where a run trains: taskset cores for the trainer, and how many compute servers.
struct Setting {
    name: &'static str,
    trainer_cores: &'static str,
    servers: usize,
}

const SETTINGS: [Setting; 4] = [
    Setting {
        name: "local, 2 cores",
        trainer_cores: "0,1",
        servers: 0,
    },
    Setting {
        name: "local, 1 core",
        trainer_cores: "1",
        servers: 0,
    },
    Setting {
        name: "1 compute server (core 1; trainer on core 0)",
        trainer_cores: "0",
        servers: 1,
    },
    Setting {
        name: "2 compute servers (cores 0 and 1)",
        trainer_cores: "0,1",
        servers: 2,
    },
];

fn main() -> ExitCode {
    let options = Options::parse();
    if !netns::available() {
        return ExitCode::FAILURE;
    }
    let Some(data_dir) = options
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("MNIST_DIR").map(PathBuf::from))
    else {
        eprintln!("error: name the MNIST directory with --data-dir or MNIST_DIR");
        return ExitCode::FAILURE;
    };
    let work = tempfile::tempdir().expect("a work directory");
    let preset =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/vit-mnist-tutorial.json");
    let source = options.config.clone().unwrap_or(preset);
    let (config, batch) = match one_epoch_config(&source, options.images, work.path()) {
        Ok(made) => made,
        Err(error) => {
            eprintln!("error: {}: {error}", source.display());
            return ExitCode::FAILURE;
        }
    };
    let binary = Path::new(env!("CARGO_BIN_EXE_vit-trainer"));
    let mut hosts = netns::Hosts::new(2);
    hosts.start_server(0, binary, None, Some(1));
    hosts.start_server(1, binary, None, Some(0));
    let steps = options.images.div_ceil(batch);
    println!(
        "{} images in {steps} steps of {batch}, config {}",
        options.images,
        source.display()
    );
    for round in 1..=options.rounds {
        for (index, setting) in SETTINGS.iter().enumerate() {
            let before: Vec<(u64, u64)> = (0..2).map(|server| hosts.link_bytes(server)).collect();
            let servers_cpu = || -> f64 {
                (0..setting.servers)
                    .map(|server| {
                        cpu_seconds(&format!("/proc/{}/stat", hosts.server_pid(server)), 11)
                    })
                    .sum()
            };
            let cpu_before = (cpu_seconds("/proc/self/stat", 13), servers_cpu());
            let run = format!("round{round}-{index}");
            let mut train = Command::new("taskset");
            train
                .args(["-c", setting.trainer_cores])
                .arg(binary)
                .env("BURN_DEVICE", "flex")
                .arg("train")
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--artifacts")
                .arg(work.path())
                .args(["--run", &run, "--no-test"]);
            for server in 0..setting.servers {
                train.arg("--device").arg(hosts.server_url(server));
            }
            let output = hosts.on_trainer(&train).output().expect("run the trainer");
            // `ip netns exec` and `taskset` exec the trainer, so it is a child this process
            // waited for, and its CPU time is in this process's children's.
            let trainer_cpu = cpu_seconds("/proc/self/stat", 13) - cpu_before.0;
            let server_cpu = servers_cpu() - cpu_before.1;
            if !output.status.success() {
                eprintln!(
                    "{}: {}",
                    setting.name,
                    String::from_utf8_lossy(&output.stderr)
                );
                // Returning, not exiting: dropping `hosts` stops the servers and removes the
                // namespaces.
                return ExitCode::FAILURE;
            }
            let report: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(work.path().join(&run).join("report.json"))
                    .expect("the run's report"),
            )
            .expect("a JSON report");
            let bytes: u64 = (0..2)
                .map(|server| {
                    let (tx, rx) = hosts.link_bytes(server);
                    (tx - before[server].0) + (rx - before[server].1)
                })
                .sum();
            println!(
                "round {round}: {:<48} {:>8.0} training images/s, {:>7.2} MB over the links per \
                 step; CPU ms per step: trainer {:>5.1}, servers {:>5.1} (the epoch's validation \
                 pass included)",
                setting.name,
                report["train_images_per_second"].as_f64().unwrap_or(0.0),
                bytes as f64 / steps as f64 / 1e6,
                trainer_cpu * 1e3 / steps as f64,
                server_cpu * 1e3 / steps as f64,
            );
        }
    }
    ExitCode::SUCCESS
}

/// User plus system CPU seconds from a `/proc/PID/stat` file: the two fields from the
/// `first`-th after the command name's closing parenthesis (11 for the process's own time, 13
/// for its waited-for children's; `proc(5)` numbers them 14 and 16). 0 when unreadable.
fn cpu_seconds(stat: &str, first: usize) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ, which /proc reports in on every Linux ABI
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|text| {
            let fields: Vec<&str> = text.rsplit_once(") ")?.1.split_whitespace().collect();
            let ticks = |index: usize| fields.get(index)?.parse::<f64>().ok();
            Some(ticks(first)? + ticks(first + 1)?)
        })
        .map_or(0.0, |ticks| ticks / ticks_per_second)
}

/// The config at `source` for one epoch of `images` images and a 500-image validation pass,
/// written in `dir`; and its batch size. What needs more than one epoch (the average of the
/// last epochs' weights, a learning-rate warm-up) is left out, so every preset can be measured.
fn one_epoch_config(
    source: &Path,
    images: usize,
    dir: &Path,
) -> Result<(PathBuf, usize), Box<dyn std::error::Error>> {
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(source)?)?;
    config["epochs"] = 1.into();
    for (object, key) in [("", "average_last"), ("/schedule/cosine", "warmup_steps")] {
        if let Some(object) = config
            .pointer_mut(object)
            .and_then(serde_json::Value::as_object_mut)
        {
            object.remove(key);
        }
    }
    config["data"]["train_limit"] = images.into();
    config["data"]["eval_limit"] = 500.into();
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string())?;
    let batch = config["batch_size"].as_u64().unwrap_or(100) as usize;
    Ok((path, batch))
}
