//! The fused CPU kernels (`model::fused`) against libtorch's ops, forward and
//! gradients: ReLU² bit for bit; RMSNorm, alone and followed by RoPE's rotation on a
//! strided query, against the same layers computed by libtorch in f64, within bounds
//! on the rounding of f32 sums; the gain's gradient is the same on one thread and two.

use sympathy::config::Activation;
use sympathy::model::fused;
use sympathy::model::mlp::activate_reference;
use sympathy::model::rope::{At, Rope};
use tch::{Device, Kind, Tensor};

const F32: (Kind, Device) = (Kind::Float, Device::Cpu);
const EPS: f64 = 1e-5;

/// Gradients of `out` (weighted by `weight`, so that every element counts differently)
/// with respect to `inputs`.
fn grads(out: &Tensor, weight: &Tensor, inputs: &[&Tensor]) -> Vec<Tensor> {
    let loss = (out * weight).sum(out.kind());
    Tensor::run_backward(&[loss], inputs, false, false)
}

fn leaf(t: Tensor) -> Tensor {
    t.set_requires_grad(true)
}

/// ReLU²'s forward is `r·r` with r = max(x, 0), one rounding, as libtorch's `relu` then
/// `square`; its gradient is `g·(2r)`, where `2r` is exact, again one rounding of the
/// same operands as libtorch's `pow` backward: equal bit for bit on any IEEE-754
/// machine. Inputs include zeros, negatives and a NaN (which passes through, as it does
/// through libtorch's `relu`).
#[test]
fn relu2_is_libtorchs_relu_then_square_bit_for_bit() {
    tch::manual_seed(1);
    let x = Tensor::randn([5, 7, 96], F32) * 3.0;
    let _ = x.get(0).get(0).narrow(0, 0, 4).fill_(0.0);
    let _ = x.get(1).get(1).narrow(0, 0, 1).fill_(f64::NAN);
    let g = Tensor::randn([5, 7, 96], F32);
    let (xf, xr) = (leaf(x.copy()), leaf(x.copy()));
    let (yf, yr) = (
        fused::relu2(&xf),
        activate_reference(&xr, Activation::Relu2),
    );
    assert!(same(&yf, &yr), "forward");
    let (gf, gr) = (&grads(&yf, &g, &[&xf])[0], &grads(&yr, &g, &[&xr])[0]);
    assert!(same(gf, gr), "gradient");
    assert!(
        yf.isnan().any().int64_value(&[]) == 1,
        "the NaN passed through"
    );
}

/// Equal values, and NaN where the other has NaN.
fn same(a: &Tensor, b: &Tensor) -> bool {
    let finite = |t: &Tensor| t.nan_to_num(0.0, None, None);
    a.isnan().equal(&b.isnan()) && finite(a).equal(&finite(b))
}

/// RMSNorm (and the rotation after it) in f64 with libtorch's ops, from the same f32
/// inputs: the output, the gradients of x and w, and for each the sum of the absolute
/// values of the terms it is made of (what bounds its rounding).
struct Reference {
    y: Tensor,
    gx: Tensor,
    gw: Tensor,
    y_mag: Tensor,
    gx_mag: Tensor,
    gw_mag: Tensor,
}

/// Rotates the pairs (i, i + D/2) of the last dimension by the angles of cos, sin
/// (T, D/2) (the transpose, i.e. the inverse, with `inverse`); with `abs`, the bound
/// `|a|·|cos| + |b|·|sin|` of each result instead.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, inverse: bool, abs: bool) -> Tensor {
    let h = x.size()[x.dim() - 1] / 2;
    let (a, b) = (x.narrow(-1, 0, h), x.narrow(-1, h, h));
    if abs {
        let (a, b, c, s) = (a.abs(), b.abs(), cos.abs(), sin.abs());
        return Tensor::cat(&[&a * &c + &b * &s, &b * &c + &a * &s], -1);
    }
    let s = if inverse { -sin } else { sin.shallow_clone() };
    Tensor::cat(&[&a * cos - &b * &s, &b * cos + &a * &s], -1)
}

fn reference(x: &Tensor, w: &Tensor, g: &Tensor, rope: Option<(&Tensor, &Tensor)>) -> Reference {
    let d64 = |t: &Tensor| t.detach().to_kind(Kind::Double);
    let (x, w, g) = (leaf(d64(x)), leaf(d64(w)), d64(g));
    let d = x.size()[x.dim() - 1];
    let normed = x.rms_norm([d], Some(&w), EPS);
    let tables = rope.map(|(c, s)| (d64(c), d64(s)));
    let y = match &tables {
        Some((c, s)) => rotate(&normed, c, s, false, false),
        None => normed,
    };
    let gs = grads(&y, &g, &[&x, &w]);
    // Magnitudes, from |x|, |w|, |g|: n = x·rstd, y = rotate(n·w).
    let rstd = (x.square().mean_dim(-1, true, Kind::Double) + EPS).rsqrt();
    let n = (&x * &rstd).abs().detach();
    let (w_abs, x_abs, rstd) = (w.abs().detach(), x.abs().detach(), rstd.detach());
    let (y_mag, gz_mag) = match &tables {
        Some((c, s)) => (
            rotate(&(&n * &w_abs), c, s, false, true),
            rotate(&g, c, s, true, true),
        ),
        None => (&n * &w_abs, g.abs()),
    };
    let rows: Vec<i64> = (0..x.dim() as i64 - 1).collect();
    let gw_mag = (&gz_mag * &n).sum_dim_intlist(&rows[..], false, Kind::Double);
    let gn_mag = &gz_mag * &w_abs;
    let dot_mag = (&gn_mag * &x_abs).sum_dim_intlist(-1, true, Kind::Double);
    let gx_mag = &rstd * &gn_mag + &x_abs * rstd.pow_tensor_scalar(3) * dot_mag / d as f64;
    Reference {
        y: y.detach(),
        gx: gs[0].shallow_clone(),
        gw: gs[1].shallow_clone(),
        y_mag,
        gx_mag,
        gw_mag,
    }
}

/// |got − want| ≤ `terms`·ε·mag elementwise (ε = f32 epsilon).
fn assert_within(what: &str, got: &Tensor, want: &Tensor, mag: &Tensor, terms: i64) {
    let bound = mag * (terms as f64 * f64::from(f32::EPSILON));
    let excess = ((got.to_kind(Kind::Double) - want).abs() - bound)
        .max()
        .double_value(&[]);
    assert!(
        excess <= 0.0,
        "{what}: over the rounding bound by {excess:e}"
    );
}

/// Bounds for any x86-64 (any vector width, any summation order), from Higham's
/// γ_n ≈ n·ε for a sum of n terms, relative to the sum of their absolute values:
/// - y: the mean of D squares (relative error ≤ D·ε, all terms positive), its square
///   root halves that, then three products and the rotation's two: (D + 8)·ε of |y|'s
///   magnitude;
/// - gx: rstd as above, and the dot product over D: (2D + 16)·ε of its magnitude;
/// - gw: a sum over the R rows of terms each carrying rstd's error: (R + 2D + 16)·ε.
///
/// A wrong sign in the rotation, a missing factor or a row at the wrong position is
/// off by the size of the values themselves, thousands of times these bounds.
///
/// The kernel's input is `view(base)`, which may be strided.
fn check(
    base: &Tensor,
    view: impl Fn(&Tensor) -> Tensor,
    w: &Tensor,
    g: &Tensor,
    rope: Option<(&Tensor, &Tensor)>,
) {
    let (bf, wf) = (leaf(base.copy()), leaf(w.copy()));
    let y = fused::rms_norm(&view(&bf), &wf, EPS, rope);
    assert!(y.is_contiguous());
    let gs = grads(&y, g, &[&bf, &wf]);
    let x = view(base);
    let r = reference(&x, w, g, rope);
    let d = *x.size().last().unwrap();
    let rows = x.numel() as i64 / d;
    assert_within("y", &y, &r.y, &r.y_mag, d + 8);
    assert_within("gx", &view(&gs[0]), &r.gx, &r.gx_mag, 2 * d + 16);
    assert_within("gw", &gs[1], &r.gw, &r.gw_mag, rows + 2 * d + 16);
}

#[test]
fn rms_norm_matches_libtorch_in_f64_forward_and_backward() {
    tch::manual_seed(2);
    // Rows of very different scales, one of them near the epsilon.
    let scales = Tensor::from_slice(&[1e-3f32, 1.0, 30.0]).view([3, 1, 1]);
    let x = Tensor::randn([3, 20, 192], F32) * scales;
    let w = Tensor::randn([192], F32) + 1.0;
    let g = Tensor::randn([3, 20, 192], F32);
    check(&x, Tensor::shallow_clone, &w, &g, None);
}

/// QK-norm then RoPE on a query as attention takes it: a (B, H, T, D) view of the
/// (B, T, 3, H, D) projection, rotated to positions 5.. (a cached prefix's).
#[test]
fn rms_norm_then_rope_on_a_strided_query_matches_libtorch() {
    tch::manual_seed(3);
    let (b, t, h, d) = (2, 9, 3, 16);
    let qkv = Tensor::randn([b, t, 3, h, d], F32) * 2.0;
    let query = |qkv: &Tensor| qkv.permute([2, 0, 3, 1, 4]).get(0); // (B, H, T, D)
    let q = query(&qkv);
    assert!(!q.is_contiguous());
    let w = Tensor::randn([d], F32) + 1.0;
    let g = Tensor::randn([b, h, t, d], F32);
    let rope = Rope::new(32, d, Device::Cpu);
    let (cos, sin) = rope.tables(5, t);
    check(&qkv, query, &w, &g, Some((&cos, &sin)));
    // And the tables are RoPE's own: the rotation agrees with `Rope::rotate`.
    let plain = fused::rms_norm(&q, &w.ones_like(), EPS, None);
    let want = rope.rotate(&plain, At::Start(5));
    let got = fused::rms_norm(&q, &w.ones_like(), EPS, Some((&cos, &sin)));
    let diff = (got - want).abs().max().double_value(&[]);
    // Same f32 products, fused or not: two roundings of values ≤ ~4 (RMS-normalised).
    assert!(
        diff <= 8.0 * 4.0 * f64::from(f32::EPSILON),
        "differs by {diff:e}"
    );
}

/// The gain's gradient sums over rows in fixed chunks added in order, so it does not
/// depend on how many threads share the rows: a resumed run repeats itself bit for bit
/// whatever the thread count.
#[test]
fn the_gains_gradient_is_the_same_on_one_thread_and_two() {
    tch::manual_seed(4);
    let x = Tensor::randn([8, 128, 48], F32);
    let w = Tensor::randn([48], F32);
    let g = Tensor::randn([8, 128, 48], F32);
    let gw_with = |threads| {
        tch::set_num_threads(threads);
        let (xf, wf) = (leaf(x.copy()), leaf(w.copy()));
        let y = fused::rms_norm(&xf, &wf, EPS, None);
        grads(&y, &g, &[&wf])[0].shallow_clone()
    };
    let before = tch::get_num_threads();
    let (one, two) = (gw_with(1), gw_with(2));
    tch::set_num_threads(before);
    assert!(one.equal(&two));
}
