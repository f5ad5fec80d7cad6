//! Embeds an rpath to the project-local libtorch so the binary runs without
//! LD_LIBRARY_PATH, and compiles `csrc/torch_ext.cpp` (the few libtorch functions tch
//! does not bind, see `src/torch_ext.rs`), `csrc/fused.cpp` (fused CPU kernels with
//! their autograd, see `src/model/fused.rs`) and `csrc/c10d.cpp` (c10d with Gloo, see
//! `src/train/distributed.rs`) against the same libtorch's headers. Where the CUDA and
//! NCCL headers are present too, it also builds `csrc/c10d_nccl.cpp` as a shared
//! library of its own, loaded only when training on GPUs.
//! torch-sys finds libtorch at build time (through `LIBTORCH` or the python on PATH
//! with `LIBTORCH_USE_PYTORCH=1`); we ask the same places where its `lib/` folder is
//! and write that folder into every binary and test we link.
use std::path::PathBuf;
use std::process::Command;

fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Ok(lib) = std::env::var("LIBTORCH_LIB") {
        return Some(PathBuf::from(lib).join("lib"));
    }
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let root = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(root.trim()).join("lib"))
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/torch_ext.cpp");
    println!("cargo:rerun-if-changed=csrc/fused.cpp");
    for f in ["csrc/c10d.cpp", "csrc/c10d_ops.h", "csrc/c10d_nccl.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    if let Some(dir) = libtorch_lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        // For `cuda::ensure_loaded`, which dlopens libtorch_cuda from here on GPU machines.
        println!("cargo:rustc-env=SYMPATHY_LIBTORCH_LIB={}", dir.display());
        // The headers sit next to lib/ in both the pip wheel and the libtorch zip.
        let include = dir.join("..").join("include");
        cc::Build::new()
            .cpp(true)
            .std("c++17") // as torch-sys compiles its own wrapper
            // -isystem: libtorch's headers are not ours to fix, so no warnings from them.
            .flag("-isystem")
            .flag(&include)
            .file("csrc/torch_ext.cpp")
            .compile("sympathy_torch_ext");
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .flag("-isystem")
            .flag(&include)
            .flag("-isystem")
            .flag(include.join("torch/csrc/api/include"))
            // `#pragma omp simd` reductions vectorise; no OpenMP runtime is involved.
            .flag("-fopenmp-simd")
            .file("csrc/fused.cpp")
            .compile("sympathy_fused");
        compile_c10d_gloo(&include);
        compile_c10d_nccl(&dir, &include);
        // The wrapper calls into these; list them after it so the linker keeps them.
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=dylib=torch_cpu");
        println!("cargo:rustc-link-lib=dylib=c10");
    } else {
        println!(
            "cargo:warning=libtorch not found: run `make build` (scripts/setup_libtorch.sh) first"
        );
    }
}

/// c10d with Gloo: ProcessGroupGloo.hpp's body is guarded by USE_C10D_GLOO, and it
/// includes gloo headers the wheel does not ship (vendored in third_party/gloo). gloo's
/// code itself is inside libtorch_cpu. Heavy headers: ~20 s or more, in a unit of its own.
fn compile_c10d_gloo(include: &std::path::Path) {
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("USE_C10D_GLOO", None)
        .flag("-isystem")
        .flag(include)
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include"))
        .flag("-isystem")
        .flag("third_party/gloo")
        .file("csrc/c10d.cpp")
        .compile("sympathy_c10d");
}

/// The CUDA and NCCL headers of the pip wheels next to torch (`site-packages/nvidia`),
/// or of `SYMPATHY_CUDA_INCLUDE` (a `:`-separated list), if `cuda_runtime.h`, the CUDA
/// compiler's `crt/host_defines.h` and `nccl.h` are all among them.
fn cuda_include_dirs(lib_dir: &std::path::Path) -> Option<Vec<PathBuf>> {
    println!("cargo:rerun-if-env-changed=SYMPATHY_CUDA_INCLUDE");
    let mut dirs: Vec<PathBuf> = std::env::var("SYMPATHY_CUDA_INCLUDE")
        .map(|v| v.split(':').map(PathBuf::from).collect())
        .unwrap_or_default();
    let nvidia = lib_dir.join("../../nvidia");
    if let Ok(entries) = std::fs::read_dir(&nvidia) {
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("include"))
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        dirs.extend(found);
    }
    let has = |file: &str| dirs.iter().any(|d| d.join(file).is_file());
    let complete = has("cuda_runtime.h") && has("crt/host_defines.h") && has("nccl.h");
    complete.then_some(dirs)
}

/// c10d with NCCL, as `libsympathy_c10d_nccl.so` in OUT_DIR (its path compiled into the
/// binary as SYMPATHY_C10D_NCCL): only where libtorch_cuda and the CUDA headers are.
fn compile_c10d_nccl(lib_dir: &std::path::Path, include: &std::path::Path) {
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return;
    }
    // Without them (a CPU-only install), silently no NCCL: training on GPUs says so.
    let Some(cuda_dirs) = cuda_include_dirs(lib_dir) else {
        return;
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let so = out.join("libsympathy_c10d_nccl.so");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args([
        "-std=c++17",
        "-O2",
        "-fPIC",
        "-shared",
        "-DUSE_C10D_NCCL",
        "-DUSE_CUDA",
    ])
    .arg("-D_GLIBCXX_USE_CXX11_ABI=1")
    .arg("-isystem")
    .arg(include)
    .arg("-isystem")
    .arg(include.join("torch/csrc/api/include"));
    for d in &cuda_dirs {
        cmd.arg("-isystem").arg(d);
    }
    cmd.arg("csrc/c10d_nccl.cpp")
        .arg("-o")
        .arg(&so)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        // Our functions bind to our own definitions, never to the binary's Gloo ones.
        .arg("-Wl,-Bsymbolic")
        .args(["-ltorch_cuda", "-ltorch_cpu", "-lc10_cuda", "-lc10"]);
    match cmd.status() {
        Ok(s) if s.success() => {
            println!("cargo:rustc-env=SYMPATHY_C10D_NCCL={}", so.display());
        }
        _ => println!("cargo:warning=NCCL support not built: compiling csrc/c10d_nccl.cpp failed"),
    }
}
