//! Generation: the KV cache against the uncached reference, sliding past the context,
//! batched sampling, `<eos>` handling, and the `generate` / `bench generate` CLI.
//! (Sampling on fixed logits is unit-tested in `src/sampling.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use sympathy::config::{Arch, ModelConfig, Normalization, Preset};
use sympathy::infer::generate::{self, GenerateConfig, StopReason};
use sympathy::infer::sampling::{Sampler, SamplingConfig};
use sympathy::model::Gpt;
use sympathy::run::checkpoint;
use sympathy::tokenizer::{TokenId, Tokenizer, EOS};
use tch::{nn, Device, Kind, Tensor};

/// fp32 agreement of the cached paths with the uncached forward, relative to the
/// largest reference logit (at least 1): different kernels (matrix-vector against
/// matrix-matrix products, attention over one query against T) sum in other orders,
/// each within a few ulps of the magnitudes summed; 1e-4 of them is ~800 ulps, on any
/// instruction set. Measured: ~3e-6.
const TOL: f64 = 1e-4;

fn tiny_config() -> ModelConfig {
    Preset::Tiny.model(Tokenizer::default().vocab_size())
}

/// A random tiny model of architecture `arch` whose weights are N(0, 0.5²) instead of
/// GPT-2's 0.02 (or zero), so that its logits are large (std > 1) and a cache bug
/// cannot hide below the tolerance. An RMSNorm, which has no bias to add scale, gets
/// gains 1 + N(0, 0.5²) instead.
fn random_model(seed: i64, arch: Arch) -> (nn::VarStore, Gpt) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch,
        ..tiny_config()
    };
    let model = Gpt::new(&vs.root(), &cfg);
    let rms = cfg.arch.norm == Normalization::RmsNorm;
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0)); // a fixed order of draws
    tch::no_grad(|| {
        for (name, mut v) in vars {
            let gain = rms && v.dim() == 1 && name.ends_with(".weight");
            let r = v.randn_like() * 0.5 + if gain { 1.0 } else { 0.0 };
            v.copy_(&r);
        }
    });
    (vs, model)
}

/// One tiny model trained for a few steps on the test corpus, shared by every test
/// (the binary and the checkpoint are built once per `cargo test` run).
fn trained_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generation");
        let _ = std::fs::remove_dir_all(&root);
        let corpus = common::write_corpus(&root.join("corpus"), 6);
        let run = root.join("run");
        common::train_tiny(&corpus, &run, 40, &[]);
        run
    })
}

fn trained_model() -> checkpoint::Loaded {
    checkpoint::load(trained_dir(), Device::Cpu).expect("the trained checkpoint loads")
}

fn ids(rows: &[Vec<i64>]) -> Tensor {
    let t = rows[0].len() as i64;
    let flat: Vec<i64> = rows.concat();
    Tensor::from_slice(&flat).view([rows.len() as i64, t]) // (B, T)
}

/// max |a - b| / max(1, max |b|), `b` the reference.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let scale = b.abs().max().double_value(&[]).max(1.0);
    (a - b).abs().max().double_value(&[]) / scale
}

/// Runs `x` (B, T) through the cache in chunks of the given sizes and returns the
/// logits of every position, (B, T, V).
fn cached_in_chunks(model: &Gpt, x: &Tensor, chunks: &[i64]) -> Tensor {
    let mut cache = model.new_cache();
    let mut start = 0;
    let mut parts = Vec::new();
    for &n in chunks {
        parts.push(model.forward_cached(&x.narrow(1, start, n), &mut cache));
        start += n;
    }
    assert_eq!(start, x.size()[1], "chunks cover the prompt");
    assert_eq!(cache.pos(), start);
    assert!(cache.layers().iter().all(|l| l.len() == start));
    Tensor::cat(&parts, 1)
}

/// For prompts of length 1, a few lengths in between and one filling the context, the
/// cached logits equal the uncached ones at every position, whether the prompt is
/// prefilled at once, fed one token at a time, or in uneven chunks (a chunk after a
/// cached prefix exercises the shifted causal mask), and so do those of
/// `Gpt::decode_one`, the one-sequence decode path, fed one token at a time.
fn assert_cache_matches(model: &Gpt, prompts: &[Vec<Vec<i64>>], min_logit_std: f64) {
    let (block, arch) = (model.config().block_size, &model.config().arch);
    let _guard = tch::no_grad_guard();
    for rows in prompts {
        let x = ids(rows);
        let t = x.size()[1];
        let reference = model.forward(&x, false); // (B, T, V)
        let std = reference.std(true).double_value(&[]);
        assert!(
            std > min_logit_std,
            "{arch:?}: logits too small ({std}) to test anything"
        );
        let mut schedules = vec![vec![t], vec![1; t as usize]];
        if t > 3 {
            schedules.push(vec![3, 1, t - 4]);
        }
        for chunks in schedules {
            let cached = cached_in_chunks(model, &x, &chunks);
            let diff = rel_diff(&cached, &reference);
            assert!(
                diff <= TOL,
                "{arch:?} T={t} (block {block}), chunks {chunks:?}: max |cached - uncached| = {diff}"
            );
        }
        // The one-sequence fast path, token by token from an empty cache, on row 0.
        let mut cache = model.new_cache();
        let steps: Vec<Tensor> = rows[0]
            .iter()
            .map(|&id| model.decode_one(id, &mut cache)) // (V,) each
            .collect();
        let diff = rel_diff(&Tensor::stack(&steps, 0), &reference.get(0));
        assert!(
            diff <= TOL,
            "{arch:?} T={t}: max |decode_one - uncached| = {diff}"
        );
    }
}

/// Prompts of the given lengths, `batch` rows each, from a seeded stream of ids.
fn random_prompts(lengths: &[i64], batch: usize, vocab: i64) -> Vec<Vec<Vec<i64>>> {
    tch::manual_seed(7);
    lengths
        .iter()
        .map(|&t| {
            let x = Tensor::randint(vocab, [batch as i64, t], (Kind::Int64, Device::Cpu));
            (0..batch as i64)
                .map(|b| Vec::<i64>::try_from(x.get(b)).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn cached_logits_equal_uncached_for_a_random_model() {
    for arch in common::architectures() {
        let (_vs, model) = random_model(0, arch);
        let block = model.config().block_size;
        let prompts = random_prompts(&[1, 2, 7, block], 2, model.config().vocab_size);
        assert_cache_matches(&model, &prompts, 1.0);
    }
}

#[test]
fn cached_logits_equal_uncached_for_a_trained_model() {
    let loaded = trained_model();
    let block = loaded.state.model.block_size as usize;
    let text = "def f_1_2(n):\n    return [x**3 for x in range(n)]\n";
    let code: Vec<i64> = Tokenizer::default()
        .encode(text)
        .ids
        .iter()
        .map(|&i| i as i64)
        .collect();
    let prompts: Vec<Vec<Vec<i64>>> = [1, 5, 11, block]
        .iter()
        .map(|&t| vec![code[..t].to_vec(), code[20..20 + t].to_vec()])
        .collect();
    assert_cache_matches(&loaded.model, &prompts, 0.2);
}

/// One prompt prefilled once and copied into three rows, then each row decoding its own
/// token, equals the uncached forward of each row's sequence; dropping a row keeps the
/// others intact.
#[test]
fn batch_rows_of_one_prefill_match_their_own_sequences() {
    for arch in [Arch::default(), Arch::modern()] {
        batch_rows_match(arch);
    }
}

fn batch_rows_match(arch: Arch) {
    let (_vs, model) = random_model(1, arch);
    let _guard = tch::no_grad_guard();
    let prompt = vec![10_i64, 20, 30, 40, 50];
    let mut cache = model.new_cache();
    let _ = model.forward_cached(&ids(std::slice::from_ref(&prompt)), &mut cache);
    cache.select_rows(&Tensor::from_slice(&[0_i64, 0, 0]));
    assert_eq!(cache.batch_size(), 3);
    let next = [[1_i64], [2], [3]];
    let step = model.forward_cached(&ids(&next.map(|n| n.to_vec())), &mut cache); // (3, 1, V)
    for (b, n) in next.iter().enumerate() {
        let seq = [prompt.clone(), n.to_vec()].concat();
        let reference = model.forward(&ids(&[seq]), false).narrow(1, 5, 1);
        assert!(rel_diff(&step.narrow(0, b as i64, 1), &reference) <= TOL);
    }
    // Row 1 finishes: rows 0 and 2 go on.
    cache.select_rows(&Tensor::from_slice(&[0_i64, 2]));
    let step = model.forward_cached(&ids(&[vec![4], vec![5]]), &mut cache);
    for (b, seq) in [[1_i64, 4], [3, 5]].iter().enumerate() {
        let seq = [prompt.clone(), seq.to_vec()].concat();
        let reference = model.forward(&ids(&[seq]), false).narrow(1, 6, 1);
        assert!(rel_diff(&step.narrow(0, b as i64, 1), &reference) <= TOL);
    }
}

fn sampled(max_tokens: usize, use_cache: bool, block_size: Option<i64>) -> GenerateConfig {
    GenerateConfig {
        max_tokens,
        sampling: SamplingConfig {
            temperature: 1.0,
            ..SamplingConfig::default()
        },
        seed: 3,
        use_cache,
        block_size,
        ignore_eos: true,
        ..GenerateConfig::default()
    }
}

/// The tokens `cfg` samples when the logits come from the uncached forward over the
/// window each policy prescribes: `slide` (the cached path: when the window would exceed
/// `block`, restart it from the newest `block / 2` tokens) or crop (the uncached path:
/// the newest `block` tokens). The sampler draws the same random numbers as
/// `generate`'s, so any difference in a window shows up as different tokens.
fn reference_tokens(
    model: &Gpt,
    prompt: &[TokenId],
    cfg: &GenerateConfig,
    block: usize,
    slide: bool,
) -> Vec<TokenId> {
    let _guard = tch::no_grad_guard();
    let mut sampler = Sampler::new(cfg.sampling.clone(), cfg.seed);
    let mut context = prompt.to_vec();
    let mut start = 0;
    let mut out = Vec::new();
    while out.len() < cfg.max_tokens {
        // The documented policies, written out here rather than imported.
        let keep = if slide { (block / 2).max(1) } else { block };
        if context.len() - start > block {
            start = context.len() - keep;
        }
        let window: Vec<i64> = context[start..].iter().map(|&i| i as i64).collect();
        let logits = model.forward(&ids(&[window]), false);
        let mut v = Vec::<f32>::try_from(logits.get(0).get(-1)).unwrap();
        v[EOS as usize] = f32::NEG_INFINITY;
        let next = sampler.sample(&v, &context);
        out.push(next);
        context.push(next);
    }
    out
}

/// Generating several windows' worth of tokens works on both paths, and each follows its
/// documented window policy exactly (checked against the uncached forward), for the
/// model's context and for a smaller `--block-size`, from a one-token prompt and from
/// one that fills the window. The random model is used because its outputs depend
/// strongly on every position, so a window off by one changes the tokens.
#[test]
fn generation_past_the_context_follows_the_window_policy() {
    let (_vs, model) = random_model(3, Arch::default());
    let tok = Tokenizer::default();
    let model_block = model.config().block_size as usize;
    let n = 3 * model_block + 5;
    for block in [model_block, 7] {
        let full: Vec<TokenId> = tok.encode(&"    return [x".repeat(3)).ids[..block].to_vec();
        for prompt in [vec![EOS], full] {
            for use_cache in [true, false] {
                let cfg = sampled(n, use_cache, Some(block as i64));
                let done = generate::generate(&model, &tok, &prompt, &cfg, |_| {}).unwrap();
                assert_eq!(done.tokens_generated, n);
                assert_eq!(done.stop_reason, StopReason::MaxTokens);
                let expected = reference_tokens(&model, &prompt, &cfg, block, use_cache);
                assert_eq!(
                    done.tokens,
                    expected,
                    "block {block}, prompt of {}, cache {use_cache}",
                    prompt.len()
                );
            }
        }
    }
}

/// N completions in one batch equal N single runs with seeds seed, seed+1, …, also when
/// a stop string ends the rows at different steps (they then leave the batch).
#[test]
fn batched_samples_equal_single_runs_with_consecutive_seeds() {
    let loaded = trained_model();
    let tok = &loaded.state.tokenizer;
    let prompt = tok.encode("def f_").ids;
    let cfg = GenerateConfig {
        max_tokens: 40,
        sampling: SamplingConfig {
            temperature: 1.2,
            top_k: Some(20),
            top_p: Some(0.95),
            repetition_penalty: 1.1,
        },
        seed: 11,
        stop: vec!["(".to_string()],
        ..GenerateConfig::default()
    };
    let mut streamed = vec![String::new(); 4];
    let batch = generate::generate_batch(&loaded.model, tok, &prompt, &cfg, 4, |i, s| {
        streamed[i].push_str(s)
    })
    .unwrap();
    assert_eq!(batch.len(), 4);
    for (i, c) in batch.iter().enumerate() {
        let single_cfg = GenerateConfig {
            seed: cfg.seed + i as u64,
            ..cfg.clone()
        };
        let single = generate::generate(&loaded.model, tok, &prompt, &single_cfg, |_| {}).unwrap();
        assert_eq!((c.sample, c.seed), (i, 11 + i as u64));
        assert_eq!(c.tokens, single.tokens, "sample {i}");
        assert_eq!(c.text, single.text);
        assert_eq!(streamed[i], c.text, "the stream carries exactly the text");
        assert_eq!(c.stop_reason, single.stop_reason);
        assert!(!c.text.contains('('), "output ends before the stop string");
    }
    let lengths: std::collections::BTreeSet<usize> =
        batch.iter().map(|c| c.tokens_generated).collect();
    assert!(
        lengths.len() > 1,
        "rows should finish at different steps: {lengths:?}"
    );
    // Different seeds give different text, the same seed the same.
    assert!(batch.iter().any(|c| c.tokens != batch[0].tokens));
    let again = generate::generate_batch(&loaded.model, tok, &prompt, &cfg, 4, |_, _| {}).unwrap();
    assert!(again.iter().zip(&batch).all(|(a, b)| a.text == b.text));
}

/// A model that always predicts `<eos>` (its final LayerNorm outputs a constant vector
/// that the tied head scores highest for `<eos>`) stops at once, unless told to ignore it.
#[test]
fn eos_stops_generation_unless_ignored() {
    let (vs, model) = random_model(2, Arch::default());
    tch::no_grad(|| {
        let vars = vs.variables();
        let u = Tensor::randn([32], (Kind::Float, Device::Cpu));
        let _ = vars["ln_f.weight"].shallow_clone().zero_();
        vars["ln_f.bias"].shallow_clone().copy_(&u);
        vars["wte.weight"].get(EOS as i64).copy_(&(&u * 10.0));
    });
    let tok = Tokenizer::default();
    for use_cache in [true, false] {
        let mut cfg = GenerateConfig {
            max_tokens: 30,
            use_cache,
            ..GenerateConfig::default()
        };
        let done = generate::generate(&model, &tok, &[b'a' as TokenId], &cfg, |_| {}).unwrap();
        assert_eq!(
            (done.stop_reason, done.tokens_generated),
            (StopReason::Eos, 0)
        );
        cfg.ignore_eos = true;
        let done = generate::generate(&model, &tok, &[b'a' as TokenId], &cfg, |_| {}).unwrap();
        assert_eq!(done.stop_reason, StopReason::MaxTokens);
        assert_eq!(done.tokens_generated, 30);
        assert!(!done.tokens.contains(&EOS));
    }
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "failed: {}", common::stderr(out));
    common::stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

#[test]
fn cli_num_samples_json_and_text() {
    let ckpt = trained_dir().to_str().unwrap();
    let base = [
        "generate",
        "--checkpoint",
        ckpt,
        "--device",
        "cpu",
        "--prompt",
        "def ",
    ];
    let args = [
        &base[..],
        &[
            "--num-samples",
            "3",
            "--json",
            "--max-tokens",
            "20",
            "--seed",
            "4",
        ],
    ]
    .concat();
    let objects = json_lines(&common::run(&args));
    assert_eq!(objects.len(), 3);
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(o["sample"], i);
        assert_eq!(o["seed"], 4 + i);
        let n = o["tokens_generated"].as_u64().unwrap();
        assert!(n <= 20 && o["tokens"].as_array().unwrap().len() as u64 == n);
        assert!(o["text"].is_string());
        assert!(o["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(n == 0 || o["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        let reason = o["stop_reason"].as_str().unwrap();
        assert!(
            ["max_tokens", "eos", "stop_string"].contains(&reason),
            "{reason}"
        );
    }
    let args = [
        &base[..],
        &["--num-samples", "2", "--max-tokens", "10", "--ignore-eos"],
    ]
    .concat();
    let out = common::run(&args);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    assert!(
        text.contains("--- sample 1/2 (seed 1337, 10 tokens, max_tokens) ---\n"),
        "{text}"
    );
    assert!(
        text.contains("--- sample 2/2 (seed 1338, 10 tokens, max_tokens) ---\n"),
        "{text}"
    );

    for (flag, value) in [("--num-samples", "0"), ("--block-size", "99")] {
        let out = common::run(&[&base[..], &[flag, value]].concat());
        assert_eq!(out.status.code(), Some(1));
        let err = common::stderr(&out);
        assert!(
            err.starts_with(&format!("error: {flag}")) && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn cli_bench_generate_reports_both_paths() {
    let ckpt = trained_dir().to_str().unwrap();
    let out = common::run(&[
        "bench",
        "generate",
        "--checkpoint",
        ckpt,
        "--device",
        "cpu",
        "--json",
        "--lengths",
        "8,40",
    ]);
    let objects = json_lines(&out);
    assert_eq!(objects.len(), 1);
    let o = &objects[0];
    assert_eq!(o["lengths"], serde_json::json!([8, 40]));
    for key in ["cached_tokens_per_s", "uncached_tokens_per_s", "speedup"] {
        let v = o[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is an array"));
        assert_eq!(v.len(), 2, "{key}");
        assert!(v.iter().all(|x| x.as_f64().unwrap() > 0.0), "{key}: {v:?}");
    }
    let out = common::run(&["bench", "generate", "--checkpoint", ckpt, "--lengths", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).starts_with("error: --lengths"));
}
