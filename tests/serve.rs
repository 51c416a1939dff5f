//! `steermoe serve` on the tiny fixture, driven over HTTP: greedy answers equal `steermoe
//! generate`'s however requests are batched; streaming, steering and routed experts; every bad
//! request a clear 4xx; 64 concurrent clients all answered (latency and throughput printed);
//! a full queue answers 429 and a client that disconnects frees its row; SIGTERM finishes the
//! requests in flight. Python's `openai` client is run against it by `.ci/run`
//! (`tests/serve/openai_client.py`).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_steermoe");

/// A server process, killed when dropped.
struct Server {
    child: Child,
    url: String,
    /// The server's stdout, held open so that its last lines have a reader.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start(extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--model"])
            .arg(crate::common::fixture())
            .args(["--port", "0"])
            .args(extra)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start steermoe serve");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let at = line
            .find("http://")
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let url = line[at..].split_whitespace().next().unwrap().to_string();
        Self {
            child,
            url,
            _stdout: stdout,
        }
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string(), None)
    }

    fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = ureq::post(&format!("{}{path}", self.url))
            .set("content-type", "application/json")
            .timeout(Duration::from_secs(300));
        if let Some(k) = key {
            req = req.set("authorization", &format!("Bearer {k}"));
        }
        match req.send_string(body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
            Err(e) => panic!("{path}: {e}"),
        }
    }

    fn health(&self) -> Value {
        let root = self.url.trim_end_matches("/v1");
        ureq::get(&format!("{root}/health"))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    }

    /// Wait until `/health` satisfies `ok` (a functional wait, generous on slow machines).
    fn wait_for(&self, what: &str, ok: impl Fn(&Value) -> bool) {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let h = self.health();
            if ok(&h) {
                return;
            }
            assert!(Instant::now() < until, "waited for {what}: {h}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "olmoe-tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

const PROMPTS: [&str; 6] = [
    "Hello",
    "How do I bake bread?",
    "Tell me a story about a dragon that learned to fly over the sea",
    "2 + 2 = ?",
    "Write a haiku",
    "What is the capital of France? Answer in one word, please.",
];

#[test]
fn greedy_answers_equal_generate_however_batched() {
    // What `steermoe generate` answers, one prompt at a time.
    let solo: Vec<Value> = PROMPTS
        .iter()
        .map(|p| {
            let out = Command::new(BIN)
                .args(["generate", "--model"])
                .arg(crate::common::fixture())
                .args(["--prompt", p, "--max-new-tokens", "16"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    let server = Server::start(&["--max-batch", "4"], &[]);
    // Staggered, so that requests join a running batch and rows leave it; then in one burst, so
    // that prompts of different lengths are prefilled together in one left-padded pass.
    let round = |stagger_ms: u64| -> Vec<(u16, Value)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = PROMPTS
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let server = &server;
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_millis(stagger_ms * i as u64));
                        let max = 4 + 2 * i as u64;
                        server.post("/chat/completions", &chat(p, json!({"max_tokens": max})))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let answers: Vec<(u16, Value)> = [round(15), round(0)].concat();
    for (i, ((status, body), want)) in answers.iter().zip(solo.iter().cycle()).enumerate() {
        let i = i % PROMPTS.len();
        assert_eq!(*status, 200, "{body}");
        let n = (4 + 2 * i).min(want["new_ids"].as_array().unwrap().len());
        let got = body["choices"][0]["message"]["content"].as_str().unwrap();
        let want_ids: Vec<u32> = want["new_ids"].as_array().unwrap()[..n]
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(body["usage"]["completion_tokens"], n, "{body}");
        assert_eq!(
            body["usage"]["prompt_tokens"],
            want["prompt_ids"].as_array().unwrap().len()
        );
        // The same tokens: generate's text of the first n ids.
        let tok = steermoe::data::ChatTokenizer::from_dir(crate::common::fixture()).unwrap();
        assert_eq!(got, tok.decode(&want_ids), "prompt {i}");
    }
}

#[test]
fn streaming_steering_and_routed_experts() {
    let server = Server::start(&[], &[]);
    let whole = server.post("/chat/completions", &chat("Hello", json!({})));
    assert_eq!(whole.0, 200, "{}", whole.1);
    // The same request streamed: the deltas add up to the whole answer, then a usage chunk.
    let resp = ureq::post(&format!("{}/chat/completions", server.url))
        .send_json(chat("Hello", json!({"stream": true})))
        .unwrap();
    assert_eq!(resp.content_type(), "text/event-stream");
    let mut body = String::new();
    resp.into_reader().read_to_string(&mut body).unwrap();
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole.1["choices"][0]["message"]["content"]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage, &whole.1["usage"]);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );

    // Routed experts: one entry per generated token, top-2 of 8 in each of 2 layers.
    let routed = server.post(
        "/chat/completions",
        &chat(
            "Hello",
            json!({"return_routed_experts": true, "return_router_logits": true}),
        ),
    );
    let routing = routed.1["choices"][0]["routing"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(routing.len(), 12);
    for t in &routing {
        assert_eq!(t["routed_experts"].as_array().unwrap().len(), 2);
        assert_eq!(t["routed_experts"][0].as_array().unwrap().len(), 2);
        assert_eq!(t["router_logits"][1].as_array().unwrap().len(), 8);
    }
    // Steering: forced off never chosen, forced on always chosen.
    let off = routing
        .iter()
        .flat_map(|t| t["routed_experts"][0].as_array().unwrap().clone())
        .map(|e| e.as_u64().unwrap())
        .max_by_key(|&e| {
            routing
                .iter()
                .filter(|t| {
                    t["routed_experts"][0]
                        .as_array()
                        .unwrap()
                        .contains(&json!(e))
                })
                .count()
        })
        .unwrap();
    let steered = server.post(
        "/chat/completions",
        &chat(
            "Hello",
            json!({"return_routed_experts": true,
                   "steering": {"activate": [[1, 3]], "deactivate": [[0, off]]}}),
        ),
    );
    assert_eq!(steered.0, 200, "{}", steered.1);
    for t in steered.1["choices"][0]["routing"].as_array().unwrap() {
        assert!(
            !t["routed_experts"][0]
                .as_array()
                .unwrap()
                .contains(&json!(off)),
            "{t}"
        );
        assert!(
            t["routed_experts"][1]
                .as_array()
                .unwrap()
                .contains(&json!(3)),
            "{t}"
        );
    }
    // Text completions and the model list.
    let text = server.post(
        "/completions",
        &json!({"model": "olmoe-tiny", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(text.0, 200, "{}", text.1);
    assert_eq!(text.1["object"], "text_completion");
    assert_eq!(text.1["usage"]["completion_tokens"], 5);
    let models: Value = ureq::get(&format!("{}/models", server.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "olmoe-tiny");
}

#[test]
fn bad_requests_get_clear_errors() {
    let server = Server::start(
        &["--api-key-env", "STEERMOE_TEST_KEY"],
        &[("STEERMOE_TEST_KEY", "sesame")],
    );
    let key = Some("sesame");
    let ok = chat("Hello", json!({"max_tokens": 2})).to_string();
    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        ("no key", ok.clone(), None, 401, "API key"),
        ("wrong key", ok.clone(), Some("open"), 401, "API key"),
        (
            "malformed JSON",
            "{\"model\": ".into(),
            key,
            400,
            "not valid",
        ),
        (
            "unknown model",
            chat("Hello", json!({"model": "gpt-9"})).to_string(),
            key,
            404,
            "gpt-9",
        ),
        (
            "max_tokens 0",
            chat("Hello", json!({"max_tokens": 0})).to_string(),
            key,
            400,
            "at least 1",
        ),
        (
            "beyond the context",
            chat("Hello", json!({"max_tokens": 5000})).to_string(),
            key,
            400,
            "4096",
        ),
        (
            "negative temperature",
            chat("Hello", json!({"temperature": -0.5})).to_string(),
            key,
            400,
            "temperature",
        ),
        (
            "expert out of range",
            chat("Hello", json!({"steering": {"deactivate": [[0, 8]]}})).to_string(),
            key,
            400,
            "out of range",
        ),
        (
            "unknown steering",
            chat("Hello", json!({"steering": "steer-d4"})).to_string(),
            key,
            400,
            "--steer",
        ),
        (
            "no messages",
            json!({"model": "olmoe-tiny", "messages": []}).to_string(),
            key,
            400,
            "at least one",
        ),
        (
            "n > 1",
            chat("Hello", json!({"n": 2})).to_string(),
            key,
            400,
            "n = 1",
        ),
    ];
    for (what, body, k, status, says) in cases {
        let (got, err) = server.post_raw("/chat/completions", &body, k);
        assert_eq!(got, status, "{what}: {err}");
        let msg = err["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{what}: {err}");
        assert!(err["error"]["type"].is_string(), "{what}: {err}");
    }
    let (got, body) = server.post_raw("/chat/completions", &ok, key);
    assert_eq!(got, 200, "{body}");
}

#[test]
fn sixty_four_concurrent_clients_are_all_answered() {
    let server = Server::start(&["--max-batch", "16", "--queue", "64"], &[]);
    let start = Instant::now();
    let results: Vec<(u16, Duration, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let t = Instant::now();
                    let (status, body) = server.post(
                        "/chat/completions",
                        &chat(
                            PROMPTS[i % PROMPTS.len()],
                            json!({"max_tokens": 16, "temperature": 0.8, "seed": i, "stop": ["\n\n"]}),
                        ),
                    );
                    let tokens = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                    (status, t.elapsed(), tokens)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed();
    assert!(
        results.iter().all(|r| r.0 == 200),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let mut lat: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64()).collect();
    lat.sort_by(f64::total_cmp);
    let tokens: u64 = results.iter().map(|r| r.2).sum();
    println!(
        "64 concurrent clients: p50 {:.3} s, p99 {:.3} s, {tokens} tokens in {:.2} s ({:.0} tokens/s)",
        lat[31],
        lat[63],
        wall.as_secs_f64(),
        tokens as f64 / wall.as_secs_f64()
    );
    server.wait_for("every request counted finished", |h| {
        h["finished"] == 64 && h["active"] == 0 && h["queued"] == 0
    });
}

#[test]
fn a_full_queue_answers_429_and_a_gone_client_frees_its_row() {
    let server = Server::start(&["--max-batch", "1", "--queue", "1"], &[]);
    // A long stream takes the only row.
    let resp = ureq::post(&format!("{}/chat/completions", server.url))
        .send_json(chat("Hello", json!({"stream": true, "max_tokens": 3000})))
        .unwrap();
    let mut reader = BufReader::new(resp.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "), "{first}");
    server.wait_for("the stream's row", |h| h["active"] == 1);
    // One request waits in the queue; the next finds it full.
    std::thread::scope(|s| {
        let waiting =
            s.spawn(|| server.post("/chat/completions", &chat("Hi", json!({"max_tokens": 2}))));
        server.wait_for("a queued request", |h| h["queued"] == 1);
        let (status, err) = server.post("/chat/completions", &chat("Hi", json!({"max_tokens": 2})));
        assert_eq!(status, 429, "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains("queue"),
            "{err}"
        );
        // The streaming client goes away: its row is freed, and the waiting request runs.
        drop(reader);
        let (status, body) = waiting.join().unwrap();
        assert_eq!(status, 200, "{body}");
    });
    server.wait_for("every row free", |h| h["active"] == 0 && h["finished"] == 2);
    let h = server.health();
    assert!(
        h["tokens"].as_u64().unwrap() < 3000,
        "the abandoned stream ran on: {h}"
    );
}

#[test]
fn sigterm_answers_the_requests_in_flight_then_exits() {
    let mut server = Server::start(&[], &[]);
    std::thread::scope(|s| {
        let in_flight = s.spawn(|| {
            server.post(
                "/chat/completions",
                &chat(
                    "Hello",
                    json!({"max_tokens": 200, "temperature": 0.7, "seed": 1}),
                ),
            )
        });
        server.wait_for("the request's row", |h| h["active"] == 1);
        let status = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let (code, body) = in_flight.join().unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    });
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn the_http_judge_against_the_server_caches_what_it_was_told() {
    let server = Server::start(&[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("judge.toml");
    let tail = format!(
        "[judge]\nkind = \"http\"\nbase_url = {:?}\nmodel = \"olmoe-tiny\"\nconcurrency = 4\nretries = 0\n",
        server.url
    );
    std::fs::write(
        &config,
        crate::common::tiny_method_toml(&crate::common::fixture(), "", &tail),
    )
    .unwrap();
    let out = dir.path().join("eval");
    let eval = || {
        let run = Command::new(BIN)
            .args(["--no-tui", "eval", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
        report["llm_judge"].clone()
    };
    let first = eval();
    let answers = std::fs::read_to_string(out.join("responses.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    // The tiny random model's replies are nonsense: every answer is asked about once and
    // reported (decided or unparsed), none failed, none guessed.
    assert_eq!(n(&first, "requests"), answers, "{first}");
    assert_eq!(n(&first, "failed"), 0, "{first}");
    assert_eq!(
        n(&first, "judged") + n(&first, "unparsed"),
        answers,
        "{first}"
    );
    assert!(first["disagreements"].is_u64(), "{first}");
    assert_eq!(first["model"], "olmoe-tiny");
    let asked = server.health()["finished"].as_u64().unwrap();
    // The rerun asks nothing: every reply comes from judge_cache.jsonl.
    let again = eval();
    assert_eq!(n(&again, "requests"), 0, "{again}");
    assert_eq!(n(&again, "cached"), answers, "{again}");
    assert_eq!(again["unparsed"], first["unparsed"]);
    assert_eq!(server.health()["finished"].as_u64().unwrap(), asked);
}
