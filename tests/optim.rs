//! The optimizer and the parameters it updates: the fused AdamW agrees with the
//! written-out reference, gradients accumulate into the flat buffer, data-parallel
//! workers sum to the whole batch's gradient, and Muon orthogonalises its updates,
//! takes the hidden matrices (AdamW the rest), and agrees with a PyTorch Muon.

mod common;

use std::sync::Mutex;
use sympathy::config::{NsPrecision, Optimizer, Preset, TrainConfig};
use sympathy::model::Gpt;
use sympathy::run::checkpoint::OptimizerState;
use sympathy::runtime::torch_ext::with_onednn;
use sympathy::train::data_parallel::DataParallel;
use sympathy::train::muon::{newton_schulz, newton_schulz_batched, NS_STEPS};
use sympathy::train::optim::{AdamW, Optimizers};
use sympathy::train::params::FlatParams;
use tch::{nn, Device, Kind, Tensor};

/// libtorch's generator is global: tests that seed it take turns.
static RNG: Mutex<()> = Mutex::new(());

/// Which update an optimizer runs in [`train_steps`].
#[derive(Clone, Copy)]
enum Path {
    Reference,
    FlatOps,
}

/// A tiny GPT, seeded, its flat parameters and optimizer, and one fixed batch (B=4).
fn tiny_setup() -> (nn::VarStore, Gpt, FlatParams, AdamW, Tensor, Tensor) {
    let cfg = Preset::Tiny.model(131);
    let mut tcfg = Preset::Tiny.train();
    tcfg.grad_clip = 0.5; // low enough that clipping happens
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt::new(&vs.root(), &cfg);
    let params = FlatParams::new(&vs);
    let opt = AdamW::new(&params, &tcfg);
    let window = Tensor::randint(131, [4, cfg.block_size + 1], (Kind::Int64, Device::Cpu));
    let (x, y) = (
        window.narrow(1, 0, cfg.block_size),
        window.narrow(1, 1, cfg.block_size),
    );
    (vs, model, params, opt, x, y)
}

/// Forward, backward and clip (at 0.5) on the fixed batch.
fn gradients(model: &Gpt, params: &mut FlatParams, x: &Tensor, y: &Tensor) -> f64 {
    Gpt::loss(&model.forward(x, true), y).backward();
    let norm = params.grad_norm().double_value(&[]);
    params.clip_grad_norm(norm, 0.5);
    norm
}

/// Deep copies of every parameter, by name.
fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// `steps` full training steps through `path`; the parameters after the last one.
fn train_steps(path: Path, steps: usize) -> Vec<(String, Tensor)> {
    let (vs, model, mut params, mut opt, x, y) = tiny_setup();
    for _ in 0..steps {
        gradients(&model, &mut params, &x, &y);
        match path {
            Path::Reference => opt.step_reference(&mut params, 1e-2),
            Path::FlatOps => opt.step_flat_ops(&mut params, 1e-2),
        }
        params.zero_grad();
    }
    snapshot(&vs)
}

#[test]
fn flat_tensor_ops_match_the_reference_bit_for_bit() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let start = train_steps(Path::Reference, 0);
    let reference = train_steps(Path::Reference, 6);
    assert!(max_abs_diff(&start, &reference) > 1e-3, "the weights moved");
    assert_eq!(
        max_abs_diff(&reference, &train_steps(Path::FlatOps, 6)),
        0.0
    );
}

/// The fused CPU loop and the reference, each applied to the same state at every step
/// of a short run: the updates agree to float rounding (see [`ULPS`]). Not bit for bit:
/// the two paths' kernels fuse and vectorise differently, by the instruction set the
/// machine has. Over several steps such differences grow where Adam divides two tiny
/// numbers, so the comparison is per step.
#[test]
fn fused_adamw_step_agrees_with_the_reference() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (vs, model, mut params, mut opt, x, y) = tiny_setup();
    let dir = tempfile::tempdir().unwrap();
    let mut clipped = false;
    for step in 1..=5 {
        clipped |= gradients(&model, &mut params, &x, &y) > 0.5;
        let before = snapshot(&vs);
        let state = deep_copy(opt.state_tensors());
        opt.step_reference(&mut params, 1e-2);
        let (reference, ref_state) = (snapshot(&vs), deep_copy(opt.state_tensors()));
        // Back to the state before the update, then the fused path.
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                t.copy_(&before.iter().find(|b| b.0 == name).unwrap().1);
            }
        });
        opt.load_state(&state, dir.path()).unwrap();
        opt.step(&mut params, 1e-2);
        // θ' = θ·(1-lr·λ) - lr·m̂/(√v̂+ε) combines θ and the step: both bound its error.
        let step_size = zip_map(&before, &reference, |b, r| r - b);
        let weights = scale(&[&before, &reference, &step_size]);
        let ulps = worst_ulps(&reference, &snapshot(&vs), &weights);
        assert!(
            ulps <= ULPS,
            "step {step}: weights differ by {ulps:.1} ulps"
        );
        assert!(
            max_abs_diff(&before, &reference) > 1e-4,
            "step {step} moved the weights"
        );
        // m' = β1·m + (1-β1)·g and v' = β2·v + (1-β2)·g²: bounded by old and new moment.
        let moments = scale(&[&state, &ref_state]);
        let ulps = worst_ulps(&ref_state, &opt.state_tensors(), &moments);
        assert!(
            ulps <= ULPS,
            "step {step}: moments differ by {ulps:.1} ulps"
        );
        params.zero_grad();
    }
    assert!(clipped, "the clip was exercised");
}

/// How far the fused update may sit from the reference, in units of f32's machine
/// epsilon (2⁻²³) times the magnitude of what each element's update combines. Each
/// element passes through about six f32 operations (decay, lerp, the v update, sqrt,
/// division, the final add); IEEE 754 rounds each to within half an ulp of its result on
/// every x86-64 (SSE, AVX2 and AVX-512 alike: `sqrt` and `div` are correctly rounded)
/// and on aarch64. What differs between machines is only which pairs are fused into one
/// multiply-add and the vector width ATen's kernels pick at run time, which changes at
/// most one rounding per operation in either path: ≤ 6 ulps of those magnitudes apart,
/// so 8 holds anywhere. A real slip is far outside it: a change of 1e-5 to one update is
/// ≥ 40 of these units on a weight of magnitude ≤ 1, and a bias-correction slip changes
/// the first step tenfold.
const ULPS: f64 = 8.0;

/// Deep copies of named tensors.
fn deep_copy(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors.into_iter().map(|(n, t)| (n, t.copy())).collect()
}

/// `f(a, b)` for each pair of same-named tensors.
fn zip_map(
    a: &[(String, Tensor)],
    b: &[(String, Tensor)],
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
) -> Vec<(String, Tensor)> {
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (na.clone(), f(ta, tb))
        })
        .collect()
}

/// Element by element, the sum of the magnitudes of `parts` (in f64).
fn scale(parts: &[&[(String, Tensor)]]) -> Vec<(String, Tensor)> {
    let abs = |t: &Tensor| t.to_kind(Kind::Double).abs();
    parts[1..]
        .iter()
        .fold(zip_map(parts[0], parts[0], |t, _| abs(t)), |acc, part| {
            zip_map(&acc, part, |a, t| a + abs(t))
        })
}

/// The largest |got − want| over all elements, in units of f32 epsilon × `scale`
/// (infinite where the scale is zero and the values differ).
fn worst_ulps(
    want: &[(String, Tensor)],
    got: &[(String, Tensor)],
    scale: &[(String, Tensor)],
) -> f64 {
    let diff = zip_map(want, got, |w, g| {
        (w.to_kind(Kind::Double) - g.to_kind(Kind::Double)).abs()
    });
    zip_map(&diff, scale, |d, s| d / (s * f64::from(f32::EPSILON)))
        .iter()
        .map(|(_, r)| r.nan_to_num(0.0, None, None).max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn gradients_accumulate_into_the_flat_buffer() {
    // Two backward passes without zero_grad add up, as with ordinary `.grad`s.
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Preset::Tiny.model(131);
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt::new(&vs.root(), &cfg);
    let params = FlatParams::new(&vs);
    assert_eq!(
        params.grad_norm().double_value(&[]),
        0.0,
        "gradients start at zero"
    );
    let x = Tensor::randint(131, [2, cfg.block_size], (Kind::Int64, Device::Cpu));
    Gpt::loss(&model.forward(&x, false), &x).backward();
    let once = params.grad_norm().double_value(&[]);
    let per_tensor: f64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.grad().square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    assert!(once > 0.0 && (once - per_tensor).abs() <= 1e-5 * once);
    Gpt::loss(&model.forward(&x, false), &x).backward();
    let twice = params.grad_norm().double_value(&[]);
    assert!(
        (twice - 2.0 * once).abs() <= 1e-4 * once,
        "{twice} vs 2 × {once}"
    );
}

/// Every parameter's gradient, by name.
fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut g: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.grad().copy()))
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    g
}

/// Two workers on halves of the batch give the gradient of the whole batch, also after
/// an update (so the replica sees the optimizer's new weights), and repeat exactly.
#[test]
fn data_parallel_workers_sum_to_the_whole_batch_gradient() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (vs, mut model, mut params, mut opt, x, y) = tiny_setup();
    let mut dp = DataParallel::new(&Preset::Tiny.model(131), Device::Cpu, &params, 2);
    assert_eq!(dp.workers(), 2);
    let mut runs = vec![];
    for step in 0..2 {
        let whole = Gpt::loss(&model.forward(&x, true), &y);
        whole.backward();
        let (one, loss_one) = (grads(&vs), whole.double_value(&[]));
        params.zero_grad();
        let out = dp.forward_backward(&mut model, &mut params, &x, &y, 1.0);
        let two = grads(&vs);
        let d = max_abs_diff(&one, &two);
        let scale = one
            .iter()
            .map(|g| g.1.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        assert!(
            d <= 1e-5 * scale,
            "step {step}: gradients differ by {d} (largest {scale})"
        );
        assert!((out.loss.double_value(&[]) - loss_one).abs() <= 1e-5 * loss_one);
        runs.push(two);
        opt.step(&mut params, 1e-2);
        params.zero_grad();
    }
    // The replica computed at the updated weights: step 1's gradient differs from 0's.
    assert!(max_abs_diff(&runs[0], &runs[1]) > 1e-6);
    // And a repeat of step 1's worker pass gives the same bits.
    let again = {
        let _ = dp.forward_backward(&mut model, &mut params, &x, &y, 1.0);
        let g = grads(&vs);
        params.zero_grad();
        let _ = dp.forward_backward(&mut model, &mut params, &x, &y, 1.0);
        (g, grads(&vs))
    };
    assert_eq!(max_abs_diff(&again.0, &again.1), 0.0, "deterministic");
}

// ---------------------------------------------------------------------------------
// Muon
// ---------------------------------------------------------------------------------

/// Newton–Schulz keeps G's singular vectors and maps its singular values into the
/// quintic's band. Reference: libtorch's SVD of G in f64, `G = U·S·Vᵀ` (`Tensor::svd`;
/// `linalg_svd` takes a driver name, which the CPU refuses). If NS(G) = U·diag(s')·Vᵀ,
/// then `Uᵀ·NS(G)·V` is `diag(s')`: its off-diagonal entries must vanish and its
/// diagonal lie in the band.
///
/// The band: five steps of σ ↦ 3.4445σ − 4.7750σ³ + 2.0315σ⁵ map every σ in
/// [0.0015, 1] into [0.6801, 1.2024] (evaluated on a grid of 2·10⁶ points in f64);
/// dividing G by its Frobenius norm puts every σ below 1, and for these random shapes
/// above 0.0015 (checked). NS runs in f32: 15 products of reduction length ≤ 192, each
/// rounding an entry by at most 192·2⁻²⁴ ≈ 1.1e-5 of the magnitudes it sums (≤ 1 here,
/// since every σ ≤ 1.21), so the entries of `Uᵀ·NS(G)·V` may move by ≈ 2e-4 in the worst
/// case on any IEEE-754 machine (x86-64 of any vector width, aarch64): [`NS_TOL`]. A
/// wrong orientation or a lost transpose changes them by O(0.1).
#[test]
fn newton_schulz_keeps_the_singular_vectors_and_maps_the_values_into_a_band() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(11);
    for shape in [[64, 192], [192, 64]] {
        let g = Tensor::randn(shape, (Kind::Float, Device::Cpu));
        let o = newton_schulz(&g, NS_STEPS);
        assert_eq!(o.size(), shape, "shaped like G");
        assert_in_band(&g, &o, NS_TOL);
    }
}

/// `o` is `U·diag(s')·Vᵀ` for `g = U·S·Vᵀ`, with every s' in the quintic's band and the
/// off-diagonal of `Uᵀ·o·V` within `tol` (see
/// [`newton_schulz_keeps_the_singular_vectors_and_maps_the_values_into_a_band`]).
fn assert_in_band(g: &Tensor, o: &Tensor, tol: f64) {
    let shape = g.size();
    let g = g.to_kind(Kind::Double);
    let (u, s, v) = g.svd(true, true); // (r, k), (k), (c, k); k = min(r, c)
    let smallest = s.min().double_value(&[]) / g.norm().double_value(&[]);
    assert!(smallest > 0.0015, "{shape:?}: σ_min/‖G‖ = {smallest}");
    let d = u
        .transpose(0, 1)
        .matmul(&o.to_kind(Kind::Double))
        .matmul(&v); // (k, k)
    let diag = d.diagonal(0, 0, 1);
    let off = (&d - diag.diag_embed(0, 0, 1))
        .abs()
        .max()
        .double_value(&[]);
    let (lo, hi) = (diag.min().double_value(&[]), diag.max().double_value(&[]));
    println!("{shape:?}: s' in [{lo:.4}, {hi:.4}], off-diagonal ≤ {off:.1e}");
    assert!(off <= tol, "{shape:?}: off-diagonal {off:e}");
    assert!(
        lo >= 0.6801 - tol && hi <= 1.2024 + tol,
        "{shape:?}: s' in [{lo}, {hi}]"
    );
    // Not the SVD in disguise: five steps leave the values spread over the band.
    assert!(hi - lo > 0.1, "{shape:?}: s' in [{lo}, {hi}]");
}

/// The batched fast path in f32 is the reference, matrix by matrix: N matrices of one
/// shape at once, each scaled by its own norm (one of them 1000 times larger, which a
/// norm over the whole batch would get wrong). Both run the same f32 products, grouped
/// differently, so each entry may differ by the rounding of [`NS_TOL`]'s argument.
#[test]
fn batched_newton_schulz_is_the_reference_matrix_by_matrix() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(12);
    let scales = Tensor::from_slice(&[1.0f32, 1000.0, 0.01]).view([3, 1, 1]);
    let g = Tensor::randn([3, 48, 160], (Kind::Float, Device::Cpu)) * scales;
    let batched = newton_schulz_batched(&g, NS_STEPS, Kind::Float);
    assert_eq!(batched.size(), g.size());
    for i in 0..3 {
        let want = newton_schulz(&g.get(i), NS_STEPS);
        let diff = (batched.get(i) - &want).abs().max().double_value(&[]);
        assert!(diff <= NS_TOL, "matrix {i}: differs by {diff:e}");
    }
}

/// In bf16 the fast path still keeps G's singular vectors and lands its values in the
/// band, within [`NS_BF16_TOL`].
#[test]
fn bf16_newton_schulz_keeps_the_singular_vectors_and_the_band() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(13);
    let g = Tensor::randn([2, 64, 192], (Kind::Float, Device::Cpu));
    let o = with_onednn(|| newton_schulz_batched(&g, NS_STEPS, Kind::BFloat16));
    assert_eq!(o.kind(), Kind::Float, "returned in f32");
    for i in 0..2 {
        assert_in_band(&g.get(i), &o.get(i), NS_BF16_TOL);
    }
}

/// bf16 keeps 8 bits of mantissa: each product's inputs and output round by up to 2⁻⁹
/// of their size (products accumulate in f32). Over 15 products and 5 sums of entries
/// ≤ 1.21, worst-case bounds compound to ≈ 0.1, but the iteration pulls every singular
/// value back toward its band at each step, so errors do not accumulate: measured,
/// the off-diagonal stays ≈ 0.01 and the values within 0.01 of the band. 0.03 leaves
/// room for other summation orders; a lost transpose or a wrong coefficient moves them
/// by ≥ 0.1.
const NS_BF16_TOL: f64 = 0.03;

/// See [`newton_schulz_keeps_the_singular_vectors_and_maps_the_values_into_a_band`].
const NS_TOL: f64 = 5e-4;

/// The block matrices of a `n_layer`-layer GPT, by GPT-2 name: what Muon must get.
fn hidden_matrix_names(n_layer: i64) -> Vec<String> {
    let mut names: Vec<String> = (0..n_layer)
        .flat_map(|i| {
            ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
                .map(|m| format!("h.{i}.{m}.weight"))
        })
        .collect();
    names.sort();
    names
}

#[test]
fn the_hidden_matrices_go_to_muon_and_everything_else_to_adamw() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Preset::Tiny.model(131);
    let tcfg = TrainConfig {
        optimizer: Optimizer::Muon,
        ..Preset::Tiny.train()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Gpt::new(&vs.root(), &cfg);
    let params = FlatParams::grouped(&vs, Optimizer::Muon);
    let muon: Vec<&str> = params
        .params()
        .iter()
        .filter(|p| p.muon)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(muon, hidden_matrix_names(cfg.n_layer));
    // Muon's come after AdamW's in the buffers, and Muon does not decay them.
    for p in params.params() {
        let end = p.offset + p.tensor.numel() as i64;
        if p.muon {
            assert!(p.offset >= params.n_adamw() && !p.decay, "{}", p.name);
        } else {
            assert!(end <= params.n_adamw(), "{}", p.name);
            assert_eq!(p.decay, p.tensor.dim() >= 2, "{}", p.name);
        }
    }
    // The saved state: Muon's momentum per hidden matrix, AdamW's moments for the rest.
    let names: Vec<String> = Optimizers::new(&params, &tcfg)
        .state_tensors()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for p in params.params() {
        let has = |prefix: &str| names.contains(&format!("{prefix}.{}", p.name));
        assert_eq!(
            (has("momentum"), has("m"), has("v")),
            (p.muon, !p.muon, !p.muon),
            "{}",
            p.name
        );
    }
    // Without Muon, AdamW has every parameter, laid out as before.
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Gpt::new(&vs.root(), &cfg);
    let plain = FlatParams::grouped(&vs, Optimizer::AdamW);
    assert!(plain.params().iter().all(|p| !p.muon));
    assert_eq!(plain.n_adamw(), plain.values().numel() as i64);
}

/// An independent Muon (and PyTorch's own AdamW for the other parameters), in PyTorch.
/// It reads the starting weights `w.NAME` and each step's gradients `gK.NAME` from
/// argv[1], the settings from argv[2] (JSON), and writes the weights after the last step
/// and Muon's momenta to argv[3]. It picks the hidden matrices by name itself.
const MUON_REFERENCE_PY: &str = r#"
import json, re, sys
import torch
from safetensors.torch import load_file, save_file

def newton_schulz(G, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    X = X / (X.norm() + 1e-7)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if tall else X

d = load_file(sys.argv[1])
h = json.loads(sys.argv[2])
names = sorted(k[2:] for k in d if k.startswith("w."))
hidden = [n for n in names if re.fullmatch(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight", n)]
w = {n: d["w." + n].clone().requires_grad_() for n in names}
others = [n for n in names if n not in hidden]
adamw = torch.optim.AdamW(
    [{"params": [w[n] for n in others if w[n].dim() >= 2], "weight_decay": h["weight_decay"]},
     {"params": [w[n] for n in others if w[n].dim() < 2], "weight_decay": 0.0}],
    lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"])
momentum = {n: torch.zeros_like(w[n]) for n in hidden}
mu = h["muon_momentum"]
for k, lr in enumerate(h["lrs"]):
    for n in others:
        w[n].grad = d[f"g{k}.{n}"]
    for group in adamw.param_groups:
        group["lr"] = lr
    adamw.step()
    muon_lr = h["muon_lr"] * lr / h["lr"]
    with torch.no_grad():
        for n in hidden:
            g = d[f"g{k}.{n}"]
            momentum[n].mul_(mu).add_(g)
            u = g.add(momentum[n], alpha=mu)
            scale = max(1.0, g.size(0) / g.size(1)) ** 0.5
            w[n].add_(newton_schulz(u), alpha=-muon_lr * scale)
out = {"w." + n: w[n].detach() for n in names}
out.update({"momentum." + n: momentum[n] for n in hidden})
save_file(out, sys.argv[3])
"#;

/// Three steps of `Optimizers` with Muon (on the tiny GPT's own gradients, clipped, at
/// falling rates) against [`MUON_REFERENCE_PY`] fed the same gradients. Compared: each
/// parameter's whole update `w_3 − w_0` and Muon's momenta, relative to their norms.
/// Bound, for any x86-64: the Muon update is NS of the same f32 inputs, whose rounding
/// moves it by ≤ 2e-4 of its size (see [`NS_TOL`]); AdamW's fused loop sits within 8
/// ulps of PyTorch's single-tensor update per element (see [`ULPS`]), ≈ 1e-6 of the
/// step. [`PARITY_TOL`] = 1e-3 is above both; a wrong coefficient, scale, momentum or
/// rate, or a matrix updated by both optimizers, is off by ≥ 1e-2.
#[test]
fn muon_and_adamw_steps_match_a_pytorch_reference() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Preset::Tiny.model(131);
    let tcfg = TrainConfig {
        optimizer: Optimizer::Muon,
        lr: 1e-2,
        // The reference multiplies in f32.
        muon_precision: NsPrecision::Fp32,
        ..Preset::Tiny.train()
    };
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt::new(&vs.root(), &cfg);
    let mut params = FlatParams::grouped(&vs, Optimizer::Muon);
    let mut opt = Optimizers::new(&params, &tcfg);
    let window = Tensor::randint(131, [4, cfg.block_size + 1], (Kind::Int64, Device::Cpu));
    let (x, y) = (window.narrow(1, 0, 16), window.narrow(1, 1, 16));
    let before = snapshot(&vs);
    let mut dump: Vec<(String, Tensor)> = before
        .iter()
        .map(|(n, t)| (format!("w.{n}"), t.copy()))
        .collect();
    let lrs = [1e-2, 6e-3, 3e-3];
    for (k, &lr) in lrs.iter().enumerate() {
        gradients(&model, &mut params, &x, &y);
        dump.extend(
            grads(&vs)
                .into_iter()
                .map(|(n, g)| (format!("g{k}.{n}"), g)),
        );
        opt.step(&mut params, lr);
        params.zero_grad();
    }
    let want = python_reference(&dump, &tcfg, &lrs);
    let got = snapshot(&vs);
    let momenta = opt.muon.as_ref().unwrap().state_tensors();
    let rel = |got: &Tensor, want: &Tensor, size: &Tensor| {
        let d = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).norm();
        d.double_value(&[]) / size.to_kind(Kind::Double).norm().double_value(&[])
    };
    let mut worst = (0.0, String::new());
    for ((name, w0), (_, w3)) in before.iter().zip(&got) {
        let reference = &want[&format!("w.{name}")];
        let e = rel(w3, reference, &(reference - w0));
        assert!(
            e <= PARITY_TOL,
            "{name}: update differs by {e:.2e} of its size"
        );
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    for (name, m) in &momenta {
        let e = rel(m, &want[name], &want[name]);
        assert!(e <= PARITY_TOL, "{name} differs by {e:.2e} of its size");
    }
    assert_eq!(momenta.len(), hidden_matrix_names(cfg.n_layer).len());
    println!(
        "3 steps: worst update differs by {:.1e} ({})",
        worst.0, worst.1
    );
}

/// See [`muon_and_adamw_steps_match_a_pytorch_reference`].
const PARITY_TOL: f64 = 1e-3;

/// Runs [`MUON_REFERENCE_PY`] on `dump` with `tcfg`'s settings and the rates `lrs`.
fn python_reference(
    dump: &[(String, Tensor)],
    tcfg: &TrainConfig,
    lrs: &[f64],
) -> std::collections::HashMap<String, Tensor> {
    let py = common::venv_python("Muon parity");
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    Tensor::write_safetensors(dump, &input).unwrap();
    let settings = serde_json::json!({
        "lr": tcfg.lr, "lrs": lrs, "beta1": tcfg.beta1, "beta2": tcfg.beta2, "eps": tcfg.eps,
        "weight_decay": tcfg.weight_decay, "muon_lr": tcfg.muon_lr,
        "muon_momentum": tcfg.muon_momentum,
    });
    let o = std::process::Command::new(py)
        .args(["-c", MUON_REFERENCE_PY])
        .arg(&input)
        .arg(settings.to_string())
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the PyTorch reference failed:\n{}",
        common::stderr(&o)
    );
    Tensor::read_safetensors(&output)
        .unwrap()
        .into_iter()
        .collect()
}
