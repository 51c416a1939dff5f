//! A corpus of bad inputs (configs, datasets, checkpoints, command lines) on the tiny fixture:
//! each must fail with exit code 1 or 2 (never a panic), a message naming the culprit (the file,
//! the key or record, the flag), and nothing half-written (the run directory it would have
//! made does not exist).

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// One bad input: a config (TOML text; `{fixture}`, `{data}`, `{tmp}` substituted), extra files,
/// the command line (`{cfg}`, `{out}`, `{tmp}` substituted), and what stderr must name.
struct Case {
    name: &'static str,
    config: String,
    files: Vec<(&'static str, String)>,
    args: &'static [&'static str],
    expect: &'static [&'static str],
}

/// A valid config with `model`, `data` and `collect` lines added, and `tail` appended.
fn config(model: &str, data: &str, collect: &str, tail: &str) -> String {
    format!(
        "seed = 0\n[model]\ndir = \"{{fixture}}\"\n{model}\n[data]\npath = \"{{data}}\"\n{data}\n[collect]\nbatch_size = 4\nmax_batches = 1\nmax_new_tokens = 2\nquality_filter = false\n{collect}\n{tail}"
    )
}

fn ok_config() -> String {
    config("", "", "", "")
}

const COLLECT: &[&str] = &["collect", "--config", "{cfg}", "--out", "{out}"];
const RUN: &[&str] = &["run", "--config", "{cfg}", "--out", "{out}"];

fn case(
    name: &'static str,
    config: String,
    args: &'static [&'static str],
    expect: &'static [&'static str],
) -> Case {
    Case {
        name,
        config,
        files: Vec::new(),
        args,
        expect,
    }
}

fn cases() -> Vec<Case> {
    let dataset_with = |edit: &dyn Fn(&mut Vec<serde_json::Value>)| {
        let mut records: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(attack_data()).unwrap()).unwrap();
        records.truncate(40);
        edit(&mut records);
        serde_json::to_string(&records).unwrap()
    };
    let own_data = config("", "", "", "").replace("{data}", "{tmp}/data.json");
    vec![
        // Configs.
        case("unknown top-level key", format!("colour = 1\n{}", ok_config()), COLLECT, &["colour"]),
        case("unknown key in a table", config("", "", "batchsize = 4", ""), COLLECT, &["batchsize"]),
        case("wrong type", config("", "", "", "[train]\nlr = \"fast\""), COLLECT, &["train.lr"]),
        case("zero learning rate", config("", "", "", "[train]\nlr = 0.0"), COLLECT, &["train.lr", "above 0"]),
        case("infinite learning rate", config("", "", "", "[train]\nlr = inf"), COLLECT, &["train.lr", "finite"]),
        case("negative learning rate", config("", "", "", "[train]\nlr = -1e-4"), COLLECT, &["train.lr"]),
        case("zero batch size", config("", "", "", "").replace("batch_size = 4", "batch_size = 0"), COLLECT, &["collect.batch_size"]),
        case("safe ratio above 1", config("", "", "safe_ratio = 1.5", ""), COLLECT, &["collect.safe_ratio"]),
        case("unknown token scope", config("", "", "", "[analysis]\ntoken_scope = \"tokens\""), COLLECT, &["analysis.token_scope", "tokens"]),
        case("unknown expert source", config("", "", "", "[analysis]\nexperts = \"best\""), COLLECT, &["analysis.experts", "best"]),
        case("unknown backend", config("backend = \"tpu\"", "", "", ""), COLLECT, &["model.backend", "tpu"]),
        case("unknown precision", config("precision = \"f8\"", "", "", ""), COLLECT, &["model.precision", "f8"]),
        case("too short an NLL window", config("", "", "", "[eval]\nnll_max_len = 4"), COLLECT, &["eval.nll_max_len"]),
        case("TOML syntax error", format!("{}\n[train\nlr = 1", ok_config()), COLLECT, &["exp.toml: line 15, column 7: "]),
        case("a [sweep] table given to run", config("", "", "", "[sweep]\nseeds = [0, 1]"), RUN, &["sweep"]),
        case("missing model directory", ok_config().replace("{fixture}", "{tmp}/no-model"), COLLECT, &["model.dir: {tmp}/no-model: no such directory"]),
        case("missing dataset", ok_config().replace("{data}", "{tmp}/no-data.json"), COLLECT, &["data.path: {tmp}/no-data.json: no such file"]),
        case("missing split file", config("", "split = \"{tmp}/no-split.json\"", "", ""), COLLECT, &["data.split: {tmp}/no-split.json: no such file"]),
        case("missing benign set", config("", "heldout = false", "", "[eval]\nbenign_path = \"{tmp}/no-benign.json\""), RUN, &["eval.benign_path: {tmp}/no-benign.json: no such file"]),
        // Numbers that parse but cannot work: every one refused by key before any work.
        case("a NaN temperature", config("", "", "[collect.sampling]\nmode = \"sample\"\ntemperature = nan\ntop_p = 0.9\nseed = 1", ""), COLLECT, &["collect.sampling.temperature", "finite"]),
        case("an infinite temperature", config("", "", "[collect.sampling]\nmode = \"sample\"\ntemperature = inf\ntop_p = 0.9\nseed = 1", ""), COLLECT, &["collect.sampling.temperature", "finite"]),
        case("a top-p above 1", config("", "", "[collect.sampling]\nmode = \"sample\"\ntemperature = 1.0\ntop_p = 1.5\nseed = 1", ""), COLLECT, &["collect.sampling.top_p"]),
        case("an evaluation temperature of NaN", config("", "", "", "[eval.sampling]\nmode = \"sample\"\ntemperature = nan\ntop_p = 0.9\nseed = 1"), COLLECT, &["eval.sampling.temperature"]),
        case("a negative weight decay", config("", "", "", "[train]\nweight_decay = -5"), COLLECT, &["train.weight_decay", "got -5"]),
        case("a NaN gradient clip", config("", "", "", "[train]\ngrad_clip = nan"), COLLECT, &["train.grad_clip", "finite"]),
        case("a NaN batch threshold", config("", "", "", "[analysis]\nbatch_threshold = nan"), COLLECT, &["analysis.batch_threshold"]),
        case("a global threshold beyond a risk difference", config("", "", "", "[analysis]\nglobal_threshold = 3.0"), COLLECT, &["analysis.global_threshold", "[-1, 1]"]),
        case("no new tokens to collect", config("", "", "", "").replace("max_new_tokens = 2", "max_new_tokens = 0"), COLLECT, &["collect.max_new_tokens", "at least 1"]),
        case("no new tokens to evaluate", config("", "", "", "[eval]\nmax_new_tokens = 0"), COLLECT, &["eval.max_new_tokens", "at least 1"]),
        case("a blank refusal", config("", "", "", "[train]\nrefusals = [\"  \"]"), COLLECT, &["train.refusals[0]"]),
        case("an uppercase refusal phrase", config("", "", "", "[judge]\nphrases = [\"I cannot\"]"), COLLECT, &["judge.phrases[0]", "lowercase"]),
        case("the retired steered variant", config("", "", "", "[eval]\nvariants = [\"steered\"]"), COLLECT, &["eval.variants", "steer-a5"]),
        case("a variant listed twice", config("", "", "", "[eval]\nvariants = [\"base\", \"base\"]"), COLLECT, &["eval.variants[1]", "twice"]),
        // Splits: evaluating needs one (or an explicit no-split), and it must split the data.
        case("evaluation without a split", ok_config(), RUN, &["data.split", "held-out", "data.heldout = false"]),
        case("a split and no split at once", config("", "split = \"{tmp}/split.json\"\nheldout = false", "", ""), COLLECT, &["data.heldout"]),
        Case {
            name: "a split whose parts overlap",
            config: config("", "split = \"{tmp}/split.json\"", "", ""),
            files: vec![("split.json", r#"{"flipattack": {"train_ids": [0, 1, 2, 3, 4, 5], "heldout_ids": [5, 6]}}"#.into())],
            args: COLLECT,
            expect: &["split.json", "flipattack.heldout_ids: record 5 is also in flipattack.train_ids"],
        },
        Case {
            name: "a split naming records beyond the dataset",
            config: config("", "split = \"{tmp}/split.json\"", "", ""),
            files: vec![("split.json", r#"{"flipattack": {"train_ids": [0, 1, 2, 3, 9999], "heldout_ids": [6]}}"#.into())],
            args: COLLECT,
            expect: &["split.json", "flipattack.train_ids: names record 9999, but the dataset has 500 records"],
        },
        Case {
            name: "a benign split naming records beyond the benign set",
            config: config("", "split = \"{tmp}/split.json\"", "", "[eval]\nvariants = [\"base\"]"),
            files: vec![("split.json", r#"{"flipattack": {"train_ids": [0, 1, 2, 3], "heldout_ids": [6]}, "alpaca_eval": {"heldout_index": [4000]}}"#.into())],
            args: RUN,
            expect: &["split.json", "alpaca_eval.heldout_index: names record 4000"],
        },
        // Command lines.
        case("missing config file", String::new(), &["collect", "--config", "{tmp}/absent.toml", "--out", "{out}"], &["absent.toml: No such file or directory (os error 2)"]),
        case("--set without =", ok_config(), &["collect", "--config", "{cfg}", "--out", "{out}", "--set", "train.lr"], &["--set \"train.lr\": must be key=value"]),
        case("--set with an empty key", ok_config(), &["collect", "--config", "{cfg}", "--out", "{out}", "--set", "=3"], &["--set \"=3\": \"\" is not a dotted key"]),
        case("--set of an unknown key", ok_config(), &["collect", "--config", "{cfg}", "--out", "{out}", "--set", "train.speed=3"], &["train.speed"]),
        case("--set of a bad value", ok_config(), &["collect", "--config", "{cfg}", "--out", "{out}", "--set", "collect.max_new_tokens=many"], &["collect.max_new_tokens"]),
        case("--backend of an unknown backend", ok_config(), &["collect", "--config", "{cfg}", "--out", "{out}", "--backend", "tpu"], &["--backend", "tpu"]),
        case("analyze of a missing run", String::new(), &["analyze", "--run", "{out}"], &["{out}"]),
        case("train of a missing run", String::new(), &["train", "--run", "{out}"], &["{out}"]),
        case("sweep of a config without [sweep]", ok_config(), &["sweep", "--config", "{cfg}", "--out", "{out}"], &["sweep"]),
        case("sweep with --jobs 0", ok_config(), &["sweep", "--config", "{cfg}", "--out", "{out}", "--jobs", "0"], &["--jobs"]),
        case("forward with non-numeric ids", String::new(), &["forward", "--model", "{fixture}", "--input-ids", "1,x", "--out", "{out}"], &["input ids", "\"x\" is not a token id"]),
        case("forward past the model's positions", String::new(), &["forward", "--model", "{tmp}/short", "--input-ids", "1,2,3,4,5,6,7,8,9", "--out", "{out}"], &["9 ids, more than the model's max_position_embeddings (8)"]),
        case("generate past the model's positions", String::new(), &["generate", "--model", "{fixture}", "--prompt", "hi", "--max-new-tokens", "5000"], &["max_position_embeddings (4096)"]),
        case("generate with a NaN temperature", String::new(), &["generate", "--model", "{fixture}", "--prompt", "hi", "--temperature", "NaN"], &["--temperature", "finite"]),
        case("generate with no tokens to make", String::new(), &["generate", "--model", "{fixture}", "--prompt", "hi", "--max-new-tokens", "0"], &["--max-new-tokens"]),
        case("generate with a tokenizer larger than the embeddings", String::new(), &["generate", "--model", "{tmp}/small-vocab", "--prompt", "hi"], &["tokenizer.json", "50280 tokens, but the model has only 1000 embeddings"]),
        case("a model whose rms_norm_eps is negative", config("", "", "", "").replace("{fixture}", "{tmp}/bad-eps"), COLLECT, &["config.json: rms_norm_eps: must be a finite number above 0, got -0.00001"]),
        case("sweep --report of a missing folder", format!("{}\n[sweep]\nseeds = [0]\n", config("", "heldout = false", "", "")), &["sweep", "--config", "{cfg}", "--out", "{out}", "--report"], &["--report {out}: no such sweep directory"]),
        // Datasets.
        Case {
            name: "malformed dataset JSON",
            config: own_data.clone(),
            files: vec![("data.json", "[{\"goal\": ".into())],
            args: COLLECT,
            expect: &["data.json: malformed JSON"],
        },
        Case {
            name: "a record without its goal",
            config: own_data.clone(),
            files: vec![("data.json", dataset_with(&|r| {
                r[3].as_object_mut().unwrap().remove("goal");
            }))],
            args: COLLECT,
            expect: &["data.json", "goal"],
        },
        Case {
            name: "a goal that is not a string",
            config: own_data.clone(),
            files: vec![("data.json", dataset_with(&|r| r[2]["goal"] = serde_json::json!(17)))],
            args: COLLECT,
            expect: &["data.json", "goal"],
        },
        Case {
            name: "a judge verdict written as a string",
            config: own_data.clone(),
            files: vec![("data.json", dataset_with(&|r| r[5]["judge_success_gpt4"] = serde_json::json!("1")))],
            args: COLLECT,
            expect: &["data.json", "record 5", "judge_success_gpt4", "a string \"1\"", "keeps a number 1"],
        },
        Case {
            name: "a dataset that is one object holding the records",
            config: own_data.clone(),
            files: vec![("data.json", "{\n  \"data\": [{\"goal\": \"x\"}]\n}\n".into())],
            args: COLLECT,
            expect: &["data.json", "found one JSON object (keys: data)", "expected a JSON array"],
        },
        case("an empty config", "# nothing set\n".into(), COLLECT, &["exp.toml", "the config sets nothing"]),
        case(
            "a prompt and answer longer than the model's positions",
            config("", "", "", "").replace("max_new_tokens = 2", "max_new_tokens = 5000"),
            COLLECT,
            &["flipattack.json: record", "collect.max_new_tokens = 5000", "max_position_embeddings (4096)"],
        ),
        Case {
            name: "an empty goal",
            config: own_data.clone(),
            files: vec![("data.json", dataset_with(&|r| r[1]["goal"] = serde_json::json!("  ")))],
            args: COLLECT,
            expect: &["data.json", "record 1: goal: empty goal"],
        },
        Case {
            name: "an empty jailbreak turn",
            config: own_data.clone(),
            files: vec![("data.json", dataset_with(&|r| r[4]["all_prompt"][1]["content"] = serde_json::json!("")))],
            args: COLLECT,
            expect: &["data.json", "record 4: all_prompt[1].content: empty text"],
        },
        Case {
            name: "a dataset whose every jailbreak failed",
            config: own_data.clone(),
            files: vec![("data.json", dataset_with(&|r| r.iter_mut().for_each(|x| x["judge_success_gpt4"] = serde_json::json!(0))))],
            args: COLLECT,
            expect: &["data.json", "0 goals (records whose judge_success_gpt4 is 1, the data.fields filter) make 0 batches"],
        },
        Case {
            name: "eval --out onto a file",
            config: ok_config(),
            files: vec![("taken", "x".into())],
            args: &["eval", "--config", "{cfg}", "--out", "{tmp}/taken"],
            expect: &["--out {tmp}/taken: not a folder"],
        },
        Case {
            name: "a dataset that is not a list",
            config: own_data.clone(),
            files: vec![("data.json", "{\"goal\": \"x\"}".into())],
            args: COLLECT,
            expect: &["data.json"],
        },
    ]
}

/// A copy of the fixture model with one edit of its `config.json`.
fn broken_fixture(dir: &Path, from: &str, to: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(from), "the fixture's config.json has {from}");
    std::fs::write(cfg, text.replacen(from, to, 1)).unwrap();
}

fn fill(text: &str, tmp: &Path) -> String {
    text.replace("{fixture}", fixture().to_str().unwrap())
        .replace("{data}", attack_data().to_str().unwrap())
        .replace("{tmp}", tmp.to_str().unwrap())
        .replace("{cfg}", tmp.join("exp.toml").to_str().unwrap())
        .replace("{out}", tmp.join("out").to_str().unwrap())
}

#[test]
fn every_bad_input_fails_cleanly_naming_the_culprit() {
    let all = cases();
    assert!(all.len() >= 65, "{} cases", all.len());
    let mut failures = Vec::new();
    for c in &all {
        let tmp = tempfile::tempdir().unwrap();
        if !c.config.is_empty() {
            std::fs::write(tmp.path().join("exp.toml"), fill(&c.config, tmp.path())).unwrap();
        }
        for (name, text) in &c.files {
            std::fs::write(tmp.path().join(name), text).unwrap();
        }
        // Broken copies of the fixture model some cases name.
        for (dir, from, to) in [
            (
                "short",
                "\"max_position_embeddings\": 4096",
                "\"max_position_embeddings\": 8",
            ),
            (
                "small-vocab",
                "\"vocab_size\": 50304",
                "\"vocab_size\": 1000",
            ),
            (
                "bad-eps",
                "\"rms_norm_eps\": 1e-05",
                "\"rms_norm_eps\": -1e-05",
            ),
        ] {
            if c.args
                .iter()
                .chain([&c.config.as_str()])
                .any(|a| a.contains(&format!("{{tmp}}/{dir}")))
            {
                broken_fixture(&tmp.path().join(dir), from, to);
            }
        }
        let args: Vec<String> = c.args.iter().map(|a| fill(a, tmp.path())).collect();
        let o = Command::new(env!("CARGO_BIN_EXE_steermoe"))
            .args(&args)
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        let mut wrong = Vec::new();
        match o.status.code() {
            Some(1) | Some(2) => {}
            other => wrong.push(format!("exit code {other:?}")),
        }
        if stderr.matches("(os error").count() > 1 {
            wrong.push("a cause repeated".into());
        }
        if stderr.contains("panicked") {
            wrong.push("a panic".into());
        }
        for e in c.expect {
            let e = fill(e, tmp.path());
            if !stderr.contains(&e) {
                wrong.push(format!("no {e:?} in the message"));
            }
        }
        if tmp.path().join("out").exists() {
            wrong.push("the run directory was created".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {} — stderr: {}",
                c.name,
                wrong.join(", "),
                stderr.trim()
            ));
        } else {
            eprintln!("{}: {}", c.name, stderr.trim().lines().last().unwrap_or(""));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}
