//! On-disk spool: batches InfluxDB could not take yet, kept in order until they are written.
//!
//! The spool is a directory of segments, one per batch, named `<sequence>-<lines>.lp` and holding
//! the batch's line protocol exactly as it is sent. A segment is written once (to a `.tmp` file,
//! fsync'd, then renamed into place and the directory fsync'd), so after a crash a segment is
//! either complete or absent; it is deleted once InfluxDB accepted it. Replay order is sequence
//! order. A batch that failed on its first try goes in front of everything spooled after it
//! (lower sequence number), so the order InfluxDB sees is the order points were received.
//!
//! Rewriting a point InfluxDB already stored is harmless (same series and timestamp: the point
//! is overwritten with the same values), so a crash between "written" and "deleted" cannot
//! produce a duplicate in the database.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Sequence number of the first segment of an empty spool: leaves room to put segments in front.
const FIRST_SEQ: u64 = 1 << 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    seq: u64,
    lines: usize,
    bytes: u64,
}

/// A batch of line protocol: the text and how many lines (points) it holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub data: Vec<u8>,
    pub lines: usize,
    /// While it is in memory: the journal records it holds publishes of, and how many
    /// (`durable.rs`). Not spooled: once spooled, the spool is what keeps them.
    pub ids: Vec<(u64, usize)>,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    bytes: u64,
    lines: usize,
    max_bytes: u64,
}

/// Why a batch could not be spooled.
#[derive(Debug)]
pub enum SpoolError {
    /// Adding the batch would pass `max_bytes` (nothing was written).
    Full,
    Io(std::io::Error),
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::Full => write!(f, "spool full"),
            SpoolError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn segment_name(s: &Segment) -> String {
    format!("{:020}-{}.lp", s.seq, s.lines)
}

fn parse_name(name: &str) -> Option<(u64, usize)> {
    let stem = name.strip_suffix(".lp")?;
    let (seq, lines) = stem.split_once('-')?;
    Some((seq.parse().ok()?, lines.parse().ok()?))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Open (creating) the spool directory and index the segments a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // An interrupted write: the batch was never acknowledged as spooled.
                log::warn!(
                    "sink spool: removing incomplete segment {}",
                    entry.path().display()
                );
                let _ = fs::remove_file(entry.path());
                continue;
            }
            match parse_name(&name) {
                Some((seq, lines)) => segments.push(Segment {
                    seq,
                    lines,
                    bytes: entry.metadata()?.len(),
                }),
                None => log::warn!(
                    "sink spool: ignoring unexpected file {}",
                    entry.path().display()
                ),
            }
        }
        segments.sort_by_key(|s| s.seq);
        let bytes = segments.iter().map(|s| s.bytes).sum();
        let lines = segments.iter().map(|s| s.lines).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            segments: segments.into(),
            bytes,
            lines,
            max_bytes,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Points held.
    pub fn lines(&self) -> usize {
        self.lines
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Whether a batch of `len` bytes fits under the size limit.
    pub fn fits(&self, len: usize) -> bool {
        self.bytes + len as u64 <= self.max_bytes
    }

    fn write_segment(&self, seg: &Segment, data: &[u8]) -> std::io::Result<()> {
        let path = self.dir.join(segment_name(seg));
        let tmp = self.dir.join(format!("{}.tmp", segment_name(seg)));
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    fn insert(&mut self, batch: &Batch, front: bool, force: bool) -> Result<(), SpoolError> {
        if !force && !self.fits(batch.data.len()) {
            return Err(SpoolError::Full);
        }
        let seq = match (front, self.segments.front(), self.segments.back()) {
            (_, None, _) => FIRST_SEQ,
            (true, Some(first), _) => first.seq - 1,
            (false, _, Some(last)) => last.seq + 1,
            (false, _, None) => FIRST_SEQ,
        };
        let seg = Segment {
            seq,
            lines: batch.lines,
            bytes: batch.data.len() as u64,
        };
        self.write_segment(&seg, &batch.data)
            .map_err(SpoolError::Io)?;
        if front {
            self.segments.push_front(seg);
        } else {
            self.segments.push_back(seg);
        }
        self.bytes += seg.bytes;
        self.lines += seg.lines;
        Ok(())
    }

    /// Append a batch (newest). `force` ignores the size limit (used at shutdown).
    pub fn push_back(&mut self, batch: &Batch, force: bool) -> Result<(), SpoolError> {
        self.insert(batch, false, force)
    }

    /// Put a batch in front of everything spooled (it is older than all of it). Never refused for
    /// size: the batch was already accepted into the pipeline.
    pub fn push_front(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        self.insert(batch, true, true)
    }

    /// The oldest batch and its sequence number (to `remove` or `replace` it later).
    pub fn front(&self) -> Option<(u64, std::io::Result<Batch>)> {
        let seg = self.segments.front()?;
        Some((
            seg.seq,
            fs::read(self.dir.join(segment_name(seg))).map(|data| Batch {
                data,
                lines: seg.lines,
                ids: Vec::new(),
            }),
        ))
    }

    /// Remove a batch (written, refused or dropped); returns its line count.
    pub fn remove(&mut self, seq: u64) -> usize {
        let Some(pos) = self.segments.iter().position(|s| s.seq == seq) else {
            return 0;
        };
        let Some(seg) = self.segments.remove(pos) else {
            return 0;
        };
        let path = self.dir.join(segment_name(&seg));
        if let Err(e) = fs::remove_file(&path) {
            log::error!("sink spool: cannot remove {}: {e}", path.display());
        }
        self.bytes -= seg.bytes;
        self.lines -= seg.lines;
        seg.lines
    }

    /// The batch `drop_oldest` would delete.
    pub fn drop_oldest_candidate(&self, keep: Option<u64>) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| Some(s.seq) != keep)
            .map(|s| s.seq)
    }

    /// Delete the oldest batch other than `keep` (the one being written right now); returns its
    /// line count, or None when there is nothing else to delete.
    pub fn drop_oldest(&mut self, keep: Option<u64>) -> Option<usize> {
        let seq = self.segments.iter().find(|s| Some(s.seq) != keep)?.seq;
        Some(self.remove(seq))
    }

    /// Replace a batch with what is left of it (part of it was written).
    pub fn replace(&mut self, seq: u64, rest: &Batch) -> Result<(), SpoolError> {
        let Some(pos) = self.segments.iter().position(|s| s.seq == seq) else {
            return Ok(());
        };
        let old = self.segments[pos];
        let seg = Segment {
            seq,
            lines: rest.lines,
            bytes: rest.data.len() as u64,
        };
        self.write_segment(&seg, &rest.data)
            .map_err(SpoolError::Io)?;
        if segment_name(&seg) != segment_name(&old) {
            let _ = fs::remove_file(self.dir.join(segment_name(&old)));
        }
        self.bytes = self.bytes - old.bytes + seg.bytes;
        self.lines = self.lines - old.lines + seg.lines;
        self.segments[pos] = seg;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(s: &str) -> Batch {
        Batch {
            data: s.as_bytes().to_vec(),
            lines: s.lines().count(),
            ids: Vec::new(),
        }
    }

    #[test]
    fn batches_come_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push_back(&batch("b 1\n"), false).unwrap();
        s.push_back(&batch("c 1\nc 2\n"), false).unwrap();
        s.push_front(&batch("a 1\n")).unwrap();
        assert_eq!(s.lines(), 4);
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((s.segments(), s.lines(), s.bytes()), (3, 4, 16));
        let mut seen = Vec::new();
        while let Some((seq, b)) = s.front() {
            seen.push(String::from_utf8(b.unwrap().data).unwrap());
            s.remove(seq);
        }
        assert_eq!(seen, vec!["a 1\n", "b 1\n", "c 1\nc 2\n"]);
        assert!(s.is_empty() && s.bytes() == 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn full_spool_refuses_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 8).unwrap();
        s.push_back(&batch("aaaaa\n"), false).unwrap();
        assert!(matches!(
            s.push_back(&batch("bbbbb\n"), false),
            Err(SpoolError::Full)
        ));
        s.push_back(&batch("bbbbb\n"), true).unwrap();
        assert_eq!(s.segments(), 2);
    }

    #[test]
    fn drop_oldest_skips_the_batch_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push_back(&batch("a 1\n"), false).unwrap();
        s.push_back(&batch("b 1\nb 2\n"), false).unwrap();
        let first = s.front().unwrap().0;
        assert_eq!(s.drop_oldest(Some(first)), Some(2));
        assert_eq!(s.drop_oldest(Some(first)), None);
        assert_eq!(s.lines(), 1);
    }

    #[test]
    fn replace_keeps_position_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push_back(&batch("a 1\na 2\n"), false).unwrap();
        s.push_back(&batch("b 1\n"), false).unwrap();
        let seq = s.front().unwrap().0;
        s.replace(seq, &batch("a 2\n")).unwrap();
        drop(s);
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.lines(), 2);
        assert_eq!(s.front().unwrap().1.unwrap().data, b"a 2\n");
    }

    #[test]
    fn incomplete_segments_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("00000000000000000001-1.lp.tmp"), "x 1\n").unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(s.is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
