//! `vit-trainer`: train, evaluate and run the MNIST ViT on the backend it was compiled with
//! (cargo features `flex`, `ndarray`, `wgpu`, `tch`; with several, Burn picks one and the
//! `BURN_DEVICE` variable can name another).

mod charts;
mod config;
mod evaluation;
mod explain;
mod fault;
mod guard;
mod history;
mod infer;
mod mistakes;
mod renderer;
mod run_dir;
mod serve;
mod training;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use burn::data::dataset::Dataset;
use clap::{Parser, Subcommand};
use vit_data::{DataConfig, DataDirSource, MnistDataset, Split, download, resolve_data_dir};
use vit_model::interchange;
use vit_model::{Views, artifact};

use vit_trainer::backend;

use crate::config::{TrainingConfig, check_fits_mnist};
use crate::run_dir::{RunDir, default_run_name};

#[derive(Parser)]
#[command(
    version,
    about = "Train, evaluate and run a Vision Transformer on MNIST"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The libtorch device for the tch backend: `cpu`, `cuda` or `cuda:N` [default: the first
    /// CUDA device when libtorch sees one, else the CPU].
    #[arg(long, global = true, value_name = "cpu|cuda[:N]")]
    device: Option<backend::TorchDevice>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and evaluate it once on the test set (unless `--no-test`).
    Train {
        /// Training config (model, optimiser, schedule, data, epochs, seed).
        #[arg(long, default_value = "configs/vit-mnist-tutorial.json")]
        config: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Where run directories are created.
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// Run directory name [default: <config name>-<UTC date>-<time>].
        #[arg(long)]
        run: Option<String>,
        /// Override the config's number of epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Continue an unfinished run from its last complete checkpoint, with its own config.
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "run", "epochs"])]
        resume: Option<PathBuf>,
        /// Leave the test set untouched: the run reports validation only, for comparing
        /// settings. `eval --run-dir` tests the chosen run later, once.
        #[arg(long)]
        no_test: bool,
    },
    /// Evaluate a finished run on the MNIST test set (or its validation split); writes
    /// confusion.png into the run for the test set.
    Eval {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        data: DataArgs,
        /// The split to evaluate: `valid` is the run's own validation split, for choices
        /// such as `--tta`; `test` is for the final figure, once.
        #[arg(long, value_enum, default_value_t = EvalSplit::Test)]
        split: EvalSplit,
        /// Test-time augmentation: average each prediction over the image and its four
        /// one-pixel shifts (five forward passes).
        #[arg(long)]
        tta: bool,
    },
    /// Draw a PNG grid of training images next to augmented versions: what the model sees.
    AugmentPreview {
        /// A training config with an `augment` section.
        #[arg(long, default_value = "configs/vit-mnist-augmented.json")]
        config: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// The PNG to write.
        #[arg(long, default_value = "augment-preview.png")]
        out: PathBuf,
        /// Training images, one per row.
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// Augmented versions of each, beside the original.
        #[arg(long, default_value_t = 8)]
        draws: usize,
    },
    /// Draw what the model looks at in each image: the input it saw, the attention rollout of
    /// the class token over it, and the last block's attention per head, with the prediction.
    Explain {
        #[command(flatten)]
        run: RunArgs,
        /// PNG or JPEG images of digits, any size.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where the pictures go (`<image name>-explain.png`).
        #[arg(long, default_value = "explain")]
        out: PathBuf,
    },
    /// Serve the model over HTTP: a page to draw or upload a digit (`GET /`), and
    /// `POST /api/predict`, `GET /api/model`, `GET /healthz`.
    Serve {
        #[command(flatten)]
        run: RunArgs,
        /// The address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        #[command(flatten)]
        batching: serve::Batching,
    },
    /// Make a run directory from weights trained elsewhere (PyTorch: tools/torch_reference.py):
    /// a safetensors file in the layout `model.safetensors` documents, and its model config.
    /// A `model-probe.safetensors` beside the weights is checked: same inputs, same logits.
    Import {
        /// The weights, safetensors, PyTorch layout.
        #[arg(long)]
        weights: PathBuf,
        /// The model config (`model-config.json`) of the network the weights belong to.
        #[arg(long)]
        model_config: PathBuf,
        /// The run directory to write (model config, burnpack and safetensors weights).
        #[arg(long)]
        out: PathBuf,
    },
    /// Predict the digit of PNG/JPEG images (any size) or of the images in an IDX file.
    Infer {
        #[command(flatten)]
        run: RunArgs,
        /// Image files, or IDX image files (`*-idx3-ubyte[.gz]`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// At most this many images from each IDX file.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Average each prediction over the image and its four one-pixel shifts.
        #[arg(long)]
        tta: bool,
        /// One JSON object per line and image (path, digit, probabilities) or per bad file
        /// (path, error), for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EvalSplit {
    Valid,
    Test,
}

fn views(tta: bool) -> Views {
    if tta { Views::Shifted } else { Views::Single }
}

#[derive(clap::Args)]
struct DataArgs {
    /// Directory with the four MNIST files [default: $MNIST_DIR, else ~/.cache/vit-mnist/mnist].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A run directory [default: the newest finished run under artifacts/].
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

impl DataArgs {
    /// The MNIST directory. Only the default cache directory is filled from the mirrors: a
    /// directory the user named is theirs, and missing files there are an error.
    fn dir(&self) -> anyhow::Result<PathBuf> {
        let (dir, source) = resolve_data_dir(self.data_dir.as_deref());
        if source == DataDirSource::Cache {
            download::ensure_mnist(&dir, &download::mirrors())?;
        }
        Ok(dir)
    }
}

impl RunArgs {
    fn open(&self) -> anyhow::Result<RunDir> {
        match &self.run_dir {
            Some(path) => RunDir::open(path),
            None => RunDir::latest(std::path::Path::new("artifacts")),
        }
    }
}

/// Errors end the program with their whole chain of causes on stderr and a non-zero status,
/// never a backtrace, whatever `RUST_BACKTRACE` says.
fn main() -> ExitCode {
    vit_trainer::memory::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let device = backend::select(cli.device)?;
    match cli.command {
        Command::Train {
            config: config_path,
            data,
            artifacts,
            run,
            epochs,
            resume,
            no_test,
        } => {
            let test = if no_test {
                training::TestSet::Untouched
            } else {
                training::TestSet::Evaluate
            };
            if let Some(path) = resume {
                let run = RunDir::resume(&path)?;
                let config = TrainingConfig::load(&run.training_config_path())?;
                let prepared = training::prepare(&config, &data.dir()?, test)?;
                println!(
                    "resuming {} after epoch {}",
                    run.path().display(),
                    run.last_checkpoint()
                );
                training::resume(prepared, &run, &device)?;
                return Ok(());
            }
            let mut config = TrainingConfig::load(&config_path)?;
            if let Some(epochs) = epochs {
                config.epochs = epochs;
                config.validate()?;
            }
            // Everything that can fail on the data fails before the run directory exists.
            let prepared = training::prepare(&config, &data.dir()?, test)?;
            let name = run.unwrap_or_else(|| default_run_name(&config_path));
            let run = RunDir::create(&artifacts, &name)?;
            training::start(prepared, &run, &device)?;
        }
        Command::Eval {
            run,
            data,
            split,
            tta,
        } => {
            let run = run.open()?;
            let (model, _) = run.load_mnist_model(&device)?;
            let (split, data_config, name) = match split {
                EvalSplit::Test => (Split::Test, DataConfig::default(), "test"),
                EvalSplit::Valid => (Split::Valid, run_data_config(&run)?, "validation"),
            };
            let dataset = MnistDataset::load(&data.dir()?, split, &data_config)?;
            let evaluation = evaluation::evaluate(&model, &dataset, 500, views(tta), &device);
            let how = if tta {
                ", five shifted views per image"
            } else {
                ""
            };
            println!(
                "{} on {device:?}{how}: {name} {evaluation}",
                run.path().display()
            );
            if split == Split::Test {
                let chart = run.path().join(charts::CONFUSION_CHART);
                charts::confusion_matrix(&evaluation.confusion, &chart)?;
                let gallery = run.path().join(mistakes::MISTAKES_CHART);
                mistakes::draw(&dataset, &evaluation.mistakes, &gallery)?;
                println!(
                    "confusion matrix drawn in {}, the mistakes in {}",
                    chart.display(),
                    gallery.display()
                );
            }
        }
        Command::AugmentPreview {
            config: config_path,
            data,
            out,
            images,
            draws,
        } => {
            let config = TrainingConfig::load(&config_path)?;
            let augment = config.augment.as_ref().with_context(|| {
                format!(
                    "{} has no `augment` section: nothing to preview",
                    config_path.display()
                )
            })?;
            let train_set = MnistDataset::load(&data.dir()?, Split::Train, &config.data)?;
            let items: Vec<_> = (0..images.min(train_set.len()))
                .map(|i| train_set.get(i).expect("in-memory dataset"))
                .collect();
            let grid = vit_data::augment::preview_grid(&items, augment, config.seed, draws);
            charts::save_png(&out, &image::DynamicImage::ImageLuma8(grid))?;
            println!(
                "wrote {} ({} images × {} augmented draws)",
                out.display(),
                items.len(),
                draws
            );
        }
        Command::Infer {
            run,
            files,
            limit,
            tta,
            json,
        } => {
            let run = run.open()?;
            let predictor = vit_model::load(run.path(), &device)
                .with_context(|| format!("cannot load the model of {}", run.path().display()))?
                .with_views(views(tta));
            // Every good file is answered; each bad one is an error line, and the exit code
            // says whether there was any.
            let mut failed = 0;
            for path in &files {
                let answered = infer::read_file(path, limit).and_then(|inputs| {
                    let rows = predictor.predict(&infer::pixels(&inputs))?;
                    Ok(inputs.into_iter().zip(rows).collect::<Vec<_>>())
                });
                match answered {
                    Ok(answers) => {
                        for (input, probabilities) in answers {
                            let line = if json {
                                infer::describe_json(&input, &probabilities)
                            } else {
                                infer::describe(&input, &probabilities)
                            };
                            println!("{line}");
                        }
                    }
                    Err(error) if json => {
                        failed += 1;
                        println!("{}", infer::error_json(path, &error));
                    }
                    Err(error) => {
                        failed += 1;
                        eprintln!("error: {error:#}");
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} files gave no prediction", files.len());
            }
        }
        Command::Serve {
            run,
            addr,
            batching,
        } => {
            let run = run.open()?;
            let (model, config) = run.load_mnist_model(&device)?;
            // A cosmetic figure: a report that cannot be read leaves it out.
            let test_accuracy = run
                .read_json::<training::RunReport>(run_dir::REPORT_FILE)
                .ok()
                .flatten()
                .and_then(|report| report.test)
                .map(|test| test.accuracy);
            let description = serde_json::json!({
                "run": run.path().display().to_string(),
                "config": config,
                "parameters": burn::module::Module::num_params(&model),
                "test_accuracy": test_accuracy,
            });
            serve::serve(model, description, addr, batching, device)?;
        }
        Command::Explain { run, files, out } => {
            let run = run.open()?;
            let (model, _) = run.load_mnist_model(&device)?;
            for written in explain::explain_files(&model, &files, &out, &device)? {
                println!("wrote {}", written.display());
            }
        }
        Command::Import {
            weights,
            model_config,
            out,
        } => {
            let config = artifact::load_config(&model_config)?;
            check_fits_mnist(&config)
                .with_context(|| format!("{}: not a model for MNIST", model_config.display()))?;
            let taken = out
                .read_dir()
                .is_ok_and(|mut entries| entries.next().is_some());
            if taken || out.is_file() {
                anyhow::bail!(
                    "{} already exists: import writes a new run directory and never \
                     overwrites one (choose another --out)",
                    out.display()
                );
            }
            let model = interchange::import_safetensors(&weights, &config, &device)?;
            let probe_path = weights.with_file_name(artifact::PROBE_FILE);
            if probe_path.is_file() {
                let diff = interchange::check_probe(&model, &probe_path, &device)?;
                println!(
                    "probe {}: logits agree within {diff:.2e}",
                    probe_path.display()
                );
            }
            artifact::save(&model, &config, &out)?;
            println!(
                "imported {} into {} (infer and eval take it as --run-dir)",
                weights.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// The data section of the config `run` was trained with, which fixes its validation split.
fn run_data_config(run: &RunDir) -> anyhow::Result<DataConfig> {
    let path = run.training_config_path();
    if !path.is_file() {
        anyhow::bail!(
            "{} has no training config ({}), so its validation split is unknown; evaluate \
             the test split instead",
            run.path().display(),
            path.display()
        );
    }
    let data = TrainingConfig::load(&path)?.data;
    if data.valid_size == 0 {
        anyhow::bail!(
            "{} was trained on every training image (data.valid_size 0): it has no validation \
             split; evaluate the test split instead",
            run.path().display()
        );
    }
    Ok(data)
}
