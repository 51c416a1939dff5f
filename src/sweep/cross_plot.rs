//! `cross_attack.png`: the cross-attack table as grouped bars — one group per row (the base model,
//! then each cell's trained model, labelled by the families it trained on), one bar per evaluated
//! family (colour = family) of its held-out ASR, whiskers = 95% intervals over seeds; bars of the
//! families a row trained on are outlined in black.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::cross::CrossAttack;
use crate::plot::{FONT, PlotError, err, palette};

/// The colour of the `i`-th family: the palette's dark hues, one per family.
fn colour(i: usize) -> RGBColor {
    palette(2 * i)
}

/// `text` cut to at most `max` characters (`...` marks the cut).
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{head}...")
}

/// The chart as PNG bytes.
pub fn cross_attack(table: &CrossAttack) -> Result<Vec<u8>, PlotError> {
    let groups = table.rows.len().max(1);
    let families = table.families.len().max(1);
    let group_px = (families as u32 * 46 + 60).max(200);
    let chart_w = (group_px * groups as u32 + 110).max(800);
    let (width, height) = (chart_w + 300, 680u32);
    // A group's second label line names the cell where two rows train on the same families.
    let repeated = |label: &str| table.rows.iter().filter(|r| r.trained_on == label).count() > 1;
    crate::plot::png(width, height, |root| {
        let (chart_area, legend) = root.split_horizontally(chart_w);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(
                "Held-out jailbreak ASR per attack family, by the families trained on",
                (FONT, 24),
            )
            .margin(20)
            .x_label_area_size(70)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..groups as f64, 0.0..110.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            // Room above 100% for the numbers over the whiskers, without a tick there.
            .y_label_formatter(&|y| {
                if *y > 100.0 {
                    String::new()
                } else {
                    format!("{y:.0}")
                }
            })
            .y_desc("held-out jailbreak attack success (%)")
            .axis_desc_style((FONT, 20))
            .label_style((FONT, 16))
            .light_line_style(RGBColor(245, 245, 245))
            .draw()
            .map_err(err)?;
        let slot = 0.8 / families as f64;
        let value_font =
            TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (g, row) in table.rows.iter().enumerate() {
            for (i, e) in row.asr.iter().enumerate() {
                let Some(e) = e else { continue };
                let x0 = g as f64 + 0.1 + slot * i as f64 + slot * 0.08;
                let x1 = g as f64 + 0.1 + slot * (i + 1) as f64 - slot * 0.08;
                let mid = (x0 + x1) / 2.0;
                let y = (e.mean * 100.0).clamp(0.0, 100.0);
                chart
                    .draw_series([Rectangle::new([(x0, 0.0), (x1, y)], colour(i).filled())])
                    .map_err(err)?;
                if row.trained.get(i) == Some(&true) {
                    chart
                        .draw_series([Rectangle::new([(x0, 0.0), (x1, y)], BLACK.stroke_width(3))])
                        .map_err(err)?;
                }
                let (lo, hi) = e.interval();
                let (lo, hi) = (
                    (lo * 100.0).clamp(0.0, 100.0),
                    (hi * 100.0).clamp(0.0, 100.0),
                );
                if e.half_width.is_some() {
                    let cap = slot * 0.2;
                    let whisker = BLACK.stroke_width(2);
                    for path in [
                        vec![(mid, lo), (mid, hi)],
                        vec![(mid - cap, lo), (mid + cap, lo)],
                        vec![(mid - cap, hi), (mid + cap, hi)],
                    ] {
                        chart
                            .draw_series([PathElement::new(path, whisker)])
                            .map_err(err)?;
                    }
                }
                let (px, py) = chart.backend_coord(&(mid, hi.max(y)));
                chart_area
                    .draw(&Text::new(
                        format!("{:.0}", e.mean * 100.0),
                        (px, py - 3),
                        value_font.clone(),
                    ))
                    .map_err(err)?;
            }
            // The group's label under the axis.
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            let label = match row.trained_on.as_str() {
                "base model" => "base model".to_string(),
                t => format!("trained on {t}"),
            };
            // About 7 pixels a character at 15 px.
            let max = (group_px / 7) as usize;
            let style =
                TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
            chart_area
                .draw(&Text::new(cut(&label, max), (px, py + 10), style))
                .map_err(err)?;
            if row.trained_on != "base model" && repeated(&row.trained_on) {
                let small = (FONT, 12)
                    .into_font()
                    .color(&RGBColor(90, 90, 90))
                    .pos(Pos::new(HPos::Center, VPos::Top));
                chart_area
                    .draw(&Text::new(cut(&row.cell, max + 4), (px, py + 30), small))
                    .map_err(err)?;
            }
        }
        // The legend: families by colour, then how to read the marks.
        let font = (FONT, 15).into_font();
        let mut y = 40;
        legend
            .draw(&Text::new(
                "evaluated family",
                (10, y),
                (FONT, 18).into_font(),
            ))
            .map_err(err)?;
        y += 28;
        for (i, f) in table.families.iter().enumerate() {
            legend
                .draw(&Rectangle::new(
                    [(12, y + 2), (32, y + 16)],
                    colour(i).filled(),
                ))
                .map_err(err)?;
            legend
                .draw(&Text::new(cut(f, 30), (40, y), font.clone()))
                .map_err(err)?;
            y += 24;
        }
        y += 16;
        legend
            .draw(&Rectangle::new(
                [(12, y + 2), (32, y + 16)],
                BLACK.stroke_width(3),
            ))
            .map_err(err)?;
        legend
            .draw(&Text::new("family trained on", (40, y), font.clone()))
            .map_err(err)?;
        y += 28;
        for line in ["whiskers: 95% CI over seeds", "numbers: mean ASR (%)"] {
            legend
                .draw(&Text::new(line, (10, y), font.clone()))
                .map_err(err)?;
            y += 22;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::cross::CrossRow;
    use crate::sweep::stats::estimate;

    #[test]
    fn draws_a_png_of_the_table() {
        let table = CrossAttack {
            families: vec!["flipattack".into(), "johnny".into()],
            rows: vec![
                CrossRow {
                    trained_on: "base model".into(),
                    cell: "all jobs".into(),
                    n: 2,
                    asr: vec![estimate(&[0.9, 0.9]), estimate(&[0.8, 0.7])],
                    trained: vec![false, false],
                },
                CrossRow {
                    trained_on: "johnny".into(),
                    cell: "c".into(),
                    n: 1,
                    asr: vec![estimate(&[0.5]), None],
                    trained: vec![false, true],
                },
            ],
        };
        let png = cross_attack(&table).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(cut("abcdefgh", 6), "abc...");
        assert_eq!(cut("abc", 6), "abc");
    }
}
