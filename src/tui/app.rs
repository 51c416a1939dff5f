//! The dashboard's terminal loop, on its own thread: it owns the terminal (raw mode, alternate
//! screen), drains the events the stages send, reads keys, and redraws about ten times a
//! second.
//!
//! How it is fed: burn-train's Learner owns the training loop and reports through its metrics and
//! its renderer; steermoe's renderer (`train::metrics::ChannelRenderer`) forwards every step and
//! validation over a channel, and the stage's `on_event` callback passes them on to this thread as
//! a [`UiEvent`]. burn-train's own ratatui renderer is not used: it knows nothing of experts,
//! masks or collect.
//!
//! The terminal is restored when the loop ends, on every error path, and on a panic anywhere
//! (`ratatui::try_init` chains a panic hook that restores it first).

use std::io;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::state::{Dashboard, RunInfo, View};
use super::widgets::draw;
use crate::collect::CollectEvent;
use crate::train::{TrainControl, TrainEvent};

/// What the stages tell the dashboard.
#[derive(Debug, Clone)]
pub enum UiEvent {
    /// A training step or a validation.
    Train(TrainEvent),
    /// Collect progress.
    Collect(CollectEvent),
    /// The stage is over: leave the dashboard.
    Finished,
}

/// What the user did with the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The stage finished.
    Finished,
    /// The user quit (`q` or Ctrl-C) while it ran.
    Quit,
}

/// A running dashboard: send it events, then [`DashboardHandle::finish`].
pub struct DashboardHandle {
    tx: Sender<UiEvent>,
    thread: JoinHandle<io::Result<Exit>>,
}

impl DashboardHandle {
    /// A sender for the stage's callbacks.
    pub fn sender(&self) -> Sender<UiEvent> {
        self.tx.clone()
    }

    /// Close the dashboard (if the user has not) and restore the terminal.
    pub fn finish(self) -> io::Result<Exit> {
        let _ = self.tx.send(UiEvent::Finished);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("dashboard thread panicked")))
    }
}

/// Open the dashboard on the terminal. `control` (training) receives `p` and `q`; without one
/// (collect), `q` leaves the dashboard and `on_quit` runs.
pub fn spawn(
    info: RunInfo,
    view: View,
    control: Option<TrainControl>,
    on_quit: impl FnOnce() + Send + 'static,
) -> io::Result<DashboardHandle> {
    let (tx, rx) = channel();
    let mut terminal = ratatui::try_init()?;
    let thread = std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            let result = ui_loop(&mut terminal, rx, info, view, control, on_quit);
            ratatui::restore();
            result
        })?;
    Ok(DashboardHandle { tx, thread })
}

fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    rx: Receiver<UiEvent>,
    info: RunInfo,
    view: View,
    control: Option<TrainControl>,
    on_quit: impl FnOnce(),
) -> io::Result<Exit> {
    let mut d = Dashboard {
        info,
        view,
        ..Dashboard::default()
    };
    let mut on_quit = Some(on_quit);
    let started = Instant::now();
    let frame = Duration::from_millis(100);
    loop {
        // Events first, up to one frame's wait.
        match rx.recv_timeout(frame) {
            Ok(ev) => {
                if apply(&mut d, ev, started) {
                    return Ok(Exit::Finished);
                }
                while let Ok(ev) = rx.try_recv() {
                    if apply(&mut d, ev, started) {
                        return Ok(Exit::Finished);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(Exit::Finished),
        }
        while event::poll(Duration::ZERO)? {
            if let Event::Key(key) = event::read()? {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                match key.code {
                    _ if key.code == KeyCode::Char('q') || ctrl_c => match &control {
                        Some(c) => {
                            c.request_stop();
                            d.paused = false;
                            d.status = if d.stopping {
                                "stopping now; a rerun resumes from the last checkpoint".into()
                            } else {
                                "stopping at the next checkpoint (q again: now)".into()
                            };
                            d.stopping = true;
                        }
                        None => {
                            if let Some(f) = on_quit.take() {
                                f();
                            }
                            return Ok(Exit::Quit);
                        }
                    },
                    KeyCode::Char('p') => {
                        if let Some(c) = &control {
                            d.paused = c.toggle_pause();
                            d.status = if d.paused {
                                "paused before the next batch".into()
                            } else {
                                String::new()
                            };
                        }
                    }
                    KeyCode::Tab => {
                        d.view = match d.view {
                            View::Train => View::Collect,
                            View::Collect => View::Train,
                        }
                    }
                    KeyCode::Char('?') => d.help = !d.help,
                    KeyCode::Esc => d.help = false,
                    _ => {}
                }
            }
        }
        if let Some(plan) = control.as_ref().and_then(TrainControl::plan)
            && d.train.total_steps == 0
        {
            d.train.total_steps = plan.total_steps;
            d.info.params = Some(plan.params);
            d.train.unsafe_experts = plan.trained.into_iter().collect();
            d.train.batch_experts = plan.batch_experts;
        }
        if !d.paused {
            match d.view {
                View::Train if d.train.last.is_some() => d.train.elapsed = started.elapsed(),
                View::Collect => d.collect.elapsed = started.elapsed(),
                _ => {}
            }
        }
        terminal.draw(|f| draw(f, &d))?;
    }
}

/// Fold one event into the state; `true` when the stage is over.
fn apply(d: &mut Dashboard, ev: UiEvent, started: Instant) -> bool {
    match ev {
        UiEvent::Train(TrainEvent::Step(s)) => {
            d.train.elapsed = started.elapsed();
            d.train.push(s);
        }
        UiEvent::Train(TrainEvent::Valid(v)) => d.train.valid.push((v.step as f64, v.valid_loss)),
        UiEvent::Collect(e) => match e {
            CollectEvent::Start { total, done } => {
                d.collect.total = total;
                d.collect.done = done;
            }
            CollectEvent::Tokens(n) => d.collect.tokens += n,
            CollectEvent::BatchDone {
                kept,
                dropped,
                activation,
                ..
            } => {
                d.collect.done += 1;
                d.collect.kept += kept;
                d.collect.dropped += dropped;
                if let Some((safe, unsafe_)) = activation {
                    let experts = d.info.experts.max(1);
                    d.collect.push_activation(&safe, &unsafe_, experts);
                }
            }
        },
        UiEvent::Finished => return true,
    }
    false
}
