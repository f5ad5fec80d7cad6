//! Seeing inside the model: `inspect`, `explain`, `plot` and the guided tour. The tests
//! check the numbers (probabilities and attention rows are distributions, the logit
//! lens ends at the model's own logits, parameter counts add up, the PNGs decode at the
//! sizes the layout promises and show the weights), and run every command of
//! `docs/tour.md`.

mod common;

use common::{run, stderr, stdout, write_corpus};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use sympathy::config::Preset;
use sympathy::infer::generate::prepare_prompt;
use sympathy::model::flops::{flops_per_token, FlopsBreakdown};
use sympathy::run::checkpoint;
use sympathy::see::explain;
use sympathy::see::inspect;
use sympathy::see::plot;
use tch::{Device, Kind, Tensor};

const STEPS: u64 = 40;

/// A tiny run trained once per test process and shared by the tests of this file:
/// (corpus, run folder).
fn tiny_run() -> &'static (PathBuf, PathBuf) {
    static RUN: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspect");
        let _ = std::fs::remove_dir_all(&root);
        let corpus = write_corpus(&root.join("corpus"), 12);
        let run_dir = root.join("run");
        common::train_tiny(&corpus, &run_dir, STEPS, &[]);
        (corpus, run_dir)
    })
}

fn scratch(name: &str) -> PathBuf {
    let dir = tiny_run().1.parent().unwrap().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    (0..t.size()[0])
        .map(|i| Vec::<f32>::try_from(t.get(i).to_kind(Kind::Float)).unwrap())
        .collect()
}

const PROMPT: &str = "def f_3(n):\n    return";

#[test]
fn explain_probabilities_and_attention_are_distributions() {
    let loaded = checkpoint::load(&tiny_run().1, Device::Cpu).unwrap();
    let tok = &loaded.state.tokenizer;
    let cfg = &loaded.state.model;
    let ids = prepare_prompt(tok, PROMPT, cfg.block_size).ids;
    let t = ids.len();
    assert_eq!(t as i64, cfg.block_size, "the prompt fills the context");
    let e = explain::explain(&loaded.model, tok, &ids, 5, None).unwrap();

    // Every position's next-token distribution sums to 1.
    let probs = rows(&e.probs);
    assert_eq!(probs.len(), t);
    for (pos, row) in probs.iter().enumerate() {
        let sum: f64 = row.iter().map(|&p| p as f64).sum();
        assert!((sum - 1.0).abs() < 1e-5, "position {pos} sums to {sum}");
        assert!(row.iter().all(|&p| p >= 0.0));
    }
    // They are the model's own: the softmax of the reference (fused-kernel) forward.
    let idx = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).unsqueeze(0);
    let reference = tch::no_grad(|| loaded.model.forward(&idx, false))
        .get(0)
        .softmax(-1, Kind::Float);
    let diff = (&e.probs - &reference).abs().max().double_value(&[]);
    assert!(
        diff < 1e-5,
        "explain's probabilities differ from forward's by {diff}"
    );

    // The table: top-k sorted, the actual next token's probability and rank are right.
    assert_eq!(e.positions.len(), t);
    for p in &e.positions {
        let row = &probs[p.pos];
        assert_eq!(p.top.len(), 5);
        assert!(p.top.windows(2).all(|w| w[0].prob >= w[1].prob));
        let max = row.iter().cloned().fold(0f32, f32::max) as f64;
        assert_eq!(p.top[0].prob, max);
        match (&p.actual, ids.get(p.pos + 1)) {
            (Some(a), Some(&next)) => {
                assert_eq!(a.token, next);
                assert_eq!(a.prob, row[next as usize] as f64);
                let better = row.iter().filter(|&&q| q > row[next as usize]).count();
                assert_eq!(p.actual_rank, Some(better + 1));
            }
            (None, None) => assert_eq!(p.pos, t - 1),
            other => panic!("position {}: actual {:?}", p.pos, other.0),
        }
    }
    let last3 = explain::explain(&loaded.model, tok, &ids, 2, Some(3)).unwrap();
    let shown: Vec<usize> = last3.positions.iter().map(|p| p.pos).collect();
    assert_eq!(shown, vec![t - 3, t - 2, t - 1]);

    // Attention: one (H, T, T) per layer, rows sum to 1, nothing above the diagonal.
    assert_eq!(e.attention.len() as i64, cfg.n_layer);
    for (l, att) in e.attention.iter().enumerate() {
        assert_eq!(att.size(), vec![cfg.n_head, t as i64, t as i64]);
        for h in 0..cfg.n_head {
            for (q, row) in rows(&att.get(h)).iter().enumerate() {
                let sum: f64 = row.iter().map(|&w| w as f64).sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "layer {l} head {h} row {q} sums to {sum}"
                );
                assert!(
                    row[q + 1..].iter().all(|&w| w == 0.0),
                    "layer {l} head {h} row {q} sees the future"
                );
            }
        }
    }
}

#[test]
fn logit_lens_last_layer_equals_the_models_logits() {
    let loaded = checkpoint::load(&tiny_run().1, Device::Cpu).unwrap();
    let tok = &loaded.state.tokenizer;
    let cfg = &loaded.state.model;
    let ids = prepare_prompt(tok, "import os\n", cfg.block_size).ids;
    let e = explain::explain(&loaded.model, tok, &ids, 3, None).unwrap();
    assert_eq!(e.lens_logits.size(), vec![cfg.n_layer + 1, cfg.vocab_size]);
    assert_eq!(e.lens.len() as i64, cfg.n_layer + 1);
    assert_eq!(e.lens[0].stage, "embeddings");

    let idx = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).unsqueeze(0);
    let logits = tch::no_grad(|| loaded.model.forward(&idx, false)); // (1, T, V)
    let last = logits.get(0).get(ids.len() as i64 - 1);
    let lens_last = e.lens_logits.get(cfg.n_layer);
    let diff = (&lens_last - &last).abs().max().double_value(&[]);
    assert!(
        diff < 1e-4,
        "the lens's last row differs from the logits by {diff}"
    );
    // And its top prediction is the table's top prediction at the last position.
    assert_eq!(
        e.lens.last().unwrap().top[0].token,
        e.positions.last().unwrap().top[0].token
    );
    // The earlier rows are real, different readings, not copies of the output.
    let first = (&e.lens_logits.get(0) - &last)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        first > 1e-3,
        "the embeddings row equals the output ({first})"
    );
}

#[test]
fn parameter_count_is_the_sum_of_tensor_sizes() {
    let run_dir = &tiny_run().1;
    let loaded = checkpoint::load(run_dir, Device::Cpu).unwrap();
    let cfg = loaded.state.model.clone();
    let rows = inspect::parameter_rows(&loaded.vs);
    let sum: i64 = rows.iter().map(|r| r.count).sum();
    let from_vs: i64 = loaded
        .vs
        .variables()
        .values()
        .map(|t| t.numel() as i64)
        .sum();
    assert_eq!(sum, from_vs);
    for r in &rows {
        assert_eq!(r.count, r.shape.iter().product::<i64>(), "{}", r.name);
    }
    let shares: f64 = rows.iter().map(|r| r.share).sum();
    assert!((shares - 1.0).abs() < 1e-9);
    // GPT-2 with biases: wte + wpe + L·(12C² + 13C) + ln_f.
    let (l, c, t, v) = (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size);
    assert_eq!(sum, v * c + t * c + l * (12 * c * c + 13 * c) + 2 * c);
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names[..3], ["wte.weight", "wpe.weight", "h.0.ln_1.weight"]);
    assert_eq!(names.last(), Some(&"ln_f.bias"));

    // The CLI reports the same total, memory and training summary.
    let o = run(&[
        "inspect",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["total_params"].as_i64(), Some(sum));
    assert_eq!(j["params"].as_array().unwrap().len(), rows.len());
    let weights = j["memory"]["weights"].as_u64().unwrap();
    assert_eq!(weights, 4 * sum as u64);
    assert_eq!(j["memory"]["adamw_state"].as_u64(), Some(2 * weights));
    let b = loaded.state.train.batch_size;
    let act = (b * t * inspect::activation_values(&cfg) * 4) as u64;
    assert_eq!(j["memory"]["activations"].as_u64(), Some(act));
    assert_eq!(j["training"]["step"].as_u64(), Some(STEPS));
    assert_eq!(
        j["training"]["tokens_seen"].as_u64(),
        Some(STEPS * (b * t) as u64)
    );
    assert!(j["training"]["best_val_loss"].as_f64().unwrap() < (v as f64).ln());
    assert_eq!(j["flops"]["training"].as_f64(), Some(flops_per_token(&cfg)));

    // A preset before training, with an override, through the human table.
    let o = run(&[
        "inspect",
        "--preset",
        "small",
        "--arch",
        "gpt2",
        "--n-layer",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut small = Preset::Small.model(v);
    small.arch = sympathy::config::Arch::default();
    small.n_layer = 3;
    let c = small.n_embd;
    let expected = v * c + small.block_size * c + 3 * (12 * c * c + 13 * c) + 2 * c;
    let total_line = stdout(&o)
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap()
        .to_string();
    assert!(
        total_line.contains(&inspect::thousands(expected)),
        "{total_line}"
    );
    assert!(!stdout(&o).contains("h.3."), "three layers, not four");
}

#[test]
fn flops_split_adds_up_to_six_n_plus_attention() {
    for preset in [Preset::Tiny, Preset::Small, Preset::Large] {
        let cfg = preset.model(131);
        let f = FlopsBreakdown::of(&cfg);
        let (l, c, t, v) = (
            cfg.n_layer as f64,
            cfg.n_embd as f64,
            cfg.block_size as f64,
            cfg.vocab_size as f64,
        );
        // N counts the weights that multiply activations: the blocks' matrices and the tied head.
        let n = 12.0 * l * c * c + v * c;
        assert_eq!(f.forward(), 2.0 * n + 4.0 * l * t * c);
        assert_eq!(f.training(), 6.0 * n + 12.0 * l * c * t);
        assert_eq!(
            f.mlp,
            2.0 * f.attention - 8.0 * l * t * c,
            "MLP is 16C², attention 8C² + 4TC"
        );
    }
}

/// Width, height and RGB(A) pixels of a PNG.
fn decode_png(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(file).read_info().expect("a valid PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a decodable frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

fn pixel(img: &(u32, u32, png::ColorType, Vec<u8>), (x, y): (u32, u32)) -> [u8; 3] {
    let channels = match img.2 {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected colour type {other:?}"),
    };
    let i = ((y * img.0 + x) * channels) as usize;
    [img.3[i], img.3[i + 1], img.3[i + 2]]
}

fn distinct_colours(img: &(u32, u32, png::ColorType, Vec<u8>)) -> usize {
    let mut seen = std::collections::HashSet::new();
    for y in (0..img.1).step_by(3) {
        for x in (0..img.0).step_by(3) {
            seen.insert(pixel(img, (x, y)));
        }
    }
    seen.len()
}

/// The arguments of `sympathy explain --checkpoint CHECKPOINT --prompt PROMPT EXTRA...`.
fn explain_args<'a>(checkpoint: &'a str, prompt: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["explain", "--checkpoint", checkpoint, "--prompt", prompt];
    args.extend_from_slice(extra);
    args
}

#[test]
fn pngs_decode_with_the_expected_size_and_show_the_weights() {
    let (_, run_dir) = tiny_run();
    let out = scratch("pngs");
    let run_s = run_dir.to_str().unwrap();
    let out_s = out.to_str().unwrap();
    let prompt = "print(x)"; // 8 tokens
    let o = run(&explain_args(run_s, prompt, &["--out", out_s]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (n_layer, n_head) = (2, 2);
    for l in 0..n_layer {
        let img = decode_png(&out.join(format!("attention-layer{l}.png")));
        assert_eq!((img.0, img.1), plot::attention_grid_size(n_head, 8));
        assert!(distinct_colours(&img) > 8, "layer {l} looks blank");
    }

    let o = run(&explain_args(
        run_s,
        prompt,
        &["--layer", "1", "--head", "1", "--out", out_s],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let img = decode_png(&out.join("attention-layer1-head1.png"));
    assert_eq!((img.0, img.1), plot::attention_map_size(8));
    // Position 0 can only attend to itself (weight 1: the darkest colour); the cell
    // above the diagonal is masked grey; a row's cells are shaded by its weights.
    let c = plot::heat(1.0);
    assert_eq!(
        pixel(&img, plot::attention_map_cell_center(8, 0, 0)),
        [c.0, c.1, c.2]
    );
    let m = plot::MASKED;
    assert_eq!(
        pixel(&img, plot::attention_map_cell_center(8, 0, 7)),
        [m.0, m.1, m.2]
    );
    let loaded = checkpoint::load(run_dir, Device::Cpu).unwrap();
    let ids = prepare_prompt(&loaded.state.tokenizer, prompt, 16).ids;
    let e = explain::explain(&loaded.model, &loaded.state.tokenizer, &ids, 1, None).unwrap();
    let w = rows(&e.attention[1].get(1));
    for k in 0..8u32 {
        let c = plot::heat(w[7][k as usize]);
        assert_eq!(
            pixel(&img, plot::attention_map_cell_center(8, 7, k)),
            [c.0, c.1, c.2],
            "cell (7, {k})"
        );
    }

    // Loss curves: written by training, and by `plot` for several runs.
    let img = decode_png(&run_dir.join("loss.png"));
    assert_eq!((img.0, img.1), plot::LOSS_CHART_SIZE);
    assert!(distinct_colours(&img) > 8);
    let chart = out.join("two.png");
    let o = run(&["plot", run_s, run_s, "--out", chart.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), chart.to_str().unwrap());
    let img = decode_png(&chart);
    assert_eq!((img.0, img.1), plot::LOSS_CHART_SIZE);
}

#[test]
fn bad_input_gets_a_one_line_error() {
    let (corpus, run_dir) = tiny_run();
    let run_s = run_dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (explain_args(run_s, "x", &["--layer", "9"]), "--layer"),
        (
            explain_args(run_s, "x", &["--layer", "0", "--head", "5"]),
            "--head",
        ),
        (explain_args(run_s, "x", &["--top-k", "0"]), "--top-k"),
        (
            explain_args("/nonexistent/run", "x", &[]),
            "/nonexistent/run",
        ),
        (
            vec!["inspect", "--checkpoint", run_s, "--n-layer", "3"],
            "--n-layer",
        ),
        (
            vec!["inspect", "--checkpoint", run_s, "--block-size", "64"],
            "--block-size",
        ),
        (
            vec!["inspect", "--preset", "small", "--n-embd", "30"],
            "--n-embd",
        ),
        (
            vec!["inspect", "--preset", "small", "--batch-size", "0"],
            "--batch-size",
        ),
        (vec!["plot", corpus.to_str().unwrap()], "metrics.jsonl"),
    ];
    for (args, needle) in cases {
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

/// Splits a command line like a POSIX shell does for plain words and quotes; anything
/// a test cannot run faithfully (pipes, redirects, variables) is refused.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut quote, mut in_word) = (Vec::new(), String::new(), None, false);
    for ch in line.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '|' | '>' | '<' | ';' | '&' | '$' | '`' | '\\') => {
                panic!("tour command uses shell syntax the test cannot run: {line}")
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unclosed quote in: {line}");
    if in_word {
        words.push(cur);
    }
    words
}

/// The tour's commands, with `train` forced to a tiny model on the test corpus: the
/// reader trains for minutes on the stdlib, the test for seconds on a few files.
fn tiny_version(mut args: Vec<String>, corpus: &Path) -> Vec<String> {
    if args[0] != "train" {
        return args;
    }
    let mut out = Vec::new();
    let mut it = args.drain(..);
    let mut max_steps = 6u64;
    let mut has_data = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--preset" | "--max-minutes" => {
                it.next();
            }
            "--max-steps" => max_steps = it.next().unwrap().parse::<u64>().unwrap().min(6),
            "--data" => {
                has_data = true;
                out.push(a);
            }
            _ => out.push(a),
        }
    }
    out.extend([
        "--preset".into(),
        "tiny".into(),
        "--max-steps".into(),
        max_steps.to_string(),
    ]);
    if !has_data {
        out.extend(["--data".into(), corpus.to_str().unwrap().into()]);
    }
    out
}

#[test]
fn tour_commands_run() {
    let tour_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tour.md");
    let tour = std::fs::read_to_string(&tour_path).unwrap();

    // Links to the code: the file exists and has the lines; a link whose text is a name
    // in backticks lands on a line that contains that name.
    let mut links = 0;
    for (i, _) in tour.match_indices("](../") {
        let text_start = tour[..i].rfind('[').unwrap();
        let text = &tour[text_start + 1..i];
        let target = &tour[i + 2..i + 2 + tour[i + 2..].find(')').unwrap()];
        let (file, anchor) = target.split_once("#L").unwrap_or((target, ""));
        let path = tour_path.parent().unwrap().join(file);
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("tour links to {target}: {e}"));
        let lines: Vec<&str> = source.lines().collect();
        if !anchor.is_empty() {
            let (a, b) = anchor.split_once("-L").unwrap_or((anchor, anchor));
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            assert!(
                1 <= a && a <= b && b <= lines.len(),
                "{target}: {} has {} lines",
                file,
                lines.len()
            );
            if let Some(name) = text.strip_prefix('`').and_then(|t| t.strip_suffix('`')) {
                let name = name.rsplit("::").next().unwrap();
                assert!(
                    lines[a - 1].contains(name),
                    "{target} should start at `{name}` but is: {}",
                    lines[a - 1]
                );
            }
        }
        links += 1;
    }
    assert!(
        links >= 20,
        "the tour links its stops to the code ({links} links)"
    );

    // The commands of every ```sh block, in order.
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in tour.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" if in_sh => in_sh = false,
            l if in_sh && !l.is_empty() && !l.starts_with('#') => {
                let words = shell_words(l);
                assert_eq!(
                    words[0], "sympathy",
                    "tour commands are sympathy commands: {l}"
                );
                commands.push(words[1..].to_vec());
            }
            _ => {}
        }
    }
    assert!(
        commands.len() >= 30,
        "found only {} commands",
        commands.len()
    );
    let first = &commands[0];
    assert_eq!(
        first[..3],
        ["train", "--out", "runs/tour"],
        "the tour starts by training runs/tour"
    );

    let (corpus, _) = tiny_run();
    let cwd = scratch("tour");
    for cmd in commands {
        let args = tiny_version(cmd.clone(), corpus);
        let o = common::sympathy()
            .args(&args)
            .current_dir(&cwd)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "tour command `sympathy {}` failed: {}",
            cmd.join(" "),
            stderr(&o)
        );
        let printed = o.stdout.len() + o.stderr.len();
        assert!(printed > 0, "`sympathy {}` printed nothing", cmd.join(" "));
    }
    // What the tour tells the reader to look at exists.
    for png in [
        "runs/tour/loss.png",
        "runs/tour/explain/attention-layer0.png",
        "runs/tour/explain/attention-layer1-head0.png",
        "runs/onehead/explain/attention-layer1.png",
        "runs/clip.png",
        "runs/warmup.png",
        "runs/tour/quiz/attention-layer1-head1.png",
    ] {
        let (w, h, _, _) = decode_png(&cwd.join(png));
        assert!(w > 100 && h > 100, "{png} is {w}×{h}");
    }
}
