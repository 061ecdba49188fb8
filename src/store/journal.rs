//! The store's file: an append-only journal of put/delete records over a key-value map.
//!
//! File layout: the 8-byte magic `MQFLUXJ1`, then records `[len u32 LE][crc32 u32 LE][body]`,
//! body = `[op u8][key len u32 LE][key][value]`. A record is valid only if it is complete and
//! its CRC matches, so a torn write at a crash, a truncated file or flipped bits are detected at
//! the exact offset where they start; everything before that offset is intact.
//!
//! The journal is rewritten as a snapshot (temp file, fsync, rename, fsync directory) at start-up
//! and whenever it grows much larger than the live data.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "mqflux.journal";
const MAGIC: &[u8; 8] = b"MQFLUXJ1";
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_DELETE_PREFIX: u8 = 3;
const OP_BATCH: u8 = 4;
/// Records larger than this are corrupt (a message is at most 256 MiB plus a little).
const MAX_RECORD: u32 = 300 * 1024 * 1024;

pub type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Delete every key starting with these bytes (a session ends).
    DeletePrefix(Vec<u8>),
    /// Operations that take effect together or not at all (one record, one checksum).
    Batch(Vec<Op>),
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: io::Error },
    #[error(
        "{}: the store is corrupt or truncated at byte {offset} ({detail}); {lost} bytes from \
         there on cannot be read. Start with --recover to keep the {kept} records before it and \
         discard the rest",
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        lost: u64,
        kept: usize,
        detail: String,
    },
}

/// What `--recover` had to give up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub offset: u64,
    pub lost_bytes: u64,
    pub detail: String,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes in the file, to decide when to compact.
    len: u64,
}

/// Apply one operation to the in-memory map.
pub fn apply(map: &mut Map, op: Op) {
    match op {
        Op::Put(k, v) => {
            map.insert(k, v);
        }
        Op::Delete(k) => {
            map.remove(&k);
        }
        Op::Batch(ops) => {
            for op in ops {
                apply(map, op);
            }
        }
        Op::DeletePrefix(prefix) => {
            let doomed: Vec<Vec<u8>> = map
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                map.remove(&k);
            }
        }
    }
}

pub fn encode(op: &Op, out: &mut Vec<u8>) {
    let nested;
    let (code, key, value): (u8, &[u8], &[u8]) = match op {
        Op::Put(k, v) => (OP_PUT, k, v),
        Op::Delete(k) => (OP_DELETE, k, &[]),
        Op::DeletePrefix(k) => (OP_DELETE_PREFIX, k, &[]),
        Op::Batch(ops) => {
            let mut v = Vec::new();
            for op in ops {
                encode(op, &mut v);
            }
            nested = v;
            (OP_BATCH, &[], &nested)
        }
    };
    let body_len = 1 + 4 + key.len() + value.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(code);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decode the record at `pos`: the operation and where the next record starts.
fn decode_record(data: &[u8], pos: usize) -> Result<(Op, usize), String> {
    if data.len() - pos < 8 {
        return Err("record header cut short".into());
    }
    let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
    if !(5..=MAX_RECORD).contains(&len) {
        return Err(format!("bad record length {len}"));
    }
    let end = pos + 8 + len as usize;
    if end > data.len() {
        return Err("record cut short".into());
    }
    let body = &data[pos + 8..end];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let key_len = u32::from_le_bytes(body[1..5].try_into().unwrap_or_default()) as usize;
    if 5 + key_len > body.len() {
        return Err("key longer than its record".into());
    }
    let key = body[5..5 + key_len].to_vec();
    let value = &body[5 + key_len..];
    let op = match body[0] {
        OP_PUT => Op::Put(key, value.to_vec()),
        OP_DELETE => Op::Delete(key),
        OP_DELETE_PREFIX => Op::DeletePrefix(key),
        OP_BATCH => {
            let mut ops = Vec::new();
            let mut at = 0;
            while at < value.len() {
                let (op, next) = decode_record(value, at)?;
                ops.push(op);
                at = next;
            }
            Op::Batch(ops)
        }
        other => return Err(format!("unknown operation {other}")),
    };
    Ok((op, end))
}

/// Replay a journal image. Returns the map and, if the image does not end cleanly, where and
/// why it stops being readable.
pub fn replay(data: &[u8]) -> (Map, usize, Option<Loss>) {
    let mut map = Map::new();
    let mut records = 0;
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        let detail = if data.len() < MAGIC.len() {
            format!("file is {} bytes, shorter than its header", data.len())
        } else {
            "not an mqflux journal (bad header)".to_string()
        };
        let loss = Loss {
            offset: 0,
            lost_bytes: data.len() as u64,
            detail,
        };
        return (map, 0, Some(loss));
    }
    let mut pos = MAGIC.len();
    while pos < data.len() {
        match decode_record(data, pos) {
            Ok((op, end)) => {
                apply(&mut map, op);
                records += 1;
                pos = end;
            }
            Err(detail) => {
                let loss = Loss {
                    offset: pos as u64,
                    lost_bytes: (data.len() - pos) as u64,
                    detail,
                };
                return (map, records, Some(loss));
            }
        }
    }
    (map, records, None)
}

impl Journal {
    /// Open (or create) the journal in `dir` and load it. A damaged journal is an error unless
    /// `recover` is set, in which case the readable part is kept and the loss returned. Either
    /// way the file is then rewritten as a clean snapshot.
    pub fn open(dir: &Path, recover: bool) -> Result<(Journal, Map, Option<Loss>), JournalError> {
        let path = dir.join(FILE_NAME);
        let io_err = |file: &Path| {
            let file = file.to_path_buf();
            move |source| JournalError::Io { file, source }
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (map, loss) = match std::fs::read(&path) {
            Ok(data) => {
                let (map, records, loss) = replay(&data);
                match loss {
                    Some(loss) if !recover => {
                        return Err(JournalError::Corrupt {
                            file: path,
                            offset: loss.offset,
                            lost: loss.lost_bytes,
                            kept: records,
                            detail: loss.detail,
                        })
                    }
                    loss => (map, loss),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Map::new(), None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut journal = Journal {
            file: write_snapshot(&path, &map).map_err(io_err(&path))?,
            len: 0,
            path,
        };
        journal.len = journal
            .file
            .metadata()
            .map_err(io_err(&journal.path))?
            .len();
        Ok((journal, map, loss))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Append encoded records (not yet durable: see `sync`).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Make everything appended so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Replace the journal with a snapshot of `map` (crash-safe: rename over the old file).
    pub fn compact(&mut self, map: &Map) -> io::Result<()> {
        self.file = write_snapshot(&self.path, map)?;
        self.len = self.file.metadata()?.len();
        Ok(())
    }
}

/// Write `map` as a fresh journal next to `path`, fsync it, rename it over `path`, fsync the
/// directory, and return the file opened for appending.
fn write_snapshot(path: &Path, map: &Map) -> io::Result<File> {
    let tmp = path.with_extension("journal.tmp");
    {
        let mut f = io::BufWriter::new(File::create(&tmp)?);
        f.write_all(MAGIC)?;
        let mut buf = Vec::new();
        for (k, v) in map {
            buf.clear();
            encode(&Op::Put(k.clone(), v.clone()), &mut buf);
            f.write_all(&buf)?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(ops: &[Op]) -> Vec<u8> {
        let mut data = MAGIC.to_vec();
        for op in ops {
            encode(op, &mut data);
        }
        data
    }

    #[test]
    fn replay_applies_puts_deletes_and_prefix_deletes() {
        let data = image(&[
            Op::Put(b"a1".to_vec(), b"x".to_vec()),
            Op::Put(b"a2".to_vec(), b"y".to_vec()),
            Op::Put(b"b1".to_vec(), b"z".to_vec()),
            Op::Delete(b"b1".to_vec()),
            Op::Put(b"b2".to_vec(), b"w".to_vec()),
            Op::DeletePrefix(b"a".to_vec()),
        ]);
        let (map, records, loss) = replay(&data);
        assert_eq!(records, 6);
        assert_eq!(loss, None);
        assert_eq!(
            map.into_iter().collect::<Vec<_>>(),
            vec![(b"b2".to_vec(), b"w".to_vec())]
        );
    }

    #[test]
    fn truncated_record_is_reported_at_its_offset_and_earlier_records_kept() {
        let data = image(&[
            Op::Put(b"k1".to_vec(), b"v1".to_vec()),
            Op::Put(b"k2".to_vec(), b"v2".to_vec()),
        ]);
        let first_end = MAGIC.len() + 8 + 1 + 4 + 2 + 2;
        for cut in first_end + 1..data.len() {
            let (map, records, loss) = replay(&data[..cut]);
            assert_eq!(records, 1, "cut at {cut}");
            assert_eq!(map.len(), 1);
            let loss = loss.expect("a cut record is a loss");
            assert_eq!(loss.offset, first_end as u64);
            assert_eq!(loss.lost_bytes, (cut - first_end) as u64);
        }
    }

    #[test]
    fn a_batch_applies_entirely_or_not_at_all() {
        let batch = Op::Batch(vec![
            Op::Put(b"in".to_vec(), vec![]),
            Op::Put(b"out".to_vec(), b"m".to_vec()),
        ]);
        let data = image(&[Op::Put(b"a".to_vec(), vec![]), batch]);
        let (map, records, loss) = replay(&data);
        assert_eq!((map.len(), records, loss), (3, 2, None));
        for cut in MAGIC.len() + 16..data.len() {
            let (map, _, _) = replay(&data[..cut]);
            assert_eq!(
                map.len(),
                1,
                "cut at {cut}: only the record before the batch"
            );
        }
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let mut data = image(&[Op::Put(b"key".to_vec(), b"value".to_vec())]);
        let last = data.len() - 1;
        data[last] ^= 1;
        let (map, _, loss) = replay(&data);
        assert!(map.is_empty());
        assert_eq!(
            loss.map(|l| l.detail),
            Some("checksum mismatch".to_string())
        );
    }

    #[test]
    fn open_refuses_a_damaged_file_unless_recovering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut data = image(&[Op::Put(b"k".to_vec(), b"v".to_vec())]);
        data.extend_from_slice(&[9, 0, 0]);
        std::fs::write(&path, &data).unwrap();
        let err = Journal::open(dir.path(), false).err().expect("refused");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("--recover"), "{err}");
        let (_, map, loss) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(loss.map(|l| l.lost_bytes), Some(3));
        // The recovered journal was rewritten clean.
        let (_, map, loss) = Journal::open(dir.path(), false).unwrap();
        assert_eq!((map.len(), loss), (1, None));
    }
}
