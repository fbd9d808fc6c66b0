//! "Nothing stops the gateway" (GUARANTEES.md): a full disk. The data directory
//! is a small tmpfs mounted by the test (which needs root; elsewhere it says it
//! skipped, and why). Every 202 given before the disk filled is still there
//! after a kill -9 and a restart; while full, webhooks answer 503
//! STORE_UNAVAILABLE with Retry-After 5 and /readyz 503; once space is freed,
//! intake resumes by itself.

// Tests fail by panicking: the lints that keep panics out of the
// gateway do not apply here.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use waybill::webhook::signature::SchemeKind;

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

/// A small disk in a temporary directory: unmounted before the directory
/// is removed (fields drop in order).
struct SmallDisk {
    disk: Tmpfs,
    /// A gateway config whose store lives on the disk.
    cfg: PathBuf,
    _dir: tempfile::TempDir,
}

/// A tmpfs of `size`, and a gateway config whose store lives on it with a
/// 4 MiB floor and `store` added; None (after saying why) where no tmpfs
/// can be mounted.
fn small_disk(size: &str, store: &str) -> Option<SmallDisk> {
    let dir = tempfile::tempdir().unwrap();
    let mount_at = dir.path().join("disk");
    let disk = match Tmpfs::mount(&mount_at, size) {
        Ok(d) => d,
        Err(why) => {
            eprintln!(
                "skipped: a tmpfs could not be mounted for the data directory ({why}); run as root"
            );
            return None;
        }
    };
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
{store}
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
    Some(SmallDisk {
        disk,
        cfg,
        _dir: dir,
    })
}

fn delivery(id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    // About 2 KB, so the small disk fills in a bounded number of requests.
    let body = format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(2000)).into_bytes();
    (signed(SchemeKind::Github, SECRET, &body, 0, id), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_and_recovers_by_itself() {
    let Some(disk) = small_disk("24m", "") else {
        return;
    };
    let (mount_at, cfg) = (disk.disk.0.clone(), disk.cfg.clone());
    // Ballast to delete later: the space that comes back.
    let ballast = mount_at.join("ballast");
    std::fs::write(&ballast, vec![0u8; 8 << 20]).unwrap();
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
    let ready = eventually(6, async || get(gw.addr, "/readyz").await.status == 200).await;
    assert!(ready, "/readyz is 200 again once space is back");

    survives_kill_9(gw, &cfg, &accepted, &mount_at.join("data")).await;
}

/// Kills the gateway with kill -9 and restarts it on `cfg`: every delivery
/// of `accepted` is still stored, and the store at `data` is whole.
async fn survives_kill_9(gw: Gateway, cfg: &Path, accepted: &[String], data: &Path) {
    gw.kill9();
    let gw = Gateway::start(cfg);
    let mut client = Client::new(gw.addr);
    for id in accepted {
        let (h, b) = delivery(id);
        let r = client.send("POST", "/webhooks/gh", &h, b).await;
        assert_eq!(r.status, 200, "{id} was acknowledged and then lost");
    }
    gw.terminate();
    let store = open_store(data).await;
    assert_whole(&store);
    close_store(store).await;
}

/// Four senders at once, `n` distinct signed deliveries each: the ids
/// acknowledged (202). Anything but a 202 or a 503 `STORE_UNAVAILABLE`
/// fails the test, and so does a gateway that went away.
async fn burst(addr: std::net::SocketAddr, round: &str, n: usize) -> (Vec<String>, usize) {
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let round = round.to_string();
            tokio::spawn(async move {
                let mut client = Client::new(addr);
                let (mut accepted, mut refused) = (Vec::new(), 0);
                for i in 0..n {
                    let id = format!("{round}-{t}-{i}");
                    let (h, b) = delivery(&id);
                    let r = client
                        .try_send("POST", "/webhooks/gh", &h, b)
                        .await
                        .unwrap_or_else(|e| panic!("{id}: the gateway went away: {e}"));
                    match r.status.as_u16() {
                        202 => accepted.push(id),
                        503 => {
                            assert_eq!(r.code(), "STORE_UNAVAILABLE");
                            refused += 1;
                        }
                        other => panic!("{id}: {other} {:?}", r.body),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let mut all = (Vec::new(), 0);
    for s in senders {
        let (accepted, refused) = s.await.expect("a sender failed");
        all.0.extend(accepted);
        all.1 += refused;
    }
    all
}

/// "Hostile traffic" (GUARANTEES.md): another process fills the disk to zero right after a
/// burst of deliveries, while sled still holds their index unwritten and
/// faster than any free-space check can notice: once a block at a time
/// until the disk refuses, once in a single write larger than the disk.
/// The gateway stays up through the seconds of sled's flushes that
/// follow, answering 503 `STORE_UNAVAILABLE`; once the space is freed it
/// accepts again by itself; and after a kill -9 every delivery it
/// acknowledged is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_filling_the_disk_to_zero_is_survived() {
    let Some(disk) = small_disk("64m", "segment_mb = 2") else {
        return;
    };
    let (mount_at, cfg) = (disk.disk.0.clone(), disk.cfg.clone());
    let mut gw = Gateway::start(&cfg);
    let addr = gw.addr;
    let fill = mount_at.join("fill");
    let dd = |args: &[&str]| {
        let mut c = Command::new("dd");
        c.arg("if=/dev/zero")
            .arg(format!("of={}", fill.display()))
            .args(args)
            .arg("status=none");
        c
    };
    let mut accepted = Vec::new();
    for (round, filler) in [
        ("blocks", dd(&["bs=1M"])),
        ("one-write", dd(&["bs=96M", "count=1"])),
    ]
    .iter_mut()
    .enumerate()
    .map(|(i, (name, cmd))| (format!("{name}-{i}"), cmd))
    {
        let (ok, refused) = burst(addr, &format!("{round}-before"), 100).await;
        assert_eq!(
            (ok.len(), refused),
            (400, 0),
            "accepted before the disk fills"
        );
        accepted.extend(ok);
        filler.output().unwrap();
        assert!(fill.exists());
        // Deliveries through the next seconds of sled's background
        // flushes: refused, and the gateway is there to refuse them.
        let started = std::time::Instant::now();
        let mut refused = 0;
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            let (ok, r) = burst(addr, &format!("{round}-full"), 5).await;
            assert!(ok.is_empty(), "accepted on a full disk: {ok:?}");
            refused += r;
        }
        assert!(refused > 0);
        assert_eq!(
            gw.wait_for(std::time::Duration::ZERO),
            None,
            "the gateway stays up"
        );
        assert_eq!(get(addr, "/healthz").await.status, 200);
        assert_eq!(get(addr, "/readyz").await.status, 503);

        std::fs::remove_file(&fill).unwrap();
        assert!(
            eventually(5, async || get(addr, "/readyz").await.status == 200).await,
            "ready again once the space is back"
        );
        let (ok, refused) = burst(addr, &format!("{round}-after"), 25).await;
        assert_eq!((ok.len(), refused), (100, 0), "intake resumes by itself");
        accepted.extend(ok);
    }
    assert_eq!(
        gw.wait_for(std::time::Duration::ZERO),
        None,
        "the gateway stays up"
    );

    survives_kill_9(gw, &cfg, &accepted, &mount_at.join("data")).await;
}
