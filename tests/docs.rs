//! docs/INTEGRATORS.md stays true: every `sh` block in it runs, in order,
//! against the built gateway (the default config, on a free port, in
//! front of the simulator) with `bash -euo pipefail`, and prints every
//! text its `# expect:` lines name.

#[path = "support/mod.rs"]
mod support;

use support::*;
use waybill::simulator::SimConfig;

/// The `sh` blocks of a Markdown text, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
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
    let blocks = shell_blocks(&guide);
    assert!(blocks.len() >= 5, "the guide's examples went missing");
    for (i, block) in blocks.iter().enumerate() {
        let script = block.replace("127.0.0.1:8080", &gw.addr.to_string());
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&work)
            .env("PATH", &path)
            .env_remove("WAYBILL_CONFIG")
            .env("WAYBILL_CONFIG", &config_path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "block {i} failed:\n{block}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        for expected in block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("# expect: "))
        {
            assert!(
                stdout.contains(expected),
                "block {i} did not print {expected:?}:\n{block}\nstdout:\n{stdout}"
            );
        }
    }
}
