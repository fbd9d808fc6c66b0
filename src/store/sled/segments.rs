//! Segments: the log of accepted events. Each record holds an event's
//! headers and body, compressed, and everything its index entries are
//! made of (`codec::encode_logged`); sled keeps the index, pointing into
//! the segments (key-value separation). A group commit appends all its
//! records in one write, and the flusher `fdatasync`s the segment before
//! the group is acknowledged: the segments are what makes an event
//! durable, and sled, flushed in the background, is rebuilt from them on
//! open where it fell behind. Retention deletes whole segments once every
//! event in them has expired, so disk use follows the live data and expiry
//! costs no per-event work.
//!
//! A record is `len: u32 | crc32: u32 | body`. On open, the tail
//! of the newest segments is checked record by record and cut at the first
//! that is torn or fails its checksum: it can only belong to a group that
//! was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

const HEADER: usize = 8;
/// Segments whose tail is checked on open: the active one and the one
/// before it (a group may have been written just after a rotation).
const CHECKED_ON_OPEN: usize = 2;

/// Where one payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub segment: u64,
    pub offset: u64,
    /// Compressed length, without the record header.
    pub len: u32,
}

impl Pointer {
    pub const ENCODED: usize = 20;

    /// Where the next record starts.
    pub fn end(&self) -> u64 {
        self.offset + HEADER as u64 + u64::from(self.len)
    }

    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut out = [0u8; Self::ENCODED];
        for (dst, src) in out.iter_mut().zip(
            self.segment
                .to_be_bytes()
                .into_iter()
                .chain(self.offset.to_be_bytes())
                .chain(self.len.to_be_bytes()),
        ) {
            *dst = src;
        }
        out
    }

    pub fn decode(v: &[u8]) -> Option<Pointer> {
        Some(Pointer {
            segment: u64::from_be_bytes(v.get(..8)?.try_into().ok()?),
            offset: u64::from_be_bytes(v.get(8..16)?.try_into().ok()?),
            len: u32::from_be_bytes(v.get(16..20)?.try_into().ok()?),
        })
    }
}

struct Active {
    id: u64,
    file: File,
    len: u64,
}

pub struct Segments {
    dir: PathBuf,
    max_bytes: u64,
    active: Mutex<Active>,
    /// The segments read last, kept open, newest use first: dispatch and
    /// retention each read the records of one segment in a row, and an
    /// open and close per record cost more than the read.
    readers: Mutex<Vec<(u64, Arc<File>)>>,
}

/// Segments kept open for reading at most: dispatch's, retention's, and
/// room for searches.
const OPEN_READERS: usize = 4;

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn file_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

fn parse_name(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
}

impl Segments {
    /// Opens (or creates) the segments under `dir`, cutting torn tails.
    /// A new segment is started once the active one reaches `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        let ids = list(dir)?;
        for id in ids.iter().rev().take(CHECKED_ON_OPEN) {
            cut_torn_tail(&dir.join(file_name(*id)))?;
        }
        let id = ids.last().copied().unwrap_or(1);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(file_name(id)))?;
        let len = file.metadata()?.len();
        Ok(Segments {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            active: Mutex::new(Active { id, file, len }),
            readers: Mutex::new(Vec::with_capacity(OPEN_READERS)),
        })
    }

    /// Appends records in one write; their pointers, and the file to sync
    /// before any of them is acknowledged.
    pub fn append(&self, bodies: &[Vec<u8>]) -> io::Result<(Vec<Pointer>, File)> {
        let mut records = Vec::new();
        let mut sizes = Vec::with_capacity(bodies.len());
        for body in bodies {
            let len = u32::try_from(body.len()).map_err(|_| invalid("record too large"))?;
            records.extend_from_slice(&len.to_be_bytes());
            records.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
            records.extend_from_slice(body);
            sizes.push(len);
        }
        // The only lock here guards the active file for this one write; it
        // calls nothing that locks.
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if active.len >= self.max_bytes {
            let id = active.id + 1;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(file_name(id)))?;
            // The finished segment's last groups were synced by the flusher
            // with them; syncing the directory keeps the new file's name.
            File::open(&self.dir)?.sync_all()?;
            *active = Active { id, file, len: 0 };
        }
        let start = active.len;
        if let Err(e) = active.file.write_all(&records) {
            // Part of it may be written (a disk that filled mid-write): cut
            // it, so the segment ends at its last whole group again and
            // the next append follows that. Truncating needs no space.
            return match active.file.set_len(start) {
                Ok(()) => Err(e),
                Err(cut) => Err(io::Error::other(format!(
                    "{e}; cutting the partial write failed too: {cut}"
                ))),
            };
        }
        active.len += records.len() as u64;
        let mut offset = start;
        let mut pointers = Vec::with_capacity(sizes.len());
        for len in sizes {
            pointers.push(Pointer {
                segment: active.id,
                offset,
                len,
            });
            offset += HEADER as u64 + u64::from(len);
        }
        Ok((pointers, active.file.try_clone()?))
    }

    /// The segment's length on disk.
    pub fn len(&self, id: u64) -> io::Result<u64> {
        Ok(std::fs::metadata(self.dir.join(file_name(id)))?.len())
    }

    /// Each whole record of a segment from `offset` on, in order, with its
    /// pointer, read a record at a time (the tail was cut on open): what
    /// `Store::open` replays. Ends at the first record that is not whole.
    pub fn each_record(
        &self,
        id: u64,
        offset: u64,
        mut f: impl FnMut(Pointer, &[u8]) -> Result<(), crate::store::StoreError>,
    ) -> Result<(), crate::store::StoreError> {
        use std::io::{BufReader, Read, Seek, SeekFrom};
        let io_err =
            |e: io::Error| crate::store::StoreError::Unavailable(format!("segment {id}: {e}"));
        let mut file = File::open(self.dir.join(file_name(id))).map_err(io_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut at = offset;
        let mut header = [0u8; HEADER];
        let mut body = Vec::new();
        loop {
            if reader.read_exact(&mut header).is_err() {
                return Ok(());
            }
            let (len, crc) = header.split_at(4);
            let len = u32::from_be_bytes(len.try_into().unwrap_or_default());
            let crc = u32::from_be_bytes(crc.try_into().unwrap_or_default());
            body.resize(len as usize, 0);
            if reader.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
                return Ok(());
            }
            let pointer = Pointer {
                segment: id,
                offset: at,
                len,
            };
            f(pointer, &body)?;
            at = pointer.end();
        }
    }

    /// Syncs a segment's data to the device.
    pub fn sync(&self, id: u64) -> io::Result<()> {
        File::open(self.dir.join(file_name(id)))?.sync_data()
    }

    /// Reads one record back, checking its checksum.
    pub fn read(&self, p: &Pointer) -> io::Result<Vec<u8>> {
        let file = self.reader(p.segment)?;
        let mut record = vec![0u8; HEADER + p.len as usize];
        file.read_exact_at(&mut record, p.offset)?;
        let (header, packed) = record.split_at(HEADER);
        let len = u32::from_be_bytes(
            header
                .get(..4)
                .and_then(|h| h.try_into().ok())
                .unwrap_or_default(),
        );
        let crc = u32::from_be_bytes(
            header
                .get(4..)
                .and_then(|h| h.try_into().ok())
                .unwrap_or_default(),
        );
        if len != p.len || crc32fast::hash(packed) != crc {
            return Err(invalid(format!(
                "record at {}:{} fails its checksum",
                p.segment, p.offset
            )));
        }
        record.drain(..HEADER);
        Ok(record)
    }

    /// Segment `id` open for reading: kept from an earlier read, or opened
    /// now and kept in place of the one used least recently. The lock is
    /// not held while a file is opened or read.
    fn reader(&self, id: u64) -> io::Result<Arc<File>> {
        let lock = || self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut readers = lock();
            if let Some(at) = readers.iter().position(|(r, _)| *r == id) {
                let entry = readers.remove(at);
                let file = entry.1.clone();
                readers.insert(0, entry);
                return Ok(file);
            }
        }
        let file = Arc::new(File::open(self.dir.join(file_name(id)))?);
        let mut readers = lock();
        readers.retain(|(r, _)| *r != id);
        readers.truncate(OPEN_READERS - 1);
        readers.insert(0, (id, file.clone()));
        Ok(file)
    }

    /// Whether a pointer names a whole record within its segment as it is
    /// on disk now.
    pub fn contains(&self, p: &Pointer) -> bool {
        std::fs::metadata(self.dir.join(file_name(p.segment)))
            .is_ok_and(|m| p.offset + HEADER as u64 + u64::from(p.len) <= m.len())
    }

    /// The segments on disk, oldest first, with the active one last.
    pub fn ids(&self) -> io::Result<Vec<u64>> {
        list(&self.dir)
    }

    pub fn active_id(&self) -> u64 {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .id
    }

    /// Deletes a finished segment; never the active one.
    pub fn delete(&self, id: u64) -> io::Result<()> {
        if id >= self.active_id() {
            return Ok(());
        }
        // A reader kept open would hold the file's space until replaced.
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(r, _)| *r != id);
        match std::fs::remove_file(self.dir.join(file_name(id))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Bytes the segments take on disk.
    pub fn size_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(parse_name))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Cuts a segment after its last whole record with a good checksum.
fn cut_torn_tail(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut at = 0u64;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= size {
        file.read_exact_at(&mut header, at)?;
        let (len, crc) = header.split_at(4);
        let len = u32::from_be_bytes(len.try_into().map_err(|_| invalid("header"))?);
        let crc = u32::from_be_bytes(crc.try_into().map_err(|_| invalid("header"))?);
        let end = at + HEADER as u64 + u64::from(len);
        if end > size {
            break;
        }
        let mut packed = vec![0u8; len as usize];
        file.read_exact_at(&mut packed, at + HEADER as u64)?;
        if crc32fast::hash(&packed) != crc {
            break;
        }
        at = end;
    }
    if at < size {
        tracing::warn!(
            segment = %path.display(),
            kept = at,
            cut = size - at,
            "cutting a torn segment tail left by a crash"
        );
        file.set_len(at)?;
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_segments_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), 50).unwrap();
        let payloads: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(300)).into_bytes())
            .collect();
        let (first, _) = s.append(&payloads[..2]).unwrap();
        let (second, _) = s.append(&payloads[2..]).unwrap();
        // The first group filled the first segment past its size: the
        // second went to a new one.
        assert_eq!(first[0].segment, 1);
        assert_eq!(second[0].segment, 2);
        for (p, want) in first.iter().chain(&second).zip(&payloads) {
            assert_eq!(&s.read(p).unwrap(), want);
            assert!(s.contains(p));
            assert_eq!(Pointer::decode(&p.encode()), Some(*p));
        }
        let mut replayed = Vec::new();
        for id in [1, 2] {
            s.each_record(id, 0, |p, body| {
                replayed.push((p, body.to_vec()));
                Ok(())
            })
            .unwrap();
        }
        let pointers: Vec<Pointer> = first.iter().chain(&second).copied().collect();
        assert_eq!(
            replayed.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            pointers
        );
        assert_eq!(
            replayed.into_iter().map(|(_, b)| b).collect::<Vec<_>>(),
            payloads
        );
        // From a record's end on: the rest of its segment.
        let mut rest = 0;
        s.each_record(1, first[0].end(), |_, _| {
            rest += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(rest, 1);
        assert_eq!(s.ids().unwrap(), [1, 2]);
        s.delete(1).unwrap();
        s.delete(2).unwrap(); // the active one stays
        assert_eq!(s.ids().unwrap(), [2]);
        assert!(s.read(&first[0]).is_err());
        assert!(s.size_bytes() > 0);
    }

    /// Reads across more segments than are kept open, in turns, each find
    /// their own record, and no more files than that stay open.
    #[test]
    fn reads_across_many_segments_find_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), 10).unwrap();
        let records: Vec<(Pointer, Vec<u8>)> = (0..3 * OPEN_READERS)
            .map(|i| {
                let body = format!("record {i}").into_bytes();
                let (p, _) = s.append(std::slice::from_ref(&body)).unwrap();
                (p[0], body)
            })
            .collect();
        let segments: std::collections::HashSet<u64> =
            records.iter().map(|(p, _)| p.segment).collect();
        assert_eq!(segments.len(), records.len());
        for round in 0..3 {
            for (i, (p, body)) in records.iter().enumerate() {
                let (p, body) = if (i + round) % 2 == 0 {
                    (p, body)
                } else {
                    let (q, b) = &records[records.len() - 1 - i];
                    (q, b)
                };
                assert_eq!(&s.read(p).unwrap(), body);
                assert!(s.readers.lock().unwrap().len() <= OPEN_READERS);
            }
        }
    }

    #[test]
    fn a_torn_tail_is_cut_on_open_and_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let good = {
            let s = Segments::open(dir.path(), 1 << 20).unwrap();
            let (p, _) = s.append(&[b"whole".to_vec()]).unwrap();
            let (torn, _) = s.append(&[b"torn by a crash".to_vec()]).unwrap();
            // The second record loses its last bytes, as a crash mid-write
            // would leave it.
            let path = dir.path().join(file_name(1));
            let size = std::fs::metadata(&path).unwrap().len();
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(size - 3)
                .unwrap();
            assert!(!s.contains(&torn[0]));
            p[0]
        };
        let s = Segments::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.read(&good).unwrap(), b"whole");
        // Cut back to the whole record; the next append follows it.
        let (next, _) = s.append(&[b"after".to_vec()]).unwrap();
        assert_eq!(
            next[0].offset,
            good.offset + HEADER as u64 + u64::from(good.len)
        );
        assert_eq!(s.read(&next[0]).unwrap(), b"after");
    }

    #[test]
    fn a_corrupt_record_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let s = Segments::open(dir.path(), 1 << 20).unwrap();
        let (p, _) = s.append(&[b"payload".to_vec()]).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(file_name(1)))
            .unwrap();
        f.write_all_at(b"\xff", HEADER as u64 + 5).unwrap();
        assert!(s.read(&p[0]).is_err());
        drop(s);
        // On open, the corrupt record (the last) is cut.
        let s = Segments::open(dir.path(), 1 << 20).unwrap();
        assert!(!s.contains(&p[0]));
    }
}
