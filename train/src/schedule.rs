//! Learning-rate schedules: linear warmup, then NVIDIA's polynomial decay or a linear decay.
//!
//! `step` is the number of optimizer steps already taken (0 for the first update), as in
//! NVIDIA's `PolyWarmUpScheduler` and HF's `get_linear_schedule_with_warmup`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// NVIDIA BERT: `lr · p/w` while `p = step/total < w`, then `lr · (1 - p)^degree`.
    Poly,
    /// HF: `lr · step/warmup_steps`, then linear to 0 at `total`.
    Linear,
    /// Warmup, then constant.
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub name: ScheduleKind,
    /// Optimizer steps of the run.
    pub steps: u64,
    /// Warmup as a fraction of `steps` (NVIDIA's `warmup_proportion`).
    #[serde(default)]
    pub warmup: f64,
    /// Exponent of the polynomial decay (NVIDIA: 0.5).
    #[serde(default = "default_degree")]
    pub degree: f64,
}

fn default_degree() -> f64 {
    0.5
}

impl ScheduleConfig {
    /// The factor of the peak learning rate at `step`.
    pub fn factor(&self, step: u64) -> f64 {
        let total = self.steps.max(1) as f64;
        let s = step as f64;
        match self.name {
            ScheduleKind::Poly => {
                let progress = s / total;
                if progress < self.warmup {
                    progress / self.warmup
                } else {
                    (1.0 - progress).max(0.0).powf(self.degree)
                }
            }
            ScheduleKind::Linear | ScheduleKind::Constant => {
                let warm = (self.warmup * total).round();
                if s < warm {
                    s / warm.max(1.0)
                } else if self.name == ScheduleKind::Constant {
                    1.0
                } else {
                    ((total - s) / (total - warm).max(1.0)).max(0.0)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_matches_nvidia_formula() {
        // NVIDIA phase 1: 7038 steps, warmup 0.2843, degree 0.5.
        let s = ScheduleConfig {
            name: ScheduleKind::Poly,
            steps: 7038,
            warmup: 0.2843,
            degree: 0.5,
        };
        assert_eq!(s.factor(0), 0.0);
        let p = 1000.0 / 7038.0;
        assert!((s.factor(1000) - p / 0.2843).abs() < 1e-12);
        let p = 5000.0 / 7038.0;
        assert!((s.factor(5000) - (1.0f64 - p).sqrt()).abs() < 1e-12);
        assert_eq!(s.factor(7038), 0.0);
        assert_eq!(s.factor(9000), 0.0);
        // NVIDIA's schedule jumps at the end of warmup: from ~1 down to (1 - warmup)^0.5.
        let w = (0.2843f64 * 7038.0).ceil() as u64;
        assert!(s.factor(w - 1) > 0.999);
        let p = w as f64 / 7038.0;
        assert!((s.factor(w) - (1.0 - p).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn linear_matches_hf() {
        let s = ScheduleConfig {
            name: ScheduleKind::Linear,
            steps: 100,
            warmup: 0.1,
            degree: 0.5,
        };
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(5), 0.5);
        assert_eq!(s.factor(10), 1.0);
        assert_eq!(s.factor(55), 0.5);
        assert_eq!(s.factor(100), 0.0);
    }
}
