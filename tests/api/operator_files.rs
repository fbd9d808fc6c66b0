//! The operator's files stay true to the code: every metric the Grafana
//! dashboard and the alert rules name is one the gateway exports, every
//! alert links to a runbook section that exists, and every alert has one.
//! (`.ci/promtool` checks that their PromQL parses and unit-tests the
//! alerts; this catches a renamed metric without promtool.)

use std::collections::BTreeSet;

use waybill::telemetry::metric;

/// How every alert names its runbook section: under the Prometheus external
/// label `runbook_base` when it is set (an absolute link), else relative to
/// the repository (docs/OPERATIONS.md, *Alerts*).
const RUNBOOK_PREFIX: &str = "{{ $externalLabels.runbook_base }}docs/RUNBOOK.md#";

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `waybill_…` identifiers in `text`, with a histogram's series
/// suffixes taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("waybill_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

fn exported() -> BTreeSet<String> {
    metric::ALL.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_metric_list_names_every_metric_constant() {
    let source = read("src/telemetry.rs");
    let declared: BTreeSet<String> = source
        .lines()
        .filter(|l| l.contains("\"waybill_"))
        .flat_map(metric_names)
        .collect();
    assert_eq!(declared, exported());
}

#[test]
fn the_dashboard_uses_only_exported_metrics_and_covers_the_key_ones() {
    let text = read("ops/grafana/waybill.json");
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let used = metric_names(&text);
    let unknown: Vec<_> = used.difference(&exported()).cloned().collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
    for needed in [
        metric::WEBHOOKS,
        metric::HTTP_DURATION,
        metric::HTTP_REQUESTS,
        metric::INBOX_PENDING,
        metric::PARKED,
        metric::DISPATCH,
        metric::IDEMPOTENCY,
        metric::DOWNSTREAM,
        metric::CIRCUIT_OPEN,
        metric::STORE_SIZE,
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    // Importable anywhere: the data source is a variable, never a fixed uid.
    let panels = dash["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource")
    );
}

/// The docs' PromQL and metric tables name only what exists.
#[test]
fn the_docs_name_only_exported_metrics() {
    for doc in ["README.md", "docs/OPERATIONS.md", "docs/RUNBOOK.md"] {
        let unknown: Vec<_> = metric_names(&read(doc))
            .difference(&exported())
            .cloned()
            .collect();
        assert!(unknown.is_empty(), "{doc} names {unknown:?}");
    }
}

#[test]
fn every_alert_uses_exported_metrics_and_links_to_its_runbook_section() {
    let rules = read("ops/prometheus/alerts.yml");
    let unknown: Vec<_> = metric_names(&rules)
        .difference(&exported())
        .cloned()
        .collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");

    let runbook = read("docs/RUNBOOK.md");
    // GitHub's anchors: a heading, lower-cased, spaces to dashes.
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .map(|l| l.trim_matches('"'))
        .collect();
    assert_eq!(links.len(), alerts.len(), "one runbook link per alert");
    for (alert, link) in alerts.iter().zip(&links) {
        let anchor = link
            .strip_prefix(RUNBOOK_PREFIX)
            .unwrap_or_else(|| panic!("{alert}: {link}"));
        assert_eq!(anchor, alert.to_lowercase(), "{alert} links elsewhere");
        assert!(anchors.contains(anchor), "docs/RUNBOOK.md has no {alert}");
    }
}

/// The config the Kubernetes manifests ship is one the gateway accepts,
/// with every secret the example Secret names (and nothing else) set:
/// PostgreSQL, its url from `WAYBILL_DATABASE_URL`, probes on `ops_listen`.
#[test]
fn the_kubernetes_config_map_holds_a_valid_config_for_its_secret() {
    struct FromSecret(Vec<String>);
    impl waybill::config::Env for FromSecret {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .any(|n| n == name)
                .then(|| format!("{}-value-from-the-secret", name.to_lowercase()))
        }
    }
    let manifest = read("deploy/kubernetes/configmap.yaml");
    let toml: String = manifest
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("waybill.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let secret = read("deploy/kubernetes/secret.example.yaml");
    let names: Vec<String> = secret
        .lines()
        .skip_while(|l| !l.starts_with("stringData:"))
        .skip(1)
        .filter_map(|l| Some(l.trim().split_once(':')?.0.to_string()))
        .collect();
    assert!(
        names.iter().any(|n| n == "WAYBILL_DATABASE_URL"),
        "{names:?}"
    );
    let config = waybill::config::Config::parse(&toml, &FromSecret(names))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(matches!(
        config.store.backend,
        waybill::config::StoreBackend::Postgres { .. }
    ));
    assert!(config.server.ops_listen.is_some());
    assert!(config.admin_token.is_some());
}
