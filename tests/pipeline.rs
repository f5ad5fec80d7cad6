//! The pipeline stage by stage: tokenizer round-trip over the real corpus, the
//! per-file split, causal masking, shapes, the two attention kernels agreeing, a tiny
//! model memorising a batch, AdamW against a hand computation, and reproducible
//! generation.

mod common;

use std::collections::HashSet;
use sympathy::config::{Arch, ModelConfig, Positions, Preset, TrainConfig};
use sympathy::data;
use sympathy::model::attention::attention_reference;
use sympathy::model::Gpt;
use sympathy::tokenizer::{Tokenizer, CHAR_VOCAB_SIZE};
use sympathy::train::optim::AdamW;
use sympathy::train::params::FlatParams;
use tch::{nn, Device, Kind, Tensor};

fn tiny() -> ModelConfig {
    Preset::Tiny.model(CHAR_VOCAB_SIZE)
}

fn tiny_model(seed: i64) -> (nn::VarStore, Gpt) {
    tiny_model_of(seed, Arch::default())
}

fn tiny_model_of(seed: i64, arch: Arch) -> (nn::VarStore, Gpt) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt::new(&vs.root(), &ModelConfig { arch, ..tiny() });
    (vs, model)
}

fn random_ids(b: i64, t: i64) -> Tensor {
    Tensor::randint(CHAR_VOCAB_SIZE, [b, t], (Kind::Int64, Device::Cpu))
}

#[test]
fn tokenizer_round_trips_every_file_of_the_default_corpus() {
    let root = data::default_corpus_dir().expect("python3 reports its stdlib");
    let files = data::discover(&root, "py").expect("the stdlib has .py files");
    assert!(
        files.len() > 500,
        "expected the whole stdlib, found {} files",
        files.len()
    );
    let t = Tokenizer::default();
    let mut checked = 0;
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        }; // not UTF-8: skipped by design
        let encoded = t.encode(&text);
        let expected: String = text
            .chars()
            .map(|c| if c.is_ascii() { c } else { '\u{FFFD}' })
            .collect();
        assert_eq!(
            t.decode(&encoded.ids),
            expected,
            "round trip of {}",
            f.display()
        );
        assert_eq!(
            encoded.unknown,
            text.chars().filter(|c| !c.is_ascii()).count()
        );
        checked += 1;
    }
    assert!(checked > 500);
}

#[test]
fn split_is_per_file_and_disjoint() {
    let root = data::default_corpus_dir().unwrap();
    let files = data::discover(&root, "py").unwrap();
    let (train, val) = data::split_by_file(&root, &files).unwrap();
    let train_set: HashSet<_> = train.iter().collect();
    assert!(
        val.iter().all(|f| !train_set.contains(f)),
        "a file is in both splits"
    );
    assert_eq!(
        train.len() + val.len(),
        files.len(),
        "every file is in one split"
    );
    let share = val.len() as f64 / files.len() as f64;
    assert!((0.09..=0.11).contains(&share), "validation share {share}");
    assert!(files
        .iter()
        .all(|f| !f.to_string_lossy().contains("site-packages")));
}

#[test]
fn logits_have_shape_b_t_v() {
    let (_vs, model) = tiny_model(0);
    let logits = model.forward(&random_ids(3, 16), false);
    assert_eq!(logits.size(), vec![3, 16, CHAR_VOCAB_SIZE]);
    let one = model.forward(&random_ids(1, 1), false);
    assert_eq!(one.size(), vec![1, 1, CHAR_VOCAB_SIZE]);
}

#[test]
fn changing_a_later_token_never_changes_earlier_logits() {
    for arch in common::architectures() {
        causal(arch);
    }
}

fn causal(arch: Arch) {
    let (vs, model) = tiny_model_of(1, arch);
    // GPT-2's init where zero-init and the untied head would leave nothing to see.
    tch::no_grad(|| {
        for mut v in vs.trainable_variables() {
            let r = v.randn_like() * 0.3;
            v.copy_(&r);
        }
    });
    let ids = random_ids(1, 16);
    let base = model.forward(&ids, false);
    for t in [0i64, 5, 14] {
        let changed = ids.copy();
        let _ = changed
            .get(0)
            .get(t + 1)
            .fill_((ids.int64_value(&[0, t + 1]) + 1) % CHAR_VOCAB_SIZE);
        let logits = model.forward(&changed, false);
        let before = (base.narrow(1, 0, t + 1) - logits.narrow(1, 0, t + 1))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(
            before,
            0.0,
            "logits at <= {t} moved when token {} changed",
            t + 1
        );
        let after = (base.narrow(1, t + 1, 1) - logits.narrow(1, t + 1, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            after > 0.0,
            "the changed position itself must see its new token"
        );
    }
}

#[test]
fn fused_attention_equals_the_written_out_reference() {
    tch::manual_seed(2);
    let (q, k, v) = (
        Tensor::randn([2, 3, 10, 8], (Kind::Float, Device::Cpu)),
        Tensor::randn([2, 3, 10, 8], (Kind::Float, Device::Cpu)),
        Tensor::randn([2, 3, 10, 8], (Kind::Float, Device::Cpu)),
    );
    let fused =
        Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, false);
    let (reference, att) = attention_reference(&q, &k, &v);
    // Each output is a convex combination of v's rows, so both paths' rounding is
    // relative to max|v|; 1e-5 of it is ~80 f32 ulps, far above the few roundings of a
    // length-8 dot product and a length-10 softmax on any instruction set.
    let bound = 1e-5 * v.abs().max().double_value(&[]);
    assert!((fused - reference).abs().max().double_value(&[]) < bound);
    let upper = att.triu(1).abs().max().double_value(&[]);
    assert_eq!(upper, 0.0, "no weight above the diagonal");
    let rows = (att.sum_dim_intlist(-1, false, Kind::Float) - 1.0)
        .abs()
        .max()
        .double_value(&[]);
    assert!(rows < 1e-5, "rows sum to 1"); // 10 roundings of ε/2 at most: < 1e-6
}

/// With zero-init every residual branch adds exactly 0 at step 0, so the logits are
/// the head applied to the embeddings: bit for bit, since x + 0 is x.
#[test]
fn with_zero_init_every_block_starts_as_the_identity() {
    for pos in [Positions::Learned, Positions::Rope] {
        let arch = Arch {
            zero_init: true,
            pos,
            ..Arch::default()
        };
        let (vs, model) = tiny_model_of(4, arch);
        let vars = vs.variables();
        let ids = random_ids(2, 16);
        let tokens = vars["wte.weight"]
            .index_select(0, &ids.flatten(0, -1))
            .view([2, 16, -1]); // (B, T, C)
        let embed = match pos {
            Positions::Learned => tokens + &vars["wpe.weight"],
            Positions::Rope => tokens,
        };
        let logits = model.forward(&ids, false);
        assert!(logits.equal(&model.head(&embed)), "{pos:?}");
        assert!(
            logits.std(true).double_value(&[]) > 0.0,
            "the tied head scores"
        );
    }
}

/// `lm_head.weight` is a tensor of its own, starting at zero (uniform predictions),
/// that the head uses and that training moves apart from `wte`.
#[test]
fn an_untied_head_is_its_own_tensor_and_trains_apart_from_wte() {
    let arch = Arch {
        tied_head: false,
        ..Arch::default()
    };
    let (vs, model) = tiny_model_of(5, arch);
    let vars = vs.variables();
    let (head, wte) = (&vars["lm_head.weight"], &vars["wte.weight"]);
    assert_eq!(head.size(), wte.size());
    assert_ne!(head.data_ptr(), wte.data_ptr());
    assert_eq!(head.abs().max().double_value(&[]), 0.0, "zero at init");
    let wte_before = wte.copy();
    let mut params = FlatParams::new(&vs); // before the forward: it re-homes the weights
    let mut opt = AdamW::new(&params, &Preset::Tiny.train());
    let ids = random_ids(4, 17);
    let (x, y) = (ids.narrow(1, 0, 16), ids.narrow(1, 1, 16));
    let logits = model.forward(&x, true);
    assert_eq!(
        logits.abs().max().double_value(&[]),
        0.0,
        "the head is lm_head"
    );
    let loss = Gpt::loss(&logits, &y);
    let uniform = (CHAR_VOCAB_SIZE as f64).ln();
    assert!((loss.double_value(&[]) - uniform).abs() < 1e-5, "loss ln V");
    loss.backward();
    opt.step(&mut params, 1e-2);
    let vars = vs.variables(); // the re-homed tensors
    let (head, wte) = (&vars["lm_head.weight"], &vars["wte.weight"]);
    assert!(
        head.abs().max().double_value(&[]) > 1e-3,
        "the head trained"
    );
    let apart = (head - wte).abs().max().double_value(&[]);
    assert!(
        apart > 1e-2,
        "lm_head and wte differ after a step ({apart})"
    );
    // A zero head passes no gradient back: wte moves by weight decay alone, a factor
    // 1 - lr·wd = 1 - 1e-3 of each weight.
    let moved = (wte - &wte_before).abs().max().double_value(&[]);
    assert!(moved <= 1.01e-3 * wte_before.abs().max().double_value(&[]));
}

#[test]
fn a_tiny_model_memorises_one_batch() {
    let (vs, model) = tiny_model(3);
    let cfg = TrainConfig {
        weight_decay: 0.0,
        ..Preset::Tiny.train()
    };
    let mut params = FlatParams::new(&vs);
    let mut opt = AdamW::new(&params, &cfg);
    let ids = random_ids(4, 17);
    let (x, y) = (ids.narrow(1, 0, 16), ids.narrow(1, 1, 16));
    let mut loss = f64::INFINITY;
    for _ in 0..300 {
        let l = Gpt::loss(&model.forward(&x, true), &y);
        l.backward();
        let norm = params.grad_norm().double_value(&[]);
        params.clip_grad_norm(norm, 1.0);
        opt.step(&mut params, 1e-2);
        params.zero_grad();
        loss = l.double_value(&[]);
    }
    assert!(loss < 0.1, "loss after 300 steps on one batch: {loss}");
}

#[test]
fn adamw_matches_a_hand_computed_two_step_example() {
    let (lr, b1, b2, eps, wd) = (0.1, 0.9, 0.99, 1e-8, 0.5);
    let cfg = TrainConfig {
        beta1: b1,
        beta2: b2,
        eps,
        weight_decay: wd,
        ..Preset::Tiny.train()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var_copy(
        "w",
        &Tensor::from_slice(&[0.5f64, -1.0])
            .to_kind(Kind::Float)
            .view([1, 2]),
    ); // 2-D: decays
    let b = vs
        .root()
        .var_copy("b", &Tensor::from_slice(&[2.0f64]).to_kind(Kind::Float)); // 1-D: no decay
    let mut params = FlatParams::new(&vs);
    let mut opt = AdamW::new(&params, &cfg);
    let c = [0.3f64, -0.2, 0.7]; // dL/dw0, dL/dw1, dL/db in step 1; doubled in step 2
    for scale in [1.0, 2.0] {
        let loss = (&w
            * Tensor::from_slice(&[c[0] * scale, c[1] * scale])
                .to_kind(Kind::Float)
                .view([1, 2]))
        .sum(Kind::Float)
            + (&b * (c[2] * scale)).sum(Kind::Float);
        loss.backward();
        opt.step(&mut params, lr);
        params.zero_grad();
    }
    // By hand: with g1 = c and g2 = 2c, after bias correction
    // m̂2 = (1-b1)(b1+2)c / (1-b1²), v̂2 = (1-b2)(b2+4)c² / (1-b2²), and step 1 moves each
    // weight by lr·sign(c) (m̂1/√v̂1 = c/|c|). Decay multiplies 2-D weights by (1 - lr·wd) first.
    let hand = |p0: f64, g: f64, decay: bool| {
        let keep = if decay { 1.0 - lr * wd } else { 1.0 };
        let p1 = p0 * keep - lr * g / (g.abs() + eps);
        let m_hat = (1.0 - b1) * (b1 + 2.0) * g / (1.0 - b1 * b1);
        let v_hat = (1.0 - b2) * (b2 + 4.0) * g * g / (1.0 - b2 * b2);
        p1 * keep - lr * m_hat / (v_hat.sqrt() + eps)
    };
    let got_w: Vec<f64> = Vec::try_from(w.to_kind(Kind::Double).view([-1])).unwrap();
    let got_b = b.double_value(&[0]);
    for (got, want) in [
        (got_w[0], hand(0.5, c[0], true)),
        (got_w[1], hand(-1.0, c[1], true)),
        (got_b, hand(2.0, c[2], false)),
    ] {
        // The f32 update rounds about six times a step; each rounding is relative to
        // the weight and its step (≤ lr), so two steps stay within 16 ε of |p| + 2·lr
        // on any IEEE 754 machine, FMA or not; a slip in the formula moves it by ~lr.
        let bound = 16.0 * f64::from(f32::EPSILON) * (want.abs() + 2.0 * lr);
        assert!((got - want).abs() <= bound, "got {got}, by hand {want}");
    }
}

#[test]
fn generate_with_a_fixed_seed_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(&dir.path().join("corpus"), 12);
    let run = dir.path().join("run");
    common::train_tiny(&corpus, &run, 20, &[]);
    let args = [
        "generate",
        "--checkpoint",
        run.to_str().unwrap(),
        "--prompt",
        "def f",
        "--max-tokens",
        "40",
        "--seed",
        "7",
        "--temperature",
        "1.0",
        "--device",
        "cpu",
    ];
    let a = common::run(&args);
    let b = common::run(&args);
    assert!(a.status.success(), "{}", common::stderr(&a));
    assert_eq!(common::stdout(&a), common::stdout(&b));
    assert!(common::stdout(&a).trim_end_matches('\n').chars().count() > 0);
    let mut other = args.to_vec();
    other[7] = "8";
    let c = common::run(&other);
    assert_ne!(
        common::stdout(&a),
        common::stdout(&c),
        "another seed gives other text"
    );
}
