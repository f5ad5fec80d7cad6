//! A process group of libtorch's c10d, the engine under PyTorch's
//! `DistributedDataParallel`: ranks meet through a TCP store, then reduce and broadcast
//! tensors among themselves, with Gloo between CPUs or NCCL between GPUs.
//!
//! tch binds none of c10d, so this is a safe wrapper over a small C interface
//! (`csrc/c10d_ops.h`): Gloo's half (`csrc/c10d.cpp`) is linked into the binary; NCCL's
//! (`csrc/c10d_nccl.cpp`) is a shared library of its own, built only where the CUDA
//! headers were present and loaded only when training on a GPU, so that CPU machines
//! never need CUDA. Both export the same operations; a [`ProcessGroup`] holds the table
//! of whichever it uses.
//!
//! Every collective works in place on a tch tensor (the `at::Tensor` behind it, no
//! copy) and blocks until it is done on this rank. A failure (a peer that died, a
//! timeout, a store that cannot be reached) comes back as an error with c10d's message,
//! never as an abort: the C++ side catches every exception.

use crate::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::mem::transmute;
use std::net::TcpListener;
use std::os::fd::IntoRawFd;
use std::sync::OnceLock;
use std::time::Duration;
use tch::Tensor;

/// How a collective combines the ranks' tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum = 0,
    Mean = 1,
    Max = 2,
}

/// Where the ranks meet, and who this one is. `host_store`: this process serves the
/// store on master_addr:master_port (rank 0 under `--nproc`); otherwise it connects to
/// one (under torchrun every rank does: the launcher's agent serves it).
#[derive(Clone, Debug)]
pub struct Rendezvous {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    pub host_store: bool,
    /// The address the other ranks reach this one at (Gloo listens there).
    pub bind_host: String,
    /// Or the network interface to listen on (`GLOO_SOCKET_IFNAME`), when set.
    pub interface: Option<String>,
    /// Bounds the rendezvous and every collective.
    pub timeout: Duration,
}

type Group = c_void;

/// A collective on one tensor (allreduce with an op, broadcast with a root).
type CollectiveFn = unsafe extern "C" fn(*mut Group, *mut c_void, c_int) -> c_int;
type BarrierFn = unsafe extern "C" fn(*mut Group) -> c_int;
type StoreSetFn = unsafe extern "C" fn(*mut Group, *const c_char, *const c_char) -> c_int;
type StoreGetFn = unsafe extern "C" fn(*mut Group, *const c_char, *mut c_char, i64) -> i64;
type LastErrorFn = unsafe extern "C" fn() -> *const c_char;
type FreeFn = unsafe extern "C" fn(*mut Group);

/// One backend's C functions (same names in both libraries, see `csrc/c10d_ops.h`).
struct Api {
    allreduce: CollectiveFn,
    broadcast: CollectiveFn,
    barrier: BarrierFn,
    store_set: StoreSetFn,
    store_get: StoreGetFn,
    last_error: LastErrorFn,
    free: FreeFn,
}

type NewGroup = unsafe extern "C" fn(
    *const c_char,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_char,
    *const c_char,
    i64,
) -> *mut Group;

extern "C" {
    fn sympathy_c10d_new_gloo(
        master_addr: *const c_char,
        master_port: c_int,
        rank: c_int,
        world_size: c_int,
        listen_fd: c_int,
        bind_host: *const c_char,
        interface: *const c_char,
        timeout_ms: i64,
    ) -> *mut Group;
    fn sympathy_c10d_allreduce(group: *mut Group, tensor: *mut c_void, op: c_int) -> c_int;
    fn sympathy_c10d_broadcast(group: *mut Group, tensor: *mut c_void, root: c_int) -> c_int;
    fn sympathy_c10d_barrier(group: *mut Group) -> c_int;
    fn sympathy_c10d_store_set(
        group: *mut Group,
        key: *const c_char,
        value: *const c_char,
    ) -> c_int;
    fn sympathy_c10d_store_get(
        group: *mut Group,
        key: *const c_char,
        out: *mut c_char,
        cap: i64,
    ) -> i64;
    fn sympathy_c10d_last_error() -> *const c_char;
    fn sympathy_c10d_free(group: *mut Group);
}

static GLOO: Api = Api {
    allreduce: sympathy_c10d_allreduce,
    broadcast: sympathy_c10d_broadcast,
    barrier: sympathy_c10d_barrier,
    store_set: sympathy_c10d_store_set,
    store_get: sympathy_c10d_store_get,
    last_error: sympathy_c10d_last_error,
    free: sympathy_c10d_free,
};

/// A joined group of ranks; leaving it (drop) closes the connections.
pub struct ProcessGroup {
    group: *mut Group,
    api: &'static Api,
    rank: usize,
    world_size: usize,
    backend: &'static str,
}

impl ProcessGroup {
    /// Joins with Gloo (CPU tensors): waits up to `rv.timeout` for all ranks.
    pub fn gloo(rv: &Rendezvous) -> Result<Self> {
        Self::join(rv, sympathy_c10d_new_gloo, &GLOO, "gloo")
    }

    /// Joins with NCCL (CUDA tensors), loading the NCCL library first.
    pub fn nccl(rv: &Rendezvous) -> Result<Self> {
        let (new, api) = nccl_library()?;
        Self::join(rv, *new, api, "nccl")
    }

    fn join(
        rv: &Rendezvous,
        new: NewGroup,
        api: &'static Api,
        backend: &'static str,
    ) -> Result<Self> {
        let text = |s: &str, what: &str| {
            CString::new(s).map_err(|_| Error::Distributed(format!("{what} contains a NUL byte")))
        };
        let addr = text(&rv.master_addr, "MASTER_ADDR")?;
        let bind = text(&rv.bind_host, "the bind address")?;
        let interface = text(rv.interface.as_deref().unwrap_or(""), "GLOO_SOCKET_IFNAME")?;
        let listen_fd = if rv.host_store {
            store_socket(rv)?.into_raw_fd() // the store owns and closes it from here on
        } else {
            -1
        };
        // SAFETY: valid NUL-terminated strings that outlive the call; the C side copies
        // them and returns a new group or null (with the message in last_error).
        let group = unsafe {
            new(
                addr.as_ptr(),
                rv.master_port as c_int,
                rv.rank as c_int,
                rv.world_size as c_int,
                listen_fd,
                bind.as_ptr(),
                interface.as_ptr(),
                rv.timeout.as_millis() as i64,
            )
        };
        if group.is_null() {
            return Err(Error::Distributed(last_error(api)));
        }
        Ok(ProcessGroup {
            group,
            api,
            rank: rv.rank,
            world_size: rv.world_size,
            backend,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// `gloo` or `nccl`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// In place: `tensor` becomes the sum, mean or maximum of every rank's `tensor`.
    pub fn allreduce(&mut self, tensor: &mut Tensor, op: Reduce) -> Result<()> {
        // SAFETY: `tensor` is a live at::Tensor (tch's pointer) for the whole call.
        let rc =
            unsafe { (self.api.allreduce)(self.group, tensor.as_mut_ptr().cast(), op as c_int) };
        self.check(rc)
    }

    /// In place: `tensor` becomes rank `root`'s `tensor`.
    pub fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()> {
        // SAFETY: as in `allreduce`.
        let rc =
            unsafe { (self.api.broadcast)(self.group, tensor.as_mut_ptr().cast(), root as c_int) };
        self.check(rc)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<()> {
        // SAFETY: a live group.
        let rc = unsafe { (self.api.barrier)(self.group) };
        self.check(rc)
    }

    /// Writes `key` = `value` in the rendezvous store (visible to every rank).
    pub fn store_set(&mut self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (store_text(key)?, store_text(value)?);
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe { (self.api.store_set)(self.group, k.as_ptr(), v.as_ptr()) };
        self.check(rc)
    }

    /// Reads `key` from the store, waiting (up to the timeout) until a rank has set it.
    pub fn store_get(&mut self, key: &str) -> Result<String> {
        let k = store_text(key)?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: `buf` has `cap` bytes; the C side writes at most that, NUL included.
        let n = unsafe {
            (self.api.store_get)(
                self.group,
                k.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len() as i64,
            )
        };
        if n < 0 {
            return Err(Error::Distributed(last_error(self.api)));
        }
        buf.truncate(n as usize);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn check(&self, rc: c_int) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::Distributed(last_error(self.api)))
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the group came from `new` and is freed once, here.
        unsafe { (self.api.free)(self.group) }
    }
}

/// The socket the store serves on, bound to the master address only (the store would
/// bind every interface itself): the only port a one-machine run opens beyond loopback
/// is none.
fn store_socket(rv: &Rendezvous) -> Result<TcpListener> {
    TcpListener::bind((rv.master_addr.as_str(), rv.master_port)).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
            "is already in use by another program; choose another MASTER_PORT".to_string()
        } else {
            format!("cannot be listened on ({e}); check MASTER_ADDR and MASTER_PORT")
        };
        Error::Distributed(format!("{}:{} {why}", rv.master_addr, rv.master_port))
    })
}

fn store_text(s: &str) -> Result<CString> {
    CString::new(s)
        .map_err(|_| Error::Distributed(format!("store key or value {s:?} contains a NUL byte")))
}

/// The message of the last failed call on this thread, on one line, without the
/// `[path/to/source.cc:123] ` that gloo puts in front.
fn last_error(api: &Api) -> String {
    // SAFETY: a NUL-terminated thread-local string owned by the C side, copied at once.
    let msg = unsafe { CStr::from_ptr((api.last_error)()) }
        .to_string_lossy()
        .into_owned();
    let msg = match msg.split_once("] ") {
        Some((place, rest)) if place.starts_with('[') && place.contains(".cc:") => rest,
        _ => &msg,
    };
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The NCCL library's path, when `build.rs` could build it (CUDA headers present).
const NCCL_LIBRARY: Option<&str> = option_env!("SYMPATHY_C10D_NCCL");

/// The NCCL library's constructor and operations, loaded once.
fn nccl_library() -> Result<&'static (NewGroup, Api)> {
    static LOADED: OnceLock<std::result::Result<(NewGroup, Api), String>> = OnceLock::new();
    LOADED
        .get_or_init(load_nccl)
        .as_ref()
        .map_err(|e| Error::Distributed(e.clone()))
}

fn load_nccl() -> std::result::Result<(NewGroup, Api), String> {
    let path = NCCL_LIBRARY.ok_or(
        "this sympathy was built without NCCL support (the CUDA and NCCL headers were not found at build time); rebuild with the full install (`make libtorch-full`, then `cargo build --release`), or train on the CPU with --device cpu",
    )?;
    crate::runtime::cuda::ensure_loaded()?;
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: dlopen of our own library, kept open for the life of the process.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("cannot load {path}: {}", dl_error()));
    }
    let sym = |name: &str| -> std::result::Result<*mut c_void, String> {
        let c_name = CString::new(name).expect("symbol names have no NUL");
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
        if p.is_null() {
            Err(format!("{path} lacks {name}: {}", dl_error()))
        } else {
            Ok(p)
        }
    };
    // SAFETY: each symbol is the extern "C" function of csrc/c10d_ops.h or
    // csrc/c10d_nccl.cpp with exactly the signature it is cast to.
    unsafe {
        Ok((
            transmute::<*mut c_void, NewGroup>(sym("sympathy_c10d_new_nccl")?),
            Api {
                allreduce: transmute::<*mut c_void, CollectiveFn>(sym("sympathy_c10d_allreduce")?),
                broadcast: transmute::<*mut c_void, CollectiveFn>(sym("sympathy_c10d_broadcast")?),
                barrier: transmute::<*mut c_void, BarrierFn>(sym("sympathy_c10d_barrier")?),
                store_set: transmute::<*mut c_void, StoreSetFn>(sym("sympathy_c10d_store_set")?),
                store_get: transmute::<*mut c_void, StoreGetFn>(sym("sympathy_c10d_store_get")?),
                last_error: transmute::<*mut c_void, LastErrorFn>(sym("sympathy_c10d_last_error")?),
                free: transmute::<*mut c_void, FreeFn>(sym("sympathy_c10d_free")?),
            },
        ))
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local message or null.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        crate::train::launch::free_port().unwrap()
    }

    fn rendezvous(rank: usize, port: u16) -> Rendezvous {
        Rendezvous {
            master_addr: "127.0.0.1".into(),
            master_port: port,
            rank,
            world_size: 2,
            host_store: rank == 0,
            bind_host: "127.0.0.1".into(),
            interface: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Two ranks as two threads of this test: every collective against the sum, mean,
    /// maximum or copy computed here. The values are small integers and halves, exact
    /// in f32, so the comparison is exact.
    #[test]
    fn collectives_match_their_definition_across_two_ranks() {
        let port = free_port();
        let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    s.spawn(move || {
                        let mut pg = ProcessGroup::gloo(&rendezvous(rank, port)).expect("join");
                        assert_eq!(
                            (pg.rank(), pg.world_size(), pg.backend()),
                            (rank, 2, "gloo")
                        );
                        let mine = || Tensor::from_slice(&[rank as f32 + 1.0, -(rank as f32), 3.0]);
                        let mut out = vec![];
                        for op in [Reduce::Sum, Reduce::Mean, Reduce::Max] {
                            let mut t = mine();
                            pg.allreduce(&mut t, op).expect("allreduce");
                            out.push(Vec::<f32>::try_from(&t).unwrap());
                        }
                        let mut t = mine();
                        pg.broadcast(&mut t, 1).expect("broadcast");
                        out.push(Vec::<f32>::try_from(&t).unwrap());
                        pg.store_set(&format!("k{rank}"), &format!("v{rank}"))
                            .unwrap();
                        assert_eq!(
                            pg.store_get(&format!("k{}", 1 - rank)).unwrap(),
                            format!("v{}", 1 - rank)
                        );
                        pg.barrier().expect("barrier");
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for out in &results {
            assert_eq!(out[0], [3.0, -1.0, 6.0], "sum");
            assert_eq!(out[1], [1.5, -0.5, 3.0], "mean");
            assert_eq!(out[2], [2.0, 0.0, 3.0], "max");
            assert_eq!(out[3], [2.0, -1.0, 3.0], "broadcast from rank 1");
        }
    }

    /// A port another program listens on: an error at once, naming the port.
    #[test]
    fn a_busy_port_is_an_error_at_once() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let rv = rendezvous(0, taken.local_addr().unwrap().port());
        let err = ProcessGroup::gloo(&rv)
            .err()
            .expect("port taken")
            .to_string();
        assert!(err.contains("is already in use"), "{err}");
    }

    /// No store at the address: an error naming the address within the timeout, no hang.
    #[test]
    fn an_unreachable_store_is_an_error_not_a_hang() {
        let port = free_port(); // free, so nothing listens there
        let rv = Rendezvous {
            timeout: Duration::from_secs(2),
            ..rendezvous(1, port)
        };
        let start = std::time::Instant::now();
        let err = ProcessGroup::gloo(&rv)
            .err()
            .expect("no store to meet")
            .to_string();
        assert!(err.contains(&port.to_string()), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }
}
