//! How a run looks in the terminal: the pipeline's events as progress bars and summary lines,
//! or — on a terminal, without `--no-tui` — the dashboard for collect and train.

use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use steermoe::analysis::{AnalysisSummary, EffectsEvent};
use steermoe::collect::CollectEvent;
use steermoe::config::Config;
use steermoe::eval::EvalEvent;
use steermoe::pipeline::{Event, Outcome};
use steermoe::run_dir::{RunDir, Stage};
use steermoe::train::{TrainControl, TrainEvent, TrainSummary};
use steermoe::tui::{self, DashboardHandle, RunInfo, UiEvent, View};

/// What the terminal shows of a run.
pub struct Progress {
    cfg: Config,
    dir: RunDir,
    control: TrainControl,
    tui: bool,
    /// Rows of the analysis summary's top-experts table.
    pub show: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bar: Option<ProgressBar>,
    dashboard: Option<DashboardHandle>,
    started: Option<Instant>,
    tokens: usize,
    total_steps: Option<u64>,
}

impl State {
    /// Tokens generated in this stage so far and their rate.
    fn token_rate(&self) -> String {
        let secs = self
            .started
            .map_or(1.0, |t| t.elapsed().as_secs_f64().max(1e-9));
        format!(
            "{} tokens, {:.0} tok/s",
            self.tokens,
            self.tokens as f64 / secs
        )
    }
}

fn bar(template: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// Off a terminal indicatif hides its bars (and the lines they print): plain lines then.
fn plain() -> bool {
    !std::io::IsTerminal::is_terminal(&std::io::stderr())
}

impl Progress {
    /// Progress for `cfg`'s run in `dir`; `control` is training's, for the dashboard's keys.
    pub fn new(cfg: &Config, dir: &RunDir, control: TrainControl) -> Self {
        Self {
            cfg: cfg.clone(),
            dir: dir.clone(),
            control,
            tui: super::tui_enabled(),
            show: 10,
            state: Mutex::new(State::default()),
        }
    }

    fn say(&self, s: &State, line: String) {
        match &s.bar {
            Some(b) if !plain() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn dashboard(&self, view: View) -> Option<DashboardHandle> {
        let info = RunInfo::new(&self.cfg, self.dir.path()).ok()?;
        let spawned = match view {
            // Every finished batch is on disk (written atomically), so quitting mid-collect loses
            // at most the batch in flight; a rerun resumes after the last finished one.
            View::Collect => tui::spawn(info, view, None, || {
                ratatui::restore();
                println!(
                    "collect stopped; finished batches are kept, rerun the same command to resume"
                );
                std::process::exit(0);
            }),
            View::Train => tui::spawn(info, view, Some(self.control.clone()), || {}),
        };
        spawned
            .map_err(|e| {
                tracing::warn!("the dashboard did not start ({e}); printing progress lines instead")
            })
            .ok()
    }

    /// Show one event.
    pub fn on(&self, event: Event) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Notice(line) => self.say(&s, line),
            Event::Started(stage) => {
                println!("== {stage}");
                s.started = Some(Instant::now());
                s.tokens = 0;
                s.total_steps = None;
                let view = match stage {
                    Stage::Collect => Some(View::Collect),
                    Stage::Train => Some(View::Train),
                    _ => None,
                };
                if let Some(view) = view.filter(|_| self.tui) {
                    s.dashboard = self.dashboard(view);
                }
                if s.dashboard.is_none() {
                    s.bar = Some(match stage {
                        Stage::Collect => bar(
                            "collect {bar:30} {pos}/{len} batches  {msg}  [{elapsed_precise}<{eta_precise}]",
                        ),
                        Stage::Train => bar(
                            "train {bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
                        ),
                        Stage::Analyze => ProgressBar::hidden(),
                        Stage::Eval(v) => bar(&format!(
                            "eval {:<8} {{bar:30}} {{pos}}/{{len}}  {{msg}}  [{{elapsed_precise}}<{{eta_precise}}]",
                            v.name()
                        )),
                    });
                }
            }
            Event::Collect(e) => self.collect(&mut s, e),
            Event::Train(e) => self.train(&mut s, e),
            Event::Eval(_, e) => {
                let Some(b) = s.bar.clone() else { return };
                match e {
                    EvalEvent::Start { prompts, answers } => {
                        b.set_length((prompts + answers) as u64)
                    }
                    EvalEvent::Answered(n) | EvalEvent::Scored(n) => b.inc(n as u64),
                    EvalEvent::Tokens(n) => {
                        s.tokens += n;
                        b.set_message(s.token_rate());
                    }
                }
            }
            Event::Effects(EffectsEvent::Start(n)) => {
                if let Some(b) = s.bar.take() {
                    b.finish_and_clear();
                }
                let b = bar(
                    "effects {bar:30} {pos}/{len} forward passes  [{elapsed_precise}<{eta_precise}]",
                );
                b.set_length(n as u64);
                s.bar = Some(b);
            }
            Event::Effects(EffectsEvent::Pass) => {
                if let Some(b) = &s.bar {
                    b.inc(1)
                }
            }
            Event::Analyzed(summary) => print_analysis(&summary, self.show),
            Event::Trained(summary) => {
                self.close(&mut s);
                print_training(&summary, &self.dir);
            }
            Event::Evaluated(..) => {}
            Event::Done {
                stage,
                outcome,
                seconds,
            } => {
                self.close(&mut s);
                match outcome {
                    Outcome::Done => println!("   {stage}: done already"),
                    Outcome::Linked => println!("   {stage}: linked"),
                    Outcome::Ran if matches!(stage, Stage::Collect) => {
                        println!(
                            "   collected in {seconds:.1} s ({} tokens generated; model load and first-use kernel compilation included)",
                            s.tokens
                        )
                    }
                    Outcome::Ran => {}
                }
            }
            Event::Table(text) => print!("{text}"),
        }
    }

    fn collect(&self, s: &mut State, e: CollectEvent) {
        if let Some(d) = &s.dashboard {
            let _ = d.sender().send(UiEvent::Collect(e));
            return;
        }
        let Some(b) = s.bar.clone() else { return };
        match e {
            CollectEvent::Start { total, done } => {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
            CollectEvent::Tokens(n) => {
                s.tokens += n;
                b.set_message(s.token_rate());
            }
            CollectEvent::BatchDone {
                batch_idx,
                kept,
                dropped,
                ..
            } => {
                if dropped > 0 {
                    self.say(
                        s,
                        format!("batch {batch_idx}: kept {kept}, quality filter dropped {dropped}"),
                    );
                }
                b.inc(1);
                if plain() {
                    eprintln!(
                        "collect: {}/{} batches, {} tokens",
                        b.position(),
                        b.length().unwrap_or(0),
                        s.tokens
                    );
                }
            }
        }
    }

    fn train(&self, s: &mut State, e: TrainEvent) {
        if let Some(d) = &s.dashboard {
            let _ = d.sender().send(UiEvent::Train(e));
            return;
        }
        let Some(b) = s.bar.clone() else { return };
        let step = match e {
            TrainEvent::Step(step) => step,
            TrainEvent::Valid(v) => {
                self.say(
                    s,
                    format!(
                        "validation at step {}: loss {:.4} over {} held-out tokens",
                        v.step, v.valid_loss, v.valid_tokens
                    ),
                );
                return;
            }
        };
        if s.total_steps.is_none()
            && let Some(plan) = self.control.plan()
        {
            s.total_steps = Some(plan.total_steps as u64);
            b.set_length(plan.total_steps as u64);
        }
        b.set_position(step.step as u64);
        let msg = format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s  batch {}",
            step.loss, step.lr, step.tokens_per_s, step.batch_idx
        );
        if plain() {
            eprintln!("train step {}  {msg}", step.step);
        }
        b.set_message(msg);
    }

    fn close(&self, s: &mut State) {
        if let Some(b) = s.bar.take() {
            b.finish_and_clear();
        }
        if let Some(d) = s.dashboard.take()
            && let Err(e) = d.finish()
        {
            eprintln!("the dashboard ended with an error: {e}");
        }
    }

    /// Close whatever is still open (a run that failed mid-stage).
    pub fn finish(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.close(&mut s);
    }
}

/// The analysis summary: top experts, per-batch counts, overlap.
pub fn print_analysis(s: &AnalysisSummary, show: usize) {
    let [layers, experts] = s.shape;
    println!(
        "analysed {} batches ({} tokens, {layers} layers x {experts} experts, scope {})",
        s.experts.batch_idx.len(),
        s.tokens,
        s.experts.params.token_scope
    );
    if !s.skipped.is_empty() {
        println!(
            "skipped batches without both safe and unsafe samples: {:?}",
            s.skipped
        );
    }
    let params = &s.experts.params;
    // The effect ranking's own order (not under `experts = "random"` and the like, whose order
    // is not the ranking's).
    if params.ranking != "riskdiff" && params.experts == "risk_diff" {
        let first: Vec<String> = s
            .experts
            .ranking
            .iter()
            .take(show)
            .map(|[l, e]| format!("{l}:{e}"))
            .collect();
        println!(
            "ranked by {} ({} score), first {} (layer:expert): {}",
            params.ranking,
            params.score.as_deref().unwrap_or("-"),
            first.len(),
            first.join(" ")
        );
        println!("risk difference, beside it:");
    }
    println!(
        "{:>5} {:>6} {:>10} {:>10} {:>10}",
        "layer", "expert", "risk_diff", "a_unsafe_n", "a_safe_n"
    );
    for r in s.top.iter().take(show) {
        println!(
            "{:>5} {:>6} {:>+10.4} {:>10.4} {:>10.4}",
            r.layer, r.expert, r.risk_diff, r.a_unsafe_n, r.a_safe_n
        );
    }
    let (min, max, mean) = s.per_batch_counts();
    let (jaccard, common) = s.overlap();
    println!(
        "unsafe experts per batch: min {min}, max {max}, mean {mean:.1}; union {}, global {}",
        s.experts.union.len(),
        s.experts.global.len()
    );
    println!("overlap between batches: mean Jaccard {jaccard:.3}, {common} experts in every batch");
}

/// What training did.
fn print_training(s: &TrainSummary, dir: &RunDir) {
    if let Some(w) = s.resumed_from {
        println!("resumed from checkpoint {w}");
    }
    if s.stopped {
        println!(
            "stopped after step {} of {}; run the same command again to resume from the last checkpoint",
            s.steps.last().map_or(0, |r| r.step),
            s.total_steps
        );
        return;
    }
    let (trainable, total) = s.params;
    println!(
        "trained {} steps: {trainable} of {total} parameters trainable ({:.3}%)",
        s.steps.len(),
        100.0 * trainable as f64 / total.max(1) as f64
    );
    if let (Some(first), Some(last)) = (s.steps.first(), s.steps.last()) {
        println!("loss {:.4} -> {:.4}", first.loss, last.loss);
    }
    println!("exported {}", dir.final_model().display());
}
