//! Data-parallel training across processes: where this process stands among the ranks
//! of a run, and the few points where the training loop meets the others.
//!
//! The semantics keep a run reproducible whatever the number of ranks N:
//! - The global batch of a step is a pure function of (seed, step) ([`Batches::get`]);
//!   rank r takes rows `[r·B/N, (r+1)·B/N)` of it, so B must divide by N.
//! - Each rank runs forward and backward on its rows, then one allreduce over the flat
//!   gradient buffer ([`FlatParams::grads`]) averages the gradients: every rank holds
//!   the gradient of the whole batch's mean loss, up to float rounding, and takes the
//!   same AdamW step. The ranks' losses and their stop requests (Ctrl-C, SIGTERM,
//!   `--max-minutes`) are combined in a second, tiny allreduce, so every rank makes the
//!   same decisions.
//! - Rank 0 broadcasts its weights and optimizer state once at the start; it alone
//!   evaluates, logs and writes checkpoints, while the others wait at a barrier. At the
//!   end, every rank checks that its weights are still rank 0's, bit for bit.
//!
//! A checkpoint holds nothing that depends on N, so a run resumed with another N
//! continues the same run (up to float rounding). The environment is torchrun's
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`,
//! `TORCHELASTIC_USE_AGENT_STORE`); `sympathy train --nproc N` sets the same for the N
//! processes it starts (see [`super::launch`]).
//!
//! [`Batches::get`]: crate::data::Batches::get
//! [`FlatParams::grads`]: super::params::FlatParams::grads

use super::distributed::{ProcessGroup, Reduce, Rendezvous};
use crate::{Error, Result};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// One rank's place in a run, as the launcher (torchrun or `--nproc`) describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct RankEnv {
    pub rank: usize,
    pub world_size: usize,
    /// This rank's index on its machine (its GPU, on a GPU machine).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// The launcher already serves the store (torchrun's agent); every rank is a client.
    pub agent_store: bool,
    /// Bounds the rendezvous and every collective (`--dist-timeout`).
    pub timeout: Duration,
}

impl RankEnv {
    /// Reads torchrun's variables; `None` when `WORLD_SIZE` is unset (a single process).
    pub fn from_env(timeout: Duration) -> Result<Option<RankEnv>> {
        Self::from_vars(|name| std::env::var(name).ok(), timeout)
    }

    /// As [`Self::from_env`], with the variables from `var` (for tests).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        timeout: Duration,
    ) -> Result<Option<RankEnv>> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &str, text: Option<String>| -> Result<usize> {
            let text = text.ok_or_else(|| {
                Error::config(
                    name,
                    "is not set; set it with WORLD_SIZE (torchrun sets both)",
                )
            })?;
            text.trim()
                .parse()
                .map_err(|_| Error::config(name, format!("{text:?} is not a whole number")))
        };
        let world_size = number("WORLD_SIZE", Some(world))?;
        let rank = number("RANK", var("RANK"))?;
        if world_size == 0 || rank >= world_size {
            return Err(Error::config(
                "RANK",
                format!("{rank} is not below WORLD_SIZE {world_size}"),
            ));
        }
        let local_rank = var("LOCAL_RANK").map_or(Ok(rank), |v| number("LOCAL_RANK", Some(v)))?;
        let port = number("MASTER_PORT", var("MASTER_PORT"))?;
        let master_port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
            Error::config("MASTER_PORT", format!("{port} is not a TCP port (1-65535)"))
        })?;
        Ok(Some(RankEnv {
            rank,
            world_size,
            local_rank,
            master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            timeout,
        }))
    }

    /// Where Gloo listens for the other ranks: loopback when the master is on this
    /// machine's loopback (one machine), else the interface in `GLOO_SOCKET_IFNAME`, or
    /// the address this machine's hostname resolves to.
    fn rendezvous(&self) -> Rendezvous {
        let loopback = matches!(self.master_addr.as_str(), "localhost" | "::1")
            || self.master_addr.starts_with("127.");
        Rendezvous {
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            rank: self.rank,
            world_size: self.world_size,
            host_store: self.rank == 0 && !self.agent_store,
            bind_host: if loopback {
                "127.0.0.1".into()
            } else {
                hostname()
            },
            interface: std::env::var("GLOO_SOCKET_IFNAME")
                .ok()
                .filter(|s| !s.is_empty()),
            timeout: self.timeout,
        }
    }
}

/// The batch must split evenly: every rank's rows weigh the same in the mean.
pub fn check_divides(batch_size: i64, world_size: usize) -> Result<()> {
    if batch_size % world_size as i64 != 0 {
        return Err(Error::config(
            "--batch-size",
            format!("{batch_size} does not divide among {world_size} ranks; use a multiple of {world_size} (each rank takes an equal slice of the batch)"),
        ));
    }
    Ok(())
}

/// Another rank of the run, as it introduced itself through the store.
struct Peer {
    rank: usize,
    pid: u32,
    host: String,
}

/// This process's rank and its group; a single process is rank 0 of 1, without one.
pub struct Ranks {
    rank: usize,
    world_size: usize,
    group: Option<ProcessGroup>,
    peers: Vec<Peer>,
    /// Where this rank's tensors live (its GPU with NCCL).
    device: Device,
    /// Time spent in the gradient allreduce, summed over this session's steps.
    pub allreduce_ms: f64,
}

impl Ranks {
    /// A run of one process.
    pub fn single() -> Self {
        Ranks {
            rank: 0,
            world_size: 1,
            group: None,
            peers: vec![],
            device: Device::Cpu,
            allreduce_ms: 0.0,
        }
    }

    /// Joins the run `env` describes (Gloo on the CPU, NCCL on GPUs) and learns who the
    /// others are; a single process without `env`.
    pub fn join(env: Option<&RankEnv>, device: Device) -> Result<Self> {
        let Some(env) = env else {
            return Ok(Self::single());
        };
        let rv = env.rendezvous();
        let group = match device {
            Device::Cpu => ProcessGroup::gloo(&rv),
            _ => ProcessGroup::nccl(&rv),
        }
        .map_err(|e| joining_failed(env, e))?;
        let mut ranks = Ranks {
            rank: env.rank,
            world_size: env.world_size,
            group: Some(group),
            peers: vec![],
            device,
            allreduce_ms: 0.0,
        };
        ranks.introduce()?;
        Ok(ranks)
    }

    /// Every rank writes its process id and host to the store and reads the others', so
    /// that a survivor can later say which rank is gone.
    fn introduce(&mut self) -> Result<()> {
        let group = self.group.as_mut().expect("joined");
        group.store_set(
            &format!("peer/{}", self.rank),
            &format!("{} {}", std::process::id(), hostname()),
        )?;
        for rank in 0..self.world_size {
            let text = group.store_get(&format!("peer/{rank}"))?;
            let (pid, host) = text.split_once(' ').unwrap_or((&text, ""));
            self.peers.push(Peer {
                rank,
                pid: pid.parse().unwrap_or(0),
                host: host.to_string(),
            });
        }
        Ok(())
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// For the run's first log line: nothing alone, else `, split among 2 ranks (gloo)`.
    pub fn describe(&self) -> String {
        match &self.group {
            None => String::new(),
            Some(g) => format!(", split among {} ranks ({})", self.world_size, g.backend()),
        }
    }

    /// Rank 0: it evaluates, logs and writes the run folder.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// This rank's rows of a global batch `x`, `y` (B, T) -> (B/N, T).
    pub fn my_rows(&self, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let rows = x.size()[0] / self.world_size as i64;
        let start = self.rank as i64 * rows;
        (x.narrow(0, start, rows), y.narrow(0, start, rows))
    }

    /// Runs `work` on rank 0 first and on the others once it is done (building the
    /// token cache in a shared run folder, say), so that they never write at once.
    pub fn writer_first<T>(&mut self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.is_writer() {
            let value = work()?;
            self.wait_for_writer()?;
            Ok(value)
        } else {
            self.wait_for_writer()?;
            work()
        }
    }

    /// Overwrites `tensors` on every rank with rank 0's (weights and optimizer state at
    /// the start, so all ranks begin from the same state).
    pub fn copy_from_writer<'a>(
        &mut self,
        tensors: impl IntoIterator<Item = &'a Tensor>,
    ) -> Result<()> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        let mut failed = None;
        for t in tensors {
            if let Err(e) = group.broadcast(&mut t.shallow_clone(), 0) {
                failed = Some(e);
                break;
            }
        }
        failed.map_or(Ok(()), |e| {
            Err(self.explain("broadcasting rank 0's weights", e))
        })
    }

    /// The one flat allreduce of a step: `grads` (the flat gradient buffer, whose
    /// tensors every `.grad` is a view of) becomes the mean of every rank's.
    pub fn average_gradients(&mut self, grads: &Tensor) -> Result<()> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        let start = Instant::now();
        let result = group.allreduce(&mut grads.shallow_clone(), Reduce::Mean);
        self.allreduce_ms += start.elapsed().as_secs_f64() * 1e3;
        result.map_err(|e| self.explain("averaging the gradients", e))
    }

    /// Combines what every rank must agree on after a step: the mean of the ranks'
    /// losses, for each stop request whether any rank raised it, and rank 0's training
    /// time in `seconds` (a time-budgeted schedule reads one clock on every rank).
    pub fn agree(
        &mut self,
        loss: f64,
        stop_requests: [bool; 3],
        seconds: f64,
    ) -> Result<(f64, [bool; 3], f64)> {
        let Some(group) = self.group.as_mut() else {
            return Ok((loss, stop_requests, seconds));
        };
        let writers_seconds = if self.rank == 0 { seconds } else { 0.0 };
        let mut votes = [loss, 0.0, 0.0, 0.0, writers_seconds];
        for (v, s) in votes[1..].iter_mut().zip(stop_requests) {
            *v = f64::from(u8::from(s));
        }
        let mut t = Tensor::from_slice(&votes).to(self.device);
        let result = group.allreduce(&mut t, Reduce::Sum);
        result.map_err(|e| self.explain("combining the losses", e))?;
        let sums = Vec::<f64>::try_from(&t.to_kind(Kind::Double).to(Device::Cpu))?;
        let any = |i: usize| sums[i] > 0.0;
        Ok((
            sums[0] / self.world_size as f64,
            [any(1), any(2), any(3)],
            sums[4],
        ))
    }

    /// Checks that every rank holds rank 0's `values` bit for bit: the ranks take the
    /// same steps on the same averaged gradients, so any difference is a bug. One
    /// broadcast, at the end of a session.
    pub fn check_same_as_writer(&mut self, values: &Tensor) -> Result<()> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        let mut writers = values.copy();
        let result = group.broadcast(&mut writers, 0);
        result.map_err(|e| self.explain("comparing the weights with rank 0's", e))?;
        if !writers.equal(values) {
            let diff = (&writers - values).abs().max().double_value(&[]);
            return Err(Error::Distributed(format!(
                "rank {}'s weights differ from rank 0's by up to {diff:.3e}; the ranks drifted apart, please report this",
                self.rank
            )));
        }
        Ok(())
    }

    /// Rank 0's `value` on every rank; the others wait here until rank 0 sends it
    /// (what an evaluation, which only rank 0 runs, decided).
    pub fn writers_value(&mut self, value: f64) -> Result<f64> {
        let Some(group) = self.group.as_mut() else {
            return Ok(value);
        };
        let mut t = Tensor::from_slice(&[value]).to(self.device);
        let result = group.broadcast(&mut t, 0);
        result.map_err(|e| self.explain("receiving rank 0's evaluation", e))?;
        Ok(t.to_kind(Kind::Double).double_value(&[0]))
    }

    /// Everyone waits here until rank 0 has evaluated or written a checkpoint.
    pub fn wait_for_writer(&mut self) -> Result<()> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        let result = group.barrier();
        result.map_err(|e| self.explain("waiting for rank 0", e))
    }

    /// A failed collective, with the rank that is gone when this machine can tell: a
    /// peer on this host whose process has ended (c10d only reports the closed socket).
    fn explain(&self, what: &str, err: Error) -> Error {
        let cause = match err {
            Error::Distributed(m) => m,
            other => other.to_string(),
        };
        // The socket closes while the process is still being torn down: look a few times.
        for _ in 0..20 {
            let gone: Vec<String> = self
                .peers
                .iter()
                .filter(|p| p.rank != self.rank && p.host == hostname() && process_gone(p.pid))
                .map(|p| format!("rank {} (process {})", p.rank, p.pid))
                .collect();
            if !gone.is_empty() {
                return Error::Distributed(format!(
                    "{} is gone, so this rank ({}) stops; {what} failed: {cause}",
                    gone.join(" and "),
                    self.rank
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Error::Distributed(format!(
            "rank {}: {what} failed: {cause} (a rank on another host died or hung; see its log)",
            self.rank
        ))
    }
}

/// Why joining failed, with the flag or variable to fix.
fn joining_failed(env: &RankEnv, err: Error) -> Error {
    let cause = match &err {
        Error::Distributed(m) => m.clone(),
        other => other.to_string(),
    };
    let at = format!("{}:{}", env.master_addr, env.master_port);
    let hint = if cause.contains("already in use") || cause.contains("cannot be listened on") {
        return err;
    } else if cause.contains("timed out")
        || cause.contains("Timed out")
        || cause.contains("timeout")
    {
        format!("no store answered at {at}, or not every one of the {} ranks joined within {} s; check MASTER_ADDR/MASTER_PORT and that every rank was started", env.world_size, env.timeout.as_secs())
    } else {
        format!(
            "rank {} could not join the {} ranks at {at}",
            env.rank, env.world_size
        )
    };
    Error::Distributed(format!("{hint} (c10d: {cause})"))
}

/// Whether process `pid` on this machine has ended (gone, or a zombie not yet reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state is the field after the command name, which sits in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// This machine's hostname (empty if it cannot be read).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> Result<Option<RankEnv>> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RankEnv::from_vars(|k| vars.get(k).cloned(), Duration::from_secs(9))
    }

    #[test]
    fn torchrun_variables_become_a_rank() {
        assert_eq!(env_of(&[]).unwrap(), None);
        let env = env_of(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (env.rank, env.world_size, env.local_rank, env.master_port),
            (1, 2, 1, 29500)
        );
        assert!(env.agent_store);
        let rv = env.rendezvous();
        assert!(!rv.host_store, "the agent hosts the store");
        assert_eq!(rv.bind_host, "127.0.0.1");
    }

    #[test]
    fn bad_variables_name_themselves() {
        let err = |pairs: &[(&str, &str)]| env_of(pairs).unwrap_err().to_string();
        assert!(err(&[("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).starts_with("RANK: is not set"));
        assert!(
            err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")])
                .starts_with("RANK: 2 is not below")
        );
        assert!(err(&[("WORLD_SIZE", "x"), ("RANK", "0")]).starts_with("WORLD_SIZE: \"x\""));
        assert!(
            err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")])
                .starts_with("MASTER_PORT: 70000")
        );
    }

    #[test]
    fn the_batch_must_divide_among_the_ranks() {
        assert!(check_divides(8, 2).is_ok());
        let err = check_divides(9, 2).unwrap_err().to_string();
        assert!(
            err.starts_with("--batch-size: 9 does not divide among 2 ranks"),
            "{err}"
        );
    }

    #[test]
    fn a_rank_takes_its_slice_of_the_batch() {
        let x = Tensor::arange(8, (Kind::Int64, Device::Cpu)).view([4, 2]);
        let mut ranks = Ranks::single();
        ranks.world_size = 2;
        ranks.rank = 1;
        let (mine, _) = ranks.my_rows(&x, &x);
        assert_eq!(
            Vec::<i64>::try_from(mine.flatten(0, -1)).unwrap(),
            [4, 5, 6, 7]
        );
    }

    #[test]
    fn an_ended_process_is_gone_and_a_live_one_is_not() {
        assert!(!process_gone(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(300));
        assert!(process_gone(pid), "a zombie counts as gone");
        child.wait().unwrap();
        assert!(process_gone(pid));
    }
}
