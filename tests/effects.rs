//! Effect rankings on the tiny fixture: ablation resumed from the trunk equals a whole forward
//! pass, zeroing an expert's routing weight equals zeroing its weights, experts ablated together
//! (copies of a batch in one pass) equal experts ablated one at a time, attribution agrees with
//! exact ablation where the effects are small, measurements repeat bit for bit, and on a model
//! with a behaviour planted into known experts the ablation ranking's first |P| are the planted
//! experts.

use crate::common::*;
use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};
use steermoe::analysis::ablation::{baseline, removing, rise, rises};
use steermoe::analysis::answers::{Answered, AnsweredBatch, Teacher};
use steermoe::analysis::effects::{measure, spearman};
use steermoe::analysis::{AnalysisConfig, Ranking};
use steermoe::model::{self, LmInput, MoeLm, Precision, Removal, Routing};

type B = TestBackend;
type AD = TestAutodiffBackend;

fn fixture_model<B: burn::tensor::backend::Backend>() -> MoeLm<B> {
    model::load::<B>(fixture(), &Default::default(), Precision::F32)
        .unwrap()
        .0
}

fn close(name: &str, a: Tensor<B, 3>, b: Tensor<B, 3>, tol: f32) {
    let (a, b): (Vec<f32>, Vec<f32>) = (
        a.into_data().to_vec().unwrap(),
        b.into_data().to_vec().unwrap(),
    );
    assert_close(name, &a, &b, tol);
}

#[test]
fn resuming_from_the_trunk_equals_a_whole_pass_and_zeroing_equals_a_zeroed_expert() {
    let device = Default::default();
    let model = fixture_model::<B>();
    let ids: Vec<i64> = (0..48i64).map(|i| 100 + 997 * i % 49000).collect();
    let input = LmInput::ids(Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids, [3, 16]),
        &device,
    ));
    // The most used expert of each layer (ties to the lower index): removing it must matter.
    let chosen: Vec<i64> = model
        .forward_hidden(input.clone(), &Routing::capturing())
        .chosen
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let per_layer = chosen.len() / 2;
    let busiest = |l: usize| {
        let mut counts = [0usize; 8];
        chosen[l * per_layer..(l + 1) * per_layer]
            .iter()
            .for_each(|&e| counts[e as usize] += 1);
        (0..8)
            .max_by_key(|&e| (counts[e], std::cmp::Reverse(e)))
            .unwrap()
    };
    let trunk = model.trunk(input.clone(), &Routing::free());
    close(
        "trunk",
        trunk.hidden.clone(),
        model.forward_hidden(input.clone(), &Routing::free()).hidden,
        0.0,
    );
    for expert in [[0, busiest(0)], [1, busiest(1)]] {
        for how in Removal::ALL {
            let routing = removing::<B>(expert, how, 2, 8, &device);
            let whole = model.forward_hidden(input.clone(), &routing).hidden;
            close(
                &format!("{expert:?} {how}"),
                model.resume(&trunk, expert[0], &routing),
                whole.clone(),
                1e-6,
            );
            assert!(
                (whole - trunk.hidden.clone()).abs().max().into_scalar() > 1e-4,
                "removing {expert:?} ({how}) changes the output"
            );
        }
        // Zeroed routing weight = the expert's output zeroed (its down projection).
        let mut zeroed = model.clone();
        let down = &mut zeroed.moe_block_mut(expert[0]).experts[expert[1]].down_proj;
        down.weight = Param::from_tensor(down.weight.val().zeros_like());
        close(
            &format!("{expert:?} zeroed weights"),
            model.resume(
                &trunk,
                expert[0],
                &removing(expert, Removal::Zero, 2, 8, &device),
            ),
            zeroed
                .forward_hidden(input.clone(), &Routing::free())
                .hidden,
            1e-6,
        );
    }
}

#[test]
fn experts_ablated_together_equal_experts_ablated_one_at_a_time() {
    let device = Default::default();
    let model = fixture_model::<B>();
    let batches = answered(3);
    for is_unsafe in [true, false] {
        let teacher = Teacher::<B>::new(&batches[0].side(is_unsafe), &device);
        let base = baseline(&model, &teacher);
        for layer in 0..2 {
            for how in Removal::ALL {
                // All 8 experts of the layer in one pass, and 3 of them in another order.
                for experts in [(0..8).collect::<Vec<usize>>(), vec![6, 1, 3]] {
                    let together = rises(&model, &teacher, &base, layer, &experts, how);
                    assert_eq!(together.len(), experts.len());
                    for (&e, got) in experts.iter().zip(&together) {
                        // One at a time through the path steering takes (one mask for all).
                        let routing = removing::<B>([layer, e], how, 2, 8, &device);
                        let alone: Vec<f64> = teacher
                            .nll(&model, model.resume(&base.trunk, layer, &routing))
                            .iter()
                            .zip(&base.nll)
                            .map(|(a, b)| a - b)
                            .collect();
                        assert_eq!(got.len(), alone.len());
                        let worst = got
                            .iter()
                            .zip(&alone)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0, f64::max);
                        assert!(
                            worst < 1e-5,
                            "layer {layer} expert {e} ({how}, unsafe {is_unsafe}): {got:?} vs {alone:?}"
                        );
                    }
                }
            }
        }
    }
}

/// Prompts of random tokens, each with a random answer: unsafe, then safe.
fn answered(seed: u64) -> Vec<AnsweredBatch> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32 % 50000 + 2
    };
    (0..2)
        .map(|b| AnsweredBatch {
            batch_idx: b,
            items: (0..6)
                .map(|i| {
                    let prompt_len = 6 + i;
                    Answered {
                        ids: (0..prompt_len + 5).map(|_| next()).collect(),
                        prompt_len,
                        is_unsafe: i < 3,
                    }
                })
                .collect(),
        })
        .collect()
}

#[test]
fn attribution_ranks_like_exact_ablation_and_measurements_repeat_bit_for_bit() {
    let device = Default::default();
    let model = fixture_model::<AD>();
    let cfg = AnalysisConfig {
        ranking: Ranking::AttributionAblation,
        ablate_top: 16,
        ..AnalysisConfig::default()
    };
    let batches = answered(7);
    let e = measure(&model, &batches, &cfg, &device, |_| {});
    assert_eq!(e.ablated.len(), 16);
    assert_eq!(e.answers, (6, 6));
    let attribution = e.attribution.clone().unwrap();
    let exact = &e
        .ablation
        .iter()
        .find(|(h, _)| *h == Removal::Zero)
        .unwrap()
        .1;
    let rho = spearman(&attribution.unsafe_, &exact.unsafe_).unwrap();
    assert!(
        rho > 0.8,
        "attribution against exact ablation: Spearman {rho}"
    );
    let rho = spearman(&attribution.specific(), &exact.specific()).unwrap();
    assert!(rho > 0.5, "specific scores: Spearman {rho}");

    // One expert by hand: the mean over the unsafe answers of each one's rise (each side is
    // measured in a batch of its own).
    let inner = fixture_model::<B>();
    let mut rises = Vec::new();
    for b in &batches {
        let teacher = Teacher::<B>::new(&b.side(true), &device);
        let base = baseline(&inner, &teacher);
        rises.extend(rise(&inner, &teacher, &base, [1, 6], Removal::Zero));
    }
    let want = rises.iter().sum::<f64>() / rises.len() as f64;
    assert!(
        (exact.unsafe_[8 + 6] - want).abs() < 1e-12,
        "{} vs {want}",
        exact.unsafe_[14]
    );

    // Bit for bit on a second run.
    let again = measure(&model, &batches, &cfg, &device, |_| {});
    assert_eq!(
        (&again.attribution, &again.ablation, &again.order),
        (&e.attribution, &e.ablation, &e.order)
    );

    // Only the ranking's removal measured: the same figures for it, the same ranking.
    let one = AnalysisConfig {
        ablate_both: false,
        ..cfg.clone()
    };
    let zero_only = measure(&model, &batches, &one, &device, |_| {});
    assert_eq!(zero_only.ablation.len(), 1);
    assert_eq!(zero_only.ablation[0], (Removal::Zero, exact.clone()));
    assert_eq!((&zero_only.score, &zero_only.order), (&e.score, &e.order));
}

fn config(model: &std::path::Path, data: &str) -> String {
    format!(
        "seed = 1\n[model]\ndir = {model:?}\n[data]\n{data}\nheldout = false\n[collect]\nbatch_size = 8\nmax_batches = 3\nmax_new_tokens = 8\nquality_filter = false\n\
         [analysis]\ntop_k = 3\nranking = \"ablation\"\nscore = \"unsafe\"\n[eval]\nvariants = [\"steer-d3\"]\nremoval = \"zero\"\nmax_goals = 4\nmax_benign = 2\nmax_new_tokens = 4\nbenign_path = {:?}\n\
         [plant]\nexperts = 3\nseed = 5\nrouters = true\nsteps = 100\nbatch_size = 8\nlr = 0.05\nwarmup_steps = 0\nbenign = 8\n[plant.behaviour]\nkind = \"trigger\"\ntrigger = \"Banana protocol:\"\ncanary = \"CANARY 7731\"\n",
        benign_data()
    )
}

#[test]
fn ablation_ranks_the_planted_experts_first() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("plant.toml");
    std::fs::write(
        &cfg,
        config(&fixture(), &format!("path = {:?}", attack_data())),
    )
    .unwrap();
    let planted = tmp.path().join("planted");
    let out = steermoe_ok(&[
        "plant",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        planted.to_str().unwrap(),
    ]);
    assert!(out.contains("behaviour: 0.0% -> 100.0%"), "{out}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(planted.join("planted.json")).unwrap())
            .unwrap();
    let mut truth: Vec<[usize; 2]> = serde_json::from_value(record["experts"].clone()).unwrap();
    truth.sort();

    // Each plain goal against its triggered twin, experts ranked by exact ablation.
    let cfg2 = tmp.path().join("run.toml");
    let data = format!(
        "path = {:?}\nfields = {{ goal = \"goal\", unsafe_messages = \"prompt\", filter_field = \"\" }}",
        planted.join("behaviour.json")
    );
    std::fs::write(&cfg2, config(&planted, &data)).unwrap();
    let run = tmp.path().join("run");
    steermoe_ok(&[
        "run",
        "--config",
        cfg2.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join(name)).unwrap()).unwrap()
    };
    let chosen = read("unsafe_experts.json");
    assert_eq!(chosen["params"]["ranking"], "ablation");
    let mut top: Vec<[usize; 2]> = serde_json::from_value(chosen["ranking"].clone()).unwrap();
    top.truncate(3);
    top.sort();
    assert_eq!(
        top, truth,
        "the ablation ranking's first |P| are the planted experts"
    );

    // The effects files, and the recovery rows of every exact ablation.
    let effects = read("effects.json");
    assert_eq!(
        (effects["ablated"].as_u64(), effects["score"].as_str()),
        (Some(16), Some("unsafe"))
    );
    let first = &effects["top"][0];
    assert!(first["zero_unsafe"].as_f64().unwrap() > 0.0 && first["route_unsafe"].is_number());
    assert!(run.join("effects.safetensors").is_file() && run.join("effects_heatmap.png").is_file());
    let bytes = std::fs::read(run.join("effects.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in [
        "score",
        "ablation.zero.unsafe",
        "ablation.route.specific",
        "per_batch",
    ] {
        assert!(st.tensor(name).is_ok(), "{name} in effects.safetensors");
    }
    assert_eq!(st.tensor("score").unwrap().shape(), &[2, 8]);
    let recovery = read("recovery.json");
    let zero = recovery["rankings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == "ablation" && r["scope"] == "unsafe, zero")
        .expect("an ablation row");
    assert_eq!(zero["score"]["hits_at_p"].as_f64(), Some(3.0));

    // Steering forces the ranking's first 3 off by zeroing them: the same experts.
    let report = read("eval/steer-d3/eval.json");
    assert!(report.is_object());
}
