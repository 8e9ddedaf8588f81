use super::epilogue::{gather_i8, lookup_bytes};
use super::pack::zip4;
use super::*;
use crate::kernels::for_each_variant;

/// A small deterministic generator, so the tests need no extra crate.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next() as f32 / (1u64 << 31) as f32)
    }
    fn i8(&mut self) -> i8 {
        ((self.next() % 255) as i32 - 127) as i8
    }
}

/// The unfused definition: quantize, dequantize, float conv in f64, then quantize and
/// dequantize the output.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    w: &[impl Into<i32> + Copy],
    cin: usize,
    cout: usize,
    p: usize,
    xq: ActQuant,
    w_scales: &[f32],
    bias: &[f32],
    y: Option<ActQuant>,
) -> Vec<f32> {
    let qdq = |v: f32, q: ActQuant| {
        let (lo, hi) = if q.signed { (-128, 127) } else { (0, 255) };
        let r = ((v / q.scale).round_ties_even() as i32 + q.zero_point).clamp(lo, hi);
        (r - q.zero_point) as f32 * q.scale
    };
    let xd: Vec<f32> = x.iter().map(|&v| qdq(v, xq)).collect();
    let mut out = vec![0f32; cout * p];
    for co in 0..cout {
        for i in 0..p {
            let mut s = 0f64;
            for ci in 0..cin {
                let wv = w[co * cin + ci].into() as f32 * w_scales[co];
                s += xd[ci * p + i] as f64 * wv as f64;
            }
            let v = s as f32 + bias[co];
            out[co * p + i] = match y {
                Some(q) => qdq(v, q),
                None => v,
            };
        }
    }
    out
}

fn check(cin: usize, cout: usize, h: usize, w: usize, signed: bool, with_y: bool, seed: u64) {
    let mut rng = Lcg(seed);
    let weights: Vec<i8> = (0..cout * cin).map(|_| rng.i8()).collect();
    check_weights(&weights, (cin, cout, h, w), signed, with_y, rng);
}

fn check_weights(
    weights: &[i8],
    (cin, cout, h, w): (usize, usize, usize, usize),
    signed: bool,
    with_y: bool,
    mut rng: Lcg,
) {
    let p = h * w;
    let w_scales: Vec<f32> = (0..cout).map(|_| rng.f32(0.001, 0.02)).collect();
    let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
    let xq = ActQuant {
        scale: 0.05,
        zero_point: if signed { -3 } else { 131 },
        signed,
    };
    let yq = with_y.then_some(ActQuant {
        scale: 0.1,
        zero_point: if signed { 2 } else { 120 },
        signed,
    });
    let x: Vec<f32> = (0..2 * cin * p).map(|_| rng.f32(-7.0, 7.0)).collect();
    let op = QPointwiseConv::new(
        Tensor::from_shape(&[cout, cin], weights).unwrap(),
        Layout::ChannelsFirst,
        xq,
        w_scales.clone(),
        (None, yq),
        Some(p),
    )
    .unwrap();
    let input = Tensor::from_shape(&[2, cin, h, w], &x).unwrap();
    let b = Tensor::from_shape(&[cout], &bias).unwrap();
    let out = op
        .eval_out_of_plan(tvec!(input.into_tvalue(), b.into_tvalue()))
        .unwrap()
        .unwrap();
    assert_eq!(out[0].shape(), &[2, cout, h, w]);
    let got = out[0].try_as_plain_ram().unwrap();
    let got = got.as_slice::<f32>().unwrap();
    for n in 0..2 {
        let expected = reference(
            &x[n * cin * p..(n + 1) * cin * p],
            weights,
            cin,
            cout,
            p,
            xq,
            &w_scales,
            &bias,
            yq,
        );
        let got = &got[n * cout * p..(n + 1) * cout * p];
        assert_close(got, &expected, yq, &format!("{cin}x{cout} {h}x{w}"));
    }
}

/// A u8 input quantization the patch tests share.
const U8_INPUT: ActQuant = ActQuant {
    scale: 0.05,
    zero_point: 131,
    signed: false,
};

/// A channels-first op of `[cout, k]` weights on [`U8_INPUT`], output quantized as `y` says.
fn channels_first(w: &[i8], cout: usize, w_scales: &[f32], y: Option<ActQuant>) -> QPointwiseConv {
    let weights = Tensor::from_shape(&[cout, w.len() / cout], w).unwrap();
    let quants = (None, y);
    QPointwiseConv::new(
        weights,
        Layout::ChannelsFirst,
        U8_INPUT,
        w_scales.to_vec(),
        quants,
        None,
    )
    .unwrap()
}

/// `op` moved channels last computes `out` (its channels-first output on `x`, `[2, c, h, w]`)
/// bit for bit.
fn assert_channels_last_agrees(
    op: &QPointwiseConv,
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    bias: &[f32],
    out: &Tensor,
) {
    let nhwc = Tensor::from_shape(&[2, c, h, w], x)
        .unwrap()
        .permute_axes(&[0, 2, 3, 1])
        .unwrap();
    let last = op.channels_last().unwrap();
    let got = eval(&last, nhwc, bias).permute_axes(&[0, 3, 1, 2]).unwrap();
    assert_eq!(&got, out, "{c}x{h}x{w}, channels last");
}

/// Exact but for f32 rounding: with an output quantization a value on a rounding boundary
/// may land one step away.
fn assert_close(got: &[f32], expected: &[f32], y: Option<ActQuant>, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}");
    let step = y.map(|q| q.scale).unwrap_or(0.0);
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let tol = 1e-4 * e.abs().max(1.0) + step * 1.001;
        assert!((g - e).abs() <= tol, "{what} #{i}: {g} vs {e}");
    }
}

for_each_variant! {
    /// A convolution over `s × s` patches (stem- and downsampling-like, with a partial last
    /// row and column dropped, rows of 8 to 32 patches for the NEON split, with and without
    /// an overlapping last step, and rows too short for it) against the 1x1 reference on the patches
    /// gathered in f32, channels first and channels last.
    fn patches_match_the_product_of_the_gathered_input() {
        for (i, &(c, cout, h, w, s)) in [
            (3, 8, 9, 11, 4),
            (5, 7, 6, 6, 2),
            (16, 33, 7, 5, 2),
            (2, 5, 6, 38, 2),
            (3, 4, 8, 70, 4),
            (3, 5, 8, 64, 4),
            (4, 6, 4, 64, 2),
            (2, 3, 5, 24, 2),
            (3, 4, 4, 32, 4),
        ]
        .iter()
        .enumerate()
        {
            let mut rng = Lcg(i as u64 + 40);
            let k = c * s * s;
            let weights: Vec<i8> = (0..cout * k).map(|_| rng.i8()).collect();
            let w_scales: Vec<f32> = (0..cout).map(|_| rng.f32(0.001, 0.02)).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
            let xq = U8_INPUT;
            let yq = Some(ActQuant {
                scale: 0.1,
                zero_point: 120,
                signed: false,
            });
            let x: Vec<f32> = (0..2 * c * h * w).map(|_| rng.f32(-7.0, 7.0)).collect();
            let op = channels_first(&weights, cout, &w_scales, yq)
                .over_patches(s)
                .unwrap();
            let input = Tensor::from_shape(&[2, c, h, w], &x).unwrap();
            let out = eval(&op, input, &bias);
            let (oh, ow) = (h / s, w / s);
            assert_eq!(out.shape(), &[2, cout, oh, ow]);
            let got = out.try_as_plain_ram().unwrap();
            let got = got.as_slice::<f32>().unwrap();
            for (n, got) in got.chunks_exact(cout * oh * ow).enumerate() {
                let expected = reference(
                    &gathered(&x, n, (c, h, w), s),
                    &weights,
                    k,
                    cout,
                    oh * ow,
                    xq,
                    &w_scales,
                    &bias,
                    yq,
                );
                assert_close(got, &expected, yq, &format!("{c}x{h}x{w} over {s}x{s}"));
            }
            // Channels last, on the same input: the same values, bit for bit.
            assert_channels_last_agrees(&op, &x, (c, h, w), &bias, &out);
        }
    }
}

/// Image `n` of `x` (`[_, c, h, w]`) as the `c · s²` rows of a 1x1 product over its `s × s`
/// patches: row `(ci, dy, dx)`, column `(oy, ox)`, the weights' `(ci, kh, kw)` order.
fn gathered(x: &[f32], n: usize, (c, h, w): (usize, usize, usize), s: usize) -> Vec<f32> {
    let (oh, ow) = (h / s, w / s);
    let mut patches = vec![0f32; c * s * s * oh * ow];
    for (r, row) in patches.chunks_exact_mut(oh * ow).enumerate() {
        let (ci, dy, dx) = (r / (s * s), r / s % s, r % s);
        for (o, v) in row.iter_mut().enumerate() {
            let (y, xx) = ((o / ow) * s + dy, (o % ow) * s + dx);
            *v = x[((n * c + ci) * h + y) * w + xx];
        }
    }
    patches
}

for_each_variant! {
    /// Full-range asymmetric weights: `w8 − z` spans ±255, the op subtracts `z` through the
    /// input's row sums. 1x1 and over patches, channels first and last, against the
    /// reference on the weights' true values.
    fn weight_zero_points_are_exact() {
        for (i, &(c, cout, h, w, s)) in [(16, 24, 5, 7, 1), (5, 33, 4, 6, 1), (3, 8, 8, 8, 2)]
            .iter()
            .enumerate()
        {
            let mut rng = Lcg(i as u64 + 90);
            let k = c * s * s;
            // u8 weights shifted by −128 hold −128, which our AVX2 and SMULL products do not
            // take: tract's kernel runs them, patches gathered for it.
            let mut w8: Vec<i8> = (0..cout * k).map(|_| rng.i8()).collect();
            w8[0] = -128;
            let z: Vec<i32> = (0..cout).map(|_| (rng.next() % 256) as i32 - 128).collect();
            let true_w: Vec<i32> = w8.iter().enumerate().map(|(j, &v)| v as i32 - z[j / k]).collect();
            assert!(true_w.iter().any(|v| !(-128..=127).contains(v)));
            let w_scales: Vec<f32> = (0..cout).map(|_| rng.f32(0.001, 0.01)).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
            let xq = U8_INPUT;
            let x: Vec<f32> = (0..2 * c * h * w).map(|_| rng.f32(-7.0, 7.0)).collect();
            let op = channels_first(&w8, cout, &w_scales, None)
                .with_weight_zero_points(&z)
            .unwrap()
            .over_patches(s)
            .unwrap();
            let out = eval(&op, Tensor::from_shape(&[2, c, h, w], &x).unwrap(), &bias);
            let got = out.try_as_plain_ram().unwrap();
            let got = got.as_slice::<f32>().unwrap();
            let p = (h / s) * (w / s);
            for (n, got) in got.chunks_exact(cout * p).enumerate() {
                let patches = gathered(&x, n, (c, h, w), s);
                let expected = reference(&patches, &true_w, k, cout, p, xq, &w_scales, &bias, None);
                assert_close(got, &expected, None, &format!("{c}x{h}x{w} over {s}x{s}"));
            }
            assert_channels_last_agrees(&op, &x, (c, h, w), &bias, &out);
        }
    }
}

/// A channels-first op between transposes to and from channels last (convnext_tiny's
/// downsampling once tract has moved its blocks channels last): decluttering switches the
/// op channels last and drops both transposes. A channels-last op between the reverse
/// transposes stays as it is, transposes included.
#[test]
fn axis_changes_move_the_op_channels_last_only() {
    let (c, cout, h, w, s) = (8, 16, 6, 4, 2);
    let mut rng = Lcg(77);
    let weights: Vec<i8> = (0..cout * c * s * s).map(|_| rng.i8()).collect();
    let xq = ActQuant {
        scale: 0.05,
        zero_point: 3,
        signed: true,
    };
    let new_op = |patch: usize| {
        let op = QPointwiseConv::new(
            Tensor::from_shape(
                &[cout, c * patch * patch],
                &weights[..cout * c * patch * patch],
            )
            .unwrap(),
            Layout::ChannelsFirst,
            xq,
            vec![0.01],
            (None, None),
            None,
        )
        .unwrap();
        op.over_patches(patch).unwrap()
    };
    let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
    let x: Vec<f32> = (0..c * h * w).map(|_| rng.f32(-4.0, 4.0)).collect();
    let build = |input: [usize; 4], moves: [AxisOp; 2], op: QPointwiseConv| {
        let mut model = TypedModel::default();
        let src = model.add_source("x", f32::fact(input)).unwrap();
        let b = model
            .add_const("bias", Tensor::from_shape(&[cout], &bias).unwrap())
            .unwrap();
        let t = model.wire_node("in", moves[0].clone(), &[src]).unwrap();
        let y = model.wire_node("op", op, &[t[0], b]).unwrap();
        let y = model.wire_node("out", moves[1].clone(), &y).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    };
    let count =
        |m: &TypedModel, name: &str| m.nodes().iter().filter(|n| n.op().name() == name).count();
    let layouts = |m: &TypedModel| {
        m.nodes()
            .iter()
            .filter_map(|n| n.op_as::<QPointwiseConv>().map(|op| op.layout))
            .collect::<Vec<_>>()
    };
    let run = |m: TypedModel, input: Tensor| {
        let out = m
            .into_runnable()
            .unwrap()
            .run(tvec!(input.into_tvalue()))
            .unwrap();
        out[0].clone().into_tensor()
    };
    let nhwc = Tensor::from_shape(&[1, c, h, w], &x)
        .unwrap()
        .permute_axes(&[0, 2, 3, 1])
        .unwrap();
    let model = build(
        [1, h, w, c],
        [AxisOp::Move(3, 1), AxisOp::Move(1, 3)],
        new_op(s),
    );
    let expected = run(model.clone(), nhwc.clone());
    let decluttered = model.into_decluttered().unwrap();
    assert_eq!(layouts(&decluttered), [Layout::ChannelsLast]);
    assert_eq!(count(&decluttered, "MoveAxis"), 0);
    assert_eq!(run(decluttered, nhwc), expected);

    let last = new_op(1).channels_last().unwrap();
    let model = build([1, c, h, w], [AxisOp::Move(1, 3), AxisOp::Move(3, 1)], last);
    let decluttered = model.into_decluttered().unwrap();
    assert_eq!(layouts(&decluttered), [Layout::ChannelsLast]);
    assert_eq!(count(&decluttered, "MoveAxis"), 2);
}

/// `Q → DQ` in f64 arithmetic after the f32 division, as the graph computes it.
fn qdq(v: f32, q: ActQuant) -> f32 {
    let (lo, hi) = if q.signed { (-128, 127) } else { (0, 255) };
    let r = ((v / q.scale).round_ties_even() as i32 + q.zero_point).clamp(lo, hi);
    (r - q.zero_point) as f32 * q.scale
}

fn maybe_qdq(v: f32, q: Option<ActQuant>) -> f32 {
    q.map_or(v, |q| qdq(v, q))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), in f64.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

/// Channels last with the bias between two fake quantizations, and optionally the QDQ
/// GELU, against the unfused chain.
fn check_channels_last(cin: usize, cout: usize, positions: usize, gelu: bool, seed: u64) {
    let mut rng = Lcg(seed);
    let weights: Vec<i8> = (0..cout * cin).map(|_| rng.i8()).collect();
    let w_scales: Vec<f32> = (0..cout).map(|_| rng.f32(0.001, 0.02)).collect();
    let bias: Vec<f32> = (0..cout).map(|_| rng.f32(-1.0, 1.0)).collect();
    let q = |scale: f32, zero_point: i32| ActQuant {
        scale,
        zero_point,
        signed: false,
    };
    let (xq, mid, yq) = (q(0.05, 131), q(0.08, 128), q(0.07, 120));
    let g = QdqGelu {
        c: [std::f32::consts::SQRT_2, 1.0, 0.5],
        quant: [
            Some(q(0.03, 128)),
            Some(q(0.008, 128)),
            Some(q(0.008, 0)),
            None,
            Some(q(0.05, 10)),
        ],
    };
    let x: Vec<f32> = (0..positions * cin).map(|_| rng.f32(-7.0, 7.0)).collect();
    // Weights given as [Cout, Cin]: the canonical layout the op takes.
    let mut op = QPointwiseConv::new(
        Tensor::from_shape(&[cout, cin], &weights).unwrap(),
        Layout::ChannelsLast,
        xq,
        w_scales.clone(),
        (Some(mid), Some(yq)),
        Some(positions),
    )
    .unwrap();
    if gelu {
        op = op.with_gelu(g).unwrap();
    }
    let input = Tensor::from_shape(&[1, positions, cin], &x).unwrap();
    let b = Tensor::from_shape(&[cout], &bias).unwrap();
    let out = op
        .eval_out_of_plan(tvec!(input.into_tvalue(), b.into_tvalue()))
        .unwrap()
        .unwrap();
    assert_eq!(out[0].shape(), &[1, positions, cout]);
    let got = out[0].try_as_plain_ram().unwrap();
    let got = got.as_slice::<f32>().unwrap();
    let mut off = 0;
    for p in 0..positions {
        for co in 0..cout {
            let s: f64 = (0..cin)
                .map(|ci| {
                    qdq(x[p * cin + ci], xq) as f64
                        * (weights[co * cin + ci] as f32 * w_scales[co]) as f64
                })
                .sum();
            let mut e = qdq(qdq(s as f32, mid) + bias[co], yq);
            if gelu {
                let d = maybe_qdq(e / g.c[0], g.quant[0]);
                let er = maybe_qdq(erf(d as f64) as f32, g.quant[1]);
                let a = maybe_qdq(er + g.c[1], g.quant[2]);
                e = maybe_qdq(maybe_qdq(e * a, g.quant[3]) * g.c[2], g.quant[4]);
            }
            let v = got[p * cout + co];
            if (v - e).abs() > 1e-4 * e.abs().max(1.0) {
                off += 1;
                // A value on a rounding boundary may land a step or two away.
                assert!((v - e).abs() <= 0.3, "p{p} c{co}: {v} vs {e}");
            }
        }
    }
    assert!(
        off * 100 <= positions * cout,
        "{off} of {} off",
        positions * cout
    );
}

for_each_variant! {
    fn channels_last_with_bias_between_quantizations() {
        check_channels_last(24, 96, 49, false, 3);
        check_channels_last(17, 40, 13, false, 4);
    }
}

for_each_variant! {
    fn fused_gelu_matches_the_unfused_chain() {
        check_channels_last(24, 96, 49, true, 5);
        check_channels_last(33, 72, 20, true, 6);
    }
}

fn eval(op: &QPointwiseConv, x: Tensor, bias: &[f32]) -> Tensor {
    let b = Tensor::from_shape(&[bias.len()], bias).unwrap();
    let out = op.eval_out_of_plan(tvec!(x.into_tvalue(), b.into_tvalue()));
    out.unwrap().unwrap().remove(0).into_tensor()
}

for_each_variant! {
    /// A product writing i8 for the next one gives the next one exactly the input it would
    /// have quantized from the f32 output, in both layouts, with and without the GELU.
    fn an_i8_link_equals_the_f32_chain() {
        let q = |scale: f32, zero_point: i32, signed: bool| ActQuant {
            scale,
            zero_point,
            signed,
        };
        let gelu = QdqGelu {
            c: [std::f32::consts::SQRT_2, 1.0, 0.5],
            quant: [None, Some(q(0.008, 128, false)), None, None, None],
        };
        for (seed, layout, with_gelu) in [
            (11, Layout::ChannelsLast, true),
            (12, Layout::ChannelsLast, false),
            (13, Layout::ChannelsFirst, true),
            (14, Layout::ChannelsFirst, false),
        ] {
            let mut rng = Lcg(seed);
            let (c0, c1, c2) = (19, 40, 7);
            let mut weights = |cout: usize, cin: usize| {
                let w: Vec<i8> = (0..cout * cin).map(|_| rng.i8()).collect();
                Tensor::from_shape(&[cout, cin], &w).unwrap()
            };
            let (w1, w2) = (weights(c1, c0), weights(c2, c1));
            let next_x = q(0.04, 200, false);
            let first = QPointwiseConv::new(
                w1,
                layout,
                q(0.05, -3, true),
                vec![0.01],
                (None, Some(q(0.07, 120, false))),
                Some(30),
            )
            .unwrap();
            let first = match with_gelu {
                true => first.with_gelu(gelu).unwrap(),
                false => first,
            };
            let linked = first.clone().emitting_i8(next_x).unwrap();
            let second =
                QPointwiseConv::new(w2, layout, next_x, vec![0.02], (None, None), Some(30))
                    .unwrap();
            let shape: &[usize] = match layout {
                Layout::ChannelsLast => &[1, 30, c0],
                Layout::ChannelsFirst => &[2, c0, 5, 6],
            };
            let n = shape.iter().product::<usize>();
            let x: Vec<f32> = (0..n).map(|_| rng.f32(-5.0, 5.0)).collect();
            let x = Tensor::from_shape(shape, &x).unwrap();
            let (b1, b2) = (vec![0.25; c1], vec![-0.5; c2]);

            let mid_f32 = eval(&first, x.clone(), &b1);
            let mid_i8 = eval(&linked, x, &b1);
            assert_eq!(mid_i8.datum_type(), i8::datum_type());
            assert_eq!(mid_i8.shape(), mid_f32.shape());
            let f = mid_f32.try_as_plain_ram().unwrap();
            let mut expected = vec![0i8; f.len()];
            next_x
                .to_i8()
                .quantize_i8(f.as_slice::<f32>().unwrap(), &mut expected);
            let got = mid_i8.try_as_plain_ram().unwrap();
            assert_eq!(got.as_slice::<i8>().unwrap(), &expected[..]);

            let via_f32 = eval(&second, mid_f32, &b2);
            let via_i8 = eval(&second, mid_i8, &b2);
            assert_eq!(via_f32, via_i8, "{layout:?} gelu {with_gelu}");
        }
    }
}

for_each_variant! {
    /// A dynamic input quantization is the static one with `DynamicQuantizeLinear`'s
    /// parameters, computed over the whole tensor (both images of the batch).
    fn a_dynamic_input_is_quantized_with_its_own_range() {
        let mut rng = Lcg(21);
        let (cin, cout) = (13, 24);
        let w: Vec<i8> = (0..cout * cin).map(|_| rng.i8()).collect();
        let w = Tensor::from_shape(&[cout, cin], &w).unwrap();
        let x: Vec<f32> = (0..2 * cin * 15).map(|_| rng.f32(-1.5, 6.0)).collect();
        let (lo, hi) = x
            .iter()
            .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
        let scale = (hi - lo) / 255.0;
        let static_x = ActQuant {
            scale,
            zero_point: (-lo / scale).round_ties_even() as i32,
            signed: false,
        };
        let ignored = ActQuant {
            scale: 1.0,
            zero_point: 0,
            signed: false,
        };
        let op = |q: ActQuant| {
            QPointwiseConv::new(
                w.clone(),
                Layout::ChannelsFirst,
                q,
                vec![0.02],
                (None, None),
                None,
            )
            .unwrap()
        };
        let dynamic = op(ignored).with_dynamic_input().unwrap();
        let x = Tensor::from_shape(&[2, cin, 3, 5], &x).unwrap();
        let bias = vec![0.5; cout];
        assert_eq!(
            eval(&dynamic, x.clone(), &bias),
            eval(&op(static_x), x, &bias)
        );
        // All zeros: scale 0 in the graph, the bias alone here.
        let zeros = Tensor::zero::<f32>(&[1, cin, 2, 2]).unwrap();
        let out = eval(&dynamic, zeros, &bias);
        let out = out.try_as_plain_ram().unwrap();
        assert!(out.as_slice::<f32>().unwrap().iter().all(|&v| v == 0.5));
    }
}

#[test]
fn an_i8_output_or_a_gelu_needs_the_output_quantization() {
    let w = Tensor::from_shape(&[2, 3], &[1i8, 2, 3, 4, 5, 6]).unwrap();
    let x = ActQuant {
        scale: 0.1,
        zero_point: 0,
        signed: false,
    };
    let op = QPointwiseConv::new(w, Layout::ChannelsLast, x, vec![1.0], (None, None), None);
    assert!(op.unwrap().emitting_i8(x).is_err());
}

for_each_variant! {
    fn matches_unfused_reference_on_odd_shapes() {
        for (i, &(cin, cout, h, w)) in [
            (1, 1, 1, 1),
            (3, 5, 7, 7),
            (40, 160, 7, 9),
            (17, 33, 5, 3),
            (96, 384, 14, 14),
            (160, 40, 1, 13),
        ]
        .iter()
        .enumerate()
        {
            for (signed, with_y) in [(false, true), (true, true), (false, false)] {
                check(cin, cout, h, w, signed, with_y, i as u64 * 7 + 1);
            }
        }
    }
}

for_each_variant! {
    /// −128 in the weights, which our arm64 product cannot take exactly (it falls back to
    /// tract's kernel there), against both u8 and i8 activations holding their extremes.
    fn weights_of_minus_128_are_exact() {
        let mut rng = Lcg(5);
        let (cin, cout) = (37, 9);
        let weights: Vec<i8> = (0..cout * cin)
            .map(|i| if i % 3 == 0 { -128 } else { rng.i8() })
            .collect();
        for signed in [false, true] {
            check_weights(&weights, (cin, cout, 3, 5), signed, true, Lcg(9));
        }
    }
}

for_each_variant! {
    /// Every index, over lengths around the 16- and 64-byte steps, out of place and in place.
    fn byte_tables_look_up_every_byte() {
        let table: [i8; 256] = std::array::from_fn(|i| (i as u8).wrapping_mul(167) as i8);
        for n in [0, 1, 15, 16, 17, 63, 64, 65, 128, 256, 300] {
            let idx: Vec<u8> = (0..n).map(|i| (i * 89 + 7) as u8).collect();
            let mut out = vec![0i8; n];
            gather_i8(&table, &idx, &mut out);
            let expected: Vec<i8> = idx.iter().map(|&i| table[i as usize]).collect();
            assert_eq!(out, expected, "n = {n}");
            let mut in_place = idx.clone();
            let bytes = table.map(|v| v as u8);
            lookup_bytes(&bytes, &mut in_place);
            let expected: Vec<u8> = expected.iter().map(|&v| v as u8).collect();
            assert_eq!(in_place, expected, "in place, n = {n}");
        }
    }
}

for_each_variant! {
    fn zip4_interleaves_four_rows() {
        for r in [1, 7, 8, 16, 19] {
            let block: Vec<i8> = (0..4 * r).map(|i| (i * 37 % 251) as u8 as i8).collect();
            let mut words = vec![0u8; 4 * r];
            zip4(&block, &mut words);
            for m in 0..r {
                for d in 0..4 {
                    assert_eq!(
                        words[4 * m + d],
                        block[d * r + m] as u8,
                        "r {r} m {m} d {d}"
                    );
                }
            }
        }
    }
}

#[test]
fn refuses_bad_parameters() {
    let w = Tensor::from_shape(&[2, 3], &[1i8, 2, 3, 4, 5, 6]).unwrap();
    let x = ActQuant {
        scale: 0.1,
        zero_point: 0,
        signed: false,
    };
    let cf = Layout::ChannelsFirst;
    assert!(QPointwiseConv::new(w.clone(), cf, x, vec![1.0; 3], (None, None), None).is_err());
    assert!(QPointwiseConv::new(w.clone(), cf, x, vec![0.0], (None, None), None).is_err());
    let nan = ActQuant {
        scale: f32::NAN,
        ..x
    };
    assert!(QPointwiseConv::new(w, cf, nan, vec![1.0], (None, None), None).is_err());
}
