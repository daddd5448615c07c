//! One DDIM step (Song et al. 2021, eq. 12) from timestep t to t' < t, per token:
//! x_t' = √ᾱ_t'·x̂0 + √(1 − ᾱ_t' − σ²)·ε̂ + σ·z, σ = η·√((1 − ᾱ_t')/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_t').

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimCoefficients {
    pub x0: f32,
    pub eps: f32,
    pub noise: f32,
}

/// Coefficients in f64, rounded once to f32 (as the PyTorch reference does).
pub fn ddim_coefficients(ab_t: f64, ab_next: f64, eta: f64) -> DdimCoefficients {
    DdimCoefficients {
        x0: ab_next.sqrt() as f32,
        eps: ddim_eps_coefficient(ab_t, ab_next, eta) as f32,
        noise: ddim_sigma(ab_t, ab_next, eta) as f32,
    }
}

fn ddim_sigma(ab_t: f64, ab_next: f64, eta: f64) -> f64 {
    eta * ((1.0 - ab_next) / (1.0 - ab_t)).sqrt() * (1.0 - ab_t / ab_next).sqrt()
}

/// √(1 − ᾱ_t' − σ²), ε̂'s coefficient.
pub fn ddim_eps_coefficient(ab_t: f64, ab_next: f64, eta: f64) -> f64 {
    let sigma = ddim_sigma(ab_t, ab_next, eta);
    (1.0 - ab_next - sigma * sigma).max(0.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_to_clean_returns_the_clean_estimate() {
        let c = ddim_coefficients(0.3, 1.0, 1.0);
        assert_eq!(
            c,
            DdimCoefficients {
                x0: 1.0,
                eps: 0.0,
                noise: 0.0
            }
        );
    }

    #[test]
    fn eta_one_is_ddpm_posterior_variance() {
        let (a, b) = (0.5_f64, 0.8_f64);
        let c = ddim_coefficients(a, b, 1.0);
        let ddpm = ((1.0 - b) / (1.0 - a) * (1.0 - a / b)).sqrt();
        assert!((f64::from(c.noise) - ddpm).abs() < 1e-7);
        // Marginal variance is preserved: x0² + eps² + noise² = 1 in the ᾱ' frame.
        let total = f64::from(c.x0).powi(2) + f64::from(c.eps).powi(2) + f64::from(c.noise).powi(2);
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(ddim_coefficients(a, b, 0.0).noise, 0.0);
    }
}
