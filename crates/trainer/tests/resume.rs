//! A resumed run is the same run: killed at a chosen step of a chosen epoch, or just after a
//! late stage (`VIT_TRAINER_KILL_AT`), then resumed, it ends with the history, the weights and
//! the logits of the run that was never stopped, bit for bit on the CPU backends. It refuses to
//! continue on other data, and a run that cannot start leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::prelude::*;

mod common;

use common::{bar, bar_label, synthetic_mnist, text};

/// The trainer's exit status when the kill hook ends it.
const KILLED: i32 = 137;

/// A work directory with synthetic MNIST and the smoke config with augmentation, so both the
/// order and the augmented draws of each epoch matter.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        synthetic_mnist(&dir.path().join("data"), 600, 100, bar_label);
        let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/smoke.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(smoke).unwrap()).unwrap();
        config["data"] = serde_json::json!({ "valid_size": 100 });
        config["epochs"] = 3.into();
        config["augment"] =
            serde_json::json!({ "rotation_degrees": 10.0, "translate_pixels": 2.0 });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run_dir(&self, run: &str) -> PathBuf {
        self.path("artifacts").join(run)
    }

    fn trainer(&self, backend: &str) -> Command {
        let mut command = common::trainer();
        command
            .env("BURN_DEVICE", backend)
            .env_remove("MNIST_DIR")
            .env_remove("VIT_TRAINER_INJECT_NAN_AT_STEP")
            .env_remove("VIT_TRAINER_KILL_AT");
        command
    }

    fn train(&self, backend: &str, run: &str, kill_at: Option<&str>) -> Output {
        let mut command = self.trainer(backend);
        common::train_in(&mut command, self.dir.path(), run);
        if let Some(at) = kill_at {
            command.env("VIT_TRAINER_KILL_AT", at);
        }
        command.output().unwrap()
    }

    fn resume(&self, backend: &str, run: &str, data: &Path) -> Output {
        self.trainer(backend)
            .arg("train")
            .arg("--resume")
            .arg(self.run_dir(run))
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap()
    }

    /// Trains `run` with the hook set to `kill_at`, checks it was killed, then resumes it.
    fn killed_and_resumed(&self, backend: &str, run: &str, kill_at: &str) {
        let killed = self.train(backend, run, Some(kill_at));
        assert_eq!(killed.status.code(), Some(KILLED), "{}", text(&killed));
        assert!(
            !self.run_dir(run).join("report.json").exists(),
            "a killed run must not look finished"
        );
        let resumed = self.resume(backend, run, &self.path("data"));
        assert!(resumed.status.success(), "{}", text(&resumed));
    }

    fn report(&self, run: &str) -> serde_json::Value {
        common::report_of(&self.run_dir(run))
    }

    /// The exported model's logits for ten fixed images, computed on flex.
    fn logits(&self, run: &str) -> Vec<f32> {
        let device = Device::flex();
        let (vit, _) = vit_model::artifact::load(&self.run_dir(run), &device).unwrap();
        let pixels: Vec<f32> = (0..10)
            .flat_map(|digit| bar(digit))
            .map(vit_data::normalise)
            .collect();
        let images = Tensor::<4>::from_data(TensorData::new(pixels, [10, 1, 28, 28]), &device);
        vit.forward(images).into_data().try_to_vec::<f32>().unwrap()
    }
}

#[test]
fn a_run_killed_mid_epoch_and_resumed_ends_bit_for_bit_like_one_never_stopped() {
    for backend in ["flex", "ndarray"] {
        let work = Work::new();
        let whole = work.train(backend, "whole", None);
        assert!(whole.status.success(), "{}", text(&whole));
        // 500 training images at batch 50: 10 steps an epoch; step 3 of epoch 2.
        work.killed_and_resumed(backend, "killed", "2:3");

        let (whole, resumed) = (work.report("whole"), work.report("killed"));
        assert_eq!(whole["history"], resumed["history"], "{backend}");
        assert_eq!(whole["test"], resumed["test"], "{backend}");
        assert_eq!(work.logits("whole"), work.logits("killed"), "{backend}");
    }
}

#[test]
fn a_run_killed_after_fitting_exporting_or_testing_is_finished_by_resume() {
    let work = Work::new();
    let whole = work.train("flex", "whole", None);
    assert!(whole.status.success(), "{}", text(&whole));
    for stage in ["fitted", "exported", "tested"] {
        work.killed_and_resumed("flex", stage, stage);
        assert_eq!(
            work.report("whole")["history"],
            work.report(stage)["history"],
            "{stage}"
        );
        assert_eq!(work.logits("whole"), work.logits(stage), "{stage}");
        // The probe (fixed inputs, this model's logits) is the same file, byte for byte.
        let probe = |run: &str| std::fs::read(work.run_dir(run).join("model-probe.safetensors"));
        assert_eq!(probe("whole").unwrap(), probe(stage).unwrap(), "{stage}");
    }
}

#[test]
fn an_unfinished_run_is_not_evaluated_and_is_resumed_only_on_its_own_data() {
    let work = Work::new();
    let killed = work.train("flex", "killed", Some("exported"));
    assert_eq!(killed.status.code(), Some(KILLED), "{}", text(&killed));

    // Exported but not reported: not a model to evaluate, and not the newest finished run.
    let eval = work
        .trainer("flex")
        .arg("eval")
        .arg("--run-dir")
        .arg(work.run_dir("killed"))
        .arg("--data-dir")
        .arg(work.path("data"))
        .output()
        .unwrap();
    let message = text(&eval);
    assert!(!eval.status.success(), "{message}");
    assert!(
        message.contains("unfinished run") && message.contains("--resume"),
        "{message}"
    );

    // The same files under another name, with one label changed.
    let other = work.path("other-data");
    std::fs::create_dir_all(&other).unwrap();
    synthetic_mnist(&other, 600, 100, |i| if i == 0 { 3 } else { bar_label(i) });
    let refused = work.resume("flex", "killed", &other);
    let message = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    let (data, other) = (
        work.path("data").canonicalize().unwrap(),
        other.canonicalize().unwrap(),
    );
    assert!(
        message.contains(&data.display().to_string())
            && message.contains(&other.display().to_string()),
        "the error names both directories: {message}"
    );
    assert!(!message.contains("panicked"), "{message}");
    assert!(!work.run_dir("killed").join("report.json").exists());
}

#[test]
fn a_run_that_cannot_start_leaves_no_run_directory() {
    let work = Work::new();
    std::fs::remove_file(work.path("data/t10k-labels-idx1-ubyte")).unwrap();
    let failed = work.train("flex", "no-data", None);
    let message = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{message}");
    assert!(message.contains("t10k-labels-idx1-ubyte"), "{message}");
    assert!(
        !work.run_dir("no-data").exists(),
        "a failed start leaves nothing behind"
    );
}

/// libtorch on the CPU is not bit-reproducible across threads, so a resumed tch run is held to
/// what does hold: the same epochs in the same order with the same augmented images, hence the
/// same figures within float noise.
#[cfg(feature = "tch")]
#[test]
fn on_tch_a_resumed_run_agrees_with_one_never_stopped_within_float_noise() {
    let work = Work::new();
    let whole = work.train("tch", "whole", None);
    assert!(whole.status.success(), "{}", text(&whole));
    work.killed_and_resumed("tch", "killed", "2:3");
    let (whole, resumed) = (work.report("whole"), work.report("killed"));
    let history = |report: &serde_json::Value| report["history"].as_array().unwrap().clone();
    assert_eq!(history(&whole).len(), history(&resumed).len());
    for (a, b) in history(&whole).iter().zip(history(&resumed).iter()) {
        let (a, b) = (
            a["train_loss"].as_f64().unwrap(),
            b["train_loss"].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 1e-3 * a.abs().max(1e-3), "{a} vs {b}");
    }
}
