//! The optimizer and the parameters it updates: the fused AdamW agrees with the
//! written-out reference, gradients accumulate into the flat buffer, and data-parallel
//! workers sum to the whole batch's gradient.

mod common;

use std::sync::Mutex;
use sympathy::config::Preset;
use sympathy::model::Gpt;
use sympathy::run::checkpoint::OptimizerState;
use sympathy::train::data_parallel::DataParallel;
use sympathy::train::optim::AdamW;
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
