//! What a finished run prints: what was exported, how it did, and where the files are.

use super::report::RunReport;
use crate::renderer::minutes_seconds;
use crate::run_dir::RunDir;

pub fn print(report: &RunReport, run: &RunDir) {
    let exported = match &report.average {
        Some(average) if average.exported => format!(
            "the mean weights of epochs {}-{}",
            average.first_epoch, average.last_epoch
        ),
        _ => format!(
            "epoch {} (best validation accuracy of {} epochs)",
            report.exported_epoch, report.epochs_run
        ),
    };
    println!("exported {exported}");
    if let Some(average) = &report.average
        && let (Some(mean), Some(best)) =
            (average.valid_accuracy, average.best_epoch_valid_accuracy)
    {
        println!(
            "validation accuracy: {mean:.2} % for the mean weights of epochs {}-{}, {best:.2} % \
             for epoch {}",
            average.first_epoch, average.last_epoch, report.exported_epoch
        );
    }
    if let Some(views) = &report.valid_views {
        println!(
            "validation accuracy of the exported model: {:.2} % with one view per image, \
             {:.2} % averaged over five one-pixel shifts (eval --tta)",
            views.single, views.shifted
        );
    }
    match &report.test {
        Some(test) => println!("test {test}"),
        None => println!(
            "test set untouched (--no-test); `eval --run-dir {}` evaluates this run",
            run.path().display()
        ),
    }
    println!(
        "wall time {} ({:.0} training images/s); model, report and charts in {}",
        minutes_seconds(report.wall_seconds),
        report.train_images_per_second,
        run.path().display()
    );
}
