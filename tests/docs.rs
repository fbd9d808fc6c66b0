//! The docs stay true. Every `sh` block of docs/INTEGRATORS.md, and each
//! README block marked `<!-- tested: TEXT -->`, runs in order against the
//! built gateway (the shipped config, on a free port, in front of the
//! simulator) with `bash -euo pipefail`, and prints what it promises (the
//! `# expect:` lines, the marker's TEXT). The README's example source
//! config is a valid config.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use support::*;
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
