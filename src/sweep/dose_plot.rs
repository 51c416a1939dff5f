//! `dose_response.png`: for each family (e.g. token scope) and each way a dose is applied
//! (trained, forced off), one row of panels — jailbreak ASR, benign refusals, trained-answer NLL —
//! against the number of experts (log₂ axis), a line per selection with its 95% band over seeds,
//! the base model as a dashed line.

use plotters::prelude::*;

use super::dose::{DosePoint, Kind, Metric};
use super::report::Group;
use crate::plot::{FONT, PlotError, err};

/// The colour of a selection: the ranking blue, random grey, anti-ranked orange, planted green.
fn colour(selection: &str) -> RGBColor {
    match selection {
        "risk_diff" => RGBColor(31, 119, 180),
        "random" => RGBColor(127, 127, 127),
        "anti_ranked" => RGBColor(255, 127, 14),
        "planted" => RGBColor(44, 160, 44),
        _ => RGBColor(148, 103, 189),
    }
}

/// The base model's value of a metric.
fn base_value(base: Option<&Group>, metric: Metric) -> Option<f64> {
    let b = base?;
    match metric {
        Metric::Asr => b.asr.map(|e| e.mean),
        Metric::BenignRefused => b.benign.map(|e| e.mean),
        Metric::TrainedNll => b.retained.map(|e| e.mean),
    }
}

/// The chart as PNG bytes (`None` without dose points).
pub fn dose_response(
    points: &[DosePoint],
    base: Option<&Group>,
) -> Result<Option<Vec<u8>>, PlotError> {
    let mut rows: Vec<(String, Kind)> = Vec::new();
    for p in points {
        if !rows.contains(&(p.family.clone(), p.kind)) {
            rows.push((p.family.clone(), p.kind));
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let metrics: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|&m| points.iter().any(|p| !p.values(m).is_empty()))
        .collect();
    let mut selections: Vec<String> = Vec::new();
    for s in ["risk_diff", "random", "anti_ranked", "planted"] {
        if points.iter().any(|p| p.selection == s) {
            selections.push(s.into());
        }
    }
    for p in points {
        if !selections.contains(&p.selection) {
            selections.push(p.selection.clone());
        }
    }
    let log2 = |v: f64| v.max(1.0).log2();
    let x_lo = points
        .iter()
        .map(|p| log2(p.experts))
        .fold(f64::MAX, f64::min)
        - 0.3;
    let x_hi = points
        .iter()
        .map(|p| log2(p.experts))
        .fold(f64::MIN, f64::max)
        + 0.3;
    let (panel_w, panel_h, header, legend_h) = (520u32, 330u32, 50u32, 60u32);
    let width = panel_w * metrics.len() as u32;
    let height = header + legend_h + panel_h * rows.len() as u32;
    let png = crate::plot::png(width, height, |root| {
        let (top, rest) = root.split_vertically(header);
        top.draw(&Text::new(
            "Dose-response: attack success and utility against the number of experts",
            (20, 12),
            (FONT, 24).into_font(),
        ))
        .map_err(err)?;
        let (grid, legend) = rest.split_vertically(panel_h * rows.len() as u32);
        let panels = grid.split_evenly((rows.len(), metrics.len()));
        for (r, (family, kind)) in rows.iter().enumerate() {
            for (c, &metric) in metrics.iter().enumerate() {
                let area = &panels[r * metrics.len() + c];
                let mine: Vec<&DosePoint> = points
                    .iter()
                    .filter(|p| &p.family == family && p.kind == *kind)
                    .collect();
                let scale = if metric.percent() { 100.0 } else { 1.0 };
                let (y_lo, y_hi) = if metric.percent() {
                    (0.0, 100.0)
                } else {
                    let vals: Vec<f64> = mine
                        .iter()
                        .filter_map(|p| p.est(metric))
                        .flat_map(|e| [e.interval().0, e.interval().1])
                        .chain(base_value(base, metric))
                        .collect();
                    if vals.is_empty() {
                        (0.0, 1.0)
                    } else {
                        let lo = vals.iter().cloned().fold(f64::MAX, f64::min);
                        let hi = vals.iter().cloned().fold(f64::MIN, f64::max);
                        let pad = ((hi - lo) * 0.1).max(0.05);
                        (lo - pad, hi + pad)
                    }
                };
                let title = if family.is_empty() {
                    format!("{} — {}", kind.label(), metric.label())
                } else {
                    format!("{family}: {} — {}", kind.label(), metric.label())
                };
                let mut chart = ChartBuilder::on(area)
                    .caption(title, (FONT, 15))
                    .margin(10)
                    .x_label_area_size(40)
                    .y_label_area_size(55)
                    .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .x_desc(format!("experts {} (log₂ axis)", kind.label()))
                    .x_label_formatter(&|x| format!("{:.0}", 2f64.powf(*x)))
                    .y_label_formatter(&|y| {
                        if metric.percent() {
                            format!("{y:.0}")
                        } else {
                            format!("{y:.2}")
                        }
                    })
                    .axis_desc_style((FONT, 14))
                    .label_style((FONT, 13))
                    .light_line_style(RGBColor(245, 245, 245))
                    .draw()
                    .map_err(err)?;
                if let Some(b) = base_value(base, metric) {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(x_lo, b * scale), (x_hi, b * scale)],
                            6,
                            4,
                            BLACK.stroke_width(1),
                        ))
                        .map_err(err)?;
                }
                for s in &selections {
                    let mut line: Vec<(f64, f64, f64, f64)> = mine
                        .iter()
                        .filter(|p| &p.selection == s)
                        .filter_map(|p| {
                            p.est(metric).map(|e| {
                                let (lo, hi) = e.interval();
                                let clip = |v: f64| (v * scale).clamp(y_lo, y_hi);
                                (log2(p.experts), e.mean * scale, clip(lo), clip(hi))
                            })
                        })
                        .collect();
                    if line.is_empty() {
                        continue;
                    }
                    line.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let col = colour(s);
                    let mut band: Vec<(f64, f64)> = line.iter().map(|p| (p.0, p.3)).collect();
                    band.extend(line.iter().rev().map(|p| (p.0, p.2)));
                    chart
                        .draw_series([Polygon::new(band, col.mix(0.18).filled())])
                        .map_err(err)?;
                    chart
                        .draw_series(LineSeries::new(
                            line.iter().map(|p| (p.0, p.1)),
                            col.stroke_width(2),
                        ))
                        .map_err(err)?;
                    chart
                        .draw_series(
                            line.iter()
                                .map(|p| Circle::new((p.0, p.1), 4, col.filled())),
                        )
                        .map_err(err)?;
                }
            }
        }
        // The legend, one line across the bottom.
        let font = (FONT, 15).into_font();
        let mut x = 20;
        for s in &selections {
            let label = match s.as_str() {
                "risk_diff" => "ranked (risk difference)",
                "random" => "random",
                "anti_ranked" => "anti-ranked",
                "planted" => "planted (oracle)",
                other => other,
            };
            legend
                .draw(&Rectangle::new(
                    [(x, 22), (x + 26, 34)],
                    colour(s).mix(0.5).filled(),
                ))
                .map_err(err)?;
            legend
                .draw(&Text::new(label.to_string(), (x + 32, 20), font.clone()))
                .map_err(err)?;
            x += 40 + 9 * label.len() as i32;
        }
        legend
            .draw(&Text::new(
                "lines: mean over seeds; bands: 95% CI; dashed: base model".to_string(),
                (x + 10, 20),
                font.clone(),
            ))
            .map_err(err)?;
        Ok(())
    })?;
    Ok(Some(png))
}
