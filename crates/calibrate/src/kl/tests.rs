use super::*;
use crate::head::head_predictions;

const V: usize = 50;
const H: usize = 8;

fn unit_rms(rows: &mut [f32]) {
    for row in rows.chunks_exact_mut(H) {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / H as f32).sqrt();
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

fn tiny_head(rng: &mut SplitMix64) -> HeadWeights {
    HeadWeights {
        final_norm_gain: (0..H).map(|_| 1.0 + 0.5 * rng.symmetric()).collect(),
        lm_head: rng.symmetric_vec(V * H, 1.0),
        vocab: V,
        hidden: H,
        eps: 1e-6,
    }
}

/// Positions whose full-model state is a hidden affine map of the exit state, so an exit
/// translator has something real to learn.
fn features(rng: &mut SplitMix64, truth: &Translator, rows: usize) -> Features {
    let mut n = rng.symmetric_vec(rows * H, 1.0);
    unit_rms(&mut n);
    let mut f = truth.apply(&n);
    unit_rms(&mut f);
    Features::new(H, n, f).expect("features")
}

fn setup() -> (HeadWeights, Translator, Features, Features) {
    let mut rng = SplitMix64::new(42);
    let head = tiny_head(&mut rng);
    let mut truth = Translator::identity(H);
    truth.weight.iter_mut().for_each(|w| *w += 0.6 * rng.symmetric());
    truth.bias = rng.symmetric_vec(H, 0.5);
    let train = features(&mut rng, &truth, 512);
    let heldout = features(&mut rng, &truth, 128);
    (head, truth, train, heldout)
}

#[test]
fn gradient_matches_finite_differences() {
    let (head, _, train, _) = setup();
    let rows = 16;
    let n = &train.input()[..rows * H];
    let f = &train.target()[..rows * H];
    let mut rng = SplitMix64::new(9);
    let mut at = Translator::identity(H);
    at.weight.iter_mut().for_each(|w| *w += 0.3 * rng.symmetric());
    at.bias = rng.symmetric_vec(H, 0.2);

    let mut scratch = Scratch::default();
    let mut grad = Gradient::new(H);
    batch_loss_and_grad(&head, &at, n, f, &mut scratch, &mut grad);
    let loss_at = |t: &Translator| {
        let mut g = Gradient::new(H);
        batch_loss_and_grad(&head, t, n, f, &mut Scratch::default(), &mut g)
    };
    let step = 1e-3f32;
    let mut checked = 0;
    for (which, index) in [(0, 0), (0, 9), (0, 27), (0, 63), (0, 40), (1, 0), (1, 5)] {
        let (mut plus, mut minus) = (at.clone(), at.clone());
        let (analytic, p, m) = if which == 0 {
            (grad.weight[index], &mut plus.weight[index], &mut minus.weight[index])
        } else {
            (grad.bias[index], &mut plus.bias[index], &mut minus.bias[index])
        };
        *p += step;
        *m -= step;
        let numeric = ((loss_at(&plus) - loss_at(&minus)) / (2.0 * f64::from(step))) as f32;
        let tolerance = 2e-3 + 2e-2 * numeric.abs();
        assert!(
            (analytic - numeric).abs() < tolerance,
            "{} [{index}]: analytic {analytic}, finite difference {numeric}",
            if which == 0 { "dW" } else { "db" }
        );
        checked += usize::from(numeric.abs() > 1e-2);
    }
    assert!(checked >= 4, "the check needs gradients that are not all ~0");
}

#[test]
fn kl_fit_lowers_heldout_kl_from_the_identity_start() {
    let (head, _, train, heldout) = setup();
    let opts = KlOptions { epochs: 30, batch: 32, lr: 1e-2, patience: 3, ..KlOptions::default() };
    let mut epochs_seen = 0;
    let mut started = None;
    let (fitted, report) =
        fit_kl(&train, &heldout, &head, Translator::identity(H), opts, &mut |p| match p {
            KlProgress::Start { heldout_kl, .. } => started = Some(heldout_kl),
            KlProgress::Epoch(_) => epochs_seen += 1,
            KlProgress::Batch { .. } => {}
        })
        .expect("fit");
    assert_eq!(started, Some(report.initial_heldout_kl));
    assert_eq!(epochs_seen, report.epochs.len());
    assert!(
        report.initial_heldout_kl > 0.05,
        "identity should be a poor head, KL {}",
        report.initial_heldout_kl
    );
    assert!(
        report.best_heldout_kl < 0.3 * report.initial_heldout_kl,
        "held-out KL only went from {} to {}",
        report.initial_heldout_kl,
        report.best_heldout_kl
    );
    let first = &report.epochs[0];
    let last = report.epochs.last().expect("epochs");
    assert!(last.train_kl < first.train_kl);
    assert!(last.heldout_agreement >= report.initial_heldout_agreement);
    // The returned translator is the best one: its exit head agrees more with the full model.
    let before = head_predictions(&head, &Translator::identity(H), &heldout).expect("predictions");
    let after = head_predictions(&head, &fitted, &heldout).expect("predictions");
    let share =
        |p: &[crate::ExitPrediction]| p.iter().filter(|p| p.agrees).count() as f32 / p.len() as f32;
    assert!(share(&after) > share(&before), "agreement {} -> {}", share(&before), share(&after));
}

#[test]
fn a_diverging_run_stops_early_and_keeps_the_best_weights() {
    let (head, truth, train, heldout) = setup();
    let opts = KlOptions { epochs: 20, batch: 64, lr: 5.0, patience: 2, ..KlOptions::default() };
    // Starting at the true map, nothing beats the start, so the start must come back unchanged.
    let (kept, report) =
        fit_kl(&train, &heldout, &head, truth.clone(), opts, &mut |_| {}).expect("fit");
    assert_eq!(report.best_epoch, 0);
    assert!(report.stopped_early && report.epochs.len() == 2, "{report:?}");
    assert_eq!(kept, truth);
}

#[test]
fn mismatched_hidden_sizes_are_refused() {
    let (head, _, train, heldout) = setup();
    let err = fit_kl(
        &train,
        &heldout,
        &head,
        Translator::identity(H + 1),
        KlOptions::default(),
        &mut |_| {},
    );
    assert!(matches!(err, Err(Error::Shape(_))));
}

#[test]
fn a_shortlist_head_answers_only_shortlisted_tokens() {
    use crate::head::shortlist_predictions;
    use crate::tradeoff::ExitPrediction;
    let (head, truth, _, heldout) = setup();
    let all: Vec<u32> = (0..V as u32).collect();
    assert_eq!(
        shortlist_predictions(&head, &truth, &heldout, &all).expect("predictions"),
        head_predictions(&head, &truth, &heldout).expect("predictions"),
        "the whole vocabulary as shortlist is the full head"
    );
    // With the true translator the head agrees almost everywhere; drop half the vocabulary and
    // it can only agree where the full model's token survived.
    let full = head_predictions(&head, &truth, &heldout).expect("predictions");
    let even: Vec<u32> = (0..V as u32).filter(|t| t % 2 == 0).collect();
    let short = shortlist_predictions(&head, &truth, &heldout, &even).expect("predictions");
    let agree = |p: &[ExitPrediction]| p.iter().filter(|x| x.agrees).count();
    assert!(agree(&short) < agree(&full), "{} vs {}", agree(&short), agree(&full));
    assert!(agree(&short) > 0);
    assert!(shortlist_predictions(&head, &truth, &heldout, &[V as u32]).is_err());
}
