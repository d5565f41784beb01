//! `serve` as a user meets it: a trained run behind the HTTP server on an ephemeral loopback
//! port, every endpoint, every error status, a panicking handler, concurrent clients, a full
//! queue, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};

mod common;

use common::{bar, bar_label, synthetic_mnist, text};
use serde_json::{Value, json};

/// A finished run on synthetic digits, in `dir/artifacts/bars`.
fn trained_run(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    synthetic_mnist(&data, 700, 100, bar_label);
    let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/smoke.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(smoke).unwrap()).unwrap();
    config["data"] = json!({ "valid_size": 100 });
    config["epochs"] = 8.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut command = common::trainer();
    common::train_in(&mut command, dir, "bars");
    let output = command.env_remove("MNIST_DIR").output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    dir.join("artifacts/bars")
}

/// The server on a free port, with its test hooks on and `options`, and its base URL.
fn start(run_dir: &Path, options: &[&str]) -> (Child, String) {
    let mut server = common::trainer()
        .args(["serve", "--addr", "127.0.0.1:0", "--run-dir"])
        .arg(run_dir)
        .args(options)
        .env("VIT_TRAINER_SERVE_TEST_HOOKS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    (server, url)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// Status and JSON body of a POST to `/api/predict`.
fn predict(url: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    predict_with(url, content_type, body, &[])
}

/// [`predict`] with extra `headers`.
fn predict_with(
    url: &str,
    content_type: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = agent()
        .post(format!("{url}/api/predict"))
        .header("Content-Type", content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.send(body).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"));
    (status, json)
}

fn png(pixels: &[u8], side: u32) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(side, side, pixels.to_vec())
        .unwrap()
        .write_to(&mut bytes, image::ImageFormat::Png)
        .unwrap();
    bytes.into_inner()
}

#[test]
fn the_server_answers_every_endpoint_and_every_bad_request_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = trained_run(dir.path());
    let (server, url) = start(&run_dir, &[]);
    let get = |path: &str| {
        let mut response = agent().get(format!("{url}{path}")).call().unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    };

    assert_eq!(get("/healthz"), (200, "ok".to_string()));
    let (status, page) = get("/");
    assert_eq!(status, 200);
    assert!(page.contains("<canvas") && page.contains("/api/predict"));
    let (status, model) = get("/api/model");
    assert_eq!(status, 200);
    let model: Value = serde_json::from_str(&model).unwrap();
    assert!(model["parameters"].as_u64().unwrap() > 1000, "{model}");
    assert!(model["test_accuracy"].is_f64(), "{model}");

    // A picture and the same digit as JSON pixels.
    let (status, answer) = predict(&url, "image/png", &png(&bar(7), 28));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["digit"], 7, "{answer}");
    assert_eq!(answer["probabilities"].as_array().unwrap().len(), 10);
    for key in ["attention", "input"] {
        let rows = answer[key].as_array().unwrap();
        assert!(rows.len() == 28 && rows.iter().all(|row| row.as_array().unwrap().len() == 28));
    }
    let (status, answer) = predict(
        &url,
        "application/json",
        json!({ "pixels": bar(3) }).to_string().as_bytes(),
    );
    assert_eq!(
        (status, answer["digit"].clone()),
        (200, json!(3)),
        "{answer}"
    );

    // Every bad request: its status and a JSON error.
    let cases: [(&str, Vec<u8>, u16); 6] = [
        (
            "application/json",
            json!({ "pixels": [1, 2, 3] }).to_string().into_bytes(),
            400,
        ),
        ("application/json", b"{ not json".to_vec(), 400),
        ("image/png", b"not a png".to_vec(), 400),
        ("text/plain", b"7".to_vec(), 415),
        ("image/png", png(&[128; 784], 28), 422),
        ("image/png", vec![0u8; 2 << 20], 413),
    ];
    for (content_type, body, expected) in cases {
        let (status, answer) = predict(&url, content_type, &body);
        assert_eq!(status, expected, "{content_type}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }

    // A handler that panics answers 500, and the server goes on serving.
    let mut response = agent()
        .post(format!("{url}/api/predict"))
        .header("Content-Type", "image/png")
        .header("x-test-panic", "1")
        .send(&png(&bar(7), 28)[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let _ = response.body_mut().read_to_string();
    assert_eq!(get("/healthz").0, 200);

    // Concurrent clients are all answered, in batches.
    let body = png(&bar(5), 28);
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..16)
            .map(|_| scope.spawn(|| predict(&url, "image/png", &body)))
            .collect();
        for client in clients {
            let (status, answer) = client.join().unwrap();
            assert_eq!(
                (status, answer["digit"].clone()),
                (200, json!(5)),
                "{answer}"
            );
        }
    });

    let (status, stdout, stderr) = stop(server);
    assert!(status.success(), "{status}: {stdout}{stderr}");
    assert!(stdout.contains("stopping"), "{stdout}");
    assert!(
        stderr.contains("panicked") && stderr.matches("panicked").count() == 1,
        "only the hook's panic: {stderr}"
    );

    // A full queue answers 503 and the server goes on. The first request keeps the model's
    // thread asleep for 3 s; two more fill the queue of 2 and the other four are refused.
    let (server, url) = start(&run_dir, &["--queue", "2"]);
    std::thread::scope(|scope| {
        let held =
            scope.spawn(|| predict_with(&url, "image/png", &body, &[("x-test-hold-ms", "3000")]));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let clients: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| predict(&url, "image/png", &body)))
            .collect();
        let statuses: Vec<u16> = clients
            .into_iter()
            .map(|client| {
                let (status, answer) = client.join().unwrap();
                if status == 503 {
                    assert!(answer["error"].is_string(), "{answer}");
                }
                status
            })
            .collect();
        assert_eq!(held.join().unwrap().0, 200);
        let refused = statuses.iter().filter(|&&status| status == 503).count();
        let answered = statuses.iter().filter(|&&status| status == 200).count();
        assert_eq!((refused, answered), (4, 2), "{statuses:?}");
    });
    assert_eq!(predict(&url, "image/png", &body).0, 200);
    let (status, stdout, stderr) = stop(server);
    assert!(status.success(), "{status}: {stdout}{stderr}");
}

/// SIGTERM, then the exit status and everything the server printed.
fn stop(mut server: Child) -> (std::process::ExitStatus, String, String) {
    // SAFETY: kill(2) on our own child's pid only sends it a signal.
    unsafe {
        libc::kill(server.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = server.wait().unwrap();
    let mut rest = String::new();
    server
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    let mut stderr = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, rest, stderr)
}
