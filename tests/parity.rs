//! sympathy's GPT (GPT-2, and `--arch modern`) against PyTorch, and its checkpoints against
//! nanoGPT and Hugging Face.
//!
//! The fixtures in tests/fixtures/ were computed by scripts/make_fixtures.py with
//! PyTorch (regenerate: `make fixtures`); these tests need no Python, except the two
//! that hand files to PyTorch (a nanoGPT `.pt` to import, a Hugging Face export to
//! read back), which need `.venv/bin/python` with PyTorch (`make test` installs it) and
//! fail with that advice without it.
//!
//! Tolerances, in fp32, as the largest difference relative to the largest reference
//! value of the tensor (elementwise relative error is meaningless near zero):
//! forward (logits, loss) 1e-5; gradients, and loss and weights after 10 steps, 1e-4.
//! Run with `-- --nocapture` to see the differences measured.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use sympathy::config::{Arch, ModelConfig, Preset, TrainConfig};
use sympathy::model::Gpt;
use sympathy::run::checkpoint::{self, DataSpec, State, LATEST};
use sympathy::tokenizer::Tokenizer;
use sympathy::train::optim::{AdamW, LrSchedule};
use sympathy::train::params::FlatParams;
use tch::{nn, Device, Kind, Tensor};

const FORWARD_TOL: f64 = 1e-5;
const BACKWARD_TOL: f64 = 1e-4;
/// For the 10-step updates (after - before), each a difference of two fp32 weights.
const UPDATE_TOL: f64 = 1e-3;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(file: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(file)
        .unwrap()
        .into_iter()
        .collect()
}

fn parity_json() -> serde_json::Value {
    fixture_json("parity")
}

/// `tests/fixtures/NAME.json`.
fn fixture_json(name: &str) -> serde_json::Value {
    let file = fixtures().join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// max |got - want| / max |want|.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    let diff = (got.to_kind(Kind::Float) - want)
        .abs()
        .max()
        .double_value(&[]);
    diff / want.abs().max().double_value(&[]).max(1e-30)
}

/// The parity fixture's model and weights (see [`fixture_model_named`]).
fn fixture_model(dir: &Path) -> (nn::VarStore, Gpt, ModelConfig) {
    fixture_model_named(dir, "parity")
}

/// Fixture NAME's model and weights, loaded through the checkpoint loader (which checks
/// every name and shape) from a file holding the fixture's `weights.*` tensors.
fn fixture_model_named(dir: &Path, name: &str) -> (nn::VarStore, Gpt, ModelConfig) {
    let cfg: ModelConfig = serde_json::from_value(fixture_json(name)["model"].clone()).unwrap();
    let weights: Vec<(String, Tensor)> = read(&fixtures().join(format!("{name}.safetensors")))
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("weights.").map(|n| (n.to_string(), t)))
        .collect();
    let file = dir.join("weights.safetensors");
    Tensor::write_safetensors(&weights, &file).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt::new(&vs.root(), &cfg);
    checkpoint::load_tensors_into(&vs, &file).unwrap();
    (vs, model, cfg)
}

fn fixture_train_config() -> TrainConfig {
    let t = &parity_json()["train"];
    let f = |k: &str| t[k].as_f64().unwrap();
    TrainConfig {
        lr: f("lr"),
        min_lr: f("min_lr"),
        warmup_steps: t["warmup_steps"].as_u64().unwrap(),
        max_steps: t["max_steps"].as_u64().unwrap(),
        weight_decay: f("weight_decay"),
        beta1: f("beta1"),
        beta2: f("beta2"),
        eps: f("eps"),
        grad_clip: f("grad_clip"),
        ..Preset::Tiny.train()
    }
}

#[test]
fn forward_loss_and_every_gradient_match_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let (vs, model, cfg) = fixture_model(tmp.path());
    let fx = read(&fixtures().join("parity.safetensors"));
    let logits = model.forward(&fx["x"], false);
    let e_logits = rel_err(&logits, &fx["logits"]);
    let loss = Gpt::loss(&logits, &fx["y"]);
    let want_loss = parity_json()["loss"].as_f64().unwrap();
    let e_loss = (loss.double_value(&[]) - want_loss).abs() / want_loss;
    println!("logits: max rel diff {e_logits:.2e}; loss {:.7} vs PyTorch {want_loss:.7}, rel diff {e_loss:.2e}", loss.double_value(&[]));
    assert!(e_logits < FORWARD_TOL, "logits differ by {e_logits:e}");
    assert!(e_loss < FORWARD_TOL, "loss differs by {e_loss:e}");

    loss.backward();
    let vars = vs.variables();
    assert_eq!(
        vars.len(),
        fx.keys().filter(|k| k.starts_with("grads.")).count()
    );
    let mut worst = (0.0, String::new());
    for (name, var) in &vars {
        let e = rel_err(&var.grad(), &fx[&format!("grads.{name}")]);
        assert!(e < BACKWARD_TOL, "gradient of {name} differs by {e:e}");
        if e > worst.0 {
            worst = (e, name.clone());
        }
        if name.ends_with("attn.c_attn.bias") {
            // Adding b·q to every score of a query leaves its softmax unchanged, so the
            // key bias has no gradient in exact arithmetic, in both implementations.
            let c = cfg.n_embd;
            for g in [var.grad(), fx[&format!("grads.{name}")].shallow_clone()] {
                let key = g.narrow(0, c, c).abs().max().double_value(&[]);
                assert!(
                    key < 1e-5 * g.abs().max().double_value(&[]),
                    "{name}: key-bias gradient {key:e}"
                );
            }
        }
    }
    println!(
        "gradients: {} tensors, max rel diff {:.2e} ({})",
        vars.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn ten_adamw_steps_match_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let (vs, model, cfg) = fixture_model(tmp.path());
    let fx = read(&fixtures().join("parity.safetensors"));
    let tcfg = fixture_train_config();
    let mut params = FlatParams::new(&vs);
    let mut opt = AdamW::new(&params, &tcfg);
    let schedule = LrSchedule::new(&tcfg);
    let json = parity_json();
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 10);
    let (mut worst_loss, mut clipped) = (0.0f64, 0);
    for (step, want) in steps.iter().enumerate() {
        let lr = schedule.at(step as u64, 0.0);
        assert!(
            (lr - want["lr"].as_f64().unwrap()).abs() < 1e-12,
            "lr of step {step}"
        );
        let loss = Gpt::loss(&model.forward(&fx["x"], true), &fx["y"]);
        loss.backward();
        let norm = params.grad_norm().double_value(&[]);
        let want_norm = want["grad_norm"].as_f64().unwrap();
        assert!(
            (norm - want_norm).abs() / want_norm < BACKWARD_TOL,
            "grad norm of step {step}: {norm} vs {want_norm}"
        );
        clipped += (norm > tcfg.grad_clip) as usize;
        params.clip_grad_norm(norm, tcfg.grad_clip);
        opt.step(&mut params, lr);
        params.zero_grad();
        let want_loss = want["loss"].as_f64().unwrap();
        let e = (loss.double_value(&[]) - want_loss).abs() / want_loss;
        assert!(
            e < BACKWARD_TOL,
            "loss of step {step}: {} vs {want_loss}",
            loss.double_value(&[])
        );
        worst_loss = worst_loss.max(e);
    }
    assert!(
        0 < clipped && clipped < 10,
        "the fixture should clip some steps, not all ({clipped})"
    );
    // The key bias has no gradient (see the test above): its fp32 gradient is rounding
    // noise, which AdamW divides by sqrt(v) + eps and turns into steps of up to lr that
    // no two implementations share, and that change no output (the softmax ignores
    // them). So the key third of c_attn.bias is left out; the query and value thirds are
    // compared like every other tensor.
    //
    // The weights move by ~1e-3 in 10 steps, so besides the weights themselves the
    // updates (after - before) are compared too: an optimizer slip of 1 % shows in them
    // as 1e-2 but in the weights only as ~1e-5. An update is the difference of two
    // nearly equal fp32 numbers, hence its looser tolerance.
    let c = cfg.n_embd;
    let qv = |name: &str, t: Tensor| {
        if name.ends_with("attn.c_attn.bias") {
            Tensor::cat(&[t.narrow(0, 0, c), t.narrow(0, 2 * c, c)], 0)
        } else {
            t
        }
    };
    let (mut worst, mut worst_update) = ((0.0, String::new()), (0.0, String::new()));
    for (name, var) in vs.variables() {
        let before = qv(&name, fx[&format!("weights.{name}")].shallow_clone());
        let want = qv(&name, fx[&format!("after10.{name}")].shallow_clone());
        let got = qv(&name, var.detach());
        let e = rel_err(&got, &want);
        assert!(e < BACKWARD_TOL, "{name} after 10 steps differs by {e:e}");
        let e_update = rel_err(&(&got - &before), &(&want - &before));
        assert!(
            e_update < UPDATE_TOL,
            "{name}: its 10-step update differs by {e_update:e}"
        );
        if e > worst.0 {
            worst = (e, name.clone());
        }
        if e_update > worst_update.0 {
            worst_update = (e_update, name);
        }
    }
    println!("10 steps ({clipped} clipped): loss max rel diff {worst_loss:.2e}; weights max rel diff {:.2e} ({}); updates max rel diff {:.2e} ({})", worst.0, worst.1, worst_update.0, worst_update.1);
}

/// `--arch modern` against the PyTorch model of scripts/make_fixtures.py, written
/// independently (RoPE as complex multiplication, RMSNorm written out): logits and loss,
/// every gradient, and the loss after one AdamW step, to the tolerances above.
#[test]
fn the_modern_architecture_matches_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let (vs, model, cfg) = fixture_model_named(tmp.path(), "modern");
    // The six options but zero-init: the fixture's weights are random everywhere.
    let arch = Arch {
        zero_init: false,
        ..Arch::modern()
    };
    assert_eq!(cfg.arch, arch);
    let fx = read(&fixtures().join("modern.safetensors"));
    let json = fixture_json("modern");
    let tcfg = fixture_train_config();
    let mut params = FlatParams::new(&vs); // before the forward: it re-homes the weights
    let mut opt = AdamW::new(&params, &tcfg);
    let logits = model.forward(&fx["x"], false);
    let e_logits = rel_err(&logits, &fx["logits"]);
    let loss = Gpt::loss(&logits, &fx["y"]);
    let want = json["loss"].as_f64().unwrap();
    let e_loss = (loss.double_value(&[]) - want).abs() / want;
    println!("modern: logits max rel diff {e_logits:.2e}, loss rel diff {e_loss:.2e}");
    assert!(e_logits < FORWARD_TOL, "logits differ by {e_logits:e}");
    assert!(e_loss < FORWARD_TOL, "loss differs by {e_loss:e}");

    loss.backward();
    let vars = vs.variables();
    let grads = fx.keys().filter(|k| k.starts_with("grads.")).count();
    assert_eq!(
        vars.len(),
        grads,
        "the same parameters, lm_head and gains included"
    );
    for (name, var) in &vars {
        let e = rel_err(&var.grad(), &fx[&format!("grads.{name}")]);
        assert!(e < BACKWARD_TOL, "gradient of {name} differs by {e:e}");
    }

    let step = &json["step"];
    let lr = LrSchedule::new(&tcfg).at(0, 0.0);
    assert!((lr - step["lr"].as_f64().unwrap()).abs() < 1e-12);
    let norm = params.grad_norm().double_value(&[]);
    let want_norm = step["grad_norm"].as_f64().unwrap();
    assert!(
        (norm - want_norm).abs() / want_norm < BACKWARD_TOL,
        "grad norm {norm} vs {want_norm}"
    );
    params.clip_grad_norm(norm, tcfg.grad_clip);
    opt.step(&mut params, lr);
    let after = Gpt::loss(&model.forward(&fx["x"], false), &fx["y"]).double_value(&[]);
    let want_after = step["loss_after"].as_f64().unwrap();
    let e = (after - want_after).abs() / want_after;
    println!(
        "modern: loss after one AdamW step {after:.7} vs PyTorch {want_after:.7}, rel diff {e:.2e}"
    );
    assert!(
        e < BACKWARD_TOL,
        "loss after one step: {after} vs {want_after}"
    );
}

/// Exports `run` with the CLI, checks the layout in Rust, and, with Python, has
/// scripts/check_hf_export.py compare PyTorch's logits on `x` with sympathy's.
fn export_and_check(run: &Path, x: &Tensor, tmp: &Path, test: &str) {
    let out = tmp.join("hf");
    let o = common::run(&[
        "export",
        "--to",
        "safetensors-hf",
        run.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "export failed: {}", common::stderr(&o));
    let loaded = checkpoint::load(run, Device::Cpu).unwrap();
    let ours = loaded.vs.variables();
    let hf = read(&out.join("model.safetensors"));
    let cfg = &loaded.state.model;
    let (c, l) = (cfg.n_embd, cfg.n_layer);
    assert_eq!(
        hf.len() as i64,
        4 + 12 * l + 1,
        "every GPT-2 tensor, biases included"
    );
    for (name, shape) in [
        ("attn.c_attn", [c, 3 * c]),
        ("attn.c_proj", [c, c]),
        ("mlp.c_fc", [c, 4 * c]),
        ("mlp.c_proj", [4 * c, c]),
    ] {
        let t = &hf[&format!("transformer.h.0.{name}.weight")];
        assert_eq!(t.size(), shape, "{name} is Conv1D (in, out)");
        assert!(t.equal(&ours[&format!("h.0.{name}.weight")].transpose(0, 1)));
        let bias = &hf[&format!("transformer.h.0.{name}.bias")];
        match ours.get(&format!("h.0.{name}.bias")) {
            Some(b) => assert!(bias.equal(b)),
            None => assert_eq!(
                bias.abs().max().double_value(&[]),
                0.0,
                "bias=false exports zeros"
            ),
        }
    }
    assert!(hf["lm_head.weight"].equal(&ours["wte.weight"]));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["n_positions"], cfg.block_size);
    assert_eq!(
        config["activation_function"], "gelu",
        "HF's gelu is the exact erf GELU"
    );

    let py = common::venv_python(test);
    let logits = tch::no_grad(|| loaded.model.forward(x, false));
    let expected = tmp.join("expected.safetensors");
    Tensor::write_safetensors(&[("x", x), ("logits", &logits)], &expected).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_hf_export.py");
    let o = std::process::Command::new(py)
        .arg(script)
        .arg(&out)
        .arg(&expected)
        .output()
        .unwrap();
    print!("{test}: {}", common::stdout(&o));
    assert!(
        o.status.success(),
        "PyTorch disagrees with the export:\n{}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
}

#[test]
fn hf_export_has_gpt2_layout_and_pytorch_reads_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let (vs, _, cfg) = fixture_model(tmp.path());
    let train = fixture_train_config();
    let state = State::new(
        cfg,
        train.clone(),
        Tokenizer::default(),
        DataSpec {
            root: PathBuf::new(),
            ext: "py".into(),
        },
    );
    let run = tmp.path().join("run");
    checkpoint::save_atomically(
        &run,
        LATEST,
        &vs,
        &AdamW::new(&FlatParams::new(&vs), &train),
        &state,
    )
    .unwrap();
    let x = read(&fixtures().join("parity.safetensors"))
        .remove("x")
        .unwrap();
    export_and_check(&run, &x, tmp.path(), "hf export (bias=true)");
}

/// A run holding an untrained tiny model of architecture `arch`, saved in `dir`.
fn saved_run(dir: &Path, arch: Arch) -> PathBuf {
    let cfg = ModelConfig {
        arch,
        ..Preset::Tiny.model(Tokenizer::default().vocab_size())
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Gpt::new(&vs.root(), &cfg);
    let train = Preset::Tiny.train();
    let data = DataSpec {
        root: PathBuf::new(),
        ext: "py".into(),
    };
    let state = State::new(cfg, train.clone(), Tokenizer::default(), data);
    let opt = AdamW::new(&FlatParams::new(&vs), &train);
    let run = dir.join("run");
    checkpoint::save_atomically(&run, LATEST, &vs, &opt, &state).unwrap();
    run
}

#[test]
fn hf_export_refuses_an_architecture_gpt2_cannot_hold_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let modern = saved_run(&tmp.path().join("modern"), Arch::modern());
    let qk_norm = Arch {
        qk_norm: true,
        ..Arch::default()
    };
    let qk = saved_run(&tmp.path().join("qk"), qk_norm);
    for (run, option) in [(modern, "--pos rope"), (qk, "--qk-norm")] {
        let out = tmp.path().join("hf");
        let (run_s, out_s) = (run.to_str().unwrap(), out.to_str().unwrap());
        let o = common::run(&["export", "--to", "safetensors-hf", run_s, out_s]);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let want = format!("error: {option}: has no GPT2LMHeadModel equivalent; export works for the gpt2 architecture");
        assert_eq!(err.trim_end(), want);
        assert!(!out.exists(), "a refused export writes nothing");
    }
}

/// The nanoGPT fixture's batch in sympathy ids, and the checks every import must pass:
/// the logits at the remapped ids are nanoGPT's, the others exactly 0, step 0.
fn check_imported(run: &Path) -> Tensor {
    let nano = fixtures().join("nanogpt");
    let expected = read(&nano.join("expected.safetensors"));
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(nano.join("converted/nanogpt.json")).unwrap(),
    )
    .unwrap();
    let ascii: Vec<i64> = info["itos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().chars().next().unwrap() as i64)
        .collect();
    let to_sympathy = Tensor::from_slice(&ascii);
    let x = to_sympathy
        .index_select(0, &expected["x"].flatten(0, -1))
        .view_as(&expected["x"]); // (B, T) in ASCII codes
    let loaded = checkpoint::load(run, Device::Cpu).unwrap();
    assert_eq!(loaded.state.step, 0);
    assert!(
        !loaded.state.model.bias,
        "the fixture is a bias=False nanoGPT"
    );
    assert_eq!(loaded.state.model.arch, Arch::default(), "nanoGPT is GPT-2");
    let logits = tch::no_grad(|| loaded.model.forward(&x, false)); // (B, T, 131)
    let e = rel_err(&logits.index_select(2, &to_sympathy), &expected["logits"]);
    println!("nanoGPT import: logits at the remapped ids, max rel diff {e:.2e}");
    assert!(e < FORWARD_TOL, "imported logits differ by {e:e}");
    let others = logits.index_fill(2, &to_sympathy, 0.0); // zero where nanoGPT has the id
    assert_eq!(
        others.abs().max().double_value(&[]),
        0.0,
        "ids outside the nanoGPT vocabulary have logit 0"
    );
    let moments = checkpoint::read_tensors(&loaded.dir.join("optimizer.safetensors")).unwrap();
    assert!(
        moments
            .iter()
            .all(|(_, t)| t.abs().sum(Kind::Float).double_value(&[]) == 0.0),
        "fresh AdamW state"
    );
    x
}

/// `sympathy import --from nanogpt SOURCE --out OUT`, plus `extra`.
fn import_nanogpt(source: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (source, out) = (source.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec!["import", "--from", "nanogpt", source, "--out", out];
    args.extend_from_slice(extra);
    common::run(&args)
}

#[test]
fn nanogpt_import_remaps_the_vocabulary_and_keeps_the_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let converted = fixtures().join("nanogpt/converted");
    let o = import_nanogpt(&converted, &run, &[]);
    assert!(o.status.success(), "import failed: {}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("104 of sympathy's 131 ids are not in the nanoGPT vocabulary")
    );
    let x = check_imported(&run);
    export_and_check(&run, &x, tmp.path(), "hf export (bias=false, imported)");

    // The same checkpoint from the .pt, through the converter compiled into the binary.
    let py = common::venv_python("nanoGPT .pt import");
    let nano = fixtures().join("nanogpt");
    let run_pt = tmp.path().join("run_pt");
    let o = import_nanogpt(
        &nano.join("ckpt.pt"),
        &run_pt,
        &[
            "--meta",
            nano.join("meta.pkl").to_str().unwrap(),
            "--python",
            py.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "import of ckpt.pt failed: {}",
        common::stderr(&o)
    );
    assert!(check_imported(&run_pt).equal(&x));
    assert!(
        !tmp.path().join("run_pt.nanogpt.tmp").exists(),
        "the converted files are cleaned up"
    );
}

/// A copy of the converted fixture with `edit` applied to nanogpt.json.
fn edited_copy(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = fixtures().join("nanogpt/converted");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("nanogpt.json")).unwrap()).unwrap();
    edit(&mut info);
    std::fs::write(dir.join("nanogpt.json"), info.to_string()).unwrap();
    dir.to_path_buf()
}

#[test]
fn nanogpt_import_refuses_what_sympathy_cannot_hold_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let untied = edited_copy(&tmp.path().join("untied"), |_| {});
    let mut tensors = Tensor::read_safetensors(untied.join("model.safetensors")).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("lm_head.weight") {
            *t = &*t + 1.0;
        }
    }
    Tensor::write_safetensors(&tensors, untied.join("model.safetensors")).unwrap();
    let cases = [
        (
            edited_copy(&tmp.path().join("no_meta"), |i| {
                i["itos"] = serde_json::Value::Null
            }),
            "--meta: the checkpoint's vocab_size is 27",
        ),
        (
            edited_copy(&tmp.path().join("rope"), |i| {
                i["model_args"]["rope"] = true.into()
            }),
            "model_args.rope = true is an option sympathy's GPT does not have",
        ),
        (
            edited_copy(&tmp.path().join("utf8"), |i| i["itos"][5] = "é".into()),
            "--meta: id 5 is 'é'",
        ),
        (
            edited_copy(&tmp.path().join("shape"), |i| {
                i["model_args"]["n_embd"] = 32.into()
            }),
            "has shape [27, 16], model_args imply [27, 32]",
        ),
        (untied, "lm_head.weight differs from transformer.wte.weight"),
    ];
    for (dir, message) in cases {
        let out = dir.join("run");
        let o = import_nanogpt(&dir, &out, &[]);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{message}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(message) && err.lines().count() == 1,
            "wanted one line with {message:?}, got {err}"
        );
        assert!(!out.exists(), "a refused import leaves no run folder");
    }
    // An existing run is never overwritten.
    let run = tmp.path().join("run");
    let converted = fixtures().join("nanogpt/converted");
    assert!(import_nanogpt(&converted, &run, &[]).status.success());
    let o = import_nanogpt(&converted, &run, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("--out: "),
        "{}",
        common::stderr(&o)
    );
}
