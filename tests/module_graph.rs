//! The library's modules import each other without a cycle, at two levels: between the crate's
//! top-level modules (a stage never reaches back into one that depends on it), and between the
//! files of each directory module (e.g. `model/`: `experts` is a leaf, `routing` uses it,
//! `lm` uses both).
//!
//! `cargo test --test suite module_graph::` checks it; `-- --nocapture` prints the graphs. References
//! are read from the source text (`crate::a::b`, `super::x`, grouped `use` lists); comments and
//! each file's `#[cfg(test)]` tail are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path of every library file: `src/a/b.rs` → `[a, b]`, `src/a/mod.rs` → `[a]`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            // The binary (main.rs, cli/) is another crate.
            if parts[0] == "main" || parts[0] == "cli" {
                continue;
            }
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// Source text without comments and without the `#[cfg(test)]` tail.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
            out.push('\n');
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Paths (from the crate root) this module's code names, each as far as it is spelled.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    // `super` of `a/b.rs` and of `a/b/mod.rs` alike is `a`.
    let parent: Vec<String> = module[..module.len() - 1].to_vec();
    let mut out = Vec::new();
    for (anchor, base) in [("crate::", Vec::new()), ("super::", parent)] {
        for (i, _) in text.match_indices(anchor) {
            // `self::super::` and `foo::crate::` do not occur; a preceding identifier char means
            // another word (e.g. `my_crate::`).
            if text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            let after = &text[i + anchor.len()..];
            let heads: Vec<Vec<String>> = if let Some(list) = after.strip_prefix('{') {
                let list = &list[..list.find('}').unwrap_or(list.len())];
                list.split(',')
                    .map(|item| {
                        item.trim()
                            .split("::")
                            .map(ident)
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .collect()
            } else {
                let mut parts = Vec::new();
                let mut rest = after;
                loop {
                    let id = ident(rest);
                    if id.is_empty() {
                        break;
                    }
                    rest = &rest[id.len()..];
                    parts.push(id);
                    match rest.strip_prefix("::") {
                        Some(r) => rest = r,
                        None => break,
                    }
                }
                vec![parts]
            };
            for h in heads {
                let mut path = base.clone();
                path.extend(h);
                out.push(path);
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module file.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains_key(p))
}

fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[start..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_cycle_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    // Graphs: "" = the crate's top-level modules; "a/b" = the files of directory module a::b.
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, path) in &modules {
        if module.is_empty() {
            continue;
        }
        for reference in references(module, &code(path)) {
            let Some(target) = resolve(&reference, &modules) else {
                continue;
            };
            // Top level.
            if target[0] != module[0] {
                graphs
                    .entry(String::new())
                    .or_default()
                    .entry(module[0].clone())
                    .or_default()
                    .insert(target[0].clone());
            }
            // Siblings: the first components where the two paths part, under a common parent.
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common >= 1 && common < module.len() && common < target.len() {
                let dir = module[..common].join("/");
                graphs
                    .entry(dir)
                    .or_default()
                    .entry(module[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
        }
    }
    assert!(
        graphs.get("").is_some_and(|g| g.len() > 5),
        "the top-level graph was not read: {graphs:?}"
    );
    assert!(
        graphs.get("model").is_some_and(|g| g.contains_key("lm")),
        "model/'s graph was not read: {graphs:?}"
    );
    for (dir, graph) in &graphs {
        let name = if dir.is_empty() {
            "src/ (top-level modules)".to_string()
        } else {
            format!("src/{dir}/")
        };
        println!("{name}");
        for (from, to) in graph {
            println!(
                "  {from} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(c) = cycle(graph) {
            panic!("import cycle in {name}: {}", c.join(" -> "));
        }
    }
}

/// The checker finds a cycle when there is one (so that the test above can fail).
#[test]
fn the_checker_sees_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let text = "use super::{cache::KvCache, config::ModelConfig};\nlet x = crate::model::routing::to_f32(y);";
    let refs = references(&["model".into(), "olmoe".into()], text);
    assert_eq!(
        refs,
        vec![
            vec!["model".to_string(), "routing".into(), "to_f32".into()],
            vec!["model".into(), "cache".into(), "KvCache".into()],
            vec!["model".into(), "config".into(), "ModelConfig".into()]
        ]
    );
}

/// Every `.rs` file under `src/`, with its code (comments and the `#[cfg(test)]` tail left out).
fn sources() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&src).unwrap().to_path_buf();
                out.push((rel, code(&path)));
            }
        }
    }
    out.sort();
    out
}

/// The string literals of some code.
fn literals(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            // A char literal such as '"' must not open a string; a lifetime has no closing quote.
            let rest: String = chars.clone().take(3).collect();
            if rest.starts_with("\"'") || rest.starts_with("\\\"'") {
                chars.nth(rest.find('\'').unwrap());
            }
            continue;
        }
        if c != '"' {
            continue;
        }
        let mut lit = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    lit.push(c);
                    if let Some(n) = chars.next() {
                        lit.push(n);
                    }
                }
                '"' => break,
                c => lit.push(c),
            }
        }
        out.push(lit);
    }
    out
}

/// The run directory is one module: no other library or CLI file spells the name of a run
/// directory's file (stages ask `RunDir` for their artifacts by meaning).
#[test]
fn only_run_dir_names_the_files_of_a_run_directory() {
    const NAMES: [&str; 17] = [
        "config.toml",
        "provenance.json",
        "routing/",
        "batch-",
        "samples.jsonl",
        "risk_diff.csv",
        "risk_diff_aggregated.csv",
        "unsafe_experts.json",
        "expert_masks.safetensors",
        "risk_diff_heatmap.png",
        "metrics.jsonl",
        "loss_curve.png",
        "final_model",
        "training_metadata.json",
        "eval.json",
        "responses.jsonl",
        "table.txt",
    ];
    let mut found = Vec::new();
    let mut checked = 0;
    for (file, code) in sources() {
        if file.starts_with("run_dir") {
            continue;
        }
        checked += 1;
        // A path is a literal without spaces (prose in a help text may name a file); a name
        // counts where it starts a path component (`alpaca-eval.json` is not `eval.json`).
        for lit in literals(&code)
            .into_iter()
            .filter(|l| !l.contains(char::is_whitespace))
        {
            let starts_component = |name: &str| {
                lit.match_indices(name)
                    .any(|(i, _)| i == 0 || lit[..i].ends_with(['/', '{', '}']))
            };
            if let Some(name) = NAMES.iter().find(|n| starts_component(n)) {
                found.push(format!("src/{}: {lit:?} names {name}", file.display()));
            }
        }
    }
    assert!(checked > 50, "only {checked} files read");
    assert!(
        found.is_empty(),
        "run-directory file names outside src/run_dir/:\n{}",
        found.join("\n")
    );
}

/// The checker above sees a file name in a literal, and not in a comment or a char literal.
#[test]
fn the_name_checker_reads_literals() {
    let text =
        "let c = '\"'; // \"metrics.jsonl\" in a comment\nlet p = dir.join(\"metrics.jsonl\");";
    assert_eq!(literals(&code_of(text)), vec!["metrics.jsonl".to_string()]);
    let text = "let p = format!(\"{}/train/{run}/final_model\", a);";
    assert_eq!(
        literals(&code_of(text)),
        vec!["{}/train/{run}/final_model".to_string()]
    );
}

fn code_of(text: &str) -> String {
    let tmp = std::env::temp_dir().join(format!("module-graph-{}.rs", std::process::id()));
    std::fs::write(&tmp, text).unwrap();
    let out = code(&tmp);
    let _ = std::fs::remove_file(&tmp);
    out
}

/// One pipeline: `steermoe run` (through the CLI's one pipeline call) and the sweep's jobs call
/// `pipeline::run`, and only the pipeline calls the stages' entry points; one `Stage` enum.
#[test]
fn one_pipeline_chains_the_stages() {
    let all = sources();
    let calling = |needle: &str| -> Vec<String> {
        all.iter()
            .filter(|(_, c)| c.contains(needle))
            .map(|(f, _)| f.display().to_string())
            .collect()
    };
    assert_eq!(
        calling("pipeline::run("),
        vec!["cli/mod.rs".to_string(), "sweep/runner.rs".to_string()]
    );
    let run_cli = &all
        .iter()
        .find(|(f, _)| f == Path::new("cli/run.rs"))
        .unwrap()
        .1;
    assert!(
        run_cli.contains(".run(None)"),
        "steermoe run goes through ConfigArgs::run, which calls pipeline::run"
    );
    for entry in [
        "collect::collect(",
        "analysis::analyze(",
        "train::train(",
        "evaluate_into(",
    ] {
        let callers: Vec<String> = calling(entry)
            .into_iter()
            .filter(|f| !f.starts_with("pipeline"))
            .collect();
        assert!(
            callers.is_empty(),
            "{entry} called outside the pipeline: {callers:?}"
        );
    }
    assert_eq!(calling("enum Stage "), vec!["run_dir/stage.rs".to_string()]);
    assert!(calling("enum Step ").is_empty() && calling("enum EvalVariant").is_empty());
}
