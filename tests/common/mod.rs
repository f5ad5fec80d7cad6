//! Helpers shared by the integration tests: a small deterministic corpus, the binary
//! under test, and tiny configs that train in seconds on two cores.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A port free on 127.0.0.1 right now (nothing listens there when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The `sympathy` binary built for this test run.
pub fn sympathy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sympathy"))
}

/// Runs `sympathy ARGS` and returns its output (never panics on a non-zero exit).
pub fn run(args: &[&str]) -> Output {
    sympathy()
        .args(args)
        .output()
        .expect("the sympathy binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `n_files` small Python files under `dir` (deterministic content, a few KB
/// each) and returns `dir`. Enough for train/val windows of the tiny preset.
pub fn write_corpus(dir: &Path, n_files: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n_files {
        let mut text = format!("# module {i}\nimport os\n\n");
        for j in 0..40 {
            text.push_str(&format!(
                "def f_{i}_{j}(n):\n    return [x**{p} for x in range(n)]\n\n",
                p = (i + j) % 4 + 1
            ));
        }
        std::fs::write(dir.join(format!("mod_{i:02}.py")), text).unwrap();
    }
    dir.to_path_buf()
}

/// The flags of a tiny model for fast tests (2 layers, 2 heads, C=32, T=16).
pub const TINY: &[&str] = &["--preset", "tiny", "--device", "cpu"];

/// Trains the tiny preset on `corpus` into `out` for `steps` steps; panics with the
/// command's stderr if it fails.
pub fn train_tiny(corpus: &Path, out: &Path, steps: u64, extra: &[&str]) -> Output {
    let steps = steps.to_string();
    let mut args = vec![
        "train",
        "--data",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        &steps,
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    o
}

/// The architectures the model tests cover: GPT-2, the speedrun's six options together
/// (`--arch modern`), and each option alone.
pub fn architectures() -> Vec<sympathy::config::Arch> {
    use sympathy::config::{Activation, Arch, Normalization, Positions};
    let gpt2 = Arch::default;
    vec![
        gpt2(),
        Arch::modern(),
        Arch {
            pos: Positions::Rope,
            ..gpt2()
        },
        Arch {
            norm: Normalization::RmsNorm,
            ..gpt2()
        },
        Arch {
            qk_norm: true,
            ..gpt2()
        },
        Arch {
            mlp: Activation::Relu2,
            ..gpt2()
        },
        Arch {
            tied_head: false,
            ..gpt2()
        },
        Arch {
            zero_init: true,
            ..gpt2()
        },
    ]
}

/// `.venv/bin/python`, which must import PyTorch: `make test` installs it
/// (`scripts/setup_libtorch.sh --full`). A missing piece fails the test with that advice.
pub fn venv_python(test: &str) -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let imports = std::process::Command::new(&py)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        imports,
        "{test}: {} cannot `import torch`; run `make test`, or `scripts/setup_libtorch.sh --full`, which installs it",
        py.display()
    );
    py
}
