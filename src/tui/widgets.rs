//! Drawing the dashboard: the loss chart, the expert heatmap, the stats panel, the collect view
//! and the help overlay. Every function draws into a ratatui `Frame` or `Buffer`, so tests render
//! them into a `TestBackend` and read the cells back.

use std::collections::HashSet;
use std::time::Duration;

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Clear, Dataset, Gauge, GraphType, Paragraph, Widget};

use super::state::{Dashboard, TrainState, View};
use crate::analysis::select::ExpertId;

/// Colour of a heat value in `[0, 1]`: dark blue (cold) through red to yellow (hot).
pub fn heat_color(v: f64) -> Color {
    let v = v.clamp(0.0, 1.0);
    let (r, g, b) = if v < 0.5 {
        let t = v / 0.5;
        (30.0 + 200.0 * t, 30.0, 90.0 * (1.0 - t) + 20.0)
    } else {
        let t = (v - 0.5) / 0.5;
        (230.0 + 25.0 * t, 30.0 + 200.0 * t, 20.0)
    };
    Color::Rgb(r as u8, g as u8, b as u8)
}

/// Colour of a signed value in `[-1, 1]`: blue (negative), black, red (positive).
pub fn diverging_color(v: f64) -> Color {
    let v = v.clamp(-1.0, 1.0);
    if v >= 0.0 {
        Color::Rgb((40.0 + 215.0 * v) as u8, 30, 30)
    } else {
        Color::Rgb(30, 30, (40.0 - 215.0 * v) as u8)
    }
}

/// Layers × experts as coloured cells, one row per layer and one column per expert when they
/// fit (else neighbouring rows/columns are merged, keeping the hottest value). Experts in
/// `marked` show `·`, those in `mask` show `●`.
pub struct Heatmap<'a> {
    /// `[layers][experts]` values: `[0, 1]`, or `[-1, 1]` when `diverging`.
    pub values: &'a [Vec<f64>],
    /// Experts marked (trained).
    pub marked: &'a HashSet<ExpertId>,
    /// Experts of the current routing mask.
    pub mask: &'a [ExpertId],
    /// Signed values.
    pub diverging: bool,
    /// Block title.
    pub title: &'a str,
}

/// One merged heatmap cell: (value, marked, in the mask).
type Cell = (f64, bool, bool);

impl Heatmap<'_> {
    /// The merged grid for an inner area of `rows × cols` cells (label column excluded):
    /// `(value, marked, in mask)` per cell, and the first layer of each row.
    fn grid(&self, rows: usize, cols: usize) -> (Vec<Vec<Cell>>, Vec<usize>) {
        let layers = self.values.len();
        let experts = self.values.first().map_or(0, Vec::len);
        let (rows, cols) = (rows.min(layers).max(1), cols.min(experts).max(1));
        let mask: HashSet<ExpertId> = self.mask.iter().copied().collect();
        let span =
            |i: usize, n: usize, of: usize| (i * of / n)..((i + 1) * of / n).max(i * of / n + 1);
        let mut grid = Vec::with_capacity(rows);
        let mut first = Vec::with_capacity(rows);
        for r in 0..rows {
            let ls = span(r, rows, layers);
            first.push(ls.start);
            let row = (0..cols)
                .map(|c| {
                    let es = span(c, cols, experts);
                    let mut cell = (if self.diverging { 0.0 } else { f64::MIN }, false, false);
                    for l in ls.clone() {
                        for e in es.clone() {
                            let v = self.values[l][e];
                            if (self.diverging && v.abs() > cell.0.abs())
                                || (!self.diverging && v > cell.0)
                            {
                                cell.0 = v;
                            }
                            cell.1 |= self.marked.contains(&[l, e]);
                            cell.2 |= mask.contains(&[l, e]);
                        }
                    }
                    cell
                })
                .collect();
            grid.push(row);
        }
        (grid, first)
    }
}

impl Widget for Heatmap<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let block = Block::bordered().title(self.title);
        let inner = block.inner(area);
        block.render(area, buf);
        if self.values.is_empty() || inner.width < 6 || inner.height < 1 {
            Paragraph::new("no routing yet").render(inner, buf);
            return;
        }
        let label_w = 4u16;
        let (grid, first) = self.grid(inner.height as usize, (inner.width - label_w) as usize);
        for (r, (row, layer)) in grid.iter().zip(&first).enumerate() {
            let y = inner.y + r as u16;
            buf.set_string(
                inner.x,
                y,
                format!("L{layer:<2} "),
                Style::default().fg(Color::Gray),
            );
            for (c, &(v, marked, masked)) in row.iter().enumerate() {
                let x = inner.x + label_w + c as u16;
                let bg = if self.diverging {
                    diverging_color(v)
                } else {
                    heat_color(v)
                };
                let symbol = if masked {
                    "●"
                } else if marked {
                    "·"
                } else {
                    " "
                };
                if let Some(cell) = buf.cell_mut((x, y)) {
                    cell.set_symbol(symbol)
                        .set_style(Style::default().bg(bg).fg(Color::White));
                }
            }
        }
    }
}

/// `[min, max]` of the y values, padded by 5% (a flat series gets ±0.5).
pub fn y_bounds(series: &[&[(f64, f64)]]) -> [f64; 2] {
    let ys = series
        .iter()
        .flat_map(|s| s.iter().map(|p| p.1))
        .filter(|y| y.is_finite());
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !lo.is_finite() {
        return [0.0, 1.0];
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    [lo - pad, hi + pad]
}

/// The loss chart: every step (dim), the smoothed loss (bright), the validation loss at each
/// checkpoint (dots), and the alternating schedule's router steps' divergence (magenta).
pub fn loss_chart(state: &TrainState) -> Chart<'_> {
    let [lo, hi] = y_bounds(&[&state.loss, &state.smoothed, &state.valid, &state.router]);
    let x_max = state
        .total_steps
        .max(state.loss.last().map_or(1, |p| p.0 as usize))
        .max(1) as f64;
    let mut datasets = vec![
        Dataset::default()
            .name("loss")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::DarkGray))
            .data(&state.loss),
        Dataset::default()
            .name("smoothed")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Cyan))
            .data(&state.smoothed),
        Dataset::default()
            .name("valid")
            .marker(Marker::Dot)
            .graph_type(GraphType::Scatter)
            .style(Style::default().fg(Color::Yellow))
            .data(&state.valid),
    ];
    // Router steps (the alternating schedule) only where there are some: no empty legend entry.
    if !state.router.is_empty() {
        datasets.push(
            Dataset::default()
                .name("router KL")
                .marker(Marker::Braille)
                .graph_type(GraphType::Scatter)
                .style(Style::default().fg(Color::Magenta))
                .data(&state.router),
        );
    }
    Chart::new(datasets)
        .block(Block::bordered().title("loss"))
        .x_axis(
            Axis::default()
                .bounds([0.0, x_max])
                .labels(["0".to_string(), format!("{}", x_max as usize)])
                .style(Style::default().fg(Color::Gray)),
        )
        .y_axis(
            Axis::default()
                .bounds([lo, hi])
                .labels([format!("{lo:.3}"), format!("{hi:.3}")])
                .style(Style::default().fg(Color::Gray)),
        )
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn stats(state: &TrainState) -> Paragraph<'_> {
    let mut lines = Vec::new();
    match &state.last {
        Some(s) => {
            lines.push(Line::from(format!("step {}/{}", s.step, state.total_steps)));
            match s.phase.as_str() {
                "routers" => {
                    lines.push(Line::from("phase routers"));
                    lines.push(Line::from(format!("router KL {:.5}", s.loss)));
                    lines.push(Line::from(format!("lm loss {:.4}", s.lm_loss)));
                }
                phase => {
                    if !phase.is_empty() {
                        lines.push(Line::from(format!("phase {phase}")));
                    }
                    lines.push(Line::from(format!("loss {:.4}", s.loss)));
                }
            }
            if let Some(&(_, sm)) = state.smoothed.last() {
                lines.push(Line::from(format!("smooth {sm:.4}")));
            }
            if let Some(&(step, v)) = state.valid.last() {
                lines.push(Line::from(format!("valid {v:.4} @{}", step as usize)));
            }
            lines.push(Line::from(format!("lr {:.2e}", s.lr)));
            lines.push(Line::from(format!("{:.0} tok/s", s.tokens_per_s)));
            let mask = state.current_mask().map_or(0, <[ExpertId]>::len);
            lines.push(Line::from(format!("batch {} ({mask} exp.)", s.batch_idx)));
        }
        None => lines.push(Line::from("waiting for the first step")),
    }
    lines.push(Line::from(format!(
        "trained experts {}",
        state.unsafe_experts.len()
    )));
    Paragraph::new(lines).block(Block::bordered().title("train"))
}

fn header(d: &Dashboard) -> Line<'_> {
    let mut spans = vec![
        Span::styled(
            " steermoe ",
            Style::default()
                .fg(Color::Black)
                .bg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            " {} · {} {}",
            std::path::Path::new(&d.info.model)
                .file_name()
                .map_or(d.info.model.as_str(), |n| n.to_str().unwrap_or_default()),
            d.info.backend,
            d.info.precision
        )),
    ];
    if let Some((t, total)) = d.info.params {
        spans.push(Span::raw(format!(
            " · trainable {:.2}% of {total}",
            100.0 * t as f64 / total.max(1) as f64
        )));
    }
    if d.paused {
        spans.push(Span::styled(
            " PAUSED ",
            Style::default().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    if d.stopping {
        spans.push(Span::styled(
            " STOPPING ",
            Style::default().fg(Color::Black).bg(Color::Red),
        ));
    }
    Line::from(spans)
}

fn footer(d: &Dashboard) -> Line<'_> {
    Line::from(vec![
        Span::styled(" q", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(" quit  "),
        Span::styled("p", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(" pause  "),
        Span::styled("tab", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(" view  "),
        Span::styled("?", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(" help  "),
        Span::styled(d.status.as_str(), Style::default().fg(Color::Gray)),
    ])
}

fn train_view(frame: &mut Frame, area: Rect, d: &Dashboard) {
    let s = &d.train;
    let layers = s.recent.front().map_or(4, Vec::len) as u16;
    let [top, gauge, heat] = Layout::vertical([
        Constraint::Min(7),
        Constraint::Length(1),
        Constraint::Max(layers + 2),
    ])
    .areas(area);
    let [chart, panel] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(24)]).areas(top);
    frame.render_widget(loss_chart(s), chart);
    frame.render_widget(stats(s), panel);
    let eta = s
        .eta()
        .map(fmt_duration)
        .unwrap_or_else(|| "--:--:--".into());
    frame.render_widget(
        Gauge::default()
            .gauge_style(Style::default().fg(Color::Cyan).bg(Color::Black))
            .ratio(s.progress())
            .label(format!(
                "{:.0}%  elapsed {}  eta {eta}",
                100.0 * s.progress(),
                fmt_duration(s.elapsed)
            )),
        gauge,
    );
    let values = s.heat();
    frame.render_widget(
        Heatmap {
            values: &values,
            marked: &s.unsafe_experts,
            mask: s.current_mask().unwrap_or(&[]),
            diverging: false,
            title: "expert activation, last 32 steps (· trained, ● this batch's mask)",
        },
        heat,
    );
}

fn collect_view(frame: &mut Frame, area: Rect, d: &Dashboard) {
    let c = &d.collect;
    let layers = c.safe.len().max(4) as u16;
    let [gauge, stats_area, heat] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Max(layers + 2),
    ])
    .areas(area);
    let ratio = if c.total > 0 {
        c.done as f64 / c.total as f64
    } else {
        0.0
    };
    frame.render_widget(
        Gauge::default()
            .gauge_style(Style::default().fg(Color::Magenta).bg(Color::Black))
            .ratio(ratio.min(1.0))
            .label(format!("batches {}/{}", c.done, c.total)),
        gauge,
    );
    frame.render_widget(
        Paragraph::new(format!(
            "{} tokens, {:.0} tok/s · kept {} · dropped by the quality filter {}",
            c.tokens,
            c.rate(),
            c.kept,
            c.dropped
        ))
        .block(Block::bordered().title("collect")),
        stats_area,
    );
    let diff = c.difference();
    let scale = diff
        .iter()
        .flatten()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-9);
    let scaled: Vec<Vec<f64>> = diff
        .iter()
        .map(|r| r.iter().map(|v| v / scale).collect())
        .collect();
    frame.render_widget(
        Heatmap {
            values: &scaled,
            marked: &HashSet::new(),
            mask: &[],
            diverging: true,
            title: "activation unsafe - safe (red: more on jailbreaks)",
        },
        heat,
    );
}

fn help(frame: &mut Frame, area: Rect) {
    let w = 52.min(area.width);
    let h = 9.min(area.height);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(vec![
            Line::from("q    stop at the next checkpoint and quit"),
            Line::from("     (twice: stop now; a rerun resumes)"),
            Line::from("p    pause / resume training"),
            Line::from("tab  switch train / collect view"),
            Line::from("?    this help"),
            Line::from("metrics.jsonl in the run directory has every step"),
        ])
        .block(Block::bordered().title("keys")),
        popup,
    );
}

/// Draw the whole dashboard.
pub fn draw(frame: &mut Frame, d: &Dashboard) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header(d)), head);
    match d.view {
        View::Train => train_view(frame, body, d),
        View::Collect => collect_view(frame, body, d),
    }
    frame.render_widget(Paragraph::new(footer(d)), foot);
    if d.help {
        help(frame, frame.area());
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::train::StepRecord;

    fn step(step: usize, loss: f64) -> StepRecord {
        // Layer 1, expert 5 is the hot one.
        let mut counts = vec![vec![1u32; 16]; 4];
        counts[1][5] = 40;
        StepRecord {
            step,
            loss,
            lm_loss: loss,
            lr: 2e-4,
            tokens: 10,
            input_tokens: 100,
            tokens_per_s: 1234.0,
            batch_idx: 3,
            expert_counts: counts,
            parts: 1,
            phase: String::new(),
        }
    }

    fn dashboard() -> Dashboard {
        let mut d = Dashboard::default();
        d.info.model = "models/olmoe-organism".into();
        d.train.total_steps = 10;
        d.train.unsafe_experts = [[1, 5], [2, 7]].into_iter().collect();
        d.train.batch_experts = vec![(3, vec![[2, 7]])];
        for (i, loss) in [2.5, 2.0, 1.25, 0.75].into_iter().enumerate() {
            d.train.push(step(i + 1, loss));
        }
        d
    }

    fn render(d: &Dashboard, w: u16, h: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| draw(f, d)).unwrap();
        terminal.backend().buffer().clone()
    }

    fn text(buf: &Buffer) -> String {
        let a = buf.area;
        (0..a.height)
            .map(|y| {
                (0..a.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    /// Where the heatmap's row for `layer` starts (the `L{layer}` label).
    fn label_at(buf: &Buffer, layer: usize) -> (u16, u16) {
        let t = text(buf);
        let label = format!("L{layer:<2} ");
        for (y, line) in t.lines().enumerate() {
            if let Some(x) = line.find(&label) {
                let x = line[..x].chars().count();
                return (x as u16, y as u16);
            }
        }
        panic!("no {label} in\n{t}");
    }

    #[test]
    fn the_hot_expert_is_drawn_hot_and_marks_show() {
        let d = dashboard();
        let buf = render(&d, 80, 24);
        let (x, y) = label_at(&buf, 1);
        let hot = &buf[(x + 4 + 5, y)];
        assert_eq!(hot.bg, heat_color(1.0), "layer 1 expert 5");
        assert_eq!(hot.symbol(), "·", "a trained expert is marked");
        let cold = &buf[(x + 4 + 4, y)];
        assert_eq!(cold.bg, heat_color(1.0 / 40.0));
        let (x2, y2) = label_at(&buf, 2);
        assert_eq!(
            buf[(x2 + 4 + 7, y2)].symbol(),
            "●",
            "the current batch's mask"
        );
    }

    #[test]
    fn the_loss_axis_covers_the_data() {
        let d = dashboard();
        let [lo, hi] = y_bounds(&[&d.train.loss, &d.train.smoothed]);
        assert!(lo <= 0.75 && hi >= 2.5, "{lo} {hi}");
        let t = text(&render(&d, 80, 24));
        assert!(
            t.contains(&format!("{lo:.3}")) && t.contains(&format!("{hi:.3}")),
            "{t}"
        );
        assert!(t.contains("step 4/10") && t.contains("1234 tok/s"), "{t}");
    }

    #[test]
    fn router_steps_show_their_phase_and_stay_out_of_the_loss() {
        let mut d = dashboard();
        let t = text(&render(&d, 100, 30));
        assert!(
            !t.contains("router KL"),
            "no router entry without router steps"
        );
        d.train.push(StepRecord {
            phase: "routers".into(),
            ..step(5, 0.0421)
        });
        assert_eq!(d.train.loss.len(), 4, "a router step is not a loss point");
        assert_eq!(d.train.router, vec![(5.0, 0.0421)]);
        let t = text(&render(&d, 100, 30));
        assert!(
            t.contains("phase routers") && t.contains("router KL 0.04210"),
            "{t}"
        );
    }

    #[test]
    fn fits_80_by_24_and_larger_models_merge_cells() {
        let mut d = dashboard();
        // OLMoE-1B-7B: 16 layers x 64 experts in a 24-line terminal.
        let mut counts = vec![vec![1u32; 64]; 16];
        counts[15][63] = 100;
        let mut s = step(5, 0.5);
        s.expert_counts = counts;
        d.train.recent.clear();
        d.train.push(s);
        let t = text(&render(&d, 80, 24));
        assert!(t.contains("expert activation") && t.contains("L0"), "{t}");
        // Merged cells keep the hottest value: the last cell of a 4 x 8 grid is hot.
        let values = d.train.heat();
        let marked = HashSet::new();
        let map = Heatmap {
            values: &values,
            marked: &marked,
            mask: &[],
            diverging: false,
            title: "",
        };
        let (grid, first) = map.grid(4, 8);
        assert_eq!((grid.len(), grid[0].len()), (4, 8));
        assert_eq!(first, vec![0, 4, 8, 12]);
        assert_eq!(grid[3][7].0, 1.0);
        assert!(grid[0][0].0 < 0.05);
        d.help = true;
        let t = text(&render(&d, 80, 24));
        assert!(t.contains("pause / resume"), "{t}");
        d.view = View::Collect;
        d.collect.push_activation(&[0.1; 64], &[0.2; 64], 16);
        d.help = false;
        let t = text(&render(&d, 80, 24));
        assert!(t.contains("unsafe - safe"), "{t}");
    }
}
