//! `infer`: the predicted digit and class probabilities for image files or an IDX file.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::Device;
use vit_data::{IMAGE_SIDE, idx};
use vit_model::mnist_style;

use super::args::{RunArgs, views};

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn exec(args: Args, device: &Device) -> anyhow::Result<()> {
    let run = args.run.open()?;
    let predictor = vit_model::load(run.path(), device)
        .with_context(|| format!("cannot load the model of {}", run.path().display()))?
        .with_views(views(args.tta));
    // Every good file is answered; each bad one is an error line, and the exit code says
    // whether there was any.
    let mut failed = 0;
    for path in &args.files {
        let answered = read_file(path, args.limit).and_then(|inputs| {
            let rows = predictor.predict(&pixels(&inputs))?;
            Ok(inputs.into_iter().zip(rows).collect::<Vec<_>>())
        });
        match answered {
            Ok(answers) => {
                for (input, probabilities) in answers {
                    let line = if args.json {
                        describe_json(&input, &probabilities)
                    } else {
                        describe(&input, &probabilities)
                    };
                    println!("{line}");
                }
            }
            Err(error) if args.json => {
                failed += 1;
                println!("{}", error_json(path, &error));
            }
            Err(error) => {
                failed += 1;
                eprintln!("error: {error:#}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files gave no prediction", args.files.len());
    }
    Ok(())
}

const PNG_MAGIC: &[u8] = b"\x89PNG";
const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff";

/// One input image, named for the output.
pub struct Input {
    pub name: String,
    pub pixels: [u8; IMAGE_SIDE * IMAGE_SIDE],
}

/// Reads a PNG / JPEG file (any size) or an IDX image file (every image in it, up to `limit`).
pub fn read_file(path: &Path, limit: usize) -> anyhow::Result<Vec<Input>> {
    if is_picture(path)? {
        let pixels = mnist_style::from_file(path)?;
        let name = path.display().to_string();
        return Ok(vec![Input { name, pixels }]);
    }
    let images = idx::read_images(path).with_context(|| {
        format!(
            "{} is neither a PNG/JPEG image nor an IDX image file",
            path.display()
        )
    })?;
    anyhow::ensure!(
        (images.rows, images.cols) == (IMAGE_SIDE, IMAGE_SIDE),
        "{}: images are {}x{}, the model reads {IMAGE_SIDE}x{IMAGE_SIDE}",
        path.display(),
        images.rows,
        images.cols
    );
    let inputs = images
        .pixels
        .chunks_exact(IMAGE_SIDE * IMAGE_SIDE)
        .take(limit)
        .enumerate()
        .map(|(i, pixels)| Input {
            name: format!("{}[{i}]", path.display()),
            pixels: pixels.try_into().expect("chunks are one image long"),
        })
        .collect();
    Ok(inputs)
}

fn is_picture(path: &Path) -> anyhow::Result<bool> {
    let mut head = [0u8; 4];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let read = file
        .read(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(head[..read].starts_with(PNG_MAGIC) || head[..read].starts_with(JPEG_MAGIC))
}

/// Every input's pixels, one image after another, as [`vit_model::Predictor::predict`] takes them.
pub fn pixels(inputs: &[Input]) -> Vec<u8> {
    inputs.iter().flat_map(|input| input.pixels).collect()
}

/// One JSON line for scripts: `{"path", "digit", "probabilities"}`.
pub fn describe_json(input: &Input, probabilities: &[f32]) -> String {
    let (digit, _) = vit_model::best(probabilities);
    serde_json::json!({
        "path": input.name,
        "digit": digit,
        "probabilities": probabilities,
    })
    .to_string()
}

/// One JSON line for a file that gave no prediction: `{"path", "error"}`.
pub fn error_json(path: &Path, error: &anyhow::Error) -> String {
    serde_json::json!({
        "path": path.display().to_string(),
        "error": format!("{error:#}"),
    })
    .to_string()
}

/// `name: 7 (99.81 %)  0:0.00 1:0.01 …` with the probabilities in percent.
pub fn describe(input: &Input, probabilities: &[f32]) -> String {
    let (digit, best) = vit_model::best(probabilities);
    let all: Vec<String> = probabilities
        .iter()
        .enumerate()
        .map(|(d, p)| format!("{d}:{:.2}", 100.0 * p))
        .collect();
    format!(
        "{}: {digit} ({:.2} %)  [{}]",
        input.name,
        100.0 * best,
        all.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_names_the_most_likely_digit() {
        let input = Input {
            name: "three.png".into(),
            pixels: [0; 784],
        };
        let mut probabilities = vec![0.01; 10];
        probabilities[3] = 0.91;
        let line = describe(&input, &probabilities);
        assert!(line.starts_with("three.png: 3 (91.00 %)"), "{line}");
    }

    #[test]
    fn idx_files_give_one_input_per_image_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images-idx3-ubyte");
        std::fs::write(&path, idx::encode(&[3, 28, 28], &[7; 3 * 784])).unwrap();
        let inputs = read_file(&path, 2).unwrap();
        assert_eq!(inputs.len(), 2);
        assert!(inputs[1].name.ends_with("images-idx3-ubyte[1]"));
    }

    #[test]
    fn a_file_that_is_neither_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "hello, world").unwrap();
        let error = format!("{:#}", read_file(&path, 10).err().unwrap());
        assert!(
            error.contains("notes.txt") && error.contains("neither"),
            "{error}"
        );
    }
}
