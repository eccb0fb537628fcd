//! Adam, one instance per parameter tensor.

pub(crate) struct Adam {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step: i32,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    pub(crate) fn new(len: usize, lr: f32, beta1: f32, beta2: f32) -> Self {
        Self { lr, beta1, beta2, eps: 1e-8, step: 0, m: vec![0.0; len], v: vec![0.0; len] }
    }

    pub(crate) fn update(&mut self, params: &mut [f32], grads: &[f32]) {
        self.step += 1;
        let c1 = 1.0 - self.beta1.powi(self.step);
        let c2 = 1.0 - self.beta2.powi(self.step);
        let (b1, b2, lr, eps) = (self.beta1, self.beta2, self.lr, self.eps);
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_parameter_by_lr_against_its_gradient_sign() {
        let mut adam = Adam::new(2, 0.1, 0.9, 0.999);
        let mut p = [1.0, 1.0];
        adam.update(&mut p, &[3.0, -0.001]);
        assert!((p[0] - 0.9).abs() < 1e-5 && (p[1] - 1.1).abs() < 1e-4, "{p:?}");
    }
}
