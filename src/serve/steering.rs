//! Which experts a request forces on and off: the server's default (its `--steer` run and
//! counts), a named setting of that run (`"steer-a5-d8"`), explicit lists, or `"none"`.

use super::api::{ApiError, SteeringRequest};
use crate::analysis::select::steering_sets;
use crate::eval::Steering;
use crate::model::ExpertId;
use crate::run_dir::Variant;

/// The steering a server can apply, and its default.
#[derive(Debug, Clone)]
pub struct SteeringPolicy {
    /// MoE layers of the model.
    pub layers: usize,
    /// Experts per MoE layer.
    pub experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// The `--steer` run's expert ranking (riskiest first), if one was given.
    pub ranking: Option<Vec<ExpertId>>,
    /// What a request without `steering` gets.
    pub default: Steering,
}

impl SteeringPolicy {
    /// No steering run: requests may still name experts explicitly.
    pub fn plain(layers: usize, experts: usize, top_k: usize) -> Self {
        Self {
            layers,
            experts,
            top_k,
            ranking: None,
            default: Steering::default(),
        }
    }

    /// The experts of a named setting of the run's ranking.
    pub fn named(&self, activate_safe: usize, deactivate_unsafe: usize) -> Option<Steering> {
        let ranking = self.ranking.as_ref()?;
        let (activate, deactivate) = steering_sets(
            ranking,
            self.experts,
            self.top_k,
            activate_safe,
            deactivate_unsafe,
        );
        Some(normalised(activate, deactivate))
    }

    /// The steering of one request (a 400 naming `steering` when it is wrong).
    pub fn resolve(&self, asked: Option<&SteeringRequest>) -> Result<Steering, ApiError> {
        let bad = |m: String| ApiError::invalid("steering", m);
        match asked {
            None => Ok(self.default.clone()),
            Some(SteeringRequest::Named(name)) if name == "none" => Ok(Steering::default()),
            Some(SteeringRequest::Named(name)) => {
                let setting = match name.parse::<Variant>() {
                    Ok(Variant::Steered(s)) => s,
                    _ => {
                        return Err(bad(format!(
                            "{name:?} is not a steering setting: expected \"none\", a name such as \"steer-a5\", \"steer-d8\", \"steer-a5-d8\", or {{\"activate\": [[layer, expert], …], \"deactivate\": […]}}"
                        )));
                    }
                };
                self.named(setting.activate_safe, setting.deactivate_unsafe)
                    .ok_or_else(|| {
                        bad(format!(
                            "{name:?} needs an expert ranking: start the server with --steer RUN, or name the experts explicitly"
                        ))
                    })
            }
            Some(SteeringRequest::Explicit {
                activate,
                deactivate,
                removal,
            }) => {
                for (list, what) in [(activate, "activate"), (deactivate, "deactivate")] {
                    for &[l, e] in list {
                        if l >= self.layers || e >= self.experts {
                            return Err(bad(format!(
                                "{what}: expert [{l}, {e}] is out of range: the model has {} MoE layers of {} experts",
                                self.layers, self.experts
                            )));
                        }
                    }
                }
                let s = Steering {
                    removal: *removal,
                    ..normalised(activate.clone(), deactivate.clone())
                };
                if let Some(both) = s.activate.iter().find(|id| s.deactivate.contains(id)) {
                    return Err(bad(format!(
                        "expert {both:?} is both activated and deactivated"
                    )));
                }
                for l in 0..self.layers {
                    let on = s.activate.iter().filter(|id| id[0] == l).count();
                    let off = s.deactivate.iter().filter(|id| id[0] == l).count();
                    if on > self.top_k {
                        return Err(bad(format!(
                            "layer {l}: {on} experts activated, but a token is routed to {} only",
                            self.top_k
                        )));
                    }
                    if self.experts - off < self.top_k {
                        return Err(bad(format!(
                            "layer {l}: {off} experts deactivated leaves fewer than the {} a token is routed to",
                            self.top_k
                        )));
                    }
                }
                Ok(s)
            }
        }
    }
}

/// Sorted, without repeats: requests that steer alike compare equal (and share a batch).
fn normalised(mut activate: Vec<ExpertId>, mut deactivate: Vec<ExpertId>) -> Steering {
    activate.sort_unstable();
    activate.dedup();
    deactivate.sort_unstable();
    deactivate.dedup();
    Steering {
        activate,
        deactivate,
        ..Steering::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_lists_are_checked_and_sorted() {
        let p = SteeringPolicy::plain(2, 8, 2);
        let ok = p
            .resolve(Some(&SteeringRequest::Explicit {
                activate: vec![[1, 3], [0, 2], [1, 3]],
                deactivate: vec![[0, 5]],
                removal: crate::model::Removal::Zero,
            }))
            .unwrap();
        assert_eq!(ok.activate, vec![[0, 2], [1, 3]]);
        assert_eq!(ok.removal, crate::model::Removal::Zero);
        let out = p
            .resolve(Some(&SteeringRequest::Explicit {
                activate: vec![[2, 0]],
                deactivate: vec![],
                removal: Default::default(),
            }))
            .unwrap_err();
        assert_eq!(out.status, 400);
        assert!(out.message.contains("out of range"), "{}", out.message);
        let named = p
            .resolve(Some(&SteeringRequest::Named("steer-d8".into())))
            .unwrap_err();
        assert!(named.message.contains("--steer"), "{}", named.message);
        assert_eq!(
            p.resolve(Some(&SteeringRequest::Named("none".into())))
                .unwrap(),
            Steering::default()
        );
    }
}
