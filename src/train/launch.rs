//! `sympathy train --nproc N`: starts N ranks of this same program on this machine, as
//! `torchrun --standalone --nproc-per-node N` would, and waits for them.
//!
//! Each child gets torchrun's variables ([`super::ranks::RankEnv`]) with
//! `MASTER_ADDR=127.0.0.1` and a free port; rank 0 serves the store. Unless
//! `OMP_NUM_THREADS` is set, each rank gets an equal share of the cores as its
//! intra-op threads (at least one). Ctrl-C reaches every rank from the terminal and
//! they stop together; the launcher itself only waits. When a rank fails, the others
//! notice within a second or two (c10d reports the closed connection) and exit; any
//! still running after [`GRACE`] are killed, so a launch never hangs.

use crate::{Error, Result};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long the other ranks get to exit on their own after one failed.
pub const GRACE: Duration = Duration::from_secs(30);

/// Starts `nproc` ranks running this program with `args` (the command line without
/// `--nproc`), waits for all of them, and returns the exit code to leave with: rank 0's
/// when all ended alike, else 1 after saying which rank failed first and how.
pub fn launch(nproc: usize, args: &[OsString]) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("the sympathy binary", e))?;
    let port = free_port()?;
    let threads = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / nproc).max(1).to_string()
    });
    eprintln!("starting {nproc} ranks on 127.0.0.1:{port} ({threads} threads each)");
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let child = Command::new(&exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &threads)
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .spawn()
            .map_err(|e| Error::io(&exe, e))?;
        children.push(child);
    }
    // The terminal's Ctrl-C goes to every rank, which stop together; the launcher stays
    // to report how they ended.
    signal_hook::flag::register(signal_hook::consts::SIGINT, Default::default())
        .map_err(|e| Error::Distributed(format!("cannot handle SIGINT: {e}")))?;
    let statuses = wait_all(&mut children);
    Ok(outcome(&statuses, &children))
}

/// Waits for every child; once one has failed, kills those still running after `GRACE`.
fn wait_all(children: &mut [Child]) -> Vec<ExitStatus> {
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut first_failure: Option<Instant> = None;
    while statuses.iter().any(Option::is_none) {
        for (child, status) in children.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait().ok().flatten();
                if status.is_some_and(|s| !s.success()) && first_failure.is_none() {
                    first_failure = Some(Instant::now());
                }
            }
        }
        if first_failure.is_some_and(|t| t.elapsed() > GRACE) {
            for (child, status) in children.iter_mut().zip(&statuses) {
                if status.is_none() {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    statuses
        .into_iter()
        .map(|s| s.expect("all waited for"))
        .collect()
}

/// The exit code of the launch, and a line on stderr for a rank that failed.
fn outcome(statuses: &[ExitStatus], children: &[Child]) -> i32 {
    let code = |s: &ExitStatus| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
    let rank0 = code(&statuses[0]);
    if statuses.iter().all(|s| code(s) == rank0) {
        return rank0;
    }
    // The rank a signal ended is the cause; the others failed because it was gone.
    let failed = statuses
        .iter()
        .position(|s| s.signal().is_some())
        .or_else(|| statuses.iter().position(|s| !s.success()))
        .unwrap_or(0);
    let how = match statuses[failed].signal() {
        Some(sig) => format!("was killed by signal {sig}"),
        None => format!("exited with code {}", code(&statuses[failed])),
    };
    eprintln!(
        "error: rank {failed} (process {}) {how}; the other ranks stopped (rank 0 exit code {rank0}); the last checkpoint in the run folder resumes with --resume",
        children[failed].id()
    );
    1
}

/// A TCP port that nothing on 127.0.0.1 listens on at this moment.
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Distributed(format!("no free port on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Distributed(format!("no free port on 127.0.0.1: {e}")))?
        .port();
    Ok(port)
}
