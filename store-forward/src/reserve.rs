//! Room on the disk kept for the day it fills up.
//!
//! redb writes copy-on-write: even a commit that only deletes (acknowledgements, expiry) needs
//! new pages before it frees old ones. On a full disk no commit gets them, so nothing could
//! ever free space. The store therefore keeps a file of `reserve_bytes` beside the database,
//! and gives it up when the disk is full, right before a commit that frees space; once a
//! commit succeeded and the file can be written again, the disk has room and the store takes
//! writes again. The file holds incompressible bytes, so that it reserves real blocks on
//! compressing flash filesystems (jffs2, ubifs) too.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The reserve file of a database.
#[derive(Debug)]
pub(crate) struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    pub(crate) fn new(db: &Path, bytes: u64) -> Self {
        let mut path = db.as_os_str().to_owned();
        path.push("-reserve");
        Self {
            path: PathBuf::from(path),
            bytes,
        }
    }

    /// Whether the reserve is on the disk, whole (or none is configured).
    pub(crate) fn present(&self) -> bool {
        self.bytes == 0 || std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.bytes)
    }

    /// Writes the reserve, synced; on failure (a full disk) nothing of it stays.
    pub(crate) fn make(&self) -> std::io::Result<()> {
        if self.present() {
            return Ok(());
        }
        let made = (|| {
            let mut f = std::fs::File::create(&self.path)?;
            let mut block = vec![0u8; 64 * 1024];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut left = self.bytes;
            while left > 0 {
                // xorshift64: bytes no filesystem can compress away.
                for chunk in block.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let b = x.to_le_bytes();
                    chunk.copy_from_slice(b.get(..chunk.len()).unwrap_or(&b));
                }
                let n = usize::try_from(left).map_or(block.len(), |l| l.min(block.len()));
                f.write_all(block.get(..n).unwrap_or(&block))?;
                left -= n as u64;
            }
            f.sync_all()
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        made
    }

    /// Whether the filesystem has room for the reserve now (and half as much again), by
    /// `statvfs`: cheap enough to ask every second while the disk is full. True when it
    /// cannot tell.
    pub(crate) fn fits(&self) -> bool {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match rustix::fs::statvfs(dir) {
            Ok(s) => {
                let free = s.f_bavail.saturating_mul(s.f_frsize);
                free >= self.bytes.saturating_add(self.bytes / 2)
            }
            Err(_) => true,
        }
    }

    /// Gives the room back to the disk; true if there was a reserve.
    pub(crate) fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_whole_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(&dir.path().join("ferry.redb"), 100_000);
        assert!(!r.present());
        r.make().unwrap();
        assert!(r.present());
        let path = dir.path().join("ferry.redb-reserve");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100_000);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.windows(8).take(1000).all(|w| w != [0; 8]));
        assert!(r.release());
        assert!(!r.release());
        assert!(!r.present());
        assert!(Reserve::new(&path, 0).present(), "no reserve configured");
    }
}
