//! One writer per run folder. `train` holds an exclusive `flock` on `RUN_DIR/train.lock`
//! for as long as it runs; a second `train` into the same folder fails at once with the
//! process id of the first, instead of interleaving its metrics and tearing its
//! checkpoints.
//!
//! Why `flock` and not "create the file, delete it at exit": the kernel releases the
//! lock when the process ends, however it ends (exit, panic, `kill -9`, power loss, since
//! locks do not survive a reboot). A lock file left behind is just a file; it never
//! blocks the next run. Readers (`generate`, `eval`, `inspect`, `plot`) take no lock.

use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = "train.lock";

/// Held while a process writes a run folder; dropping it (or the process ending)
/// releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the run folder `dir` (which must exist) for this process, or says which
    /// process has it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(&path, err));
            }
            let holder = holder(&mut file).unwrap_or_else(|| "another process".into());
            return Err(Error::config(
                "--out",
                format!(
                    "{} is being written by {holder} (it holds {}); wait for it to finish or stop it, or choose another --out",
                    dir.display(),
                    path.display()
                ),
            ));
        }
        // Ours now: record who holds it, for the message above.
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            f.sync_all()
        };
        write(&mut file).map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `process 1234`, from the lock file's contents, if it holds a process id.
fn holder(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    Some(format!("process {pid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description, so a second open in the same
        // process conflicts just as another process's would.
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        let me = format!("is being written by process {}", std::process::id());
        assert!(err.starts_with("--out: ") && err.contains(&me), "{err}");
        drop(first);
        let again = RunLock::acquire(dir.path()).unwrap();
        assert!(again.path().exists(), "the file stays; only the lock goes");
    }
}
