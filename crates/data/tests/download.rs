//! The download path, offline: a small HTTP server on 127.0.0.1 plays the mirrors, serving
//! fixture files, a corrupted copy, a truncated one and a 404.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use vit_data::download::{MAX_CONTENT_BYTES, ensure_files, ensure_mnist, fetch_file};
use vit_data::idx::encode;
use vit_data::{DataConfig, MnistDataset, Split};

/// What the server answers for a path.
#[derive(Clone)]
enum Reply {
    Ok(Vec<u8>),
    /// Announces the full length but closes the connection halfway through the body.
    CutShort(Vec<u8>),
}

/// Serves `routes` on a free port until 60 s have passed or 100 requests were answered; any
/// other path gets a 404. Returns the base URL.
fn serve(routes: HashMap<String, Reply>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answered = 0;
        while Instant::now() < deadline && answered < 100 {
            match listener.accept() {
                Ok((stream, _)) => {
                    answered += 1;
                    answer(stream, &routes);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    base
}

fn answer(stream: TcpStream, routes: &HashMap<String, Reply>) {
    stream.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let mut stream = stream;
    let _ = match routes.get(&path) {
        Some(Reply::Ok(body)) => write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .and_then(|()| stream.write_all(body)),
        Some(Reply::CutShort(body)) => write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .and_then(|()| stream.write_all(&body[..body.len() / 2])),
        None => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tiny but valid MNIST: (file name, IDX content) for the four standard files.
fn fixture() -> Vec<(&'static str, Vec<u8>)> {
    let images = |n: u32| encode(&[n, 28, 28], &vec![9u8; n as usize * 784]);
    let labels = |n: u32| encode(&[n], &(0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    vec![
        ("train-images-idx3-ubyte", images(12)),
        ("train-labels-idx1-ubyte", labels(12)),
        ("t10k-images-idx3-ubyte", images(3)),
        ("t10k-labels-idx1-ubyte", labels(3)),
    ]
}

#[test]
fn first_mirror_404_then_a_good_copy() {
    let (name, content) = fixture().remove(1);
    let good = serve(HashMap::from([(
        format!("/b/{name}.gz"),
        Reply::Ok(gzip(&content)),
    )]));
    let mirrors = vec![format!("{good}/a/"), format!("{good}/b/")];
    let dir = tempfile::tempdir().unwrap();

    let path = fetch_file(dir.path(), name, &sha256(&content), &mirrors).unwrap();

    assert_eq!(path, dir.path().join(format!("{name}.gz")));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no partial file is left behind"
    );
}

#[test]
fn corrupted_and_truncated_copies_are_rejected_and_the_next_mirror_used() {
    let (name, content) = fixture().remove(0);
    let mut corrupted = content.clone();
    corrupted[100] ^= 0xff;
    let routes = HashMap::from([
        (format!("/corrupt/{name}.gz"), Reply::Ok(gzip(&corrupted))),
        (format!("/cut/{name}.gz"), Reply::CutShort(gzip(&content))),
        (format!("/good/{name}.gz"), Reply::Ok(gzip(&content))),
    ]);
    let base = serve(routes);
    let mirrors = ["corrupt", "cut", "good"]
        .map(|m| format!("{base}/{m}/"))
        .to_vec();
    let dir = tempfile::tempdir().unwrap();

    fetch_file(dir.path(), name, &sha256(&content), &mirrors).unwrap();

    let stored = std::fs::read(dir.path().join(format!("{name}.gz"))).unwrap();
    assert_eq!(stored, gzip(&content));
}

#[test]
fn when_every_mirror_fails_the_error_lists_them_and_the_manual_way() {
    let (name, content) = fixture().remove(0);
    let mut corrupted = content.clone();
    corrupted[50] ^= 1;
    let base = serve(HashMap::from([
        (format!("/corrupt/{name}.gz"), Reply::Ok(gzip(&corrupted))),
        (format!("/cut/{name}.gz"), Reply::CutShort(gzip(&content))),
    ]));
    let mirrors = ["missing", "corrupt", "cut"]
        .map(|m| format!("{base}/{m}/"))
        .to_vec();
    let dir = tempfile::tempdir().unwrap();

    let message = fetch_file(dir.path(), name, &sha256(&content), &mirrors)
        .unwrap_err()
        .to_string();

    for mirror in &mirrors {
        assert!(message.contains(&format!("{mirror}{name}.gz")), "{message}");
    }
    assert!(message.contains("404"), "{message}");
    assert!(message.contains("wrong content"), "{message}");
    assert!(
        message.contains("--data-dir") && message.contains("MNIST_DIR"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing is left behind"
    );
}

#[test]
fn ensure_fetches_only_what_is_missing_and_the_result_loads() {
    let files = fixture();
    let routes = files
        .iter()
        .map(|(name, content)| (format!("/m/{name}.gz"), Reply::Ok(gzip(content))))
        .collect();
    let base = serve(routes);
    let dir = tempfile::tempdir().unwrap();
    // One file is already there, uncompressed: it must be kept, not fetched again.
    std::fs::write(dir.path().join(files[3].0), &files[3].1).unwrap();

    // The real checksums do not match these fixtures, so use a fetch per file like ensure does.
    for (name, content) in &files[..3] {
        fetch_file(dir.path(), name, &sha256(content), &[format!("{base}/m/")]).unwrap();
    }
    let test = MnistDataset::load(
        dir.path(),
        Split::Test,
        &DataConfig {
            valid_size: 2,
            ..DataConfig::default()
        },
    );
    assert_eq!(burn::data::dataset::Dataset::len(&test.unwrap()), 3);

    // With every file present and sound, no mirror is asked at all.
    let expected: Vec<(&str, String)> = files
        .iter()
        .map(|(name, content)| (*name, sha256(content)))
        .collect();
    let expected: Vec<(&str, &str)> = expected.iter().map(|(n, s)| (*n, s.as_str())).collect();
    let never = ["http://127.0.0.1:9/never/".to_string()];
    ensure_files(dir.path(), &expected, &never).unwrap();

    // A cached file that rotted is found out when it is used, named, and not replaced.
    let damaged = dir.path().join(files[3].0);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[9] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let message = ensure_files(dir.path(), &expected, &never)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(files[3].0)
            && message.contains("wrong content")
            && message.contains("Delete it"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&damaged).unwrap(),
        bytes,
        "the user's file is kept"
    );
    // The real MNIST sums are what ensure_mnist holds the cache to.
    assert!(ensure_mnist(dir.path(), &never).is_err());
}

#[test]
fn a_gzip_bomb_from_a_mirror_fails_early_and_is_not_stored() {
    let (name, content) = fixture().remove(0);
    let bomb = gzip(&vec![0u8; (MAX_CONTENT_BYTES + (1 << 20)) as usize]);
    let base = serve(HashMap::from([(
        format!("/bomb/{name}.gz"),
        Reply::Ok(bomb),
    )]));
    let dir = tempfile::tempdir().unwrap();

    let message = fetch_file(
        dir.path(),
        name,
        &sha256(&content),
        &[format!("{base}/bomb/")],
    )
    .unwrap_err()
    .to_string();

    assert!(message.contains("runs past"), "{message}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
