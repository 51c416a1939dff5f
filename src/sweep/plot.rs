//! `asr_vs_utility.png`: held-out jailbreak ASR against benign refusals, one marker per cell and
//! evaluation (colour = cell, shape = evaluation), bars = 95% intervals over seeds, the base model
//! in black; the trade-off at a glance (bottom left is safe and useful).

use plotters::prelude::*;

use super::report::Group;
use super::spec::Sweep;
use crate::plot::{FONT, PlotError, err, palette};

/// Draw the marker of an evaluation centred at `at` (pixels): base a black disc, trained a disc,
/// steering by activation a triangle, by deactivation a diamond, by both a square.
fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    at: (i32, i32),
    variant: &str,
    color: RGBColor,
) -> Result<(), PlotError> {
    let fill = color.filled();
    let base = EmptyElement::at(at);
    match variant {
        "base" => area.draw(&(base + Circle::new((0, 0), 7, BLACK.filled()))),
        "trained" => area.draw(&(base + Circle::new((0, 0), 6, fill))),
        v if v.contains("-a") && v.contains("-d") => {
            area.draw(&(base + Rectangle::new([(-5, -5), (5, 5)], fill)))
        }
        v if v.contains("-a") => {
            area.draw(&(base + Polygon::new(vec![(0, -7), (6, 5), (-6, 5)], fill)))
        }
        _ => area.draw(&(base + Polygon::new(vec![(0, -7), (7, 0), (0, 7), (-7, 0)], fill))),
    }
    .map_err(err)
}

/// The chart of `groups` as PNG bytes.
pub fn asr_vs_utility(sweep: &Sweep, groups: &[Group]) -> Result<Vec<u8>, PlotError> {
    // One base marker (the first cell's), every other evaluation of every cell.
    let mut points: Vec<&Group> = groups
        .iter()
        .filter(|g| g.variant != "base" && g.asr.is_some() && g.benign.is_some())
        .collect();
    if let Some(base) = groups
        .iter()
        .find(|g| g.variant == "base" && g.asr.is_some() && g.benign.is_some())
    {
        points.insert(0, base);
    }
    // The x range follows the means (wide intervals of two seeds would flatten the rest); bars
    // are clipped to the chart.
    let mean = |g: &&Group| g.benign.map_or(0.0, |e| e.mean);
    let x_max = (points.iter().map(mean).fold(0.0, f64::max) * 100.0 * 1.3 + 2.0).max(10.0);
    let cells: Vec<usize> = {
        let mut c: Vec<usize> = points
            .iter()
            .filter(|g| g.variant != "base")
            .map(|g| g.cell)
            .collect();
        c.dedup();
        c
    };
    let variants: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for g in &points {
            if !v.contains(&g.variant) {
                v.push(g.variant.clone());
            }
        }
        v
    };
    let (width, height) = (1500u32, 820u32);
    crate::plot::png(width, height, |root| {
        let (chart_area, legend) = root.split_horizontally(930);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(
                "Held-out jailbreak ASR against benign refusals (lower left is better)",
                (FONT, 24),
            )
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..100.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("benign prompts refused (%)")
            .y_desc("held-out jailbreak attack success (%)")
            .axis_desc_style((FONT, 20))
            .label_style((FONT, 16))
            .light_line_style(RGBColor(245, 245, 245))
            .draw()
            .map_err(err)?;
        for g in &points {
            let (Some(y), Some(x)) = (g.asr, g.benign) else {
                continue;
            };
            let color = if g.variant == "base" {
                BLACK
            } else {
                palette(cells.iter().position(|&c| c == g.cell).unwrap_or(0))
            };
            let (cx, cy) = (x.mean * 100.0, y.mean * 100.0);
            let ((x0, x1), (y0, y1)) = (x.interval(), y.interval());
            let clip_x = |v: f64| (v * 100.0).clamp(0.0, x_max);
            let clip_y = |v: f64| (v * 100.0).clamp(0.0, 100.0);
            let bar = color.stroke_width(2);
            chart
                .draw_series([PathElement::new(
                    vec![(clip_x(x0), cy), (clip_x(x1), cy)],
                    bar,
                )])
                .map_err(err)?;
            chart
                .draw_series([PathElement::new(
                    vec![(cx, clip_y(y0)), (cx, clip_y(y1))],
                    bar,
                )])
                .map_err(err)?;
            let at = chart.backend_coord(&(cx, cy));
            marker(&chart_area, at, &g.variant, color)?;
        }
        // The legend: cells by colour, evaluations by shape.
        let font = (FONT, 15).into_font();
        let mut y = 30;
        legend
            .draw(&Text::new(
                "cells (colour)",
                (10, y),
                (FONT, 18).into_font(),
            ))
            .map_err(err)?;
        y += 28;
        for (i, &c) in cells.iter().enumerate() {
            legend
                .draw(
                    &(EmptyElement::at((18, y + 8)) + Circle::new((0, 0), 6, palette(i).filled())),
                )
                .map_err(err)?;
            legend
                .draw(&Text::new(
                    sweep.cells[c].name.clone(),
                    (32, y),
                    font.clone(),
                ))
                .map_err(err)?;
            y += 22;
        }
        y += 16;
        legend
            .draw(&Text::new(
                "evaluations (shape)",
                (10, y),
                (FONT, 18).into_font(),
            ))
            .map_err(err)?;
        y += 28;
        for v in &variants {
            let label = match v.as_str() {
                "base" => "base model (black)".to_string(),
                "trained" => "trained experts".to_string(),
                other => format!("{other} (steering)"),
            };
            marker(&legend, (18, y + 8), v, RGBColor(90, 90, 90))?;
            legend
                .draw(&Text::new(label, (32, y), font.clone()))
                .map_err(err)?;
            y += 22;
        }
        y += 16;
        legend
            .draw(&Text::new(
                "bars: 95% CI over seeds (clipped to the chart)",
                (10, y),
                font.clone(),
            ))
            .map_err(err)?;
        Ok(())
    })
}
