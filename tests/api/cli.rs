//! The binary's subcommands and its exit codes (GUARANTEES.md: "Running").

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_waybill");

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("WAYBILL_CONFIG")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run waybill");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_sources_and_partners_but_no_secret() {
    let (code, out, _) = run(&["check-config"], &[]);
    assert_eq!(code, 0, "{out}");
    for name in [
        "easypost",
        "aftership",
        "shippo",
        "stripe",
        "partner-events",
        "sim-carrier",
        "acme",
    ] {
        assert!(out.contains(name), "{name} missing from {out}");
    }
    for secret in ["easypost_dev_secret", "acme_dev_key", "whsec_d2F5"] {
        assert!(!out.contains(secret), "secret {secret} printed: {out}");
    }
}

#[test]
fn check_config_exits_2_naming_each_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
        [server]
        listen = "not an address"
        [[sources]]
        name = "s"
        kind = "tracking"
        secrets = ["env:WAYBILL_TEST_UNSET_SECRET"]
        signature = { scheme = "nope" }
        "#,
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    for key in [
        "server.listen",
        "sources[0].secrets[0]",
        "sources[0].signature.scheme",
        "sources[0].mapping",
    ] {
        assert!(err.contains(key), "{key} missing from {err}");
    }
    assert!(
        err.contains("WAYBILL_TEST_UNSET_SECRET is not set"),
        "{err}"
    );
    // The same refusal from serve, before binding anything.
    let (code, _, _) = run(&["serve", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
}

/// "Nothing stops the gateway" (GUARANTEES.md): a dedupe retention shorter than
/// the signature tolerance would let a captured delivery be accepted twice.
#[test]
fn check_config_refuses_a_retention_shorter_than_the_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.toml");
    std::fs::write(
        &path,
        r#"
        [[sources]]
        name = "s"
        kind = "store-only"
        secrets = ["whsec_dGVzdA=="]
        signature = { scheme = "stripe", tolerance = "10m" }
        dedupe_retention = "1m"
        "#,
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("sources[0].dedupe_retention"), "{err}");
}

/// A line of a config file may hold a literal secret: a syntax error says
/// where it is, never what the line says.
#[test]
fn a_toml_syntax_error_does_not_echo_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[[partners]]\nname = \"p\"\napi_keys = [\"sk_live_do_not_print\" oops]\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("line 3"), "{err}");
    assert!(
        !err.contains("sk_live") && !out.contains("sk_live"),
        "{err}"
    );
    let (code, out, err) = run(&["serve", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(
        !err.contains("sk_live") && !out.contains("sk_live"),
        "{out}{err}"
    );
}

#[test]
fn waybill_config_env_overrides_the_default_path() {
    let (code, _, err) = run(
        &["check-config"],
        &[("WAYBILL_CONFIG", "/nonexistent/waybill.toml")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/waybill.toml"), "{err}");
}

#[test]
fn sign_prints_only_headers_and_curl_prints_a_command() {
    let (code, out, err) = run(
        &[
            "sign",
            "--source",
            "sim-carrier",
            "fixtures/sim_carrier_tracking.json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let names: Vec<&str> = out.lines().map(|l| l.split_once(": ").unwrap().0).collect();
    assert_eq!(
        names,
        [
            "Content-Type",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature"
        ]
    );
    let (_, again, _) = run(
        &[
            "sign",
            "--source",
            "sim-carrier",
            "fixtures/sim_carrier_tracking.json",
        ],
        &[],
    );
    assert_ne!(
        out.lines().nth(1),
        again.lines().nth(1),
        "each signing mints a fresh id"
    );

    let (code, out, _) = run(
        &[
            "sign",
            "--source",
            "easypost",
            "--curl",
            "http://127.0.0.1:8080/webhooks/easypost",
            "fixtures/easypost_tracker_updated.json",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.starts_with("curl "), "{out}");
    assert!(out.contains("'X-Hmac-Signature: hmac-sha256-hex="), "{out}");
    assert!(
        out.contains("--data-binary '@fixtures/easypost_tracker_updated.json'"),
        "{out}"
    );

    let (code, _, err) = run(
        &[
            "sign",
            "--source",
            "nope",
            "fixtures/sim_carrier_tracking.json",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("nope"), "{err}");
}

/// "Idempotency keys" (GUARANTEES.md): `verify` on what `sign` printed is valid, names the
/// secret and the event id; a changed body is invalid (exit 1); an unknown
/// source or a malformed header is a usage error (exit 2).
#[test]
fn verify_checks_a_captured_delivery_and_exits_0_1_or_2() {
    let fixture = "fixtures/sim_carrier_tracking.json";
    let (code, signed, err) = run(&["sign", "--source", "sim-carrier", fixture], &[]);
    assert_eq!(code, 0, "{err}");
    let mut args = vec!["verify", "--source", "sim-carrier"];
    for line in signed.lines() {
        args.extend(["--header", line]);
    }
    args.push(fixture);
    let (code, out, err) = run(&args, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let id = signed
        .lines()
        .find_map(|l| l.strip_prefix("webhook-id: "))
        .unwrap();
    assert_eq!(out, format!("valid\nsecret: 1\nevent_id: {id}\n"));

    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("changed.json");
    let mut body = std::fs::read(fixture).unwrap();
    body.push(b' ');
    std::fs::write(&changed, body).unwrap();
    let changed = changed.to_str().unwrap();
    *args.last_mut().unwrap() = changed;
    let (code, out, _) = run(&args, &[]);
    assert_eq!((code, out.as_str()), (1, "invalid: no signature matched\n"));

    // A delivery checked long after it was signed is stale, by how much.
    let (code, out, _) = run(
        &[&args[..args.len() - 1], &["--at", "4102444800", fixture]].concat(),
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.contains("s outside the 300 s tolerance"), "{out}");

    let (code, _, err) = run(
        &["verify", "--source", "nope", "--header", "a: b", fixture],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("nope"), "{err}");
    let (code, _, err) = run(
        &[
            "verify",
            "--source",
            "sim-carrier",
            "--header",
            "no colon",
            fixture,
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = run(&["verify", "--source", "sim-carrier", fixture], &[]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("invalid: missing header webhook-signature"),
        "{out}"
    );
}

/// "Idempotency keys" (GUARANTEES.md): completion scripts, help on every flag, and
/// `WAYBILL_CONFIG` shown by `--help`.
#[test]
fn completions_and_help_describe_every_flag() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&["completions", shell], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("verify") && out.contains("config"), "{shell}");
    }
    let (code, _, _) = run(&["completions", "tcsh"], &[]);
    assert_eq!(code, 2);
    for sub in ["serve", "check-config", "simulate", "sign", "verify"] {
        let (code, out, _) = run(&[sub, "--help"], &[]);
        assert_eq!(code, 0);
        if sub != "simulate" {
            assert!(out.contains("WAYBILL_CONFIG"), "{sub}: {out}");
        }
        // Every option carries a description: after its name, or (clap's
        // long layout) on the next line.
        let lines: Vec<&str> = out.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_start();
            if !line.starts_with('-') {
                continue;
            }
            let inline = line
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let below = lines.get(i + 1).is_some_and(|next| {
                let next = next.trim();
                !next.is_empty() && !next.starts_with('-')
            });
            assert!(inline || below, "{sub}: {line:?} has no help text");
        }
    }
}

#[test]
fn sigterm_drains_flushes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("waybill serving"))
    );
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("store flushed")), "{rest:?}");
    for line in &rest {
        let v: serde_json::Value =
            serde_json::from_str(line).expect("every log line is one JSON object");
        assert!(v["level"].is_string());
    }
}

/// `waybill check-config | head -1`: a reader that stops reading ends the
/// command quietly, not with a panic about a broken pipe. The pipe is
/// closed before the command writes, so the write always meets it.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [
        &["check-config"][..],
        &["completions", "bash"],
        &[
            "sign",
            "--source",
            "easypost",
            "fixtures/easypost_tracker_updated.json",
        ],
    ] {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("WAYBILL_CONFIG")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?} said: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
}

/// On PostgreSQL the summary names the backend and where its url comes
/// from, never the url (it may hold a password) nor the unused sled path.
#[test]
fn check_config_on_postgres_names_the_backend_not_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg.toml");
    std::fs::write(
        &path,
        "[store]\nbackend = \"postgres\"\nurl = \"env:WAYBILL_TEST_PG_URL\"\npath = \"unused-sled-dir\"\n",
    )
    .unwrap();
    let (code, out, err) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        &[(
            "WAYBILL_TEST_PG_URL",
            "postgres://u:hunter2@db.internal/waybill",
        )],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("store postgres (url env:WAYBILL_TEST_PG_URL"),
        "{out}"
    );
    assert!(
        !out.contains("hunter2") && !out.contains("db.internal"),
        "{out}"
    );
    assert!(!out.contains("unused-sled-dir"), "{out}");
}
