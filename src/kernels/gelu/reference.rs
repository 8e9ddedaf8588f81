//! The portable reference of the GELU: the definition with an f64 erf.

/// erf by its Maclaurin series for |z| < 3, and beyond by erfc's asymptotic series summed
/// to its smallest term (relative error ~e^−z², ~1e-4 of an erfc below 2e-5).
pub(crate) fn reference_gelu(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    let sqrt_pi = std::f64::consts::PI.sqrt();
    let erf = if z.abs() < 3.0 {
        let (mut term, mut sum) = (z, z);
        for n in 1..200 {
            term *= -z * z / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / sqrt_pi
    } else {
        let (mut term, mut sum) = (1.0f64, 1.0f64);
        for n in 1..200 {
            let next = term * -((2 * n - 1) as f64) / (2.0 * z * z);
            if next.abs() >= term.abs() {
                break;
            }
            term = next;
            sum += term;
        }
        z.signum() * (1.0 - (-z * z).exp() / (z.abs() * sqrt_pi) * sum)
    };
    x * 0.5 * (1.0 + erf)
}
