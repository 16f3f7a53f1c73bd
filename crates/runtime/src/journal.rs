//! The attempts journal: which attempts were executing when the process died, so that
//! an attempt that kills the process every time it runs (a poisoned attempt) cannot
//! crash-loop the server.
//!
//! While the process runs, every attempt start and finish appends one line to
//! `attempts.journal` in the data dir with a plain `write` (no fsync: the file is about
//! process crashes, and a crashed process's writes are in the page cache already).
//! At the next start, [`AttemptJournal::open`] replays it: the attempts started and not
//! finished were running at the crash; each of them gets one more crash in
//! `attempt-crashes.json` (written atomically, fsynced), the journal starts over, and
//! workers refuse to run an attempt whose count reached the limit (they fail it with
//! `attempt_crashed`). A count is dropped when its attempt finishes, or when recovery
//! finds the attempt no longer in flight.
//!
//! Line format: `+<attempt key>;` (started) and `-<attempt key>;` (finished). A line
//! without its `;` was torn by the crash (or by a full disk) and is ignored.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The journal is rewritten with only the running attempts once it grows past this.
const COMPACT_BYTES: u64 = 4 << 20;

const JOURNAL: &str = "attempts.journal";
const COUNTS: &str = "attempt-crashes.json";

#[derive(Debug)]
pub struct AttemptJournal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Crashes each attempt was running at (consecutive: reset when it finishes).
    crashes: Mutex<BTreeMap<String, u32>>,
    /// A write failed (the disk is full); the next line starts on a fresh line so a torn
    /// one cannot merge with it.
    torn: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    file: File,
    bytes: u64,
    running: HashSet<String>,
}

impl AttemptJournal {
    /// Replays the journal of the previous process in `dir`, records one more crash for
    /// every attempt it left running, and starts a fresh journal.
    pub fn open(dir: &Path) -> io::Result<AttemptJournal> {
        let mut crashes = read_counts(&dir.join(COUNTS));
        let (started, finished) = match std::fs::read(dir.join(JOURNAL)) {
            Ok(bytes) => replay(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(e),
        };
        let before = crashes.clone();
        crashes.retain(|k, _| !finished.contains(k));
        for k in &started {
            *crashes.entry(k.clone()).or_insert(0) += 1;
        }
        if !started.is_empty() {
            tracing::warn!(attempts = started.len(), "attempts were running when the previous process died");
        }
        if crashes != before {
            write_counts(dir, &crashes)?;
        }
        drop(private_file(&dir.join(JOURNAL))?);
        let file = OpenOptions::new().append(true).open(dir.join(JOURNAL))?;
        Ok(AttemptJournal {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                bytes: 0,
                running: HashSet::new(),
            }),
            crashes: Mutex::new(crashes),
            torn: AtomicBool::new(false),
        })
    }

    /// How many consecutive crashes the attempt was running at.
    pub fn crashes(&self, key: &str) -> u32 {
        self.crashes.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }

    /// Records that the attempt starts executing; the returned guard records its end
    /// when dropped (finished, failed or aborted: anything but a process crash).
    pub fn enter(&self, key: String) -> Entered<'_> {
        self.append('+', &key, true);
        Entered { journal: self, key }
    }

    /// Drops the counts of attempts that are no longer in flight (they finished before
    /// the crash was noticed, or their run moved on); `in_flight` is every attempt key
    /// recovery found in flight.
    pub fn retain(&self, in_flight: &HashSet<String>) {
        let mut c = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.len();
        c.retain(|k, _| in_flight.contains(k));
        if c.len() != n
            && let Err(e) = write_counts(&self.dir, &c)
        {
            tracing::warn!(error = %e, "cannot rewrite the attempt crash counts");
        }
    }

    /// A graceful shutdown aborted the attempts still running: none of them crashed
    /// the process, so the journal starts over empty (the process exits without
    /// dropping the aborted attempts' guards).
    pub fn close(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.running.clear();
        match g.file.set_len(0) {
            Ok(()) => g.bytes = 0,
            Err(e) => tracing::warn!(error = %e, "cannot clear the attempts journal at shutdown"),
        }
    }

    fn append(&self, sign: char, key: &str, start: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if start {
            g.running.insert(key.to_string());
        } else {
            g.running.remove(key);
        }
        let lead = if self.torn.load(Ordering::Relaxed) { "\n" } else { "" };
        let line = format!("{lead}{sign}{key};\n");
        match g.file.write_all(line.as_bytes()) {
            Ok(()) => {
                self.torn.store(false, Ordering::Relaxed);
                g.bytes += line.len() as u64;
            }
            Err(e) => {
                // A full disk: the attempt still runs; only its crash protection is
                // weaker until space is back. Logged once per episode.
                if !self.torn.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot append to the attempts journal");
                }
            }
        }
        if g.bytes > COMPACT_BYTES
            && let Err(e) = self.compact(&mut g)
        {
            tracing::warn!(error = %e, "cannot compact the attempts journal");
        }
        if !start {
            let mut c = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
            if c.remove(key).is_some()
                && let Err(e) = write_counts(&self.dir, &c)
            {
                tracing::warn!(error = %e, "cannot rewrite the attempt crash counts");
            }
        }
    }

    /// Rewrites the journal with only the attempts running now (rename is atomic, so a
    /// crash leaves either the old or the new journal).
    fn compact(&self, g: &mut Inner) -> io::Result<()> {
        let tmp = self.dir.join(format!("{JOURNAL}.tmp"));
        let body: String = g.running.iter().map(|k| format!("+{k};\n")).collect();
        private_file(&tmp)?.write_all(body.as_bytes())?;
        std::fs::rename(&tmp, self.dir.join(JOURNAL))?;
        g.file = OpenOptions::new().append(true).open(self.dir.join(JOURNAL))?;
        g.bytes = body.len() as u64;
        Ok(())
    }
}

/// An attempt executing; dropping it records that it is over.
pub struct Entered<'a> {
    journal: &'a AttemptJournal,
    key: String,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.journal.append('-', &self.key, false);
    }
}

/// Attempts started and not finished, and attempts finished, in a journal's text.
fn replay(text: &str) -> (HashSet<String>, HashSet<String>) {
    let (mut running, mut finished) = (HashSet::new(), HashSet::new());
    for line in text.lines() {
        let Some(body) = line.strip_suffix(';') else { continue };
        if let Some(k) = body.strip_prefix('+') {
            running.insert(k.to_string());
        } else if let Some(k) = body.strip_prefix('-') {
            running.remove(k);
            finished.insert(k.to_string());
        }
    }
    (running, finished)
}

fn read_counts(path: &Path) -> BTreeMap<String, u32> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // Written atomically, so this is an operator's edit gone wrong: start over
            // rather than refuse to start.
            tracing::warn!(path = %path.display(), error = %e, "unreadable attempt crash counts; starting from none");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

/// Creates (or empties) a file only the owner may read: like the database, the journal
/// and the counts live in the 0700 data dir and are 0600 themselves.
fn private_file(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

/// Replaces the counts file atomically and durably (temp file, fsync, rename, fsync of
/// the directory): a count must survive the next crash, power loss included.
fn write_counts(dir: &Path, counts: &BTreeMap<String, u32>) -> io::Result<()> {
    let tmp = dir.join(format!("{COUNTS}.tmp"));
    let body = serde_json::to_vec(counts).map_err(io::Error::other)?;
    let mut f = private_file(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(COUNTS))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replay_ignores_torn_lines() {
        let (running, finished) = replay("+r:1:0:1;\n+r:2:0:1;\n-r:1:0:1;\n+r:3:0:1\n+r:4:0:12\n+r:4:0:1;\n");
        assert_eq!(running, HashSet::from(["r:2:0:1".to_string(), "r:4:0:1".to_string()]));
        assert_eq!(finished, HashSet::from(["r:1:0:1".to_string()]));
    }

    #[test]
    fn counts_grow_per_crash_and_reset_when_the_attempt_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let j = AttemptJournal::open(dir.path()).unwrap();
        let poisoned = j.enter("p:1:0:1".into());
        std::mem::forget(poisoned); // the process "dies" with the attempt running
        drop(j.enter("ok:1:0:1".into()));
        drop(j);
        let j = AttemptJournal::open(dir.path()).unwrap();
        assert_eq!((j.crashes("p:1:0:1"), j.crashes("ok:1:0:1")), (1, 0));
        std::mem::forget(j.enter("p:1:0:1".into()));
        drop(j);
        let j = AttemptJournal::open(dir.path()).unwrap();
        assert_eq!(j.crashes("p:1:0:1"), 2);
        // Recovery did not re-dispatch it (its run moved on): the count goes.
        drop(j);
        let j = AttemptJournal::open(dir.path()).unwrap();
        assert_eq!(j.crashes("p:1:0:1"), 2, "a crash without the attempt running keeps its count");
        j.retain(&HashSet::new());
        assert_eq!(j.crashes("p:1:0:1"), 0);
        drop(j);
        let j = AttemptJournal::open(dir.path()).unwrap();
        assert_eq!(j.crashes("p:1:0:1"), 0);
        // An attempt that finishes drops its count at once.
        std::mem::forget(j.enter("q:1:0:1".into()));
        drop(j);
        let j = AttemptJournal::open(dir.path()).unwrap();
        assert_eq!(j.crashes("q:1:0:1"), 1);
        drop(j.enter("q:1:0:1".into()));
        assert_eq!(j.crashes("q:1:0:1"), 0);
        // A graceful shutdown with an attempt running counts no crash.
        std::mem::forget(j.enter("s:1:0:1".into()));
        j.close();
        drop(j);
        let j = AttemptJournal::open(dir.path()).unwrap();
        assert_eq!(j.crashes("s:1:0:1"), 0);
        std::mem::forget(j.enter("s:1:0:1".into()));
        drop(j);
        assert_eq!(
            AttemptJournal::open(dir.path()).unwrap().crashes("s:1:0:1"),
            1,
            "appends after the clearing still count"
        );
    }
}
