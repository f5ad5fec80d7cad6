//! Loading libtorch's CUDA half at run time, only on machines with an NVIDIA driver.
//!
//! torch-sys asks the linker for `libtorch_cuda.so`, but the linker's `--as-needed`
//! default drops a library none of whose symbols the program references, and sympathy
//! references none: CUDA support registers itself from the library's static
//! initialisers. So the binary's `ldd` lists only `libtorch_cpu`, and
//! `tch::Cuda::is_available()` would say false on a GPU machine. Linking the library
//! unconditionally (`--no-as-needed`) would instead map ~1.5 GB of CUDA libraries
//! into every start on a CPU-only machine.
//!
//! The fix: before the first device query, `dlopen` libtorch_cuda (with `RTLD_GLOBAL`,
//! as Python's `import torch` does), but only where `/dev/nvidiactl` exists, so a CPU
//! start costs one `stat`. The library's folder is the libtorch folder that `build.rs`
//! linked against (`SYMPATHY_LIBTORCH_LIB`); failing that, the loader's search path.

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The libtorch `lib/` folder found at build time, if any.
const LIBTORCH_LIB: Option<&str> = option_env!("SYMPATHY_LIBTORCH_LIB");

/// Where an NVIDIA driver is installed, this device node exists.
const NVIDIA_CONTROL: &str = "/dev/nvidiactl";

/// What happened when we tried to load CUDA support, once per process.
static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Loads libtorch_cuda if this machine has an NVIDIA driver; cheap and idempotent.
/// Returns why CUDA support is missing, for error messages (`Ok` once loaded).
pub fn ensure_loaded() -> Result<(), String> {
    if !std::path::Path::new(NVIDIA_CONTROL).exists() {
        return Err(format!(
            "no NVIDIA driver ({NVIDIA_CONTROL} does not exist)"
        ));
    }
    load_libtorch_cuda().map(|_| ())
}

/// `dlopen`s libtorch_cuda.so (first from the build-time libtorch folder, then by
/// name), whatever the machine; the result is cached.
pub fn load_libtorch_cuda() -> Result<PathBuf, String> {
    LOADED
        .get_or_init(|| {
            let mut candidates: Vec<PathBuf> = LIBTORCH_LIB
                .map(|dir| PathBuf::from(dir).join("libtorch_cuda.so"))
                .into_iter()
                .filter(|p| p.exists())
                .collect();
            candidates.push(PathBuf::from("libtorch_cuda.so"));
            let mut errors = vec![];
            for path in candidates {
                match dlopen_global(&path) {
                    Ok(()) => return Ok(path),
                    Err(e) => errors.push(e),
                }
            }
            Err(format!(
                "cannot load libtorch_cuda.so: {}",
                errors.join("; ")
            ))
        })
        .clone()
}

fn dlopen_global(path: &std::path::Path) -> Result<(), String> {
    let c_path = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path; the handle is kept open for the life of the
    // process (never dlclose'd), since libtorch keeps pointers into the library.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local message or null.
        let msg = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!("{}: {msg}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mechanism, checked on any machine whose libtorch ships the CUDA library.
    /// Nothing may ask libtorch about CUDA before the dlopen: it caches its answer (the
    /// CUDA hooks) on first use, which is why `DeviceChoice::resolve` loads first, and
    /// why the unit tests before this one never call `tch::manual_seed` (it asks).
    #[test]
    fn dlopen_registers_the_cuda_backend() {
        let Some(dir) = LIBTORCH_LIB else { return };
        if !PathBuf::from(dir).join("libtorch_cuda.so").exists() {
            return; // a CPU-only libtorch: nothing to load
        }
        let path = load_libtorch_cuda().expect("libtorch_cuda.so loads");
        assert!(path.starts_with(dir));
        if tch::Cuda::is_available() {
            return; // a GPU machine: CUDA works, which is the point
        }
        // Without the library, libtorch has no CUDA kernels ("Could not run
        // 'aten::empty.memory_format' with arguments from the 'CUDA' backend") or no
        // CUDA hooks ("Cannot initialize CUDA without ATen_cuda library"). With it, a
        // GPU allocation gets as far as looking for the driver.
        let err = tch::Tensor::f_zeros([1], (tch::Kind::Float, tch::Device::Cuda(0)))
            .expect_err("no GPU here")
            .to_string();
        assert!(!err.contains("Could not run"), "{err}");
        assert!(!err.contains("without ATen_cuda library"), "{err}");
    }
}
