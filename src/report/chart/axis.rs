//! Axis ticks for the chart: round steps (1, 2 or 5 times a power of ten)
//! and short labels, so every panel reads at a glance whatever its scale.

/// The step between "nice" ticks (1, 2 or 5 times a power of ten) that
/// covers 0..=`max` in 3 to 5 intervals.
///
/// Taking the smallest nice step of at least max/5 gives at most 5
/// intervals, and since consecutive nice steps are at most 2.5 apart it
/// gives more than 2.
pub(super) fn nice_step(max: f64) -> f64 {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        // The tolerance keeps max = 5 * step exact despite log10 rounding.
        .find(|&step| step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * base)
}

/// Ticks from 0 to a round maximum at least `max` (1 if `max` is not
/// positive): 4 to 6 values.
pub(super) fn nice_ticks(max: f64) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let step = nice_step(max);
    let intervals = (max / step - 1e-9).ceil().max(1.0) as u32;
    (0..=intervals).map(|i| f64::from(i) * step).collect()
}

/// A tick label: no decimals beyond what the step needs, and thousands as
/// `k` so FD counts of a long soak stay narrow.
pub(super) fn tick_label(v: f64, step: f64) -> String {
    if step >= 1000.0 && v >= 10_000.0 {
        return format!("{}k", trim_float(v / 1000.0, step / 1000.0));
    }
    trim_float(v, step)
}

pub(super) fn trim_float(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().max(0.0) as usize
    };
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_are_round_and_cover_the_max() {
        assert_eq!(
            nice_ticks(1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(nice_ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(1234.0), vec![0.0, 500.0, 1000.0, 1500.0]);
        assert_eq!(nice_ticks(0.0), nice_ticks(1.0));
        assert_eq!(nice_ticks(f64::NAN), nice_ticks(1.0));
        for i in 1..5000 {
            let max = f64::from(i) * 0.37;
            let ticks = nice_ticks(max);
            assert!((4..=6).contains(&ticks.len()), "{max}: {ticks:?}");
            assert_eq!(ticks[0], 0.0);
            assert!(*ticks.last().unwrap() >= max - 1e-9, "{max}: {ticks:?}");
            // The last-but-one tick is below max: the top is the first
            // round value that covers it.
            assert!(ticks[ticks.len() - 2] < max, "{max}: {ticks:?}");
            let step = ticks[1];
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6),
                "{max}: step {step}"
            );
        }
    }

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(0.6000000000000001, 0.2), "0.6");
        assert_eq!(tick_label(1500.0, 500.0), "1500");
        assert_eq!(tick_label(20000.0, 5000.0), "20k");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
    }
}
