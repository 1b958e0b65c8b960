//! The training curves `cnnc train` draws at the end: loss and accuracy per epoch, as one SVG
//! (plotters' SVG backend: text stays text, no fonts are needed).

use crate::train::EpochRecord;
use plotters::prelude::*;

/// The SVG of two charts side by side: the training and test loss per epoch (left) and the
/// training and test accuracy (right, when the targets are classes).
pub fn curves_svg(title: &str, history: &[EpochRecord]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(|e| e.to_string())?;
        let accuracy = history.iter().any(|r| r.train_accuracy.is_some() || r.test_accuracy.is_some());
        // Without accuracies the loss chart takes the whole width.
        let (left, right) = if accuracy { root.split_horizontally(480) } else { (root.clone(), root.clone()) };
        let epochs = history.len().max(1) as f64;
        let series = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            history.iter().filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v))).collect()
        };
        let train_loss = series(|r| Some(r.train_loss));
        let test_loss = series(|r| r.test_loss);
        let top = train_loss.iter().chain(&test_loss).map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.05;
        let mut chart = ChartBuilder::on(&left)
            .caption("loss", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0.5..epochs + 0.5, 0.0..top)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("epoch").draw().map_err(|e| e.to_string())?;
        draw(&mut chart, train_loss, BLUE, "training")?;
        draw(&mut chart, test_loss, RED, "test")?;
        legend(&mut chart)?;
        if accuracy {
            let train_acc = series(|r| r.train_accuracy.map(|a| 100.0 * a));
            let test_acc = series(|r| r.test_accuracy.map(|a| 100.0 * a));
            let low = train_acc.iter().chain(&test_acc).map(|p| p.1).fold(100.0f64, f64::min);
            let bottom = (low - 5.0).clamp(0.0, 95.0).floor();
            let mut chart = ChartBuilder::on(&right)
                .caption("accuracy (%)", ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(48)
                .build_cartesian_2d(0.5..epochs + 0.5, bottom..100.0)
                .map_err(|e| e.to_string())?;
            chart.configure_mesh().x_desc("epoch").draw().map_err(|e| e.to_string())?;
            draw(&mut chart, train_acc, BLUE, "training")?;
            draw(&mut chart, test_acc, RED, "test")?;
            legend(&mut chart)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: &str,
) -> Result<(), String> {
    if points.is_empty() {
        return Ok(());
    }
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(|e| e.to_string())?;
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, loss: f64, accuracy: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: loss,
            train_accuracy: accuracy,
            test_loss: Some(loss * 1.1),
            test_accuracy: accuracy.map(|a| a - 0.01),
            lr: 0.1,
            seconds: 1.0,
            images_per_second: 100.0,
        }
    }

    #[test]
    fn both_charts_for_classes_one_otherwise() {
        let history: Vec<EpochRecord> =
            (1..=4).map(|e| record(e, 2.0 / e as f64, Some(0.5 + 0.1 * e as f64))).collect();
        let svg = curves_svg("digits", &history).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in ["digits", "loss", "accuracy (%)", "training", "test", "epoch"] {
            assert!(svg.contains(&format!(">{text}<")) || svg.contains(text), "{text} in the SVG");
        }
        assert_eq!(svg.matches("<circle").count(), 4 * 4, "four curves of four epochs");
        let regression: Vec<EpochRecord> = (1..=3).map(|e| record(e, 1.0 / e as f64, None)).collect();
        let svg = curves_svg("fit", &regression).unwrap();
        assert!(!svg.contains("accuracy"));
        assert!(curves_svg("one", &history[..1]).is_ok(), "a single epoch draws");
        assert!(curves_svg("none", &[]).is_ok(), "no epoch draws empty axes");
    }
}
