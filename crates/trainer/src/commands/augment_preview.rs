//! `augment-preview`: training images beside augmented draws of them, as one PNG.

use std::path::PathBuf;

use anyhow::Context;
use burn::data::dataset::Dataset;
use vit_data::{MnistDataset, Split};

use super::args::DataArgs;
use crate::charts;
use crate::config::TrainingConfig;

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn exec(args: Args) -> anyhow::Result<()> {
    let config = TrainingConfig::load(&args.config)?;
    let augment = config.augment.as_ref().with_context(|| {
        format!(
            "{} has no `augment` section: nothing to preview",
            args.config.display()
        )
    })?;
    let train_set = MnistDataset::load(&args.data.dir()?, Split::Train, &config.data)?;
    let items: Vec<_> = (0..args.images.min(train_set.len()))
        .map(|i| train_set.get(i).expect("in-memory dataset"))
        .collect();
    let grid = vit_data::augment::preview_grid(&items, augment, config.seed, args.draws);
    charts::save_png(&args.out, &image::DynamicImage::ImageLuma8(grid))?;
    println!(
        "wrote {} ({} images × {} augmented draws)",
        args.out.display(),
        items.len(),
        args.draws
    );
    Ok(())
}
