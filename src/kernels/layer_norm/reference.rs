//! The portable reference of the LayerNorm: the definition in f64.

pub(crate) fn reference(x: &[f32], shape: &[usize], axis: usize, g: &[f32], b: &[f32]) -> Vec<f32> {
    let c = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut y = vec![0f32; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * c + k) * inner + i;
            let mean = (0..c).map(|k| x[at(k)] as f64).sum::<f64>() / c as f64;
            let var = (0..c)
                .map(|k| (x[at(k)] as f64 - mean).powi(2))
                .sum::<f64>()
                / c as f64;
            for k in 0..c {
                let v = (x[at(k)] as f64 - mean) / (var + 1e-6).sqrt();
                y[at(k)] = (v * g[k] as f64 + b[k] as f64) as f32;
            }
        }
    }
    y
}
