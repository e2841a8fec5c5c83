//! Tests of `beam.rs` (kept apart: the search is short, its checks are not).

use super::*;

/// The toy LM of `scripts/beam_reference.py`: logits are a function of the last token and
/// the sequence length (prompt included), with no ties inside a row.
struct ToyModel {
    vocab: usize,
    /// `[N][len]`, prompt included.
    beams: Vec<Vec<TokenId>>,
    advances: usize,
}

const TOY_EOS: usize = 0;

impl ToyModel {
    fn new(vocab: usize, prompt: &[TokenId]) -> Self {
        assert!(
            vocab < 31,
            "rows of the toy are tie-free only for vocab < 31"
        );
        Self {
            vocab,
            beams: vec![prompt.to_vec()],
            advances: 0,
        }
    }

    fn logits(&self, seq: &[TokenId]) -> Vec<f32> {
        let (last, len) = (*seq.last().unwrap() as usize, seq.len());
        (0..self.vocab)
            .map(|v| {
                let mut k = (7 * v + 11 * last + 5 * len) % 31;
                if v == TOY_EOS && (len + last) % 4 == 0 {
                    k += 31;
                }
                k as f32 * 0.09f32
            })
            .collect()
    }
}

impl BeamModel for ToyModel {
    fn start(&mut self) -> Result<Vec<f32>> {
        Ok(self.logits(&self.beams[0]))
    }

    fn advance(&mut self, parents: &[usize], tokens: &[TokenId]) -> Result<Vec<Vec<f32>>> {
        self.advances += 1;
        self.beams = parents
            .iter()
            .zip(tokens)
            .map(|(&b, &tok)| {
                let mut seq = self.beams[b].clone();
                seq.push(tok);
                seq
            })
            .collect();
        Ok(self.beams.iter().map(|s| self.logits(s)).collect())
    }
}

/// A model whose log-probs are given by a table: `table(generated) -> logits`.
struct TableModel<F: Fn(&[TokenId]) -> Vec<f32>> {
    table: F,
    beams: Vec<Vec<TokenId>>,
    advances: usize,
}

impl<F: Fn(&[TokenId]) -> Vec<f32>> TableModel<F> {
    fn new(table: F) -> Self {
        Self {
            table,
            beams: vec![Vec::new()],
            advances: 0,
        }
    }
}

impl<F: Fn(&[TokenId]) -> Vec<f32>> BeamModel for TableModel<F> {
    fn start(&mut self) -> Result<Vec<f32>> {
        Ok((self.table)(&[]))
    }

    fn advance(&mut self, parents: &[usize], tokens: &[TokenId]) -> Result<Vec<Vec<f32>>> {
        self.advances += 1;
        self.beams = parents
            .iter()
            .zip(tokens)
            .map(|(&b, &tok)| [self.beams[b].as_slice(), &[tok]].concat())
            .collect();
        Ok(self.beams.iter().map(|s| (self.table)(s)).collect())
    }
}

fn params(num_beams: usize, max_new_tokens: usize, eos: &[TokenId]) -> BeamParams {
    BeamParams {
        num_beams,
        num_return: num_beams,
        max_new_tokens,
        eos: eos.to_vec(),
        ..BeamParams::default()
    }
}

/// Log-probs from probabilities (the table models give probabilities directly).
fn ln(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

#[test]
fn eos_ends_a_hypothesis_early_and_its_length_counts_the_eos() {
    // Vocab {0 = eos, 1, 2}. Step 0: eos 0.5, "1" 0.3, "2" 0.2. After "1": eos 0.9.
    // After anything else: uniform.
    let table = |g: &[TokenId]| match g {
        [] => ln(&[0.5, 0.3, 0.2]),
        [1] => ln(&[0.9, 0.05, 0.05]),
        _ => ln(&[1.0 / 3.0; 3]),
    };
    let p = BeamParams {
        length_penalty: 1.0,
        ..params(2, 4, &[0])
    };
    let mut model = TableModel::new(table);
    let hyps = beam_search(&p, &mut model).unwrap();
    let (l05, l03, l09) = (0.5f32.ln(), 0.3f32.ln(), 0.9f32.ln());
    // [1, eos] = (ln .3 + ln .9) / 2 = -0.654 beats [eos] = ln .5 = -0.693.
    assert_eq!(hyps[0].ids, vec![1, 0]);
    assert!((hyps[0].score - (l03 + l09) / 2.0).abs() < 1e-6);
    assert_eq!(hyps[1].ids, vec![0]);
    assert!((hyps[1].score - l05).abs() < 1e-6);
    // Both slots are filled after step 1; the best running beam, [2, 1] at
    // ln(.2 / 3) / 2 = -1.35, cannot beat -0.693: stop without a second advance.
    assert_eq!(model.advances, 1);
}

#[test]
fn length_penalty_changes_the_winner() {
    // Short: eos at once with p = 0.4. Long: "1" (0.6) then eos with p 0.55 -> total 0.33.
    // lp = 1: ln(.4) = -0.916 vs ln(.33) / 2 = -0.554 -> long wins.
    // lp = 0: ln(.4) = -0.916 vs ln(.33) = -1.109 -> short wins.
    // Longer sequences: at most .6 * .45 * .45 = .12 (ln / 3 = -0.70), never best.
    let table = |g: &[TokenId]| match g {
        [] => ln(&[0.4, 0.6, 1e-6]),
        [1] => ln(&[0.55, 0.45, 1e-6]),
        _ => ln(&[0.1, 0.45, 0.45]),
    };
    let run = |lp: f32| {
        let p = BeamParams {
            length_penalty: lp,
            num_return: 1,
            early_stopping: EarlyStopping::Never,
            ..params(2, 3, &[0])
        };
        beam_search(&p, &mut TableModel::new(table)).unwrap()
    };
    assert_eq!(run(1.0)[0].ids, vec![1, 0]);
    assert_eq!(run(0.0)[0].ids, vec![0]);
}

#[test]
fn eos_outside_the_top_num_beams_is_not_a_hypothesis() {
    // Step 0 with 2 beams, K = 4: candidates 1 (.4), 2 (.3), eos (.2), 3 (.1). Eos is ranked
    // third, beyond num_beams = 2, so it is dropped; the beams continue with 1 and 2.
    let table = |g: &[TokenId]| match g {
        [] => ln(&[0.2, 0.4, 0.3, 0.1]),
        _ => ln(&[0.25; 4]),
    };
    let p = params(2, 2, &[0]);
    let hyps = beam_search(&p, &mut TableModel::new(table)).unwrap();
    assert!(hyps.iter().all(|h| h.ids != vec![0]), "{hyps:?}");
    assert!(hyps.iter().all(|h| h.ids.len() == 2), "{hyps:?}");
}

#[test]
fn max_length_returns_unfinished_beams() {
    let p = params(3, 4, &[]);
    let mut model = TableModel::new(|g: &[TokenId]| {
        let v = g.len() as f32;
        vec![0.1 * v, 0.3, -0.2, 0.7 - 0.1 * v]
    });
    let hyps = beam_search(&p, &mut model).unwrap();
    assert_eq!(hyps.len(), 3);
    assert!(hyps.iter().all(|h| h.ids.len() == 4));
    assert!(hyps.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(model.advances, 3);
}

#[test]
fn early_stopping_true_stops_once_num_beams_are_finished() {
    // Every row puts most mass on eos: after step 0 one hypothesis ([0]), after step 1 the
    // second. `True` stops there; `False` compares with the best running beam, and `Never`
    // with lp > 0 looks ahead to max_new_tokens (the running beam's score divided by 10).
    let table = |g: &[TokenId]| match g.len() {
        0 => ln(&[0.5, 0.3, 0.2]),
        _ => ln(&[0.6, 0.35, 0.05]),
    };
    let advances = |early_stopping| {
        let p = BeamParams {
            early_stopping,
            length_penalty: 1.0,
            ..params(2, 10, &[0])
        };
        let mut model = TableModel::new(table);
        let hyps = beam_search(&p, &mut model).unwrap();
        (model.advances, hyps)
    };
    let (t, hyps_t) = advances(EarlyStopping::True);
    let (f, _) = advances(EarlyStopping::False);
    let (n, hyps_n) = advances(EarlyStopping::Never);
    assert_eq!(t, 1, "{hyps_t:?}");
    assert!(f >= t && n > f, "{t} {f} {n}");
    assert!(hyps_n[1].score >= hyps_t[1].score);
}

#[test]
fn first_advance_maps_every_parent_to_the_prompt() {
    // Vocab 3, eos {0, 1}, 2 beams: K = 6 takes every candidate of both step-0 beams.
    // Beam 0 has one live token; its eos candidates (ln p ~ -200, then -1e9) rank below
    // beam 1's copy of token 2 (-1e9 + ~0), so a new beam descends from beam 1, which is
    // the prompt as well: the model sees parent 0 (TableModel would panic otherwise).
    let table = |g: &[TokenId]| match g.len() {
        0 => vec![-200.0, -200.0, 0.0],
        _ => vec![0.0, -1.0, -2.0],
    };
    let p = params(2, 3, &[0, 1]);
    let mut model = TableModel::new(table);
    let hyps = beam_search(&p, &mut model).unwrap();
    assert_eq!(model.advances, 1);
    assert_eq!(hyps[0].ids, vec![2, 0]);
}

/// Every sequence the model can produce (ended by eos, or `max_len` long), with its score.
fn exhaustive(model: &ToyModel, prompt: &[TokenId], p: &BeamParams) -> Vec<BeamHyp> {
    let mut out = Vec::new();
    let mut open = vec![(Vec::<TokenId>::new(), 0.0f32)];
    for t in 0..p.max_new_tokens {
        let mut next = Vec::new();
        for (ids, score) in open {
            let seq = [prompt, &ids].concat();
            let lps = log_softmax(&model.logits(&seq)).unwrap();
            for (v, lp) in lps.iter().enumerate() {
                let ids = [ids.as_slice(), &[v as TokenId]].concat();
                let s = score + lp;
                if p.eos.contains(&(v as TokenId)) || t + 1 == p.max_new_tokens {
                    out.push(BeamHyp {
                        score: s / length_pow(t + 1, p.length_penalty),
                        ids,
                    });
                } else {
                    next.push((ids, s));
                }
            }
        }
        open = next;
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

#[test]
fn wide_beams_with_never_find_the_exhaustive_best() {
    // With num_beams >= every live prefix, `Never` is exact beam search: the top hypotheses
    // are the best of all sequences, for any length penalty.
    let prompt = [3];
    for lp in [0.0, 1.0, 2.0, -0.5] {
        let p = BeamParams {
            num_return: 6,
            length_penalty: lp,
            early_stopping: EarlyStopping::Never,
            ..params(36, 3, &[0])
        };
        let model = ToyModel::new(4, &prompt);
        let want = exhaustive(&model, &prompt, &p);
        let got = beam_search(&p, &mut ToyModel::new(4, &prompt)).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.ids, w.ids, "lp {lp}: {got:?}");
            assert!((g.score - w.score).abs() < 1e-5, "lp {lp}: {got:?}");
        }
    }
}

#[test]
fn matches_hugging_face_on_the_toy_model() {
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("../tests/golden/beam_toy.json")).unwrap();
    let vocab = golden["vocab"].as_u64().unwrap() as usize;
    let ids = |v: &serde_json::Value| -> Vec<TokenId> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as TokenId)
            .collect()
    };
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for (i, case) in cases.iter().enumerate() {
        let p = BeamParams {
            num_beams: case["num_beams"].as_u64().unwrap() as usize,
            num_return: case["num_return"].as_u64().unwrap() as usize,
            length_penalty: case["length_penalty"].as_f64().unwrap() as f32,
            early_stopping: match case["early_stopping"].as_str().unwrap() {
                "true" => EarlyStopping::True,
                "false" => EarlyStopping::False,
                _ => EarlyStopping::Never,
            },
            max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
            eos: ids(&case["eos"]),
        };
        let mut model = ToyModel::new(vocab, &ids(&case["prompt"]));
        let got = beam_search(&p, &mut model).unwrap();
        let want = case["hyps"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "case {i}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.ids, ids(&w["ids"]), "case {i}: {got:?}");
            let score = w["score"].as_f64().unwrap() as f32;
            assert!(
                (g.score - score).abs() <= 1e-6 * score.abs().max(1.0),
                "case {i}: {got:?}"
            );
        }
    }
}

#[test]
fn invalid_params_are_errors() {
    let ok = params(2, 5, &[0]);
    assert!(ok.validate().is_ok());
    let bad = [
        BeamParams {
            num_beams: 0,
            num_return: 0,
            ..ok.clone()
        },
        BeamParams {
            num_return: 3,
            ..ok.clone()
        },
        BeamParams {
            num_return: 0,
            ..ok.clone()
        },
        BeamParams {
            max_new_tokens: 0,
            ..ok.clone()
        },
        BeamParams {
            length_penalty: f32::NAN,
            ..ok.clone()
        },
        BeamParams {
            length_penalty: f32::INFINITY,
            ..ok.clone()
        },
    ];
    for p in &bad {
        let err = beam_search(p, &mut ToyModel::new(5, &[1])).unwrap_err();
        assert!(p.validate().is_err());
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn bad_model_output_is_an_error() {
    let p = params(3, 4, &[0, 1]);
    // K = 3 * 3 = 9 > 3 * 2: vocab too small for the candidates kept per step.
    let e = beam_search(&p, &mut TableModel::new(|_: &[TokenId]| vec![0.0; 2])).unwrap_err();
    assert!(e.to_string().contains("vocab"), "{e}");
    let e = beam_search(&p, &mut TableModel::new(|_: &[TokenId]| vec![f32::NAN; 8]));
    assert!(e.is_err());
    let e = beam_search(&p, &mut TableModel::new(|_: &[TokenId]| Vec::new()));
    assert!(e.is_err());
    let e = beam_search(
        &p,
        &mut TableModel::new(|g: &[TokenId]| vec![0.5; if g.is_empty() { 8 } else { 9 }]),
    );
    assert!(e.unwrap_err().to_string().contains("length"));

    struct Short;
    impl BeamModel for Short {
        fn start(&mut self) -> Result<Vec<f32>> {
            Ok(vec![0.0; 8])
        }
        fn advance(&mut self, _: &[usize], _: &[TokenId]) -> Result<Vec<Vec<f32>>> {
            Ok(vec![vec![0.0; 8]])
        }
    }
    assert!(beam_search(&p, &mut Short)
        .unwrap_err()
        .to_string()
        .contains("rows"));
}

#[test]
fn nan_logits_count_as_minus_infinity() {
    let mut row = vec![0.5f32, f32::NAN, 1.0, -1.0];
    let lps = log_softmax(&row).unwrap();
    assert_eq!(lps[1], f32::NEG_INFINITY);
    row[1] = f32::NEG_INFINITY;
    assert_eq!(lps, log_softmax(&row).unwrap());
}

#[test]
fn top_k_is_stable_on_ties() {
    assert_eq!(
        top_k_desc(&[1.0, 3.0, 3.0, -0.0, 0.0, 3.0], 4),
        vec![1, 2, 5, 0]
    );
    assert_eq!(top_k_desc(&[-0.0, 0.0, -1.0], 3), vec![0, 1, 2]);
    assert_eq!(top_k_desc(&[2.0, 1.0], 2), vec![0, 1]);
    assert!(top_k_desc(&[2.0], 0).is_empty());
}
