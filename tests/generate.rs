//! Tokenizer, chat template and generation against the fixture: template text and ids equal
//! transformers', greedy tokens equal `generate`'s, the KV cache equals recomputation, padding
//! does not change a row's tokens, seeds reproduce, capture equals a plain forward.

use crate::common::*;
use burn::tensor::{Int, Tensor, TensorData};
use steermoe::data::{ChatTokenizer, Message};
use steermoe::generate::{GenerateOptions, Sampling, generate};
use steermoe::model::{self, ExpertExecution, KvCache, LmInput, MoeLm, Precision, Routing};
use steermoe::train::step::count_experts;

type B = TestBackend;

fn model() -> MoeLm<B> {
    model::load::<B>(fixture(), &Default::default(), Precision::F32)
        .unwrap()
        .0
}

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Chat-templated prompts (one user message each) as ids.
fn chat_prompts(texts: &[&str]) -> Vec<Vec<u32>> {
    let tok = ChatTokenizer::from_dir(fixture()).unwrap();
    texts
        .iter()
        .map(|p| tok.encode_chat(&[Message::user(*p)], true).unwrap())
        .collect()
}

fn opts(max_new_tokens: usize, sampling: Sampling, capture: bool) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling,
        stop_ids: vec![],
        pad_id: 1,
        capture,
    }
}

#[test]
fn chat_template_text_and_ids_equal_transformers() {
    let tok = ChatTokenizer::from_dir(fixture()).unwrap();
    let reference = reference_json(&fixture());
    for (key, gen_prompt) in [("chat", true), ("chat_train", false)] {
        let entry = &reference[key];
        let msgs = messages(&entry["messages"]);
        let text = tok.render(&msgs, gen_prompt).unwrap();
        assert_eq!(text, entry["text"].as_str().unwrap(), "{key} text");
        assert_eq!(
            tok.encode(&text).unwrap(),
            ids_of(&entry["ids"]),
            "{key} ids"
        );
    }
    assert_eq!((tok.eos_id, tok.pad_id), (0, 1));
}

#[test]
fn greedy_tokens_equal_transformers_generate() {
    let greedy = &reference_json(&fixture())["greedy"];
    let prompt = ids_of(&greedy["prompt_ids"]);
    let out = generate(
        &model(),
        &[prompt],
        &opts(16, Sampling::Greedy, false),
        &Routing::free(),
        &Default::default(),
        |_| {},
    );
    assert_eq!(out[0].new_ids, ids_of(&greedy["new_ids"]));
}

#[test]
fn kv_cache_decoding_equals_recomputation() {
    let model = model();
    let device = Default::default();
    let seq: Vec<i64> = ids_of(&reference_json(&fixture())["chat_train"]["ids"])
        .iter()
        .map(|&t| t as i64)
        .collect();
    let n = seq.len();
    let full = model.forward(
        LmInput::ids(Tensor::<B, 2, Int>::from_data(
            TensorData::new(seq.clone(), [1, n]),
            &device,
        )),
        &Routing::free(),
    );
    let mut cache = KvCache::new(model.num_layers());
    let split = n - 6;
    let mut got = vec![
        model
            .forward_cached(
                LmInput::ids(Tensor::from_data(
                    TensorData::new(seq[..split].to_vec(), [1, split]),
                    &device,
                )),
                &mut cache,
                &Routing::free(),
            )
            .logits,
    ];
    for &token in &seq[split..n] {
        got.push(
            model
                .forward_cached(
                    LmInput::ids(Tensor::from_data(
                        TensorData::new(vec![token], [1, 1]),
                        &device,
                    )),
                    &mut cache,
                    &Routing::free(),
                )
                .logits,
        );
    }
    let cached: Vec<f32> = Tensor::cat(got, 1).into_data().iter::<f32>().collect();
    let full: Vec<f32> = full.logits.into_data().iter::<f32>().collect();
    assert_close("kv-cache logits", &cached, &full, 1e-4);
}

#[test]
fn left_padded_batch_gives_each_row_its_own_tokens() {
    let model = model();
    let prompts = chat_prompts(&[
        "Write a short poem about the sea.",
        "Hi",
        "List three colours, please, in order.",
    ]);
    let o = opts(10, Sampling::Greedy, false);
    let batch = generate(
        &model,
        &prompts,
        &o,
        &Routing::free(),
        &Default::default(),
        |_| {},
    );
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate(
            &model,
            std::slice::from_ref(p),
            &o,
            &Routing::free(),
            &Default::default(),
            |_| {},
        );
        assert_eq!(batch[i].new_ids, alone[0].new_ids, "row {i}");
        assert_eq!(batch[i].prompt_ids, *p);
    }
}

#[test]
fn same_seed_same_sampled_tokens() {
    let model = model();
    let prompt = ids_of(&reference_json(&fixture())["chat"]["ids"]);
    let run = |seed| {
        let o = opts(
            12,
            Sampling::Sample {
                temperature: 1.0,
                top_p: 0.95,
                seed,
            },
            false,
        );
        generate(
            &model,
            &[prompt.clone(), prompt.clone()],
            &o,
            &Routing::free(),
            &Default::default(),
            |_| {},
        )
    };
    let (a, b, c) = (run(5), run(5), run(6));
    assert_eq!(a[0].new_ids, b[0].new_ids);
    assert_eq!(a[1].new_ids, b[1].new_ids);
    assert_ne!(
        (&a[0].new_ids, &a[1].new_ids),
        (&c[0].new_ids, &c[1].new_ids),
        "another seed, other tokens"
    );
}

#[test]
fn captured_routing_equals_a_plain_forward_over_prompt_and_generation() {
    let model = model();
    let device = Default::default();
    let prompts = chat_prompts(&["Tell me a joke.", "Hello there, how are you today?"]);
    let gens = generate(
        &model,
        &prompts,
        &opts(7, Sampling::Greedy, true),
        &Routing::free(),
        &device,
        |_| {},
    );
    for g in &gens {
        let all: Vec<i64> = g
            .prompt_ids
            .iter()
            .chain(&g.new_ids)
            .map(|&t| t as i64)
            .collect();
        let n = all.len();
        let out = model.forward(
            LmInput::ids(Tensor::<B, 2, Int>::from_data(
                TensorData::new(all, [1, n]),
                &device,
            )),
            &Routing::capturing(),
        );
        let rl = out.router_logits.unwrap(); // [layers, 1, n, experts]
        let [layers, _, _, experts] = rl.dims();
        let plain: Vec<f32> = rl.into_data().iter::<f32>().collect();
        let (p, t) = (g.prompt_ids.len(), g.new_ids.len());
        let pr = g.prompt_routing.as_ref().unwrap();
        let gr = g.gen_routing.as_ref().unwrap();
        assert_eq!((pr.layers, pr.tokens, pr.experts), (layers, p, experts));
        assert_eq!((gr.layers, gr.tokens, gr.experts), (layers, t, experts));
        let mut expected_prompt = Vec::new();
        let mut expected_gen = Vec::new();
        for l in 0..layers {
            let row = &plain[l * n * experts..(l + 1) * n * experts];
            expected_prompt.extend_from_slice(&row[..p * experts]);
            expected_gen.extend_from_slice(&row[p * experts..]);
        }
        // Stored as f16: 2^-11 relative, plus the f32 difference of two computations.
        let tol = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs())) * 1e-3 + 1e-4;
        assert_close(
            "prompt routing",
            &pr.to_f32(),
            &expected_prompt,
            tol(&expected_prompt),
        );
        assert_close(
            "generation routing",
            &gr.to_f32(),
            &expected_gen,
            tol(&expected_gen),
        );
    }
}

#[test]
fn expert_counts_leave_padding_out() {
    let device = Default::default();
    let model = model();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![5i64, 6, 7, 8, 9, 10, 1, 1], [2, 4]),
        &device,
    );
    let real = vec![true, true, true, true, true, true, false, false];
    let mask = Tensor::from_data(TensorData::new(real.clone(), [2, 4]), &device);
    let k = model.top_k();
    let (layers, experts) = (model.num_moe_layers(), model.num_experts());
    let uncaptured = model.forward(LmInput::padded(ids.clone(), mask.clone()), &Routing::free());
    assert!(uncaptured.chosen.is_none(), "choices only when captured");
    let mut choices = Vec::new();
    for exec in [ExpertExecution::Grouped, ExpertExecution::Dense] {
        let model = model.clone().with_execution(exec);
        let out = model.forward(
            LmInput::padded(ids.clone(), mask.clone()),
            &Routing::capturing(),
        );
        let chosen = out.chosen.expect("captured");
        assert_eq!(chosen.dims(), [layers, 2, 4, k]);
        let flat: Vec<i64> = chosen.into_data().iter::<i64>().collect();
        let all = count_experts(&flat, layers, k, experts, &[true; 8]);
        let counted = count_experts(&flat, layers, k, experts, &real);
        assert_eq!(all.len(), layers);
        for (l, (a, c)) in all.iter().zip(&counted).enumerate() {
            assert_eq!(a.iter().sum::<u32>() as usize, 8 * k, "{exec:?} layer {l}");
            assert_eq!(c.iter().sum::<u32>() as usize, 6 * k, "{exec:?} layer {l}");
            assert!(a.iter().zip(c).all(|(a, c)| c <= a), "{exec:?} layer {l}");
        }
        choices.push(flat);
    }
    assert_eq!(
        choices[0], choices[1],
        "grouped and dense execution route alike"
    );
}

#[test]
fn greedy_rows_stop_at_their_own_stop_id_and_the_rest_go_on() {
    // Greedy decoding tracks stopped rows on the device and reads the tokens every few steps:
    // with a stop id, each row's tokens must be its free-running ones cut after the first stop
    // id, over more steps than one read covers, and the progress count must add up.
    let model = model();
    let prompts = chat_prompts(&[
        "Write a short poem about the sea.",
        "Hi",
        "List three colours, please, in order.",
    ]);
    let steps = 40;
    let free = generate(
        &model,
        &prompts,
        &opts(steps, Sampling::Greedy, false),
        &Routing::free(),
        &Default::default(),
        |_| {},
    );
    let stop = free[0].new_ids[2];
    let o = GenerateOptions {
        stop_ids: vec![stop],
        ..opts(steps, Sampling::Greedy, true)
    };
    let mut produced = 0;
    let stopped = generate(
        &model,
        &prompts,
        &o,
        &Routing::free(),
        &Default::default(),
        |n| produced += n,
    );
    for (r, (f, s)) in free.iter().zip(&stopped).enumerate() {
        let cut = f
            .new_ids
            .iter()
            .position(|&t| t == stop)
            .map_or(steps, |i| i + 1);
        assert_eq!(s.new_ids, f.new_ids[..cut], "row {r}");
        assert_eq!(
            s.gen_routing.as_ref().unwrap().tokens,
            cut,
            "row {r}: routing of each generated token"
        );
    }
    assert!(
        stopped[0].new_ids.len() <= 3,
        "row 0 stops by its third token"
    );
    assert_eq!(
        produced,
        stopped.iter().map(|g| g.new_ids.len()).sum::<usize>()
    );
}

/// Continuous batching's row changes (a row joins a running batch, padded in front or padding the
/// batch; a finished row leaves and the front no row reads is dropped) give the same next-token
/// logits on a cache written in place (as `serve` keeps it) as on one grown by concatenation.
#[test]
fn row_changes_give_the_same_logits_in_place_and_grown() {
    let model = model();
    let device = Default::default();
    let prompts = chat_prompts(&["Hi", "Write a long poem about the sea, please", "Why?"]);
    let run = |in_place: bool| -> Vec<f32> {
        let mut cache = KvCache::new(model.num_layers());
        if in_place {
            cache = cache.with_capacity(256);
        }
        // Each row: where its positions start in the cache, and how many it has.
        let (mut starts, mut lens): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
        let mut logits = Vec::new();
        let admit = |cache: &mut KvCache<B>,
                     starts: &mut Vec<usize>,
                     lens: &mut Vec<usize>,
                     ids: &[u32]| {
            let n = ids.len();
            let mut own = KvCache::new(model.num_layers());
            let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
            model.forward_cached(
                LmInput::ids(Tensor::from_data(TensorData::new(ids, [1, n]), &device)),
                &mut own,
                &Routing::free(),
            );
            let have = cache.len();
            let start = if starts.is_empty() {
                0
            } else if n > have {
                cache.pad_front(n - have);
                starts.iter_mut().for_each(|s| *s += n - have);
                0
            } else {
                own.pad_front(have - n);
                have - n
            };
            cache.append_rows(own);
            starts.push(start);
            lens.push(n);
        };
        let mut step =
            |cache: &mut KvCache<B>, starts: &[usize], lens: &mut Vec<usize>, token: i64| {
                let rows = starts.len();
                let width = cache.len() + 1;
                let valid: Vec<bool> = starts
                    .iter()
                    .flat_map(|&s| (0..width).map(move |j| j >= s))
                    .collect();
                let positions: Vec<i64> = lens.iter().map(|&l| l as i64).collect();
                let out = model.forward_cached(
                    LmInput {
                        input_ids: Tensor::<B, 2, Int>::from_data(
                            TensorData::new(vec![token; rows], [rows, 1]),
                            &device,
                        ),
                        attention_mask: Some(Tensor::from_data(
                            TensorData::new(valid, [rows, width]),
                            &device,
                        )),
                        positions: Some(Tensor::from_data(
                            TensorData::new(positions, [rows, 1]),
                            &device,
                        )),
                    },
                    cache,
                    &Routing::free(),
                );
                lens.iter_mut().for_each(|l| *l += 1);
                logits.extend(out.logits.into_data().iter::<f32>());
            };
        admit(&mut cache, &mut starts, &mut lens, &prompts[0]);
        for t in [11, 12, 13] {
            step(&mut cache, &starts, &mut lens, t);
        }
        // A longer prompt joins (the batch is padded in front), then a shorter one (it is).
        admit(&mut cache, &mut starts, &mut lens, &prompts[1]);
        step(&mut cache, &starts, &mut lens, 14);
        admit(&mut cache, &mut starts, &mut lens, &prompts[2]);
        for t in [15, 16] {
            step(&mut cache, &starts, &mut lens, t);
        }
        // The first row leaves; the front no row reads any more goes.
        cache.select_rows(&[1, 2]);
        starts.remove(0);
        lens.remove(0);
        let front = *starts.iter().min().unwrap();
        cache.drop_front(front);
        starts.iter_mut().for_each(|s| *s -= front);
        for t in [17, 18, 19] {
            step(&mut cache, &starts, &mut lens, t);
        }
        logits
    };
    let (grown, in_place) = (run(false), run(true));
    assert_eq!(grown.len(), in_place.len());
    assert_close("in place against grown", &in_place, &grown, 1e-5);
}
