//! `serve`: the model over HTTP (the server itself is `crate::serve`).

use burn::tensor::Device;

use super::args::RunArgs;
use crate::{run_dir, serve, training};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// The address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    #[command(flatten)]
    batching: serve::Batching,
}

pub fn exec(args: Args, device: Device) -> anyhow::Result<()> {
    let run = args.run.open()?;
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
    serve::serve(model, description, args.addr, args.batching, device)
}
