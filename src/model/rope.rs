//! Rotary position embeddings, RoPE (Su et al. 2021, "RoFormer", §3.4).
//!
//! GPT-2 adds a learned vector per position to the token embedding, once, and hopes
//! the layers keep it. RoPE instead rotates the queries and keys of every layer: pair
//! `i` of a head's `D` dimensions, seen as a point in the plane, turns by the angle
//! `m·θ_i` at position `m`, with `θ_i = 10000^(-2i/D)` (fast turns for the first pairs,
//! slow for the last). A rotation preserves lengths, and the dot product of two
//! rotated vectors depends on the difference of their angles only, so `q_m·k_n` sees
//! the offset `m - n`, never where the pair sits: attention becomes relative.
//!
//! Pairs are "half-split" as in GPT-NeoX and Llama: dimension `i` goes with `i + D/2`
//! (not `2i` with `2i + 1` as in the paper), so a rotation is two slices and one
//! concatenation. The cos and sin of every angle, (block_size, D/2), are computed once
//! when the model is built: a buffer on the model's device, not a parameter, so neither
//! the optimizer nor a checkpoint ever sees it.

use tch::{Device, Kind, Tensor};

/// The base of the angles, as in the paper, GPT-NeoX and Llama 2.
const BASE: f64 = 10000.0;

/// The cos and sin tables of every position and pair.
#[derive(Debug)]
pub struct Rope {
    /// cos(m·θ_i), (block_size, D/2).
    cos: Tensor,
    /// sin(m·θ_i), (block_size, D/2).
    sin: Tensor,
}

/// Which positions the rows of a (B, H, T, D) tensor sit at.
#[derive(Clone, Copy)]
pub enum At<'a> {
    /// Every row at `p..p + T`: a forward pass, or a cached one after `p` positions.
    Start(i64),
    /// Batch row `b` at `pos[b]` (T = 1): the server's decode step, `pos` (B,) Int64.
    Rows(&'a Tensor),
}

impl Rope {
    /// The tables for heads of width `head_dim` (even) at positions `0..block_size`.
    pub fn new(block_size: i64, head_dim: i64, device: Device) -> Self {
        assert!(
            head_dim % 2 == 0,
            "RoPE rotates pairs: the head width must be even"
        );
        let half = head_dim / 2;
        let opts = (Kind::Double, Device::Cpu);
        // θ_i = BASE^(-2i/D), i = 0..D/2; angles m·θ_i in f64, then rounded once to f32.
        let theta = (Tensor::arange(half, opts) * (-2.0 * BASE.ln() / head_dim as f64)).exp();
        let angles = Tensor::arange(block_size, opts).outer(&theta); // (T, D/2)
        let table = |t: Tensor| t.to_kind(Kind::Float).to(device);
        Rope {
            cos: table(angles.cos()),
            sin: table(angles.sin()),
        }
    }

    /// The same tables, not copied: every layer holds one of these.
    pub fn share(&self) -> Self {
        Rope {
            cos: self.cos.shallow_clone(),
            sin: self.sin.shallow_clone(),
        }
    }

    /// cos and sin of the `t` positions from `start`, (t, D/2) each, as the rotation
    /// and the fused kernel ([`super::fused::rms_norm`]) take them.
    pub fn tables(&self, start: i64, t: i64) -> (Tensor, Tensor) {
        (self.cos.narrow(0, start, t), self.sin.narrow(0, start, t))
    }

    /// x (B, H, T, D) rotated to the positions `at` -> (B, H, T, D).
    pub fn rotate(&self, x: &Tensor, at: At) -> Tensor {
        let (cos, sin) = match at {
            At::Start(p) => {
                let t = x.size()[2];
                self.tables(p, t) // (T, D/2) each
            }
            At::Rows(pos) => {
                let b = pos.size()[0];
                let gather = |t: &Tensor| t.index_select(0, pos).view([b, 1, 1, -1]); // (B, 1, 1, D/2)
                (gather(&self.cos), gather(&self.sin))
            }
        };
        // A bf16 model rotates in bf16 (the tables are f32).
        let (cos, sin) = (cos.to_kind(x.kind()), sin.to_kind(x.kind()));
        let half = x.size()[3] / 2;
        let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half)); // (B, H, T, D/2) each
                                                                        // Pair (x1_i, x2_i) turned by the angle: (x1 cos - x2 sin, x2 cos + x1 sin).
        Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x2 * &cos + &x1 * &sin], 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

    /// The paper's formulation, written independently: each pair (x_i, x_{i+D/2}) as the
    /// complex number x_i + i·x_{i+D/2}, multiplied by e^{i·m·θ_i}, in f64.
    fn rotate_complex(x: &Tensor, positions: &Tensor) -> Tensor {
        let d = x.size()[3];
        let x = x.to_kind(Kind::Double);
        let (x1, x2) = (x.narrow(3, 0, d / 2), x.narrow(3, d / 2, d / 2));
        let z = Tensor::stack(&[x1, x2], -1).view_as_complex(); // (B, H, T, D/2) complex
        let i = Tensor::arange(d / 2, (Kind::Double, Device::Cpu));
        let theta = Tensor::from(BASE).pow(&(i * (-2.0 / d as f64)));
        let angle = positions.to_kind(Kind::Double).outer(&theta); // (T, D/2)
        let turned = (z * Tensor::polar(&angle.ones_like(), &angle)).view_as_real(); // (…, 2)
        Tensor::cat(&[turned.select(-1, 0), turned.select(-1, 1)], 3)
    }

    #[test]
    fn rotation_equals_complex_multiplication() {
        let (t, d) = (64, 16);
        let rope = Rope::new(t, d, Device::Cpu);
        let x = Tensor::randn([2, 3, 5, d], CPU);
        for start in [0, 17, t - 5] {
            let got = rope.rotate(&x, At::Start(start));
            let want = rotate_complex(&x, &Tensor::arange_start(start, start + 5, CPU));
            // Each output is a·cos + b·sin with cos, sin rounded to f32 once (their
            // f64 angles exact to 1e-13 up to m·θ ≤ 64): three roundings of ε = f32
            // epsilon relative to |a| + |b|, on any machine; 8·ε leaves room.
            let scale = x.narrow(3, 0, d / 2).abs() + x.narrow(3, d / 2, d / 2).abs();
            let bound = Tensor::cat(&[&scale, &scale], 3) * (8.0 * f64::from(f32::EPSILON));
            let excess = ((got.to_kind(Kind::Double) - want).abs() - bound)
                .max()
                .double_value(&[]);
            assert!(excess <= 0.0, "start {start}: over the bound by {excess}");
        }
        // Rows at their own positions gather the same angles.
        let pos = Tensor::from_slice(&[9i64, 40]);
        let one = x.narrow(2, 0, 1); // (2, 3, 1, D)
        let got = rope.rotate(&one, At::Rows(&pos));
        for b in 0..2 {
            let row = one.narrow(0, b, 1);
            let p = pos.int64_value(&[b]);
            let want = rope.rotate(&row, At::Start(p));
            assert!(got.narrow(0, b, 1).equal(&want), "row {b}");
        }
    }

    #[test]
    fn scores_depend_only_on_the_offset() {
        let (t, d) = (128, 32);
        let rope = Rope::new(t, d, Device::Cpu);
        // Fixed, irregular vectors: random ones (unseeded here) now and then give two
        // offsets nearly the same score, and the last check below fails by chance.
        let i = Tensor::arange(d, CPU);
        let (q, k) = (
            (&i * 0.7 + 0.3).sin().view([1, 1, 1, d]),
            (&i * 1.3 + 0.1).cos().view([1, 1, 1, d]),
        );
        let score = |m: i64, n: i64| {
            let (qm, kn) = (rope.rotate(&q, At::Start(m)), rope.rotate(&k, At::Start(n)));
            (qm * kn).sum(Kind::Float).double_value(&[])
        };
        // Per pair, (|q_i| + |q_{i+D/2}|)·(|k_i| + |k_{i+D/2}|): what a rotated pair's
        // product can reach, whatever the angle.
        let pair = |x: &Tensor| x.narrow(3, 0, d / 2).abs() + x.narrow(3, d / 2, d / 2).abs();
        let scale = (pair(&q) * pair(&k)).sum(Kind::Float).double_value(&[]);
        for (m, n) in [(5, 2), (40, 40), (3, 60), (70, 1)] {
            for s in [1, 13, 50] {
                let (a, b) = (score(m, n), score(m + s, n + s));
                // A rotated value is within ~3·ε (ε = f32 epsilon) of exact relative to
                // its pair's |x_i| + |x_{i+D/2}| (the tables round once, the rotation
                // twice), and the score sums D products in some order (γ_D): each score
                // is within (6 + D)·ε of `scale`, on any machine, so two agree to twice that.
                let bound = 2.0 * (6.0 + d as f64) * f64::from(f32::EPSILON) * scale;
                assert!(
                    (a - b).abs() <= bound,
                    "({m}, {n}) shifted by {s}: {a} vs {b}"
                );
            }
        }
        // And it does depend on the offset.
        assert!((score(5, 2) - score(5, 3)).abs() > 1e-3 * scale);
    }
}
