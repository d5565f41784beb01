//! A run's life as a user meets it: killed with SIGKILL mid-epoch and resumed, reproducible
//! from its seed, stopped with a clear message when the loss stops being a number, and its last
//! epochs averaged when the config asks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{bar_label, synthetic_mnist, text};

fn trainer() -> Command {
    let mut command = common::trainer();
    command
        .env_remove("MNIST_DIR")
        .env_remove("VIT_TRAINER_INJECT_NAN_AT_STEP");
    command
}

/// A work directory with synthetic data and the smoke config adjusted by `edit`.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new(train_images: u32, edit: impl FnOnce(&mut serde_json::Value)) -> Self {
        Self::with_labels(train_images, bar_label, edit)
    }

    fn with_labels(
        train_images: u32,
        label: fn(u32) -> u8,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        synthetic_mnist(&dir.path().join("data"), train_images, 100, label);
        let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/smoke.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(smoke).unwrap()).unwrap();
        config["data"] = serde_json::json!({ "valid_size": 100 });
        edit(&mut config);
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn train(&self, run: &str) -> Command {
        let mut command = trainer();
        common::train_in(&mut command, self.dir.path(), run);
        command
    }

    fn report(&self, run: &str) -> serde_json::Value {
        common::report_of(&self.path("artifacts").join(run))
    }
}

#[test]
fn a_run_killed_mid_epoch_resumes_from_its_last_checkpoint() {
    let work = Work::new(4100, |config| config["epochs"] = 4.into());
    let run_dir = work.path("artifacts").join("killed");
    let checkpoint = |epoch: usize| {
        ["model", "optim", "scheduler"].iter().all(|kind| {
            run_dir
                .join(format!("checkpoint/{kind}-{epoch}.bpk"))
                .is_file()
        })
    };

    let mut child = work
        .train("killed")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !checkpoint(1) {
        assert!(Instant::now() < deadline, "no checkpoint after two minutes");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Into the second epoch, then SIGKILL: no chance to clean up.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !run_dir.join("model.bpk").exists(),
        "the killed run must not look finished"
    );
    assert!(!checkpoint(4), "the kill came too late to test a resume");

    let resumed = trainer()
        .arg("train")
        .arg("--resume")
        .arg(&run_dir)
        .arg("--data-dir")
        .arg(work.path("data"))
        .output()
        .unwrap();

    let output = text(&resumed);
    assert!(resumed.status.success(), "{output}");
    assert!(
        output.contains("resuming") && output.contains("after epoch"),
        "{output}"
    );
    assert!(!output.contains("epochs 1-4"), "it started over:\n{output}");
    let report = work.report("killed");
    assert_eq!(report["epochs_run"], 4);
    assert_eq!(report["history"].as_array().unwrap().len(), 4);
    for file in [
        "model.bpk",
        "model-config.json",
        "loss.png",
        "accuracy.png",
        "confusion.png",
    ] {
        assert!(
            run_dir.join(file).is_file(),
            "{file} missing after the resumed run"
        );
    }
    let finished_again = trainer()
        .arg("train")
        .arg("--resume")
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(
        text(&finished_again).contains("nothing to resume"),
        "{}",
        text(&finished_again)
    );
}

#[test]
fn the_same_config_and_seed_give_the_same_metrics() {
    let work = Work::new(600, |config| config["epochs"] = 2.into());
    for run in ["first", "second"] {
        let output = work.train(run).output().unwrap();
        assert!(output.status.success(), "{}", text(&output));
    }
    let (first, second) = (work.report("first"), work.report("second"));
    assert_eq!(first["history"], second["history"]);
    assert_eq!(first["test"], second["test"]);
}

#[test]
fn a_diverging_loss_stops_the_run_naming_epoch_and_step() {
    let work = Work::new(600, |config| config["epochs"] = 3.into());
    // 500 images at batch 50: 10 steps an epoch, so step 13 of the run is epoch 2, step 3.
    let output = work
        .train("nan")
        .env("VIT_TRAINER_INJECT_NAN_AT_STEP", "13")
        .output()
        .unwrap();

    let message = text(&output);
    assert!(!output.status.success(), "{message}");
    assert!(
        message.contains("diverged") && message.contains("epoch 2, step 3"),
        "{message}"
    );
    assert!(
        message.contains("last complete checkpoint is epoch 1"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
    let run_dir = work.path("artifacts").join("nan");
    assert!(
        !run_dir.join("model.bpk").exists(),
        "a diverged model is not exported"
    );
    assert!(
        run_dir.join("checkpoint/model-1.bpk").is_file(),
        "the last good checkpoint is kept"
    );
    assert!(
        !run_dir.join("checkpoint/model-2.bpk").exists(),
        "the diverged epoch is not checkpointed"
    );
}

#[test]
fn early_stopping_ends_a_run_whose_validation_loss_stops_improving() {
    // Labels that have nothing to do with the images: the model can only memorise the training
    // split, so the validation loss soon rises, and patience 1 ends the run.
    let noise = |i: u32| (i.wrapping_mul(2_654_435_761) >> 7) as u8 % 10;
    let work = Work::with_labels(600, noise, |config| {
        config["epochs"] = 12.into();
        config["early_stopping"] = serde_json::json!({ "patience": 1 });
    });

    let output = work.train("stops").output().unwrap();

    assert!(output.status.success(), "{}", text(&output));
    let report = work.report("stops");
    let epochs_run = report["epochs_run"].as_u64().unwrap();
    assert!(epochs_run < 12, "early stopping never fired: {report}");
    let history = report["history"].as_array().unwrap();
    let valid_loss = |epoch: u64| history[epoch as usize - 1]["valid_loss"].as_f64().unwrap();
    let best = (1..=epochs_run).map(valid_loss).fold(f64::MAX, f64::min);
    assert!(
        valid_loss(epochs_run) > best,
        "it stopped while still improving: {report}"
    );
}

#[test]
fn the_mean_of_the_last_epochs_is_weighed_against_the_best_epoch_on_validation() {
    let work = Work::new(600, |config| {
        config["epochs"] = 3.into();
        config["average_last"] = 2.into();
    });

    let output = work.train("averaged").output().unwrap();

    let message = text(&output);
    assert!(output.status.success(), "{message}");
    assert!(message.contains("mean weights of epochs 2-3"), "{message}");
    let report = work.report("averaged");
    let average = &report["average"];
    assert_eq!(
        (&average["first_epoch"], &average["last_epoch"]),
        (&2.into(), &3.into()),
        "{report}"
    );
    let (mean, best) = (
        average["valid_accuracy"].as_f64().unwrap(),
        average["best_epoch_valid_accuracy"].as_f64().unwrap(),
    );
    assert_eq!(average["exported"].as_bool(), Some(mean > best), "{report}");
    // The best epoch evaluated again after training scores what the learner logged for it
    // (within one of the 100 validation images, for batches of another size).
    let epoch = report["exported_epoch"].as_u64().unwrap() as usize;
    let logged = report["history"][epoch - 1]["valid_accuracy"]
        .as_f64()
        .unwrap();
    assert!((best - logged).abs() <= 1.0, "{best} vs {logged}: {report}");
    let checkpoints = work.path("artifacts").join("averaged/checkpoint");
    for epoch in [2, 3] {
        assert!(checkpoints.join(format!("model-{epoch}.bpk")).is_file());
    }
}

#[test]
fn a_run_on_every_training_image_exports_its_last_weights_without_validation() {
    // The protocol of a final run: no validation split, the export fixed in advance (here the
    // mean of the last two epochs), the test set once.
    let work = Work::new(600, |config| {
        config["epochs"] = 3.into();
        config["data"] = serde_json::json!({ "valid_size": 0 });
        config["average_last"] = 2.into();
    });

    let output = work.train("all").output().unwrap();

    let message = text(&output);
    assert!(output.status.success(), "{message}");
    assert!(
        message.contains("600 training and 0 validation"),
        "{message}"
    );
    let report = work.report("all");
    assert_eq!(report["train_images"], 600);
    assert_eq!(report["exported_epoch"], 3);
    let average = &report["average"];
    assert_eq!(average["exported"], true, "{report}");
    assert!(average["valid_accuracy"].is_null(), "{report}");
    assert!(report.get("valid_views").is_none(), "{report}");
    for epoch in report["history"].as_array().unwrap() {
        assert!(
            epoch["train_loss"].is_f64() && epoch["valid_loss"].is_null(),
            "{epoch}"
        );
    }
    assert!(report["test"]["accuracy"].is_f64());

    // Early stopping needs a validation loss: refused before anything is written.
    let refused = Work::new(600, |config| {
        config["data"] = serde_json::json!({ "valid_size": 0 });
        config["early_stopping"] = serde_json::json!({ "patience": 2 });
    });
    let output = refused.train("stops").output().unwrap();
    let message = text(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("early_stopping") && message.contains("data.valid_size 0"),
        "{message}"
    );
    assert!(!refused.path("artifacts").join("stops").exists());
}
