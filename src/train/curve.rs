//! `loss_curve.png`: the training loss of every step (thin) and its exponential moving average
//! (bold), the validation loss at each checkpoint (dots), with the learning rate on a second axis.
//! Under the alternating schedule a second panel below shows the router steps' routing
//! divergence (their loss is another quantity); the panel above holds the expert steps.

use plotters::prelude::*;

use super::metrics::{StepRecord, ValidRecord};
use crate::plot::{FONT, PlotError, err, palette};

/// The weight of the newest step in the moving average: about a tenth of the run, between
/// 0.02 (long runs) and 0.3 (short ones, which a slower average would only trail).
fn ema_weight(steps: usize) -> f64 {
    (10.0 / steps.max(1) as f64).clamp(0.02, 0.3)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// The loss curve of `steps` and `valid` (in step order) as PNG bytes.
pub fn png(steps: &[StepRecord], valid: &[ValidRecord]) -> Result<Vec<u8>, PlotError> {
    let last = steps.last().map_or(1, |s| s.step).max(1) as f64;
    let (router, lm): (Vec<StepRecord>, Vec<StepRecord>) =
        steps.iter().cloned().partition(|s| s.phase == "routers");
    if router.is_empty() {
        return crate::plot::png(900, 520, |root| loss_panel(root, steps, valid, last));
    }
    crate::plot::png(900, 780, |root| {
        let (upper, lower) = root.split_vertically(520);
        loss_panel(&upper, &lm, valid, last)?;
        router_panel(&lower, &router, last)
    })
}

/// The router steps' divergence against the step.
fn router_panel(area: &Area<'_>, router: &[StepRecord], last: f64) -> Result<(), PlotError> {
    let max = router
        .iter()
        .map(|s| s.loss)
        .filter(|l| l.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("Router steps: routing divergence", (FONT, 18))
        .margin(15)
        // The panel above's right axis (the rate) is this wide: the step axes line up.
        .margin_right(95)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..last, 0.0..max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("KL (nats)")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    let magenta = RGBColor(170, 20, 130);
    chart
        .draw_series(
            router
                .iter()
                .filter(|s| s.loss.is_finite())
                .map(|s| Circle::new((s.step as f64, s.loss), 3, magenta.filled())),
        )
        .map_err(err)?;
    Ok(())
}

/// The language-modelling steps' loss, its moving average, the validation loss and the rate.
fn loss_panel(
    root: &Area<'_>,
    steps: &[StepRecord],
    valid: &[ValidRecord],
    last: f64,
) -> Result<(), PlotError> {
    let max_loss = steps
        .iter()
        .map(|s| s.loss)
        .chain(valid.iter().map(|v| v.valid_loss))
        .filter(|l| l.is_finite())
        .fold(0.0, f64::max)
        .max(1e-6)
        * 1.05;
    let max_lr = steps.iter().map(|s| s.lr).fold(0.0, f64::max).max(1e-12) * 1.05;
    let mut smooth = Vec::with_capacity(steps.len());
    let mut ema: Option<f64> = None;
    let weight = ema_weight(steps.len());
    for s in steps.iter().filter(|s| s.loss.is_finite()) {
        let v = ema.map_or(s.loss, |e| e + weight * (s.loss - e));
        ema = Some(v);
        smooth.push((s.step as f64, v));
    }
    {
        let mut chart = ChartBuilder::on(root)
            .caption("Training loss", (FONT, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .right_y_label_area_size(80)
            .build_cartesian_2d(0.0..last, 0.0..max_loss)
            .map_err(err)?
            .set_secondary_coord(0.0..last, 0.0..max_lr);
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("loss (nats per target token)")
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 13))
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let blue = palette(0);
        chart
            .draw_series(LineSeries::new(
                steps
                    .iter()
                    .filter(|s| s.loss.is_finite())
                    .map(|s| (s.step as f64, s.loss)),
                blue.mix(0.35).stroke_width(1),
            ))
            .map_err(err)?
            .label("loss per step")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.mix(0.35).stroke_width(1))
            });
        chart
            .draw_series(LineSeries::new(
                smooth.iter().copied(),
                blue.stroke_width(3),
            ))
            .map_err(err)?
            .label("moving average")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(3))
            });
        if !valid.is_empty() {
            let orange = palette(6);
            let points: Vec<(f64, f64)> = valid
                .iter()
                .filter(|v| v.valid_loss.is_finite())
                .map(|v| (v.step as f64, v.valid_loss))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    orange.stroke_width(2),
                ))
                .map_err(err)?;
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 5, orange.filled())))
                .map_err(err)?
                .label("validation loss (held-out pairs, at each checkpoint)")
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, orange.filled()));
        }
        let grey = palette(15);
        chart
            .draw_secondary_series(LineSeries::new(
                steps.iter().map(|s| (s.step as f64, s.lr)),
                grey.stroke_width(1),
            ))
            .map_err(err)?
            .label("learning rate (right axis)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1))
            });
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FONT, 14))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}
