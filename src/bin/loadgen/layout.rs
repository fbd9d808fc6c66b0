//! A model of the sled index's traffic under churn, to weigh a change of
//! layout before building it (docs/BENCHMARKS.md, "Churn disk").
//!
//! Under churn the bytes on disk are mostly sled's, not the segments':
//! sled appends every change to its log and takes a segment of the log
//! back only once at most half of it is live (`SEGMENT_CLEANUP_THRESHOLD`,
//! fixed), moving what is still live to the log's end. How much disk an
//! index takes therefore follows the bytes its records keep live, and how
//! often they are rewritten, more than the number of keys. The model
//! writes the keys of one event the way the store does, at `--rate`: one
//! group commit of `--group` events, dispatch's outcomes in one batch,
//! retention's removals in another once `--live` newer events have come.
//! Record sizes are those measured on a churn store; it reports what sled
//! wrote and how large its file grew. No HTTP, no payloads, no segments,
//! none of the store's other keys: the figures compare layouts with each
//! other, not with the gateway (docs/BENCHMARKS.md has the calibration).
//! Its default 250,000 events take 40 s: at the default `--flush-ms` they
//! show the level sled's file keeps over the first minute, not the climb
//! after it, when sled's log cleaning falls behind; a shorter flush paces
//! the cleaning faster (docs/BENCHMARKS.md, "sled's file: the log
//! cleaner's pace").

use std::collections::VecDeque;
use std::path::Path;

use waybill::store::sled::codec;

/// Which records an event keeps, and their sizes in bytes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Layout {
    /// The store's layout 4: identity (`e`), arrival (`n`) rewritten with
    /// the outcome, tracking-number entry (`T`), a share of a retention
    /// entry.
    Today,
    /// The store's layout 5: today's keys, with the arrival an entry (the
    /// segment record's pointer, then the outcome) instead of the event's
    /// names and fields, which are read from the record.
    Entries,
    /// Today's, with the parked reason (derivable from the tracking
    /// number) left out of the outcome.
    ShortReason,
    /// No arrival: dispatch reads the segment records, the outcome (code,
    /// attempts, time) is rewritten into the identity record, and the
    /// search and retention entries point at the segment record.
    Lean,
    /// Today's, with one arrival key per group commit holding the
    /// group's arrivals, rewritten whole with their outcomes.
    GroupArrival,
    /// Arrivals only in the inbox: dispatch takes the arrival out and
    /// rewrites the outcome into the identity record; the search and
    /// retention entries name the event.
    Inbox,
    /// Identity, search and retention entries only: the floor.
    NoArrival,
    /// The store since layout 6: layout 5's, with the identity record
    /// holding only the identity and the pointer (76 bytes); the
    /// searchable metadata is read from the segment record.
    SlimEntries,
    /// Layout 6 with the parked reason left out of the outcome (it is
    /// derivable from the event's tracking number).
    SlimShortReason,
    /// The lean layout with layout 6's slim identity record.
    SlimLean,
    /// The store since layout 7: layout 6's, with a parked outcome's
    /// reason left out and the identity record in LEB128 (about 52 bytes).
    Compact,
    /// `compact` without retention entries: retention would read the
    /// segments instead.
    CompactNoExpiry,
    /// Identity and tracking-number entries only, as `compact` writes
    /// them: nothing keyed by sequence that lives for the whole retention
    /// (dispatch and retention would read the segments).
    KeyedOnly,
    /// `keyed-only`, with dispatch's outcome rewritten into the identity
    /// record.
    KeyedOutcome,
    /// `compact`, with the identity and tracking-number entries in one
    /// sled tree per quarter of the retention window, which retention
    /// drops whole (`Db::drop_tree`) once its last event has expired,
    /// instead of removing them key by key; a lookup would read every
    /// tree still kept.
    CompactBuckets,
    /// `compact-buckets` with the arrival entries in the same trees and
    /// no retention entries: retention drops a quarter of the window's
    /// records at once and removes no key.
    BucketsAll,
}

#[derive(Clone, Copy)]
struct Sizes {
    identity: usize,
    /// Arrivals keyed per group commit instead of per event.
    per_group: bool,
    /// The arrival at intake and with its outcome; 0: no arrival.
    arrival: usize,
    arrival_done: usize,
    /// Dispatch removes the arrival.
    transient: bool,
    /// What dispatch adds to the identity record instead.
    identity_outcome: usize,
    /// Keyed records in a tree per quarter of the retention window.
    bucketed: bool,
    /// Arrival entries there too.
    arrivals_bucketed: bool,
    search_value: usize,
    expiry_per_event: usize,
}

impl Layout {
    fn sizes(self) -> Sizes {
        // Measured on a churn store: identity 119 bytes of value, arrival
        // 142 once parked, of which 51 are the reason and 63 the outcome
        // (so about 79 at intake).
        let today = Sizes {
            identity: 119,
            per_group: false,
            arrival: 79,
            arrival_done: 142,
            transient: false,
            identity_outcome: 0,
            bucketed: false,
            arrivals_bucketed: false,
            search_value: 0,
            expiry_per_event: 8,
        };
        let lean = Sizes {
            arrival: 0,
            arrival_done: 0,
            identity_outcome: 12,
            search_value: 20,
            expiry_per_event: 20,
            ..today
        };
        let slim = Sizes {
            identity: 76,
            arrival: 8,
            arrival_done: 8 + 63,
            ..today
        };
        let slim_short = Sizes {
            arrival_done: 8 + 63 - 51,
            ..slim
        };
        let compact = Sizes {
            identity: 52,
            ..slim_short
        };
        let keyed_only = Sizes {
            arrival: 0,
            arrival_done: 0,
            expiry_per_event: 0,
            ..compact
        };
        match self {
            Layout::Today => today,
            // A pointer as three LEB128 numbers and a flags byte: about 8
            // bytes on a churn store.
            Layout::Entries => Sizes {
                arrival: 8,
                arrival_done: 8 + 63,
                ..today
            },
            Layout::ShortReason => Sizes {
                arrival_done: 142 - 51,
                ..today
            },
            Layout::Lean => lean,
            Layout::GroupArrival => Sizes {
                per_group: true,
                ..today
            },
            Layout::Inbox => Sizes {
                arrival_done: 0,
                transient: true,
                identity_outcome: 12,
                search_value: 24,
                expiry_per_event: 24,
                ..today
            },
            Layout::SlimEntries => slim,
            Layout::SlimShortReason => slim_short,
            Layout::SlimLean => Sizes {
                identity: 76,
                ..lean
            },
            Layout::Compact => compact,
            Layout::CompactNoExpiry => Sizes {
                expiry_per_event: 0,
                ..compact
            },
            Layout::KeyedOnly => keyed_only,
            Layout::KeyedOutcome => Sizes {
                identity_outcome: 12,
                ..keyed_only
            },
            Layout::CompactBuckets => Sizes {
                bucketed: true,
                ..compact
            },
            Layout::BucketsAll => Sizes {
                bucketed: true,
                arrivals_bucketed: true,
                expiry_per_event: 0,
                ..compact
            },
            Layout::NoArrival => Sizes {
                arrival: 0,
                arrival_done: 0,
                ..today
            },
        }
    }
}

/// One run of the model: the layout, the traffic, and sled's settings
/// (the store's by default).
#[derive(clap::Args)]
pub struct Model {
    #[arg(long, value_enum, default_value = "today")]
    pub layout: Layout,
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Events kept before retention takes the oldest out: 10 s of the
    /// churn benchmark's 6,300/s.
    #[arg(long, default_value_t = 63_000)]
    pub live: u64,
    /// Events per group commit (about 64 in the churn benchmark).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub group: u64,
    /// Events per second.
    #[arg(long, default_value_t = 6_300, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// Random event ids and tracking numbers instead of counting up.
    #[arg(long)]
    pub random_keys: bool,
    /// sled's page cache: 8 MiB, the store's when the model was
    /// calibrated (docs/BENCHMARKS.md's earlier runs use it); the store's
    /// default is now 2 MiB.
    #[arg(long, default_value_t = 8)]
    pub cache_mib: u64,
    /// sled's flush interval, which also paces its log cleaning.
    #[arg(long, default_value_t = 500)]
    pub flush_ms: u64,
    /// sled's log segment (a power of two; its default: 512 KiB).
    #[arg(long, default_value_t = 512)]
    pub segment_kib: usize,
}

pub struct Run {
    pub written_per_event: Option<u64>,
    pub size_on_disk: u64,
    pub peak: u64,
    /// sled's trees at the end, its default one included.
    pub trees: usize,
}

/// One event's keys, kept until retention takes them out.
struct Live {
    seq: u64,
    identity: Vec<u8>,
    search: Vec<u8>,
}

pub fn run(m: &Model, dir: &Path) -> Result<Run, super::Failed> {
    let s = m.layout.sizes();
    let Model {
        events,
        live,
        group,
        rate,
        random_keys,
        ..
    } = *m;
    let _ = std::fs::remove_dir_all(dir);
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(m.cache_mib << 20)
        .flush_every_ms(Some(m.flush_ms))
        .segment_size(m.segment_kib << 10)
        .open()?;
    let tree = db.open_tree("state")?;
    let mut rng = fastrand::Rng::with_seed(1);
    let arrival = |seq: u64| codec::seq_key(b'n', seq);
    let mut kept: VecDeque<Live> = VecDeque::new();
    // The bucketed layouts' trees, oldest first, each with the first
    // sequence number it does not hold (its name).
    let span = (live / 4).max(1);
    let bucket_end = |seq: u64| (seq / span + 1) * span;
    let mut buckets: VecDeque<(u64, sled::Tree)> = VecDeque::new();
    let before = written_bytes();
    let mut peak = 0;
    let mut seq = 0;
    // Paced like the benchmark's open loop: sled reclaims its log on a
    // timer (its flusher), so the rate decides how much is reclaimed.
    let start = std::time::Instant::now();
    while seq < events {
        let due = start + std::time::Duration::from_secs_f64(seq as f64 / rate as f64);
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        let first = seq + 1;
        for _ in 0..group {
            seq += 1;
            // The load generator's ids and tracking numbers count up;
            // carriers' are often random, which spreads the writes over
            // every leaf instead of the last.
            let n = if random_keys {
                rng.u64(..1_000_000_000)
            } else {
                seq
            };
            let identity = codec::event_key("bench", &format!("lg-churn-{n}"));
            let search = codec::text_seq_key(b'T', &format!("LG{n:012}"), seq);
            let keyed = if s.bucketed {
                if buckets.back().is_none_or(|(end, _)| seq >= *end) {
                    let end = bucket_end(seq);
                    buckets.push_back((end, db.open_tree(end.to_be_bytes())?));
                }
                buckets.back().map(|(_, t)| t).unwrap_or(&tree)
            } else {
                &tree
            };
            keyed.insert(&identity, vec![7; s.identity])?;
            keyed.insert(&search, vec![5; s.search_value])?;
            if s.arrival > 0 && !s.per_group {
                let at = if s.arrivals_bucketed { keyed } else { &tree };
                at.insert(arrival(seq), vec![3; s.arrival])?;
            }
            kept.push_back(Live {
                seq,
                identity,
                search,
            });
        }
        if s.per_group {
            tree.insert(arrival(first), vec![3; s.arrival * group as usize])?;
        }
        if s.expiry_per_event > 0 {
            let expiry = codec::expiry_key(first + live, first);
            tree.insert(expiry, vec![1; s.expiry_per_event * group as usize])?;
        }
        tree.insert(codec::SEQ_KEY, &seq.to_be_bytes())?;
        tree.insert(codec::DURABLE_KEY, &seq.to_be_bytes())?;

        let mut outcomes = sled::Batch::default();
        // With arrivals in the bucket trees, a batch per tree the group
        // touches (one, or two where it straddles a bucket's end), by the
        // end of its bucket.
        let mut bucket_outcomes: Vec<(u64, sled::Batch)> = Vec::new();
        if s.per_group {
            outcomes.insert(&arrival(first), vec![4; s.arrival_done * group as usize]);
        }
        for ev in kept.iter().rev().take(group as usize) {
            if s.arrival_done > 0 && s.arrivals_bucketed {
                let end = bucket_end(ev.seq);
                if bucket_outcomes.last().is_none_or(|(e, _)| *e != end) {
                    bucket_outcomes.push((end, sled::Batch::default()));
                }
                if let Some((_, b)) = bucket_outcomes.last_mut() {
                    b.insert(&arrival(ev.seq), vec![4; s.arrival_done]);
                }
            } else if s.arrival_done > 0 && !s.per_group {
                outcomes.insert(&arrival(ev.seq), vec![4; s.arrival_done]);
            }
            if s.transient {
                outcomes.remove(&arrival(ev.seq));
            }
            if s.identity_outcome > 0 {
                outcomes.insert(
                    ev.identity.as_slice(),
                    vec![4; s.identity + s.identity_outcome],
                );
            }
        }
        outcomes.insert(codec::CURSOR_KEY, &seq.to_be_bytes());
        for (end, b) in bucket_outcomes {
            if let Some((_, t)) = buckets.iter().find(|(e, _)| *e == end) {
                t.apply_batch(b)?;
            }
        }
        tree.apply_batch(outcomes)?;

        if seq > live {
            let mut forget = sled::Batch::default();
            let oldest = kept.front().map_or(0, |ev| ev.seq);
            for ev in kept.drain(..group as usize) {
                if !s.bucketed {
                    forget.remove(ev.identity);
                    forget.remove(ev.search);
                }
                if s.arrival > 0 && !s.per_group && !s.transient && !s.arrivals_bucketed {
                    forget.remove(&arrival(ev.seq));
                }
            }
            if s.per_group {
                forget.remove(&arrival(oldest));
            }
            if s.expiry_per_event > 0 {
                forget.remove(&codec::expiry_key(oldest + live, oldest));
            }
            tree.apply_batch(forget)?;
            // A bucket goes once no event it holds is kept.
            while let Some((end, _)) = buckets.front()
                && kept.front().is_none_or(|ev| *end <= ev.seq)
            {
                let end = *end;
                buckets.pop_front();
                db.drop_tree(end.to_be_bytes())?;
            }
        }
        if seq % 10_000 < group {
            peak = peak.max(db.size_on_disk()?);
        }
    }
    db.flush()?;
    let size_on_disk = db.size_on_disk()?;
    Ok(Run {
        written_per_event: written_bytes()
            .zip(before)
            .map(|(after, before)| (after - before) / events),
        size_on_disk,
        peak: peak.max(size_on_disk),
        trees: db.tree_names().len(),
    })
}

/// Bytes this process has handed to `write` and its kin so far (Linux).
fn written_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/io")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `written_bytes` counts the whole process's writes, so one model
    /// runs at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn model(layout: Layout) -> Run {
        let _one = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let model = Model {
            layout,
            events: 4_000,
            live: 1_000,
            group: 16,
            rate: 1_000_000,
            random_keys: false,
            cache_mib: 8,
            flush_ms: 500,
            segment_kib: 512,
        };
        run(&model, dir.path()).unwrap()
    }

    #[test]
    fn a_layout_without_arrivals_writes_less_than_todays() {
        let today = model(Layout::Today);
        let lean = model(Layout::Lean);
        let floor = model(Layout::NoArrival);
        assert!(today.size_on_disk > 0 && today.peak >= today.size_on_disk);
        let (Some(today), Some(lean), Some(floor)) = (
            today.written_per_event,
            lean.written_per_event,
            floor.written_per_event,
        ) else {
            // Not Linux: nothing counts the bytes written.
            return;
        };
        assert!(floor < lean && lean < today, "{floor} {lean} {today}");
    }

    #[test]
    fn each_record_left_out_of_compact_writes_less() {
        let written = |l| model(l).written_per_event;
        let (Some(keyed), Some(outcome), Some(no_expiry), Some(compact)) = (
            written(Layout::KeyedOnly),
            written(Layout::KeyedOutcome),
            written(Layout::CompactNoExpiry),
            written(Layout::Compact),
        ) else {
            return;
        };
        assert!(
            keyed < outcome && outcome < no_expiry && no_expiry < compact,
            "{keyed} {outcome} {no_expiry} {compact}"
        );
    }

    #[test]
    fn bucketed_layouts_keep_only_the_trees_of_the_window() {
        // sled's default tree and the store's, and the quarters that hold
        // an event not yet expired: four, or five or six where the oldest
        // has expired in part and the newest is filling.
        assert_eq!(model(Layout::Compact).trees, 2);
        for layout in [Layout::CompactBuckets, Layout::BucketsAll] {
            let trees = model(layout).trees;
            assert!((2 + 4..=2 + 6).contains(&trees), "{layout:?}: {trees}");
        }
    }
}
