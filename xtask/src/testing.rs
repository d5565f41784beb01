//! `cargo xtask test` runs the workspace's test binaries side by side: one `cargo test --no-run`
//! builds them, then as many run at once as the machine has cores, each in its package's
//! directory, with the doc tests (`cargo test --doc`) among them. `cargo test` runs one binary
//! after another, and most of the tests' time is lavapipe compiling and running wgpu kernels
//! on one thread, which left a core of two idle for minutes (docs/benchmarks.md, "How long CI
//! takes"). Each binary's output is printed whole when it ends, with its time; every binary
//! runs even when one fails, and the run fails if any did.
//!
//! A command line that picks targets itself (`--test NAME`, `--lib`, `--doc`, `--no-run` …)
//! goes to `cargo test` as it is.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Output};
use std::sync::Mutex;
use std::time::Instant;

use crate::builds::build_messages;

/// Options that choose which targets `cargo test` builds or runs: with one of them the command
/// line is `cargo test`'s own.
const TARGET_OPTIONS: [&str; 12] = [
    "--lib",
    "--bin",
    "--bins",
    "--test",
    "--tests",
    "--example",
    "--examples",
    "--bench",
    "--benches",
    "--all-targets",
    "--doc",
    "--no-run",
];

/// The binaries that take longest (the wgpu cases on lavapipe), started first so that the
/// short ones fill the other cores around them; measured, docs/benchmarks.md.
const SLOWEST_FIRST: [&str; 4] = ["cli", "backends", "parity", "remote_ops"];

/// A test binary from cargo's build messages.
#[derive(Debug, PartialEq)]
pub struct TestBinary {
    /// The target's name (`cli`, `vit_trainer` …).
    pub name: String,
    /// The directory of its package's `Cargo.toml`, where `cargo test` would run it.
    pub package_dir: PathBuf,
    pub executable: PathBuf,
}

/// Whether `cargo_args` leave the choice of targets to the default (then the binaries run side
/// by side).
pub fn runs_side_by_side(cargo_args: &[String]) -> bool {
    !cargo_args.iter().any(|arg| {
        let option = arg.split('=').next().unwrap_or(arg);
        TARGET_OPTIONS.contains(&option)
    })
}

/// The test binaries named in cargo's JSON messages (one object per line; other lines are
/// skipped), the slowest known ones first, the rest in cargo's order.
pub fn test_binaries(messages: &str) -> Vec<TestBinary> {
    let mut binaries: Vec<TestBinary> = messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["profile"]["test"] == true)
        .filter_map(|message| {
            let executable = message["executable"].as_str()?;
            let manifest = PathBuf::from(message["manifest_path"].as_str()?);
            Some(TestBinary {
                name: message["target"]["name"].as_str()?.to_string(),
                package_dir: manifest.parent()?.to_path_buf(),
                executable: executable.into(),
            })
        })
        .collect();
    binaries.sort_by_key(|binary| {
        SLOWEST_FIRST
            .iter()
            .position(|slow| *slow == binary.name)
            .unwrap_or(SLOWEST_FIRST.len())
    });
    binaries
}

/// One thing to run: a test binary or the doc tests.
struct Job {
    title: String,
    command: Command,
}

/// Builds the tests with `build` (a `cargo test` command with the test build's features and
/// environment), then runs each test binary with `binary_args`, and `doc` (the doc tests), as
/// many at once as there are cores.
pub fn run_side_by_side(
    mut build: Command,
    binary_args: &[String],
    mut doc: Command,
) -> Result<ExitCode, String> {
    let messages = build_messages(&mut build, "the test build")?;
    let environment: Vec<_> = build
        .get_envs()
        .filter_map(|(key, value)| Some((key.to_owned(), value?.to_owned())))
        .collect();
    let mut jobs: VecDeque<Job> = test_binaries(&messages)
        .into_iter()
        .map(|binary| {
            let mut command = Command::new(&binary.executable);
            command
                .args(binary_args)
                .current_dir(&binary.package_dir)
                .envs(environment.iter().cloned())
                .env("CARGO_MANIFEST_DIR", &binary.package_dir);
            let package = binary.package_dir.file_name().unwrap_or_default();
            Job {
                title: format!("{} ({})", binary.name, package.to_string_lossy()),
                command,
            }
        })
        .collect();
    let binaries = jobs.len();
    doc.arg("--doc");
    if !binary_args.is_empty() {
        doc.arg("--").args(binary_args);
    }
    // After the slow binaries, before the quick ones: it compiles its examples first.
    jobs.insert(
        SLOWEST_FIRST.len().min(jobs.len()),
        Job {
            title: "doc tests".into(),
            command: doc,
        },
    );
    let count = jobs.len();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("running {binaries} test binaries and the doc tests, {cores} at a time");
    let started = Instant::now();
    let queue = Mutex::new(jobs);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..cores.min(count) {
            scope.spawn(|| {
                loop {
                    // Its own statement: the queue's lock is released before the job runs.
                    let next = queue.lock().expect("the queue").pop_front();
                    let Some(mut job) = next else { break };
                    let begun = Instant::now();
                    let result = job.command.output();
                    let seconds = begun.elapsed().as_secs_f64();
                    if !report(&job.title, seconds, &result) {
                        failed.lock().expect("the failures").push(job.title);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().expect("the failures");
    let seconds = started.elapsed().as_secs_f64();
    if failed.is_empty() {
        println!("{binaries} test binaries and the doc tests passed in {seconds:.0} s");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} of {count} runs failed in {seconds:.0} s: {}",
        failed.len(),
        failed.join(", ")
    );
    Ok(ExitCode::FAILURE)
}

/// Prints one job's output whole, under a line with its title, outcome and time; whether it
/// passed.
fn report(title: &str, seconds: f64, result: &std::io::Result<Output>) -> bool {
    let (passed, outcome) = match result {
        Ok(output) if output.status.success() => (true, "passed".to_string()),
        Ok(output) => (false, format!("FAILED ({})", output.status)),
        Err(error) => (false, format!("FAILED to start: {error}")),
    };
    let mut text = format!("\n== {title}: {outcome} in {seconds:.1} s\n");
    if let Ok(output) = result {
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        text.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    // One print per job, so two jobs' outputs never interleave.
    print!("{text}");
    passed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binaries_come_from_cargo_messages_the_slowest_first() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"vit_data","kind":["lib"]},"profile":{"test":true},"manifest_path":"/w/crates/data/Cargo.toml","executable":"/t/deps/vit_data-1"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"vit_data","kind":["lib"]},"profile":{"test":false},"manifest_path":"/w/crates/data/Cargo.toml","executable":null}"#,
            "not JSON: a line a build script printed",
            r#"{"reason":"compiler-artifact","target":{"name":"vit-trainer","kind":["bin"]},"profile":{"test":false},"manifest_path":"/w/crates/trainer/Cargo.toml","executable":"/t/vit-trainer"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"cli","kind":["test"]},"profile":{"test":true},"manifest_path":"/w/crates/trainer/Cargo.toml","executable":"/t/deps/cli-2"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let binaries = test_binaries(&messages);
        let names: Vec<_> = binaries.iter().map(|binary| binary.name.as_str()).collect();
        assert_eq!(names, ["cli", "vit_data"]);
        assert_eq!(binaries[0].package_dir, PathBuf::from("/w/crates/trainer"));
        assert_eq!(binaries[0].executable, PathBuf::from("/t/deps/cli-2"));
    }

    #[test]
    fn only_the_default_targets_run_side_by_side() {
        let args = |list: &[&str]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(runs_side_by_side(&args(&["-p", "vit-trainer"])));
        assert!(runs_side_by_side(&[]));
        assert!(!runs_side_by_side(&args(&["--test", "remote"])));
        assert!(!runs_side_by_side(&args(&["--test=remote"])));
        assert!(!runs_side_by_side(&args(&["-p", "vit-ops", "--lib"])));
        assert!(!runs_side_by_side(&args(&["--no-run"])));
    }
}
