//! Load on `serve`: N requests from C concurrent loopback clients against a trained run, the
//! server batching requests (its default) and answering each alone (`--batch 1`), in
//! interleaved rounds. Reports requests/s, p50 and p99 latency and errors per round and the
//! median round per mode. Run it as `cargo xtask bench --serve --run-dir R [options]`.
//!
//! Every request is what the page sends when a stroke ends: a 28×28 PNG of a digit, answered
//! with the digit, the probabilities, the attention rollout and the input.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Requests/s and latency of `serve`, batched and unbatched")]
struct Options {
    /// The trained run to serve.
    #[arg(long)]
    run_dir: PathBuf,
    /// Concurrent clients, each with one keep-alive connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests per round and mode, shared among the clients.
    #[arg(long, default_value_t = 6000)]
    requests: usize,
    /// Rounds; each measures both modes, alternating which goes first.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The backend the server runs on.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// `cargo bench` passes it; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One mode's figures in one round.
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

const MODES: [(&str, &[&str]); 2] = [("batched", &[]), ("unbatched", &["--batch", "1"])];

fn main() {
    let options = Options::parse();
    if !options.run_dir.join("model-config.json").is_file() {
        eprintln!(
            "error: --run-dir {}: no trained run there (train one first: `cargo xtask train`)",
            options.run_dir.display()
        );
        std::process::exit(1);
    }
    if options.clients == 0 || options.requests < options.clients {
        eprintln!("error: --requests must be at least --clients, and --clients at least 1");
        std::process::exit(1);
    }
    let body = digit_png();
    let servers: Vec<Server> = MODES
        .iter()
        .map(|(_, flags)| Server::start(&options, flags))
        .collect();
    for server in &servers {
        // Warm-up: connections, the allocator, the first batches of each size.
        load(&server.url, &body, options.clients, 50 * options.clients);
    }
    println!(
        "serve load: {} clients, {} requests per round and mode, backend {}, run {}",
        options.clients,
        options.requests,
        options.backend,
        options.run_dir.display()
    );
    let mut figures: [Vec<Load>; 2] = [Vec::new(), Vec::new()];
    for round in 0..options.rounds {
        // Alternate which mode goes first, so neither always meets a warmer machine.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for mode in order {
            let result = load(&servers[mode].url, &body, options.clients, options.requests);
            println!(
                "round {} {:>9}: {:>6.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                round + 1,
                MODES[mode].0,
                result.requests_per_second,
                result.p50_ms,
                result.p99_ms,
                result.errors
            );
            figures[mode].push(result);
        }
    }
    println!();
    println!("| mode | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|");
    for (mode, rounds) in figures.iter_mut().enumerate() {
        rounds.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
        let median = &rounds[rounds.len() / 2];
        let errors: usize = rounds.iter().map(|round| round.errors).sum();
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {errors} |",
            MODES[mode].0, median.requests_per_second, median.p50_ms, median.p99_ms
        );
    }
    println!("(the median round by requests/s; errors summed over all rounds)");
    drop(servers);
}

/// A server child process, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(options: &Options, flags: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vit-trainer"))
            .args(["serve", "--addr", "127.0.0.1:0", "--run-dir"])
            .arg(&options.run_dir)
            .args(flags)
            .env("BURN_DEVICE", &options.backend)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start the server: {error}"));
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("piped")),
            &mut line,
        )
        .expect("the server prints its address");
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
            let _ = child.kill();
            panic!("the server did not start: {line:?}");
        };
        Self {
            url: url.trim_end_matches('/').to_string(),
            child,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid only sends it a signal.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// `requests` POSTs of `body` from `clients` threads; figures over all of them.
fn load(url: &str, body: &[u8], clients: usize, requests: usize) -> Load {
    let endpoint = format!("{url}/api/predict");
    let started = Instant::now();
    let per_client: Vec<(Vec<Duration>, usize)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|client| {
                let share = requests / clients + usize::from(client < requests % clients);
                let endpoint = &endpoint;
                scope.spawn(move || client_loop(endpoint, body, share))
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a client thread"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let errors = per_client.iter().map(|(_, errors)| errors).sum();
    let mut latencies: Vec<Duration> = per_client.into_iter().flat_map(|(l, _)| l).collect();
    latencies.sort();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1e3
    };
    Load {
        requests_per_second: requests as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        errors,
    }
}

/// One client: `count` requests in a row on one connection; latencies and errors (any answer
/// but 200 with a digit, or a failed connection).
fn client_loop(endpoint: &str, body: &[u8], count: usize) -> (Vec<Duration>, usize) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    for _ in 0..count {
        let sent = Instant::now();
        let answered = agent
            .post(endpoint)
            .header("Content-Type", "image/png")
            .send(body)
            .ok()
            .filter(|response| response.status() == 200)
            .and_then(|mut response| response.body_mut().read_to_string().ok())
            .is_some_and(|text| text.contains("\"digit\""));
        latencies.push(sent.elapsed());
        errors += usize::from(!answered);
    }
    (latencies, errors)
}

/// A 28×28 PNG of a hand-drawn-like 7: a top stroke and a slanted down stroke, two pixels
/// wide.
fn digit_png() -> Vec<u8> {
    let mut image = image::GrayImage::new(28, 28);
    for x in 7..21 {
        for y in 6..8 {
            image.put_pixel(x, y, image::Luma([255]));
        }
    }
    for y in 8..23 {
        let x = 20 - (y - 8) * 2 / 5;
        for dx in 0..2 {
            image.put_pixel(x - dx, y, image::Luma([255]));
        }
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("a PNG encodes");
    bytes.into_inner()
}
