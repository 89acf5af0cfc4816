//! A small journal of message ids already shown to the user, so that a message is never shown
//! twice even when the program dies between showing it and acknowledging it to the node.
//!
//! One id (hex) per line, appended and synced right after the message was written out (so a
//! message that could not be written is never taken for shown); compacted to the newest half
//! when it grows past its cap. The file is private (mode 0600): it says whom you heard from
//! when.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_proto::types::MessageId;

use crate::ClientError;

/// Ids kept at most before compaction.
const CAP: usize = 20_000;

/// The journal.
#[derive(Debug)]
pub struct SeenLog {
    path: PathBuf,
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
    file: std::fs::File,
}

fn parse(line: &str) -> Option<MessageId> {
    let b = data_encoding::HEXLOWER_PERMISSIVE
        .decode(line.trim().as_bytes())
        .ok()?;
    MessageId::from_field(&b, "seen").ok()
}

impl SeenLog {
    /// Opens (creating) the journal at `path`. Unreadable lines are skipped.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut set = HashSet::new();
        let mut order = VecDeque::new();
        for id in text.lines().filter_map(parse) {
            if set.insert(id) {
                order.push_back(id);
            }
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(path).map_err(io)?;
        #[cfg(unix)]
        {
            // A journal made by an earlier version was world-readable.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        // A last line without its newline was cut short by a crash while it was recorded (the
        // message was shown; it is recorded again when it comes back). End it, or the next id
        // recorded would be glued to it and both would be unreadable after the next restart.
        if !text.is_empty() && !text.ends_with('\n') {
            file.write_all(b"\n").map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            set,
            order,
            file,
        })
    }

    /// True if the id was shown before.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(id)
    }

    /// Records an id durably. Call once the message was written out.
    pub fn record(&mut self, id: MessageId) -> Result<(), ClientError> {
        if !self.set.insert(id) {
            return Ok(());
        }
        self.order.push_back(id);
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        // One write per line (`writeln!` on a `File` writes the id and the newline separately).
        self.file
            .write_all(format!("{id}\n").as_bytes())
            .map_err(io)?;
        self.file.sync_data().map_err(io)?;
        if self.order.len() > CAP {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<(), ClientError> {
        while self.order.len() > CAP / 2 {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut text = String::with_capacity(self.order.len() * 33);
        for id in &self.order {
            text.push_str(&id.to_string());
            text.push('\n');
        }
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash in the middle of recording an id leaves a line without its newline: the ids
    /// recorded after the restart are still found.
    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen");
        let first = MessageId::from_array([1; 16]);
        let next = MessageId::from_array([2; 16]);
        std::fs::write(&path, format!("{first}\n{}", &first.to_string()[..10])).unwrap();
        {
            let mut s = SeenLog::open(&path).unwrap();
            assert!(s.contains(&first));
            s.record(next).unwrap();
        }
        let s = SeenLog::open(&path).unwrap();
        assert!(s.contains(&first) && s.contains(&next));
    }

    #[test]
    fn survives_reopen_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen");
        let id = |n: u32| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&n.to_be_bytes());
            MessageId::from_array(b)
        };
        {
            let mut s = SeenLog::open(&path).unwrap();
            s.record(id(1)).unwrap();
            s.record(id(1)).unwrap();
        }
        let mut s = SeenLog::open(&path).unwrap();
        assert!(s.contains(&id(1)));
        assert!(!s.contains(&id(2)));
        for n in 2..(CAP as u32 + 10) {
            s.record(id(n)).unwrap();
        }
        assert!(!s.contains(&id(1)), "oldest ids are dropped by compaction");
        assert!(s.contains(&id(CAP as u32 + 5)));
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= CAP / 2 + 20, "{lines}");
        std::fs::write(&path, "zz\nnot hex\n").unwrap();
        assert!(!SeenLog::open(&path).unwrap().contains(&id(5)));
    }
}
