//! The web page's inside view and the CLI's `explain` are two views of one
//! [`explain::Explanation`]: the JSON carries the same numbers the tables print, the
//! logit lens at every position ends at the model's own predictions, and the CLI's lens
//! rows are the last column of the JSON's.

mod common;

use common::write_corpus;
use std::path::Path;
use sympathy::infer::generate::prepare_prompt;
use sympathy::run::checkpoint;
use sympathy::see::{explain, explain_view};
use tch::Device;

#[test]
fn the_json_view_and_the_tables_come_from_one_explanation() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("explain_view");
    let _ = std::fs::remove_dir_all(&root);
    let corpus = write_corpus(&root.join("corpus"), 4);
    common::train_tiny(&corpus, &root.join("run"), 30, &[]);
    let loaded = checkpoint::load(&root.join("run"), Device::Cpu).unwrap();
    let tok = &loaded.state.tokenizer;
    let cfg = &loaded.state.model;
    let ids = prepare_prompt(tok, "def f(n):\n  é", cfg.block_size).ids;
    let t = ids.len();
    let e = explain::explain(&loaded.model, tok, &ids, 4, None).unwrap();
    let v = explain_view::view(&e, tok);

    assert_eq!(
        (v.n_layer as i64, v.n_head as i64),
        (cfg.n_layer, cfg.n_head)
    );
    assert_eq!(v.positions, e.positions, "the JSON's top-k is the table's");
    // Non-ASCII is not hidden: 'é' became <unk>, decoded as U+FFFD.
    let last = v.tokens.last().unwrap();
    assert_eq!(
        (last.text.as_str(), last.display.as_str()),
        ("\u{FFFD}", "<unk>")
    );
    // The mean loss is the table's footer: -ln p(next) averaged.
    let by_hand: f64 = e.positions[..t - 1]
        .iter()
        .map(|p| -p.actual.as_ref().unwrap().prob.ln())
        .sum::<f64>()
        / (t - 1) as f64;
    // Same f64 terms summed in the same order: bit for bit.
    assert_eq!(v.mean_loss, Some(by_hand));
    assert!(explain::render(&e).contains(&format!("{by_hand:.4} nats")));

    // Attention: row q of every head holds q + 1 weights, each the tensor's own within
    // the 4-decimal rounding of the view (|error| ≤ 5e-5, independent of the machine).
    for (l, layer) in v.attention.iter().enumerate() {
        for (h, head) in layer.iter().enumerate() {
            let map = e.attention[l].get(h as i64); // (T, T)
            for (q, row) in head.iter().enumerate() {
                assert_eq!(row.len(), q + 1);
                for (k, &w) in row.iter().enumerate() {
                    let exact = map.double_value(&[q as i64, k as i64]);
                    assert!(
                        (w as f64 - exact).abs() <= 5e-5 + 1e-7,
                        "L{l} H{h} ({q},{k}): {w} vs {exact}"
                    );
                }
            }
        }
    }

    // The lens: one stage per residual, a top-k at every position; its last stage is
    // the model's output at every position, and the CLI's rows are its last column.
    assert_eq!(v.lens.len() as i64, cfg.n_layer + 1);
    for stage in &v.lens {
        assert_eq!(stage.positions.len(), t);
    }
    for (pos, top) in v.lens.last().unwrap().positions.iter().enumerate() {
        let out = &e.positions[pos].top;
        assert_eq!(
            top.iter().map(|p| p.token).collect::<Vec<_>>(),
            out.iter().map(|p| p.token).collect::<Vec<_>>(),
            "position {pos}: the lens's output stage differs from the model's predictions"
        );
        // Two computations (the head on the residual vs the forward's logits): bounded
        // relative to the probability, a few f32 ulps of the softmax, on any x86-64.
        for (a, b) in top.iter().zip(out) {
            assert!(
                (a.prob - b.prob).abs() <= 1e-5 * b.prob.max(1e-3),
                "{a:?} vs {b:?}"
            );
        }
    }
    for (stage, row) in v.lens.iter().zip(&e.lens) {
        assert_eq!(stage.positions[t - 1], row.top, "{}", row.stage);
    }
}
