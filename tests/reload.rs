//! "Reload" (GUARANTEES.md) on the built binary: `SIGHUP` re-reads the config file.
//! What a reload changes is tested through `App::reload` in tests/api;
//! this is the signal, the logs and the counter an operator sees.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use support::*;
use waybill::webhook::signature::SchemeKind;

fn source(secret: &str) -> String {
    format!(
        "[[sources]]\nname = \"gh\"\nkind = \"store-only\"\nsecrets = [\"{secret}\"]\nsignature = {{ scheme = \"github\" }}\nevent_id = \"/id\""
    )
}

async fn deliver(gw: &Gateway, secret: &str, id: &str) -> u16 {
    let body = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    let h = signed(SchemeKind::Github, secret, &body, now(), id);
    post(gw.addr, "/webhooks/gh", &h, body)
        .await
        .status
        .as_u16()
}

fn hangup(gw: &Gateway) {
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe { libc::kill(gw.pid() as i32, libc::SIGHUP) };
}

fn message(text: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["message"] == text
}

#[tokio::test]
async fn sighup_applies_a_new_file_and_refuses_a_broken_one_keeping_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_gateway_config(dir.path(), "", &source("first"));
    let gw = Gateway::start(&cfg);
    // No [admin] at all: said at start, since /admin is then off.
    let warned = gw.log_lines(|v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("no admin.token"))
    });
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(deliver(&gw, "first", "a").await, 202);
    assert_eq!(deliver(&gw, "second", "b").await, 401);
    // The runbook's first look: the refusal's code and who sent it.
    // The log is read from the process's output as it comes: wait for it.
    let refused = gw.await_log(1, |v| v["message"] == "request" && v["status"] == 401);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["code"], "INVALID_SIGNATURE");
    assert_eq!(refused[0]["client_addr"], "127.0.0.1");

    // A new secret, and a new listen address, which needs a restart.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let next = text
        .replace("127.0.0.1:0", "127.0.0.1:1")
        .replace(&source("first"), &source("second"));
    std::fs::write(&cfg, &next).unwrap();
    hangup(&gw);
    assert_eq!(gw.await_log(1, message("config reloaded")).len(), 1);
    let restart = gw.log_lines(|v| v["level"] == "WARN" && v["key"] == "server.listen");
    assert_eq!(restart.len(), 1, "the listen change is reported");
    assert_eq!(deliver(&gw, "second", "c").await, 202, "still on its port");
    assert_eq!(deliver(&gw, "first", "d").await, 401);

    // A broken file: every error at ERROR, the running config kept.
    std::fs::write(
        &cfg,
        next.replace("secrets = [\"second\"]", "secrets = []")
            .replace("[store]", "[store]\ncache_mb = \"lots\""),
    )
    .unwrap();
    hangup(&gw);
    let refused = gw.await_log(2, |v| {
        v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("reload refused"))
    });
    let mut keys: Vec<&str> = refused.iter().filter_map(|v| v["key"].as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["sources[0].secrets", "store.cache_mb"],
        "{refused:?}"
    );
    assert_eq!(deliver(&gw, "second", "e").await, 202);
    let m = String::from_utf8(get(gw.addr, "/metrics").await.body.to_vec()).unwrap();
    assert_eq!(
        metric(&m, "waybill_config_reloads_total", r#"result="ok""#),
        1.0
    );
    assert_eq!(
        metric(&m, "waybill_config_reloads_total", r#"result="rejected""#),
        1.0
    );
    // Secrets never reach the log, whatever the reloads said.
    let log = gw.log.lock().unwrap().join("\n");
    assert!(!log.contains("\"second\"") && !log.contains("\"first\""));
    drop(log);
    assert_eq!(gw.terminate(), Some(0));
}

/// "Running in production" (GUARANTEES.md): `serve --pid-file` names the
/// process once a hangup reloads it, a reload sent through the file is
/// applied, and the file goes when the process ends.
#[tokio::test]
async fn the_pid_file_names_the_process_to_reload_and_goes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_gateway_config(dir.path(), "", &source("first"));
    let pid_file = dir.path().join("run").join("waybill.pid");
    std::fs::create_dir(pid_file.parent().unwrap()).unwrap();
    let gw = Gateway::start_with_args(&cfg, &["--pid-file".as_ref(), pid_file.as_os_str()]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid as u32, gw.pid());
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace(&source("first"), &source("second"))).unwrap();
    // SAFETY: kill(2) on our own child's pid, read from its file.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(gw.await_log(1, message("config reloaded")).len(), 1);
    assert_eq!(deliver(&gw, "second", "p").await, 202);
    assert_eq!(gw.terminate(), Some(0));
    assert!(!pid_file.exists(), "the pid file is removed on exit");
}

/// The simulator has nothing to reload: a hangup, such as a reload sent
/// to every process on a host, leaves it serving.
#[tokio::test]
async fn the_simulator_keeps_serving_through_a_hangup() {
    use std::io::BufRead;
    /// The simulator process, killed however the test ends.
    struct Simulator(std::process::Child);
    impl Drop for Simulator {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut sim = Simulator(
        std::process::Command::new(env!("CARGO_BIN_EXE_waybill"))
            .args(["simulate", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = sim.0.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    let next = |message: &str| loop {
        let v = lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {message:?} line"));
        if v["message"] == message {
            return v;
        }
    };
    let addr: std::net::SocketAddr = next("simulator serving")["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe { libc::kill(sim.0.id() as i32, libc::SIGHUP) };
    next("hangup received; the simulator has nothing to reload");
    assert_eq!(get(addr, "/_sim/ledger").await.status, 200);
    assert_eq!(sim.0.try_wait().unwrap(), None, "still running");
}
