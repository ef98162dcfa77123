//! Picking a token from a row's scores: greedy at temperature 0, else softmax at the
//! temperature with a nucleus (top-p) cut. Apart from the decode loop, so it can be tested
//! against the plain definition.

use rand::Rng;

use crate::generate::SamplingParams;

/// Draws a token: softmax at the temperature, nucleus (top-p) cut, then a draw from what is
/// kept, walking the tokens from the most to the least likely. Only as long a prefix of that
/// order as the walk reaches is sorted (a few dozen tokens at a low temperature, instead of
/// the whole vocabulary for every row and step): the same draw as sorting everything.
pub(crate) fn sample(scores: &[f32], params: &SamplingParams, rng: &mut rand::rngs::StdRng) -> u32 {
    let argmax = || {
        scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    if params.temperature <= 0.0 {
        return argmax();
    }
    let mut probs = token_weights(scores, params.temperature);
    if probs.is_empty() {
        return argmax();
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let top_p = if params.top_p > 0.0 {
        params.top_p.min(1.0)
    } else {
        1.0
    };
    let draw = rng.random::<f64>();
    // Most likely first; equal weights by token id, so the order is total.
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut sorted = 64.min(probs.len());
    loop {
        if sorted < probs.len() {
            probs.select_nth_unstable_by(sorted - 1, order);
        }
        probs[..sorted].sort_unstable_by(order);
        let complete = sorted == probs.len();
        if let Some(token) = draw_from_prefix(&probs[..sorted], complete, total, top_p, draw) {
            return token;
        }
        sorted = (sorted * 8).min(probs.len());
    }
}

/// Each allowed token's softmax weight at `temperature`, unnormalised (the best is 1).
fn token_weights(scores: &[f32], temperature: f64) -> Vec<(u32, f64)> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .map(|(i, &s)| (i as u32, (((s - max) as f64) / temperature).exp()))
        .collect()
}

/// The draw over the most likely tokens `prefix` (sorted), or None when the nucleus or the
/// draw reaches past it and `complete` says more tokens exist.
fn draw_from_prefix(
    prefix: &[(u32, f64)],
    complete: bool,
    total: f64,
    top_p: f64,
    draw: f64,
) -> Option<u32> {
    let (nucleus, nucleus_total) = if top_p >= 1.0 {
        (prefix, total)
    } else {
        let mut kept = 0.0;
        let cutoff = prefix.iter().position(|p| {
            kept += p.1 / total;
            kept >= top_p
        });
        let nucleus = match cutoff {
            Some(last) => &prefix[..=last],
            None if complete => prefix,
            None => return None,
        };
        (nucleus, nucleus.iter().map(|p| p.1).sum())
    };
    let mut target = draw * nucleus_total;
    for (id, p) in nucleus {
        target -= p;
        if target <= 0.0 {
            return Some(*id);
        }
    }
    // Rounding can leave a sliver of the target: the least likely kept token takes it.
    if complete || top_p < 1.0 {
        nucleus.last().map(|p| p.0)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// The plain definition: sort the whole vocabulary, cut the nucleus, walk it.
    fn sample_by_full_sort(scores: &[f32], params: &SamplingParams, draw: f64) -> u32 {
        let mut probs = token_weights(scores, params.temperature);
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        if params.top_p < 1.0 {
            let mut kept = 0.0;
            if let Some(last) = probs.iter().position(|p| {
                kept += p.1 / total;
                kept >= params.top_p
            }) {
                probs.truncate(last + 1);
            }
        }
        let mut target = draw * probs.iter().map(|p| p.1).sum::<f64>();
        for (id, p) in &probs {
            target -= p;
            if target <= 0.0 {
                return *id;
            }
        }
        probs.last().unwrap().0
    }

    #[test]
    fn sampling_draws_what_a_full_sort_would() {
        let mut scores_rng = rand::rngs::StdRng::seed_from_u64(7);
        for (temperature, top_p, spread) in [
            (0.2, 1.0, 8.0),
            (0.2, 0.9, 8.0),
            (1.0, 1.0, 2.0),
            (1.5, 0.95, 1.0),
            (0.7, 0.5, 0.1),
        ] {
            let params = SamplingParams {
                temperature,
                top_p,
                ..SamplingParams::default()
            };
            for seed in 0..200 {
                let mut scores: Vec<f32> = (0..5000)
                    .map(|_| scores_rng.random::<f32>() * spread)
                    .collect();
                scores[17] = f32::NEG_INFINITY;
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let token = sample(&scores, &params, &mut rng);
                let draw = rand::rngs::StdRng::seed_from_u64(seed).random::<f64>();
                assert_eq!(
                    token,
                    sample_by_full_sort(&scores, &params, draw),
                    "temperature {temperature}, top_p {top_p}, seed {seed}"
                );
                assert_ne!(token, 17, "a masked token was drawn");
            }
        }
    }

    #[test]
    fn sampling_at_temperature_zero_is_the_argmax() {
        let scores = [0.1, 3.0, -1.0, 2.9];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(sample(&scores, &SamplingParams::default(), &mut rng), 1);
    }
}
