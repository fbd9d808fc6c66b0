//! Contract 10.7: a full disk. The data directory is a small tmpfs mounted
//! by the test (which needs root; elsewhere it says it skipped, and why).
//! Every 202 given before the disk filled is still there after a kill -9
//! and a restart; while full, webhooks answer 503 STORE_UNAVAILABLE with
//! Retry-After 5 and /readyz 503; once space is freed, intake resumes by
//! itself.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use waybill::signature::SchemeKind;

const SECRET: &str = "gh-secret";

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn delivery(id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    // About 2 KB, so the small disk fills in a bounded number of requests.
    let body = format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(2000)).into_bytes();
    (signed(SchemeKind::Github, SECRET, &body, 0, id), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mount_at = dir.path().join("disk");
    let _disk = match Tmpfs::mount(&mount_at, "24m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!(
                "skipped: a tmpfs could not be mounted for the data directory ({why}); run as root"
            );
            return;
        }
    };
    // Ballast to delete later: the space that comes back.
    let ballast = mount_at.join("ballast");
    std::fs::write(&ballast, vec![0u8; 8 << 20]).unwrap();
    let cfg = dir.path().join("waybill.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{}"
min_free_mb = 4
[[sources]]
name = "gh"
kind = "store-only"
secrets = ["{SECRET}"]
signature = {{ scheme = "github" }}
"#,
            mount_at.join("data").display()
        ),
    )
    .unwrap();
    let gw = Gateway::start(&cfg);
    let mut client = Client::new(gw.addr);
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..20_000 {
        let id = format!("ev-{n}");
        let (h, b) = delivery(&id);
        let r = client.send("POST", "/webhooks/gh", &h, b).await;
        match r.status.as_u16() {
            202 => accepted.push(id),
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    let r = refused.expect("the disk filled");
    assert_eq!(r.code(), "STORE_UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(accepted.len() > 100, "{}", accepted.len());
    // Still full: refused again, not ready, but alive.
    let (h, b) = delivery("while-full");
    let r = client.send("POST", "/webhooks/gh", &h, b).await;
    assert_eq!(r.status, 503);
    assert_eq!(get(gw.addr, "/readyz").await.status, 503);
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);
    // A duplicate of something already stored needs no space.
    let (h, b) = delivery(&accepted[0]);
    assert_eq!(client.send("POST", "/webhooks/gh", &h, b).await.status, 200);

    // Space comes back: intake resumes without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let (h, b) = delivery("after-space");
    let r = client.send("POST", "/webhooks/gh", &h, b).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    accepted.push("after-space".into());
    let mut ready = false;
    for _ in 0..300 {
        if get(gw.addr, "/readyz").await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "/readyz is 200 again once space is back");

    // Nothing acknowledged is lost, across a kill -9.
    gw.kill9();
    let gw = Gateway::start(&cfg);
    let mut client = Client::new(gw.addr);
    for id in &accepted {
        let (h, b) = delivery(id);
        let r = client.send("POST", "/webhooks/gh", &h, b).await;
        assert_eq!(r.status, 200, "{id} was acknowledged and then lost");
    }
    gw.terminate();
    let store = open_store(&mount_at.join("data")).await;
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    close_store(store).await;
}
