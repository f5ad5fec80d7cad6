//! Embeds an rpath to the project-local libtorch so the binary runs without
//! LD_LIBRARY_PATH, and compiles `csrc/torch_ext.cpp` (the few libtorch functions tch
//! does not bind, see `src/torch_ext.rs`) against the same libtorch's headers.
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
