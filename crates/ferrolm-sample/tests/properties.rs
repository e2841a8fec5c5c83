//! Property and statistical tests of the public sampling API.

use ferrolm_sample::{
    Candidates, Dist, LogitsProcessor, MinP, SamplerChain, SamplingParams, StopMatcher, StopState,
    TailFree, Temperature, TokenId, TopK, TopP, Typical,
};
use proptest::prelude::*;

/// Logits of mixed magnitude with the occasional NaN / +-inf.
fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => -30.0f32..30.0,
        2 => (-3i32..3).prop_map(|x| x as f32), // ties
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NAN),
    ]
}

fn finite_logits(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-20.0f32..20.0, 1..max_len)
}

fn any_logits(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(logit(), 1..max_len)
}

fn apply(p: &mut impl LogitsProcessor, logits: &[f32]) -> Candidates {
    let mut c = Candidates::from_logits(logits);
    p.apply(&mut c);
    c
}

/// Probabilities sorted by (logit desc, id asc), as the filters see them.
fn sorted_probs(logits: &[f32]) -> Candidates {
    let mut c = Candidates::from_logits(logits);
    c.softmax();
    c.sort_desc();
    c
}

/// Either the neutral value or one from `range`.
fn or(neutral: f32, range: std::ops::Range<f32>) -> impl Strategy<Value = f32> {
    prop_oneof![Just(neutral), range]
}

/// Valid parameters, each stage sometimes on, sometimes neutral.
fn any_params() -> impl Strategy<Value = SamplingParams> {
    (
        (
            or(0.0, 1e-6..2.0),
            0usize..8,
            or(1.0, 0.05..1.0),
            or(0.0, 0.0..1.0),
        ),
        (
            or(1.0, 0.05..1.0),
            or(1.0, 0.05..1.0),
            or(1.0, 0.5..2.0),
            0usize..8,
        ),
        (-1.0f32..1.0, -1.0f32..1.0, any::<u64>()),
        prop::collection::vec((0u32..40, logit()), 0..4),
    )
        .prop_map(
            |((t, k, tp, mp), (typ, tfs, rep, last_n), (fr, pr, seed), bias)| {
                SamplingParams {
                    temperature: t,
                    top_k: k,
                    top_p: tp,
                    min_p: mp,
                    typical_p: typ,
                    tfs_z: tfs,
                    repeat_penalty: rep,
                    repeat_last_n: last_n,
                    frequency_penalty: fr,
                    presence_penalty: pr,
                    // NaN biases are rejected by validate(); keep the rest.
                    logit_bias: bias.into_iter().filter(|(_, b)| !b.is_nan()).collect(),
                    seed,
                    ..SamplingParams::default()
                }
            },
        )
}

proptest! {
    #[test]
    fn softmax_sums_to_one(logits in any_logits(300)) {
        let mut c = Candidates::from_logits(&logits);
        c.softmax();
        let sum: f64 = c.probs.iter().map(|&p| f64::from(p)).sum();
        prop_assert!((sum - 1.0).abs() < 1e-4, "sum = {sum}");
        prop_assert!(c.probs.iter().all(|p| p.is_finite() && *p >= 0.0));
    }

    #[test]
    fn top_k_keeps_min_k_n_best(logits in any_logits(200), k in 1usize..50) {
        let c = apply(&mut TopK(k), &logits);
        prop_assert_eq!(c.len(), k.min(logits.len()));
        let key = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
        let worst_kept = c.logits.iter().copied().fold(f32::INFINITY, f32::min);
        for (id, &l) in logits.iter().enumerate() {
            if !c.ids.contains(&(id as TokenId)) {
                prop_assert!(key(l) <= worst_kept);
            }
        }
    }

    #[test]
    fn top_p_keeps_minimal_prefix(logits in finite_logits(200), p in 0.01f32..0.999) {
        let c = apply(&mut TopP(p), &logits);
        let reference = sorted_probs(&logits);
        let cum: Vec<f64> = reference
            .probs
            .iter()
            .scan(0.0f64, |s, &q| { *s += f64::from(q); Some(*s) })
            .collect();
        let expected = cum.iter().position(|&s| s >= f64::from(p)).map_or(logits.len(), |i| i + 1);
        prop_assert_eq!(c.len(), expected);
        prop_assert_eq!(&c.ids[..], &reference.ids[..expected]);
        // minimal: one token fewer would not reach p
        if expected > 1 {
            prop_assert!(cum[expected - 2] < f64::from(p));
        }
    }

    #[test]
    fn min_p_keeps_tokens_above_scaled_max(logits in finite_logits(200), p in 0.001f32..1.0) {
        let c = apply(&mut MinP(p), &logits);
        let mut all = Candidates::from_logits(&logits);
        all.softmax();
        let p_max = all.probs.iter().copied().fold(0.0f32, f32::max);
        let threshold = p * p_max;
        for (id, &q) in all.probs.iter().enumerate() {
            let kept = c.ids.contains(&(id as TokenId));
            if q >= threshold * (1.0 + 1e-4) {
                prop_assert!(kept, "token {id} p={q} >= {threshold} dropped");
            }
            if q < threshold * (1.0 - 1e-4) {
                prop_assert!(!kept, "token {id} p={q} < {threshold} kept");
            }
        }
    }

    #[test]
    fn filters_never_empty_the_set(logits in any_logits(100), x in 0.0f32..=1.0, k in 0usize..10) {
        let mut procs: Vec<Box<dyn LogitsProcessor>> = vec![
            Box::new(TopK(k)),
            Box::new(TopP(x)),
            Box::new(MinP(x)),
            Box::new(Typical(x)),
            Box::new(TailFree(x)),
            Box::new(Temperature(x)),
        ];
        for p in &mut procs {
            let mut c = Candidates::from_logits(&logits);
            p.apply(&mut c);
            prop_assert!(!c.is_empty(), "{} emptied the set", p.name());
            prop_assert!(c.logits.iter().all(|l| !l.is_nan()), "{} made a NaN", p.name());
            prop_assert_eq!(c.ids.len(), c.probs.len());
        }
    }

    #[test]
    fn any_valid_chain_samples_a_sensible_token(
        params in any_params(),
        rows in prop::collection::vec(any_logits(40), 1..6),
    ) {
        prop_assert!(params.validate().is_ok());
        let mut chain = params.build_chain();
        for row in &rows {
            let t = chain.sample(row);
            prop_assert!((t as usize) < row.len());
            // A NaN/-inf logit is only picked when nothing better was left to pick.
            let l = row[t as usize];
            let has_live = row.iter().any(|l| l.is_finite() || *l == f32::INFINITY);
            let banned = params.logit_bias.iter().any(|&(id, b)| id == t && b == f32::NEG_INFINITY);
            if has_live && params.logit_bias.is_empty() {
                prop_assert!(!(l.is_nan() || l == f32::NEG_INFINITY), "picked dead token {t}: {l}");
            }
            let all_banned_or_dead = (0..row.len() as TokenId).all(|id| {
                let v = row[id as usize];
                v.is_nan() || v == f32::NEG_INFINITY
                    || params.logit_bias.iter().any(|&(b_id, b)| b_id == id && b == f32::NEG_INFINITY)
            });
            prop_assert!(!banned || all_banned_or_dead, "picked banned token {t}");
        }
    }

    #[test]
    fn same_seed_same_tokens(
        params in any_params(),
        rows in prop::collection::vec(finite_logits(60), 1..8),
    ) {
        prop_assert!(params.validate().is_ok());
        let run = || {
            let mut chain = params.build_chain();
            chain.accept(1);
            rows.iter().map(|r| chain.sample(r)).collect::<Vec<_>>()
        };
        prop_assert_eq!(run(), run());
    }

    #[test]
    fn stop_matcher_equals_cut_at_first_stop(
        text in "[ab日é]{0,24}",
        stops in prop::collection::vec("[ab日é]{1,3}", 1..4),
        cuts in prop::collection::vec(0usize..40, 0..8),
    ) {
        // Expected: the text before the earliest occurrence of any stop string.
        let first = stops.iter().filter_map(|s| text.find(s.as_str())).min();
        let expected = &text[..first.unwrap_or(text.len())];

        // Split the text into pieces at char boundaries.
        let chars: Vec<char> = text.chars().collect();
        let mut points: Vec<usize> = cuts.iter().map(|&c| c % (chars.len() + 1)).collect();
        points.push(0);
        points.push(chars.len());
        points.sort_unstable();
        points.dedup();

        let mut m = StopMatcher::new(stops.clone());
        let mut out = String::new();
        let mut stopped = false;
        for w in points.windows(2) {
            let piece: String = chars[w[0]..w[1]].iter().collect();
            match m.push(&piece) {
                StopState::Continue { emit } => out.push_str(&emit),
                StopState::Stop { emit } => {
                    out.push_str(&emit);
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped {
            out.push_str(&m.flush());
        }
        prop_assert_eq!(out.as_str(), expected);
        prop_assert_eq!(m.is_stopped(), first.is_some());
    }
}

/// Pearson chi-square statistic of observed counts against expected probabilities.
fn chi_square(counts: &[u32], probs: &[f64], n: u32) -> f64 {
    counts
        .iter()
        .zip(probs)
        .map(|(&o, &p)| {
            let e = p * f64::from(n);
            (f64::from(o) - e).powi(2) / e
        })
        .sum()
}

#[test]
fn dist_matches_distribution() {
    let probs = [0.5, 0.25, 0.125, 0.0625, 0.0625];
    let logits: Vec<f32> = probs.iter().map(|p: &f64| p.ln() as f32).collect();
    let mut chain = SamplerChain::new(Box::new(Dist::new(12345)));
    let n = 20_000;
    let mut counts = [0u32; 5];
    for _ in 0..n {
        counts[chain.sample(&logits) as usize] += 1;
    }
    // 4 degrees of freedom: P(chi2 > 25) ~ 5e-5.
    let chi2 = chi_square(&counts, &probs, n);
    assert!(chi2 < 25.0, "chi2 = {chi2}, counts = {counts:?}");
}

#[test]
fn chain_distribution_after_top_k_and_temperature() {
    // Logits [ln 1, ln 2, -9]: top-k 2 drops token 2; temp 0.5 squares the odds: 1:4.
    let logits = [0.0, 2f32.ln(), -9.0];
    let mut chain = SamplerChain::new(Box::new(Dist::new(7)))
        .with(Box::new(TopK(2)))
        .with(Box::new(Temperature(0.5)));
    let n = 20_000;
    let mut counts = [0u32; 3];
    for _ in 0..n {
        counts[chain.sample(&logits) as usize] += 1;
    }
    assert_eq!(counts[2], 0);
    let chi2 = chi_square(&counts[..2], &[0.2, 0.8], n);
    assert!(chi2 < 20.0, "chi2 = {chi2}, counts = {counts:?}");
}

#[test]
fn different_seeds_differ_on_flat_distribution() {
    let flat = vec![0.0f32; 1000];
    let draws = |seed: u64| {
        let mut chain = SamplingParams {
            seed,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        }
        .build_chain();
        (0..10).map(|_| chain.sample(&flat)).collect::<Vec<_>>()
    };
    assert_ne!(draws(1), draws(2));
    let mut firsts: Vec<TokenId> = (0..20).map(|s| draws(s)[0]).collect();
    firsts.sort_unstable();
    firsts.dedup();
    assert!(
        firsts.len() >= 15,
        "20 seeds gave only {} distinct first tokens",
        firsts.len()
    );
}

#[test]
fn reset_replays_the_same_tokens() {
    let params = SamplingParams {
        repeat_penalty: 1.3,
        ..SamplingParams::default()
    };
    let rows: Vec<Vec<f32>> = (0..20)
        .map(|i| {
            (0..50)
                .map(|j| ((i * 7 + j * 13) % 11) as f32 * 0.4)
                .collect()
        })
        .collect();
    let mut chain = params.build_chain();
    let first: Vec<TokenId> = rows.iter().map(|r| chain.sample(r)).collect();
    chain.reset();
    let second: Vec<TokenId> = rows.iter().map(|r| chain.sample(r)).collect();
    assert_eq!(first, second);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Large unsorted sets take top-p's partial-sort path; the result must not change.
    #[test]
    fn top_p_large_vocab_matches_reference(
        logits in prop::collection::vec(-8.0f32..8.0, 1025..3000),
        p in 0.01f32..0.999,
    ) {
        let c = apply(&mut TopP(p), &logits);
        let reference = sorted_probs(&logits);
        let mut cum = 0.0f64;
        let expected = reference
            .probs
            .iter()
            .position(|&q| { cum += f64::from(q); cum >= f64::from(p) })
            .map_or(logits.len(), |i| i + 1);
        prop_assert_eq!(&c.ids[..], &reference.ids[..expected]);
    }
}
