//! Which settings shape which stage: each stage's fingerprint, the one answer that both
//! `config.toml`'s reconciliation ([`crate::run_dir::RunDir::reconcile`]) and a sweep's sharing
//! compare. A stage's inputs include everything its inputs depend on, so a change upstream
//! changes every stage after it.

use serde_json::{Value, json};

use crate::analysis::{ExpertSource, Ranking, TokenScope};
use crate::config::Config;
use crate::generate::Sampling;
use crate::run_dir::{Stage, Variant};

/// The stages a config runs, in order: collect, analyze, train, then each evaluation. Training
/// is left out when evaluations are listed and none of them is of the trained model (steering
/// only: a dose-response sweep's forced-off cells).
pub fn stages(cfg: &Config) -> Vec<Stage> {
    let v = &cfg.eval.variants;
    let mut out = vec![Stage::Collect, Stage::Analyze];
    if v.is_empty() || v.contains(&Variant::Trained) {
        out.push(Stage::Train);
    }
    out.extend(cfg.eval.variants.iter().map(|v| Stage::Eval(*v)));
    out
}

/// Each stage of `cfg` with its fingerprint.
pub fn fingerprints(cfg: &Config) -> Vec<(Stage, Value)> {
    stages(cfg)
        .into_iter()
        .map(|s| (s, s.inputs(cfg)))
        .collect()
}

fn sampling_seed(s: &Sampling, seed: u64) -> Option<u64> {
    (!matches!(s, Sampling::Greedy)).then_some(seed)
}

/// `a` with `b`'s keys added (an object each).
fn merged(mut a: Value, b: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut a, b) {
        for (k, v) in b {
            if !v.is_null() {
                a.insert(k, v);
            }
        }
    }
    a
}

impl Stage {
    /// The settings this stage's artifacts depend on, as the config spells them (so that a
    /// changed setting is named by its dotted key). Where a run computes — `model.backend`,
    /// `model.devices` — is not among them.
    ///
    /// - collect: the model (`dir`, `precision`, `enable_thinking`), `data`, `collect`, `judge`,
    ///   and `seed` when sampling;
    /// - analyze: collect's + `analysis` (+ `seed` for the random ablation);
    /// - train: analyze's + `train` (+ `seed` when batches are shuffled);
    /// - the base model's evaluation: the model, `data`, `judge`, `eval` (less its list of
    ///   variants), and `seed` when sampling;
    /// - a steered one: the base evaluation's + the steering setting + what the ranking it steers
    ///   by depends on (collect's, the token scope and the expert source: not the thresholds or
    ///   `top_k`, which do not change the ranking);
    /// - the trained model's: train's + the base evaluation's.
    pub fn inputs(&self, cfg: &Config) -> Value {
        let model = json!({"dir": cfg.model.dir, "precision": cfg.model.precision, "enable_thinking": cfg.model.enable_thinking});
        let collect = json!({
            "model": model,
            "data": cfg.data,
            "collect": cfg.collect,
            // Collect labels its samples with the phrase judge only.
            "judge": cfg.judge.phrase,
            "seed": sampling_seed(&cfg.collect.sampling, cfg.seed),
        });
        let random = cfg.analysis.experts == ExpertSource::Random;
        let analyze = || {
            let mut analysis = json!(cfg.analysis);
            // The effect settings matter to the effect rankings only.
            if let Value::Object(m) = &mut analysis
                && !cfg.analysis.ranking.is_causal()
            {
                for key in ["ranking", "score", "removal", "ablate_top", "answer_tokens"] {
                    m.remove(key);
                }
            }
            merged(
                collect.clone(),
                json!({"analysis": analysis, "seed": random.then_some(cfg.seed)}),
            )
        };
        let train = || {
            merged(
                analyze(),
                json!({"train": cfg.train, "seed": cfg.train.shuffle_batches.then_some(cfg.seed)}),
            )
        };
        let base_eval = || {
            let mut eval = serde_json::to_value(&cfg.eval).expect("eval settings serialise");
            if let Value::Object(m) = &mut eval {
                // What steering alone reads goes into the steered evaluations' inputs.
                m.remove("variants");
                m.remove("removal");
            }
            json!({"model": model, "data": cfg.data, "judge": cfg.judge, "eval": eval, "seed": sampling_seed(&cfg.eval.sampling, cfg.seed)})
        };
        let with_judge = |mut v: Value| {
            if let Value::Object(m) = &mut v {
                m.insert("judge".into(), json!(cfg.judge));
            }
            v
        };
        match self {
            Stage::Collect => collect.clone(),
            Stage::Analyze => analyze(),
            Stage::Train => train(),
            Stage::Eval(Variant::Base) => base_eval(),
            // Collect's and train's `judge` is the phrase judge only; an evaluation depends on
            // the whole table (an HTTP judge adds to its report).
            Stage::Eval(Variant::Steered(s)) => with_judge({
                let a = &cfg.analysis;
                let mut ranking = json!({
                    "token_scope": a.token_scope,
                    "first_n": (a.token_scope == TokenScope::GenerationFirstN).then_some(a.first_n),
                    "experts": a.experts,
                });
                if a.ranking.is_causal()
                    && let Value::Object(m) = &mut ranking
                {
                    m.insert("ranking".into(), json!(a.ranking));
                    m.insert("score".into(), json!(a.score));
                    m.insert("removal".into(), json!(a.removal));
                    m.insert("answer_tokens".into(), json!(a.answer_tokens));
                    if a.ranking == Ranking::AttributionAblation {
                        m.insert("ablate_top".into(), json!(a.ablate_top));
                    }
                }
                let mut steer = json!({"activate_safe": s.activate_safe, "deactivate_unsafe": s.deactivate_unsafe});
                if s.deactivate_unsafe > 0
                    && cfg.eval.removal != crate::model::Removal::Route
                    && let Value::Object(m) = &mut steer
                {
                    m.insert("removal".into(), json!(cfg.eval.removal));
                }
                merged(
                    merged(base_eval(), collect.clone()),
                    json!({"analysis": ranking, "steer": steer, "seed": random.then_some(cfg.seed)}),
                )
            }),
            Stage::Eval(Variant::Trained) => with_judge(merged(base_eval(), train())),
        }
    }

    /// A short stable key of [`Stage::inputs`]: the stage's name and a hash (FNV-1a, 64 bits)
    /// of its fingerprint; what a sweep shares a stage by.
    pub fn key(&self, cfg: &Config) -> String {
        let text = serde_json::to_string(&self.inputs(cfg)).expect("fingerprints serialise");
        let mut h: u64 = 0xcbf29ce484222325;
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{}-{h:016x}", self.name().replace('/', "-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_dir::SteerSetting;

    #[test]
    fn keys_follow_exactly_the_settings_a_stage_reads() {
        let a = Config::default();
        let steer = Stage::Eval(Variant::Steered(SteerSetting {
            activate_safe: 5,
            deactivate_unsafe: 0,
        }));
        let mut b = a.clone();
        b.train.lr *= 2.0;
        assert_eq!(Stage::Analyze.key(&a), Stage::Analyze.key(&b));
        assert_ne!(Stage::Train.key(&a), Stage::Train.key(&b));
        assert_ne!(
            Stage::Eval(Variant::Trained).key(&a),
            Stage::Eval(Variant::Trained).key(&b)
        );
        assert_eq!(
            Stage::Eval(Variant::Base).key(&a),
            Stage::Eval(Variant::Base).key(&b)
        );
        let mut c = a.clone();
        c.seed = 7;
        assert_eq!(
            Stage::Collect.key(&a),
            Stage::Collect.key(&c),
            "greedy collection does not depend on the seed"
        );
        assert_eq!(
            Stage::Analyze.key(&a),
            Stage::Analyze.key(&c),
            "risk difference does not depend on the seed"
        );
        assert_ne!(
            Stage::Train.key(&a),
            Stage::Train.key(&c),
            "shuffled batches do"
        );
        c.analysis.experts = ExpertSource::Random;
        let mut d = c.clone();
        d.seed = 8;
        assert_ne!(
            Stage::Analyze.key(&c),
            Stage::Analyze.key(&d),
            "the random ablation does"
        );
        assert_eq!(Stage::Collect.key(&c), Stage::Collect.key(&d));
        let mut e = a.clone();
        e.analysis.top_k += 3;
        assert_ne!(Stage::Analyze.key(&a), Stage::Analyze.key(&e));
        assert_eq!(
            steer.key(&a),
            steer.key(&e),
            "top_k does not change the ranking steering takes"
        );
        e.model.backend = crate::backend::BackendKind::Wgpu;
        e.model.devices = vec![1];
        assert_eq!(
            Stage::Collect.key(&a),
            Stage::Collect.key(&e),
            "where a run computes is not what it computes"
        );
        let changed =
            crate::run_dir::changed_keys(&Stage::Train.inputs(&a), &Stage::Train.inputs(&b));
        assert_eq!(changed, vec!["train.lr".to_string()]);
    }

    #[test]
    fn an_http_judge_shapes_the_evaluations_only() {
        let a = Config::default();
        let mut b = a.clone();
        b.judge.http = Some(crate::judge::HttpJudgeConfig {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "judge".into(),
            ..Default::default()
        });
        for s in [Stage::Collect, Stage::Analyze, Stage::Train] {
            assert_eq!(s.key(&a), s.key(&b), "{s}");
        }
        let steer = Variant::Steered(SteerSetting {
            activate_safe: 1,
            deactivate_unsafe: 0,
        });
        for v in [Variant::Base, steer, Variant::Trained] {
            assert_ne!(Stage::Eval(v).key(&a), Stage::Eval(v).key(&b), "{v:?}");
            assert_eq!(Stage::Eval(v).inputs(&b)["judge"]["kind"], "http", "{v:?}");
        }
        // A phrase-only table fingerprints as before the HTTP judge: the PhraseJudge itself.
        assert_eq!(
            Stage::Eval(Variant::Base).inputs(&a)["judge"],
            serde_json::to_value(&a.judge.phrase).unwrap()
        );
    }
}
