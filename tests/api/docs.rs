//! The docs stay true. Every `sh` block of docs/INTEGRATORS.md, and each
//! README block marked `<!-- tested: TEXT -->`, runs in order against the
//! built gateway (the shipped config, on a free port, in front of the
//! simulator) with `bash -euo pipefail`, and prints what it promises (the
//! `# expect:` lines, the marker's TEXT). The README's example source
//! config is a valid config. Every section of docs/GUARANTEES.md the code
//! names exists, and every file, item and test ARCHITECTURE.md and the
//! crate docs name is there.

use crate::support::*;
use waybill::tools::simulator::SimConfig;

/// The blocks of a Markdown text fenced as `lang`, in order, each with the
/// `<!-- tested: TEXT -->` marker right above it, if any.
fn blocks(markdown: &str, lang: &str) -> Vec<(Option<String>, String)> {
    let fence = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut marker = None;
    let mut last = "";
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, f) if f == fence => {
                marker = last
                    .strip_prefix("<!-- tested: ")
                    .and_then(|m| m.strip_suffix(" -->"))
                    .map(str::to_string);
                current = Some(String::new());
            }
            (Some(_), "```") => out.extend(current.take().map(|b| (marker.take(), b))),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
        if !line.trim().is_empty() {
            last = line.trim();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integrator_guide_runs_as_written() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(SimConfig {
        default_stock: 1000,
        ..SimConfig::default()
    })
    .await;
    // The default config, as shipped, on a free port, its store and its
    // downstream moved.
    let shipped = std::fs::read_to_string(format!("{root}/config/waybill.toml")).unwrap();
    let config: String = shipped
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                "listen = \"127.0.0.1:0\"".to_string()
            } else if l.starts_with("path = ") {
                format!("path = {:?}", dir.path().join("data").display().to_string())
            } else if l.starts_with("base_url = ") {
                format!("base_url = \"http://{sim}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config_path = dir.path().join("waybill.toml");
    std::fs::write(&config_path, config).unwrap();
    let gw = Gateway::start(&config_path);

    // `waybill` on the PATH is the binary under test.
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_waybill"), bin_dir.join("waybill")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::symlink(format!("{root}/fixtures"), work.join("fixtures")).unwrap();

    let guide = std::fs::read_to_string(format!("{root}/docs/INTEGRATORS.md")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut runs: Vec<(String, Vec<String>)> = blocks(&guide, "sh")
        .into_iter()
        .map(|(_, b)| {
            let expect = b
                .lines()
                .filter_map(|l| l.trim().strip_prefix("# expect: "))
                .map(str::to_string)
                .collect();
            (b, expect)
        })
        .collect();
    assert!(runs.len() >= 5, "the guide's examples went missing");
    let tested: Vec<_> = blocks(&readme, "sh")
        .into_iter()
        .filter_map(|(m, b)| m.map(|m| (b, vec![m])))
        .collect();
    assert!(
        tested.len() >= 2,
        "the README's tested examples went missing"
    );
    runs.extend(tested);
    for (i, (block, expect)) in runs.iter().enumerate() {
        let script = block
            .replace("127.0.0.1:8080", &gw.addr.to_string())
            .replace("cargo run --release -- ", "waybill ")
            .replace("./target/release/waybill ", "waybill ");
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&work)
            .env("PATH", &path)
            .env("WAYBILL_CONFIG", &config_path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "block {i} failed:\n{block}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        for expected in expect {
            assert!(
                stdout.contains(expected),
                "block {i} did not print {expected:?}:\n{block}\nstdout:\n{stdout}"
            );
        }
    }
}

struct CarrierEnv;

impl waybill::config::Env for CarrierEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "ACME_FREIGHT_SECRET").then(|| "a-long-shared-secret".to_string())
    }
}

/// The README's "adding a real carrier" block is a config that loads,
/// and maps what it says it maps.
#[test]
fn the_readme_example_source_is_a_valid_config() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let tomls = blocks(&readme, "toml");
    let (_, example) = tomls
        .iter()
        .find(|(_, b)| b.contains("acme-freight"))
        .expect("the example source");
    let config =
        waybill::config::Config::parse(example, &CarrierEnv).unwrap_or_else(|e| panic!("{e:?}"));
    let source = config.source("acme-freight").unwrap();
    assert_eq!(source.secrets[0].expose(), "a-long-shared-secret");
    assert_eq!(source.event_id.as_deref(), Some("/event/id"));
}

/// Every `.rs` file below `dir`, with its text.
fn rust_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
    out
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A comment's lines joined into one, so that a quoted name wrapped over
/// two lines reads whole.
fn unwrapped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim_start();
        let body = ["//! ", "/// ", "// ", "//!", "///", "//"]
            .iter()
            .find_map(|p| t.strip_prefix(p));
        match body {
            Some(b) => {
                out.push_str(b);
                out.push(' ');
            }
            None => {
                out.push('\n');
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The section names a text refers to: `GUARANTEES.md: "A", "B"` or
/// `"A", "B" (GUARANTEES.md)`.
fn guarantee_refs(text: &str) -> Vec<String> {
    let quoted = |s: &str| -> Vec<String> {
        s.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("GUARANTEES.md") {
        let (before, after) = rest.split_at(i);
        let after = &after["GUARANTEES.md".len()..];
        if let Some(list) = after.strip_prefix(": ") {
            // "A", "B", ... up to the first character outside the list.
            let mut end = 0;
            let mut open = false;
            for (j, c) in list.char_indices() {
                match (c, open) {
                    ('"', _) => open = !open,
                    (',' | ' ', false) => {}
                    (_, true) => {}
                    (_, false) => break,
                }
                end = j + c.len_utf8();
            }
            out.extend(quoted(&list[..end]));
        } else if after.starts_with(')') && before.ends_with(" (") {
            // Walk back over `"A", "B" (`.
            let head = &before[..before.len() - 2];
            let mut start = head.len();
            let mut open = false;
            for (j, c) in head.char_indices().rev() {
                match (c, open) {
                    ('"', _) => open = !open,
                    (',' | ' ', false) => {}
                    (_, true) => {}
                    (_, false) => break,
                }
                start = j;
            }
            out.extend(quoted(&head[start..]));
        }
        rest = after;
    }
    out
}

/// "contract 5.2", "guarantee 1" and the like: numbered references to a
/// document the repository does not hold.
fn numbered_reference(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    for word in ["contract ", "contracts ", "guarantee ", "guarantees "] {
        for (i, _) in lower.match_indices(word) {
            let after = &lower[i + word.len()..];
            let boundary = i == 0 || !lower[..i].ends_with(|c: char| c.is_alphanumeric());
            if boundary && after.starts_with(|c: char| c.is_ascii_digit()) {
                return Some(lower[i..(i + word.len() + 4).min(lower.len())].to_string());
            }
        }
    }
    None
}

/// The code names the guarantees and behaviours it keeps by their section
/// in docs/GUARANTEES.md, and every name it uses is one; no reference
/// points at a document outside the repository.
#[test]
fn every_section_the_code_names_is_in_the_guarantees() {
    let guarantees = std::fs::read_to_string(root().join("docs/GUARANTEES.md")).unwrap();
    let sections: Vec<&str> = guarantees
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .collect();
    let mut named = 0;
    let mut wrong = Vec::new();
    for dir in ["src", "tests"] {
        // This file describes the forms, with placeholders.
        let files = rust_files(&root().join(dir))
            .into_iter()
            .filter(|(p, _)| !p.ends_with("tests/api/docs.rs"));
        for (path, text) in files {
            for name in guarantee_refs(&unwrapped(&text)) {
                named += 1;
                if !sections.contains(&name.as_str()) {
                    wrong.push(format!("{}: \"{name}\"", path.display()));
                }
            }
            if let Some(at) = numbered_reference(&text) {
                wrong.push(format!("{}: {at:?}", path.display()));
            }
        }
    }
    assert!(
        named > 50,
        "only {named} references found: the scan is broken"
    );
    assert!(
        wrong.is_empty(),
        "not sections of GUARANTEES.md:\n{}",
        wrong.join("\n")
    );
    // And every link into it from the other documents lands on a section.
    let anchors: Vec<String> = sections
        .iter()
        .map(|s| {
            s.to_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == ' ' || *c == '-')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    for doc in ["ARCHITECTURE.md", "README.md", "docs"] {
        let path = root().join(doc);
        let texts: Vec<(std::path::PathBuf, String)> = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "md"))
                .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
                .collect()
        } else {
            vec![(path.clone(), std::fs::read_to_string(&path).unwrap())]
        };
        for (path, text) in texts {
            for part in text.split("GUARANTEES.md#").skip(1) {
                let anchor: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                assert!(
                    anchors.contains(&anchor),
                    "{}: no section #{anchor}",
                    path.display()
                );
            }
        }
    }
}

/// What a backticked token of ARCHITECTURE.md or the crate docs names, if
/// it names something in the repository: a file or folder, an item by its
/// path (`store::core::Work::cancel`, `Refusal::is_final`), or a test.
enum Named {
    Path(String),
    /// A file named without its folder, which the table row gives.
    File(String),
    Metric(String),
    Item(Vec<String>),
    Test(String),
}

fn named(token: &str) -> Option<Named> {
    let token = token.trim_end_matches("()");
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if token.contains(['*', '<', ' ', '|', '{', '='])
        || token.starts_with('/')
        || token.contains("://")
    {
        return None;
    }
    let file_like = [".rs", ".md", ".yml", ".json", ".toml", ".sql", ".html"]
        .iter()
        .any(|e| token.ends_with(e));
    if token.ends_with('/') || (token.contains('/') && file_like) {
        return Some(Named::Path(token.to_string()));
    }
    if file_like {
        return Some(Named::File(token.to_string()));
    }
    if token.starts_with("waybill_") && plain(token) {
        return Some(Named::Metric(token.to_string()));
    }
    if token.contains("::") {
        let segments: Vec<String> = token.split("::").map(str::to_string).collect();
        return segments
            .iter()
            .all(|s| plain(s) && !s.is_empty())
            .then_some(Named::Item(segments));
    }
    // A test's name: long snake case.
    (plain(token) && token.matches('_').count() >= 4 && token == token.to_lowercase())
        .then(|| Named::Test(token.to_string()))
}

/// Whether `text` defines `name` (a function, type, trait, constant,
/// module or enum variant).
fn defines(text: &str, name: &str) -> bool {
    let kinds = [
        "fn ", "struct ", "enum ", "trait ", "type ", "const ", "static ", "mod ",
    ];
    text.lines().any(|line| {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub(super) "))
            .unwrap_or(t);
        let t = t.strip_prefix("pub ").unwrap_or(t);
        let t = t.strip_prefix("async ").unwrap_or(t);
        kinds.iter().any(|k| {
            t.strip_prefix(k).is_some_and(|rest| {
                rest.starts_with(name)
                    && !rest[name.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            })
        }) || (t.starts_with(name)
            && name.starts_with(char::is_uppercase)
            && rest_is_variant(&t[name.len()..]))
    })
}

fn rest_is_variant(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with([',', ' ', '(', '{'])
}

/// The text of a module path's files: `store::sled` is src/store/sled/ and
/// everything below it; the rest of the path is left over.
fn module_text(segments: &[String]) -> (String, usize) {
    let mut dir = root().join("src");
    let mut file: Option<std::path::PathBuf> = None;
    let mut used = 0;
    for s in segments {
        let as_dir = dir.join(s);
        let as_file = dir.join(format!("{s}.rs"));
        if as_dir.is_dir() {
            dir = as_dir;
            file = None;
        } else if as_file.is_file() && file.is_none() {
            file = Some(as_file);
        } else {
            break;
        }
        used += 1;
    }
    let text = match file {
        Some(f) => std::fs::read_to_string(f).unwrap(),
        None => rust_files(&dir).into_iter().map(|(_, t)| t).collect(),
    };
    (text, used)
}

/// Whether a file called `name` is anywhere below `dir` (outside target/).
fn files_named(dir: &std::path::Path, name: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let path = e.unwrap().path();
        let skip = path
            .file_name()
            .is_some_and(|n| n == "target" || n == ".git");
        !skip
            && (path.file_name().is_some_and(|n| n == name)
                || (path.is_dir() && files_named(&path, name)))
    })
}

/// ARCHITECTURE.md and the crate docs name files, modules, items and tests
/// that exist: a rename that leaves the map behind fails here.
#[test]
fn every_path_and_name_in_the_architecture_exists() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let crate_docs: String = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let all_src: String = rust_files(&root().join("src"))
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let all_tests: String = rust_files(&root().join("tests"))
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let mut checked = 0;
    let mut missing = Vec::new();
    for (doc, text) in [
        ("ARCHITECTURE.md", &architecture),
        ("src/lib.rs", &crate_docs),
    ] {
        for token in text.split('`').skip(1).step_by(2) {
            let Some(what) = named(token) else {
                continue;
            };
            checked += 1;
            let found = match &what {
                Named::Path(p) => {
                    let p = p.trim_end_matches('/');
                    root().join(p).exists() || root().join("src").join(p).exists()
                }
                Named::File(name) => files_named(&root(), name),
                Named::Metric(name) => all_src.contains(&format!("\"{name}\"")),
                Named::Item(segments)
                    if segments[0].starts_with(char::is_lowercase)
                        && module_text(segments).1 == 0 =>
                {
                    // A path into another crate (`sled::Batch`).
                    checked -= 1;
                    true
                }
                Named::Item(segments) => {
                    let (text, used) = module_text(segments);
                    let rest = &segments[used..];
                    if used == 0 {
                        // `Type::item`: both defined somewhere in src/.
                        rest.iter().all(|s| defines(&all_src, s))
                    } else {
                        rest.iter().all(|s| defines(&text, s))
                    }
                }
                Named::Test(name) => {
                    defines(&all_tests, name)
                        || defines(&all_src, name)
                        // A test `on_both_stores!` makes, named on its line.
                        || all_tests.lines().any(|l| l.trim() == format!("{name},"))
                }
            };
            if !found {
                missing.push(format!("{doc}: `{token}`"));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} names checked: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "named but not there:\n{}",
        missing.join("\n")
    );
}
