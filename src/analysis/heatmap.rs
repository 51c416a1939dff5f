//! `risk_diff_heatmap.png` and `effects_heatmap.png`: a score of every expert as a layers ×
//! experts grid — the aggregated risk difference (red where an expert is more active on
//! jailbreaks, blue where more active on the plain goals) or an effect (red where removing the
//! expert raises the jailbreaks' answer NLL more) — white at zero, grey where not measured,
//! scaled symmetrically by the largest magnitude; layer and expert axes, a colour bar with its
//! values, the selected (global unsafe) experts outlined, and — on a planted model — the planted
//! experts marked with a green dot.

use plotters::prelude::*;

use super::select::ExpertId;
use crate::plot::{FONT, PlotError, err};

/// The diverging colour of `t` in [-1, 1]: blue, white, red.
fn diverging(t: f64) -> RGBColor {
    let t = t.clamp(-1.0, 1.0);
    let fade = (255.0 * (1.0 - t.abs())).round() as u8;
    if t >= 0.0 {
        RGBColor(255, fade, fade)
    } else {
        RGBColor(fade, fade, 255)
    }
}

/// The heatmap of `values` (`[layers, experts]`, row-major; NaN: blank) titled `title` as PNG
/// bytes, `outlined` experts framed in black, `planted` ones marked with a green dot.
pub fn png(
    title: &str,
    values: &[f64],
    layers: usize,
    experts: usize,
    outlined: &[ExpertId],
    planted: &[ExpertId],
) -> Result<Vec<u8>, PlotError> {
    let scale = values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(1e-12);
    let cell = (960 / experts.max(1)).clamp(12, 48) as u32;
    let grid_w = cell * experts as u32;
    let width = (grid_w + 260).max(600);
    let height = cell * layers as u32 + 150;
    crate::plot::png(width, height, |root| {
        let (main, bar) = root.split_horizontally(width - 150);
        let mut chart = ChartBuilder::on(&main)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            // plotters' integer ranges are inclusive: 0..=n-1 makes n segments.
            .build_cartesian_2d(
                (0..experts.max(1) - 1).into_segmented(),
                (0..layers.max(1) - 1).into_segmented(),
            )
            .map_err(err)?;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => i.to_string(),
            _ => String::new(),
        };
        // Layer 0 on top: row r of the chart shows layer layers-1-r.
        let row_label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < layers => (layers - 1 - i).to_string(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("expert")
            .y_desc("MoE layer")
            .x_labels(experts.min(32))
            .y_labels(layers.min(32))
            .x_label_formatter(&label)
            .y_label_formatter(&row_label)
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let at = |l: usize, e: usize| {
            let r = layers - 1 - l;
            [
                (SegmentValue::Exact(e), SegmentValue::Exact(r)),
                (SegmentValue::Exact(e + 1), SegmentValue::Exact(r + 1)),
            ]
        };
        chart
            .draw_series(
                (0..layers)
                    .flat_map(|l| (0..experts).map(move |e| (l, e)))
                    .map(|(l, e)| {
                        let v = values[l * experts + e];
                        let colour = match v.is_finite() {
                            true => diverging(v / scale),
                            false => RGBColor(200, 200, 200),
                        };
                        Rectangle::new(at(l, e), colour.filled())
                    }),
            )
            .map_err(err)?;
        chart
            .draw_series(
                outlined
                    .iter()
                    .filter(|[l, e]| *l < layers && *e < experts)
                    .map(|&[l, e]| Rectangle::new(at(l, e), BLACK.stroke_width(2))),
            )
            .map_err(err)?;
        let dot = (cell / 5).max(3) as i32;
        chart
            .draw_series(
                planted
                    .iter()
                    .filter(|[l, e]| *l < layers && *e < experts)
                    .map(|&[l, e]| {
                        Circle::new(
                            (
                                SegmentValue::CenterOf(e),
                                SegmentValue::CenterOf(layers - 1 - l),
                            ),
                            dot,
                            RGBColor(0, 150, 60).filled(),
                        )
                    }),
            )
            .map_err(err)?;
        // The colour bar: -scale (blue) to +scale (red).
        let mut bar_chart = ChartBuilder::on(&bar)
            .margin_top(50)
            .margin_bottom(50)
            .margin_right(20)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..1.0, -scale..scale)
            .map_err(err)?;
        bar_chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(5)
            .y_label_formatter(&|v| {
                if v.abs() < 5e-4 {
                    "0".into()
                } else {
                    format!("{v:+.3}")
                }
            })
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let steps = 100;
        bar_chart
            .draw_series((0..steps).map(|i| {
                let (a, b) = (
                    -scale + 2.0 * scale * i as f64 / steps as f64,
                    -scale + 2.0 * scale * (i + 1) as f64 / steps as f64,
                );
                Rectangle::new(
                    [(0.0, a), (1.0, b)],
                    diverging((a + b) / 2.0 / scale).filled(),
                )
            }))
            .map_err(err)?;
        main.draw(&Text::new(
            "outlined: global unsafe experts",
            (60, (height - 22) as i32),
            (FONT, 13).into_font(),
        ))
        .map_err(err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_blue_through_white_to_red() {
        assert_eq!(diverging(1.0), RGBColor(255, 0, 0));
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
        assert_eq!(diverging(-0.5), RGBColor(128, 128, 255));
    }

    #[test]
    fn the_hottest_cell_is_drawn_red() {
        let pixels = |planted: &[ExpertId]| {
            let bytes = png("t", &[1.0, 0.0, -0.5, 0.0], 2, 2, &[[0, 0]], planted).unwrap();
            let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
                .read_info()
                .unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            reader.next_frame(&mut buf).unwrap();
            buf
        };
        let buf = pixels(&[]);
        let red = buf.chunks(3).filter(|p| p == &[255, 0, 0]).count();
        let blue = buf.chunks(3).filter(|p| p == &[128, 128, 255]).count();
        assert!(red > 400 && blue > 400, "red {red}, blue {blue} pixels");
        let green = |buf: &[u8]| buf.chunks(3).filter(|p| p == &[0, 150, 60]).count();
        assert_eq!(green(&buf), 0);
        assert!(green(&pixels(&[[1, 1]])) > 20, "a planted expert is marked");
    }
}
