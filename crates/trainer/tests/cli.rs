//! The trainer as a user runs it: train → eval → infer on a small synthetic MNIST, the errors a
//! user meets, and, when the real MNIST files are present, a short run on them.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

#[cfg(feature = "wgpu")]
use common::assert_same_history;
use common::{bar, bar_label, synthetic_mnist, text, trainer};

fn run(args: &[&str]) -> Output {
    let output = trainer()
        .args(args)
        .env_remove("MNIST_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "the trainer panicked:\n{stderr}"
    );
    output
}

fn smoke_config(dir: &Path, valid_size: usize, epochs: usize) -> PathBuf {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/smoke.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(configs).unwrap()).unwrap();
    config["data"]["valid_size"] = valid_size.into();
    config["epochs"] = epochs.into();
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// `train` of `config` on the MNIST files in `data`, into `artifacts/<name>`.
fn train_args<'a>(
    config: &'a str,
    data: &'a str,
    artifacts: &'a str,
    name: &'a str,
) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        config,
        "--data-dir",
        data,
        "--artifacts",
        artifacts,
        "--run",
        name,
    ]
}

fn report(run_dir: &Path) -> serde_json::Value {
    common::report_of(run_dir)
}

#[test]
fn train_then_eval_then_infer_on_synthetic_digits() {
    let work = tempfile::tempdir().unwrap();
    let (data, artifacts) = (work.path().join("data"), work.path().join("artifacts"));
    std::fs::create_dir_all(&data).unwrap();
    synthetic_mnist(&data, 700, 100, bar_label);
    let config = smoke_config(work.path(), 100, 8);
    let [config, data, artifacts] =
        [&config, &data, &artifacts].map(|p| p.to_str().unwrap().to_string());

    let train_bars = train_args(&config, &data, &artifacts, "bars");
    let trained = run(&train_bars);
    assert!(trained.status.success(), "{}", text(&trained));
    let run_dir = Path::new(&artifacts).join("bars");
    for file in [
        "training-config.json",
        "model-config.json",
        "model.bpk",
        "model.safetensors",
        "model-probe.safetensors",
        "report.json",
        "checkpoint",
    ] {
        assert!(
            run_dir.join(file).exists(),
            "{file} missing from the run directory"
        );
    }
    let report = report(&run_dir);
    let accuracy = report["test"]["accuracy"].as_f64().unwrap();
    assert!(
        accuracy > 80.0,
        "bars are easy to tell apart, yet test accuracy is {accuracy}"
    );
    assert_eq!(report["test"]["images"], 100);

    let run_dir = run_dir.to_str().unwrap();
    let evaluated = run(&["eval", "--run-dir", run_dir, "--data-dir", &data]);
    assert!(evaluated.status.success(), "{}", text(&evaluated));
    assert!(
        text(&evaluated).contains(&format!("accuracy {accuracy:.2} %")),
        "{}",
        text(&evaluated)
    );
    // One cell per misclassified test image, under a title line, ten to a row.
    let misses = 100
        - report["test"]["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(label, row)| row[label].as_u64().unwrap())
            .sum::<u64>();
    let gallery = image::open(Path::new(run_dir).join("mistakes.png")).unwrap();
    assert_eq!(gallery.width(), 1100);
    assert_eq!(
        gallery.height(),
        34 + 116 * misses.div_ceil(10) as u32,
        "{misses} mistakes"
    );

    let png = work.path().join("seven.png");
    image::GrayImage::from_raw(28, 28, bar(7))
        .unwrap()
        .save(&png)
        .unwrap();
    let inferred = run(&["infer", "--run-dir", run_dir, png.to_str().unwrap()]);
    assert!(inferred.status.success(), "{}", text(&inferred));
    assert!(
        text(&inferred).contains("seven.png: 7 ("),
        "{}",
        text(&inferred)
    );

    // What the model looked at: one picture per image, in the named directory.
    let pictures = work.path().join("explain");
    let explained = run(&[
        "explain",
        "--run-dir",
        run_dir,
        "--out",
        pictures.to_str().unwrap(),
        png.to_str().unwrap(),
    ]);
    assert!(explained.status.success(), "{}", text(&explained));
    let picture = image::open(pictures.join("seven-explain.png")).unwrap();
    assert!(picture.width() > 400 && picture.height() > 300);
    // The same name twice: a picture each, none overwritten.
    let again = work.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    std::fs::copy(&png, again.join("seven.png")).unwrap();
    let twice = run(&[
        "explain",
        "--run-dir",
        run_dir,
        "--out",
        pictures.to_str().unwrap(),
        png.to_str().unwrap(),
        again.join("seven.png").to_str().unwrap(),
    ]);
    assert!(twice.status.success(), "{}", text(&twice));
    assert!(
        pictures.join("seven-2-explain.png").is_file(),
        "{}",
        text(&twice)
    );

    // One bad file among good ones: every good file is answered, each bad one named, exit 1.
    let blank = work.path().join("blank.png");
    image::GrayImage::from_pixel(1, 1, image::Luma([128]))
        .save(&blank)
        .unwrap();
    let notes = work.path().join("notes.txt");
    std::fs::write(&notes, "not an image").unwrap();
    let files = [&png, &blank, &notes, &png].map(|path| path.to_str().unwrap().to_string());
    let mixed: Vec<&str> = ["infer", "--run-dir", run_dir]
        .into_iter()
        .chain(files.iter().map(String::as_str))
        .collect();
    let output = run(&mixed);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert_eq!(out.matches("seven.png: 7 (").count(), 2, "{out}");
    assert!(out.contains("blank.png: no digit found"), "{out}");
    assert!(out.contains("notes.txt is neither"), "{out}");
    assert!(out.contains("2 of 4 files gave no prediction"), "{out}");
    assert!(!out.contains("panicked"), "{out}");

    let json: Vec<&str> = mixed.iter().copied().chain(["--json"]).collect();
    let output = run(&json);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{}", text(&output));
    assert_eq!(lines[0]["digit"], 7);
    assert_eq!(lines[0]["probabilities"].as_array().unwrap().len(), 10);
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("no digit found")
    );
    assert!(lines[2]["path"].as_str().unwrap().ends_with("notes.txt"));

    let again = run(&train_bars);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already holds a finished run"),
        "{}",
        text(&again)
    );
}

/// `train --no-test` never reads the test files: with them corrupt it still trains and exports,
/// reports no test figures, and `eval` later is what finds them corrupt.
#[test]
fn train_with_no_test_leaves_the_test_set_alone() {
    let work = tempfile::tempdir().unwrap();
    let (data, artifacts) = (work.path().join("data"), work.path().join("artifacts"));
    std::fs::create_dir_all(&data).unwrap();
    synthetic_mnist(&data, 200, 50, bar_label);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("t10k")
        {
            std::fs::write(path, b"not an IDX file").unwrap();
        }
    }
    let config = smoke_config(work.path(), 100, 1);
    let [config, data, artifacts] =
        [&config, &data, &artifacts].map(|p| p.to_str().unwrap().to_string());
    let mut args = train_args(&config, &data, &artifacts, "validation-only");
    args.push("--no-test");
    let trained = run(&args);
    assert!(trained.status.success(), "{}", text(&trained));
    assert!(
        text(&trained).contains("test set untouched"),
        "{}",
        text(&trained)
    );
    let run_dir = Path::new(&artifacts).join("validation-only");
    assert!(run_dir.join("model.bpk").is_file());
    assert!(!run_dir.join("confusion.png").exists());
    assert!(report(&run_dir).get("test").is_none());

    let views = report(&run_dir)["valid_views"].clone();
    let run_dir = run_dir.to_str().unwrap();
    // The run's own validation split (100 images, from its config), with and without the
    // shifted views, scores what training reported, and needs no test file.
    for (tta, key) in [(None, "single"), (Some("--tta"), "shifted")] {
        let mut args = vec!["eval", "--run-dir", run_dir, "--data-dir", &data];
        args.extend(["--split", "valid"].into_iter().chain(tta));
        let validated = run(&args);
        assert!(validated.status.success(), "{}", text(&validated));
        let expected = format!("100 images: accuracy {:.2} %", views[key].as_f64().unwrap());
        assert!(
            text(&validated).contains(&expected),
            "{expected}: {}",
            text(&validated)
        );
    }
    let evaluated = run(&["eval", "--run-dir", run_dir, "--data-dir", &data]);
    assert!(!evaluated.status.success());
    assert!(
        text(&evaluated).contains("t10k-images"),
        "{}",
        text(&evaluated)
    );
}

#[test]
fn missing_mnist_files_say_what_to_put_where() {
    let empty = tempfile::tempdir().unwrap();
    let config = smoke_config(empty.path(), 100, 1);
    let artifacts = empty.path().join("artifacts");
    let output = run(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        empty.path().to_str().unwrap(),
        "--artifacts",
        artifacts.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("train-images-idx3-ubyte") && message.contains("MNIST_DIR"),
        "{message}"
    );
}

#[test]
fn a_broken_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.json");
    std::fs::write(&config, "{ \"model\": ").unwrap();
    let output = run(&["train", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(text(&output).contains("broken.json"), "{}", text(&output));
}

#[test]
fn infer_without_a_model_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["infer", "--run-dir", dir.path().to_str().unwrap(), "x.png"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("model.bpk"), "{}", text(&output));
}

/// `infer x.png` with `vars` set: the device is chosen before any file is read.
fn infer_with_env(vars: &[(&str, &str)]) -> Output {
    trainer()
        .envs(vars.iter().copied())
        .args(["infer", "x.png"])
        .output()
        .unwrap()
}

#[test]
fn a_backend_not_built_in_is_named() {
    let output = infer_with_env(&[("BURN_DEVICE", "cuda")]);
    let text = text(&output);
    assert!(!output.status.success());
    assert!(
        text.contains("BURN_DEVICE=cuda") && text.contains("flex") && !text.contains("panicked"),
        "{text}"
    );
}

/// wgpu asked for a GPU the machine does not have (here: a sixth discrete GPU, through
/// cubecl's device selector): the message says what failed and what to install.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_without_a_driver_says_what_to_install() {
    let output = infer_with_env(&[
        ("BURN_DEVICE", "wgpu"),
        ("CUBECL_WGPU_DEFAULT_DEVICE", "DiscreteGpu(5)"),
    ]);
    let text = text(&output);
    assert!(!output.status.success());
    assert!(
        text.contains("wgpu backend cannot start")
            && text.contains("mesa-vulkan-drivers")
            && !text.contains("panicked"),
        "{text}"
    );
}

/// Two wgpu devices train one run, each a part of every batch (here two Burn devices on
/// lavapipe's one adapter: `wgpu:cpu`, and wgpu's own choice): it ends with the history of the
/// run on one of them, and the report names both.
#[cfg(feature = "wgpu")]
#[test]
fn two_wgpu_devices_train_the_run_of_one() {
    let work = tempfile::tempdir().unwrap();
    let (data, artifacts) = (work.path().join("data"), work.path().join("artifacts"));
    std::fs::create_dir_all(&data).unwrap();
    synthetic_mnist(&data, 300, 50, bar_label);
    let config = smoke_config(work.path(), 100, 2);
    let [config, data, artifacts_text] =
        [&config, &data, &artifacts].map(|p| p.to_str().unwrap().to_string());
    let train = |run: &str, devices: &[&str]| {
        let mut command = trainer();
        // Minimal autotuning: lavapipe compiles every candidate kernel of every shape on
        // each device, minutes of a test about how the batch is split, not which kernel runs.
        command
            .env("BURN_DEVICE", "wgpu")
            .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
            .env_remove("MNIST_DIR");
        command.args(train_args(&config, &data, &artifacts_text, run));
        command.arg("--no-test");
        for device in devices {
            command.args(["--device", device]);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success() && !text(&output).contains("panicked"),
            "{}",
            text(&output)
        );
        report(&artifacts.join(run))
    };
    let one = train("one", &["wgpu:cpu"]);
    let two = train("two", &["wgpu:cpu", "wgpu"]);
    assert_eq!(two["backend"], "wgpu:cpu + wgpu:default");
    let history = |report: &serde_json::Value| report["history"].as_array().unwrap().clone();
    assert_same_history(
        &history(&one),
        &history(&two),
        "two wgpu devices against one",
    );
}

fn torch_fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures/torch-small")
        .join(file)
}

fn import(weights: &Path, model_config: &Path, out: &Path) -> Output {
    let [weights, model_config, out] = [weights, model_config, out].map(|p| p.to_str().unwrap());
    run(&[
        "import",
        "--weights",
        weights,
        "--model-config",
        model_config,
        "--out",
        out,
    ])
}

/// Weights made by the PyTorch reference become a run that `infer` serves; the probe that
/// travels with them is checked on the way in.
#[test]
fn pytorch_weights_are_imported_checked_and_served() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("imported");
    let weights = torch_fixture("model.safetensors");
    let config = torch_fixture("model-config.json");
    let imported = import(&weights, &config, &out);
    assert!(imported.status.success(), "{}", text(&imported));
    assert!(
        text(&imported).contains("logits agree"),
        "{}",
        text(&imported)
    );
    let model_before = std::fs::read(out.join("model.bpk")).unwrap();
    let again = import(&weights, &config, &out);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(std::fs::read(out.join("model.bpk")).unwrap(), model_before);

    let images = work.path().join("bars-idx3-ubyte");
    std::fs::write(
        &images,
        vit_data::idx::encode(&[2, 28, 28], &[bar(1), bar(2)].concat()),
    )
    .unwrap();
    let served = run(&[
        "infer",
        "--run-dir",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    assert!(served.status.success(), "{}", text(&served));
    assert_eq!(String::from_utf8_lossy(&served.stdout).lines().count(), 2);

    // No training config came with the weights, so there is no validation split to use.
    let validated = run(&[
        "eval",
        "--run-dir",
        out.to_str().unwrap(),
        "--split",
        "valid",
    ]);
    assert!(!validated.status.success());
    assert!(
        text(&validated).contains("training-config.json"),
        "{}",
        text(&validated)
    );
}

/// `export --format onnx` writes model.onnx into the run, never over a file already there
/// unless `--force`, and names what is wrong with a run directory that is not one.
#[test]
fn export_writes_onnx_once_and_replaces_only_with_force() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("imported");
    let imported = import(
        &torch_fixture("model.safetensors"),
        &torch_fixture("model-config.json"),
        &out,
    );
    assert!(imported.status.success(), "{}", text(&imported));
    let run_dir = out.to_str().unwrap();
    let export = |extra: &[&str]| {
        let mut args = vec!["export", "--run-dir", run_dir, "--format", "onnx"];
        args.extend_from_slice(extra);
        run(&args)
    };

    let exported = export(&[]);
    assert!(exported.status.success(), "{}", text(&exported));
    assert!(
        text(&exported).contains("0 (background) to 255"),
        "{}",
        text(&exported)
    );
    let onnx = out.join("model.onnx");
    let written = std::fs::read(&onnx).unwrap();
    // An ONNX model is a protobuf message whose field 1 is the IR version: 8.
    assert_eq!(&written[..2], &[0x08, 0x08]);

    std::fs::write(&onnx, b"a file of the user's").unwrap();
    let again = export(&[]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already exists") && text(&again).contains("--force"));
    assert_eq!(std::fs::read(&onnx).unwrap(), b"a file of the user's");
    let forced = export(&["--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert_eq!(std::fs::read(&onnx).unwrap(), written);

    let elsewhere = work.path().join("elsewhere.onnx");
    let moved = export(&["--out", elsewhere.to_str().unwrap()]);
    assert!(moved.status.success(), "{}", text(&moved));
    assert_eq!(std::fs::read(&elsewhere).unwrap(), written);

    let missing = work.path().join("no-such-run");
    let refused = run(&[
        "export",
        "--run-dir",
        missing.to_str().unwrap(),
        "--format",
        "onnx",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("no-such-run"), "{}", text(&refused));
    let unknown = run(&["export", "--run-dir", run_dir, "--format", "tflite"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("tflite"), "{}", text(&unknown));
}

#[test]
fn weights_whose_probe_disagrees_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let weights = work.path().join("model.safetensors");
    std::fs::copy(torch_fixture("model.safetensors"), &weights).unwrap();
    // A probe from other weights: the Rust side's own export of a fresh network.
    let other = work.path().join("other");
    let config = torch_fixture("model-config.json");
    let config_text = std::fs::read_to_string(&config).unwrap();
    let model_config: vit_model::VitConfig = serde_json::from_str(&config_text).unwrap();
    let device = burn::prelude::Device::flex();
    vit_model::artifact::save(&model_config.init(&device).unwrap(), &model_config, &other).unwrap();
    std::fs::copy(
        other.join("model-probe.safetensors"),
        work.path().join("model-probe.safetensors"),
    )
    .unwrap();

    let out = work.path().join("imported");
    let output = import(&weights, &config, &out);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("model-probe.safetensors"),
        "{}",
        text(&output)
    );
    assert!(!out.exists(), "nothing is written for refused weights");
}

/// The real thing, when the MNIST files are at `../shared/data/mnist` or `$MNIST_DIR`.
#[test]
fn a_short_run_on_real_mnist_learns() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    let dir = std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or(shared);
    if !dir.join("train-images-idx3-ubyte.gz").exists() {
        eprintln!("skipping: no MNIST files in {}", dir.display());
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/smoke.json");
    let artifacts = work.path().join("artifacts");
    let output = run(&[
        "train",
        "--config",
        configs.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--artifacts",
        artifacts.to_str().unwrap(),
        "--run",
        "real",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let accuracy = report(&artifacts.join("real"))["test"]["accuracy"]
        .as_f64()
        .unwrap();
    // 500 images, 2 epochs of a small ViT: far from converged, far above chance (10 %).
    assert!(accuracy > 40.0, "test accuracy {accuracy}");
}

#[test]
fn augment_preview_draws_a_grid_of_what_the_model_sees() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    synthetic_mnist(&data, 30, 10, bar_label);
    let augmented =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/vit-mnist-augmented.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(augmented).unwrap()).unwrap();
    json["data"]["valid_size"] = 10.into();
    let config = work.path().join("augmented.json");
    std::fs::write(&config, json.to_string()).unwrap();
    let out = work.path().join("grid.png");
    let [config, data, out_arg] = [&config, &data, &out].map(|p| p.to_str().unwrap().to_string());

    let output = run(&[
        "augment-preview",
        "--config",
        &config,
        "--data-dir",
        &data,
        "--out",
        &out_arg,
        "--images",
        "3",
        "--draws",
        "5",
    ]);

    assert!(output.status.success(), "{}", text(&output));
    let grid = image::open(&out).unwrap().to_luma8();
    // 6 cells of 84 px (28 × 3) across and 3 down, with 4 px gaps around each.
    assert_eq!(grid.dimensions(), (6 * 84 + 7 * 4, 3 * 84 + 4 * 4));
    // The first cell is the original image: the bar of digit 0 on row 2, drawn 3× larger.
    assert_eq!(grid.get_pixel(4 + 3 * 10, 4 + 3 * 2).0[0], 255);
    assert_eq!(grid.get_pixel(4 + 3 * 10, 4 + 3 * 5).0[0], 0);

    let tutorial =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/vit-mnist-tutorial.json");
    let output = run(&[
        "augment-preview",
        "--config",
        tutorial.to_str().unwrap(),
        "--data-dir",
        &data,
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("no `augment` section"),
        "{}",
        text(&output)
    );
}
