//! LoRA training end to end on the tiny llama fixture: the held-out loss falls, a seed gives
//! the same adapter twice, and the adapter saved in PEFT's format, loaded back by `--lora`'s
//! loader, gives the trained network's logits (from the safetensors base and its GGUF
//! conversion).

use ferrolm_engine::convert::{convert, parse_type};
use ferrolm_engine::lora::{apply, AdapterArg};
use ferrolm_format::hf::HfDir;
use ferrolm_format::GgufFile;
use ferrolm_model::model::log_softmax_at;
use ferrolm_model::{KvPrecision, Logits, Model};
use ferrolm_train::data::Example;
use ferrolm_train::net::{Adapter, LoraConfig};
use ferrolm_train::train::{split, train, TrainConfig};
use std::path::Path;
use std::sync::Arc;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf/llama")
}

fn hf() -> Model {
    Model::from_hf(HfDir::open(&dir()).unwrap()).unwrap()
}

fn gguf() -> Model {
    let bytes = convert(&dir(), parse_type("q8_0").unwrap())
        .unwrap()
        .to_bytes()
        .unwrap();
    Model::from_gguf(Arc::new(GgufFile::from_bytes(&bytes).unwrap())).unwrap()
}

/// Arithmetic progressions mod 128: learnable from a few examples.
fn data() -> Vec<Example> {
    (0..40u32)
        .map(|i| {
            let s = (i * 37) % 100;
            let ids: Vec<u32> = (0..24).map(|k| (s + 3 * k) % 128).collect();
            let loss = vec![true; ids.len()];
            Example::new(ids, &loss)
        })
        .collect()
}

fn cfg(out: &Path) -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            r: 4,
            alpha: 16.0,
            dropout: 0.05,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        },
        epochs: None,
        steps: Some(80),
        lr: 5e-3,
        batch: 4,
        grad_accum: 1,
        eval_split: 0.1,
        seed: 3,
        warmup_ratio: 0.1,
        weight_decay: 0.0,
        clip: 1.0,
        out: out.to_path_buf(),
        save_every: None,
        resume: None,
    }
}

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    let mut kv = m.new_cache_with(ids.len(), KvPrecision::F32);
    m.forward(ids, &mut kv, Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn trained(m: &Model, out: &Path) -> (Adapter, ferrolm_train::train::Summary) {
    let c = cfg(out);
    let (tr, ev) = split(data(), c.eval_split, c.seed);
    let mut ad = Adapter::new(m, c.lora.clone(), c.seed).unwrap();
    let s = train(m, &mut ad, &tr, &ev, &c, |_, _, _, _, _| {}).unwrap();
    (ad, s)
}

#[test]
fn lora_learns_is_deterministic_and_round_trips_through_peft_format() {
    let tmp = std::env::temp_dir().join(format!("ferrolm-train-{}", std::process::id()));
    for (name, from_gguf) in [("hf", false), ("gguf q8_0 (QLoRA)", true)] {
        let m = if from_gguf { gguf() } else { hf() };
        let (ad, s) = trained(&m, &tmp);
        let (before, after) = (s.eval_before.unwrap(), s.eval_after.unwrap());
        println!(
            "{name}: held-out loss {before:.3} -> {after:.3} in {} steps",
            s.steps
        );
        assert!(after < 0.7 * before, "{name}: {before} -> {after}");
        // The same seed, the same adapter.
        let (ad2, _) = trained(&m, &tmp);
        assert!(ad
            .mods
            .iter()
            .zip(&ad2.mods)
            .all(|(a, b)| a.a == b.a && a.b == b.b));
        // Saved as PEFT does, loaded by --lora: the trained network's logits.
        let out = tmp.join(name.split(' ').next().unwrap());
        ferrolm_train::peft::save(&ad, &m, from_gguf, "llama", &out).unwrap();
        let ids: Vec<u32> = (0..12).map(|k| (5 + 3 * k) % 128).collect();
        let targets: Vec<Option<u32>> = (0..ids.len()).map(|i| ids.get(i + 1).copied()).collect();
        let (l_train, n) =
            ferrolm_train::net::run(&m, &ad, &ids, &targets, 1.0, None, None).unwrap();
        let mut m2 = if from_gguf { gguf() } else { hf() };
        apply(
            &mut m2,
            from_gguf,
            &AdapterArg {
                dir: out.clone(),
                scale: 1.0,
                route: None,
            },
        )
        .unwrap();
        let lg = logits(&m2, &ids);
        let v = m2.config.vocab_size;
        let l_loaded: f64 = (0..n)
            .map(|i| -log_softmax_at(&lg[i * v..(i + 1) * v], targets[i].unwrap() as usize))
            .sum();
        println!("{name}: loss of the trained network {l_train:.5}, of the saved adapter loaded back {l_loaded:.5}");
        assert!(
            (l_train - l_loaded).abs() < 1e-3 * l_train.abs().max(1.0),
            "{name}"
        );
        // And the base model loaded in the other layout takes the adapter the same way.
        let mut other = if from_gguf { hf() } else { gguf() };
        apply(
            &mut other,
            !from_gguf,
            &AdapterArg {
                dir: out,
                scale: 1.0,
                route: None,
            },
        )
        .unwrap();
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The quantized matrix's backward (`dx = dy · W`, W read 64 rows at a time from its q8_0
/// blocks) equals the widened matrix's, and is the adjoint of the widened forward:
/// `<dy · W, x> = <dy, x Wᵀ>`.
#[test]
fn quantized_backward_is_the_adjoint_of_its_dequantized_forward() {
    use ferrolm_model::linear::{F32Linear, Linear};
    let m = gguf();
    let b = &m.blocks()[0];
    for l in [&b.attn.q, &b.attn.k, &b.attn.o] {
        let (i, o) = (l.in_dim(), l.out_dim());
        assert_eq!(l.kind(), "Q8_0");
        let w = F32Linear::widen(l.as_ref()).unwrap();
        let rows = 3;
        let x: Vec<f32> = (0..rows * i)
            .map(|k| ((k * 7919 % 97) as f32 - 48.0) / 50.0)
            .collect();
        let dy: Vec<f32> = (0..rows * o)
            .map(|k| ((k * 104729 % 89) as f32 - 44.0) / 40.0)
            .collect();
        let (mut dq, mut dw) = (vec![0f32; rows * i], vec![0f32; rows * i]);
        l.backward_input(&dy, &mut dq).unwrap();
        w.backward_input(&dy, &mut dw).unwrap();
        assert_eq!(dq, dw);
        let mut y = vec![0f32; rows * o];
        w.forward_slice(&x, &mut y).unwrap();
        let lhs: f64 = dq.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let rhs: f64 = dy.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!(
            (lhs - rhs).abs() < 1e-4 * rhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}

/// A run resumed from its step-5 checkpoint ends with the same adapter as the run itself.
#[test]
fn resume_from_a_checkpoint_equals_an_uninterrupted_run() {
    let tmp = std::env::temp_dir().join(format!("ferrolm-resume-{}", std::process::id()));
    let m = hf();
    let (tr, ev) = split(data(), 0.1, 3);
    let mut c = cfg(&tmp);
    c.steps = Some(12);
    c.save_every = Some(5);
    let mut whole = Adapter::new(&m, c.lora.clone(), 3).unwrap();
    let s1 = train(&m, &mut whole, &tr, &ev, &c, |_, _, _, _, _| {}).unwrap();
    assert!(tmp.join("checkpoint-5").is_dir() && tmp.join("checkpoint-12").is_dir());
    let mut resumed = Adapter::new(&m, c.lora.clone(), 3).unwrap();
    c.resume = Some(tmp.join("checkpoint-5"));
    c.save_every = None;
    let s2 = train(&m, &mut resumed, &tr, &ev, &c, |_, _, _, _, _| {}).unwrap();
    for (a, b) in whole.params().iter().zip(resumed.params()) {
        assert_eq!(*a, b);
    }
    assert_eq!(s1.losses, s2.losses);
    // A checkpoint of another adapter is refused by name.
    let mut other = Adapter::new_prompt(&m, 4, None, 3).unwrap();
    let e = train(&m, &mut other, &tr, &ev, &c, |_, _, _, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("another adapter"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A prompt-tuning and a P-tuning adapter, trained, saved as PEFT does and loaded back by
/// `--prompt-adapter`'s loader: their virtual tokens prefilled before the input give the trained
/// network's loss.
#[test]
fn prompt_adapters_round_trip_to_inference() {
    let tmp = std::env::temp_dir().join(format!("ferrolm-prompt-{}", std::process::id()));
    let m = hf();
    let (tr, ev) = split(data(), 0.1, 3);
    let mut c = cfg(&tmp);
    c.steps = Some(30);
    for hidden in [None, Some(16)] {
        c.lr = if hidden.is_some() { 3e-3 } else { 2e-2 };
        let mut ad = Adapter::new_prompt(&m, 4, hidden, 3).unwrap();
        train(&m, &mut ad, &tr, &ev, &c, |_, _, _, _, _| {}).unwrap();
        let out = tmp.join(if hidden.is_some() {
            "ptuning"
        } else {
            "prompt"
        });
        ferrolm_train::peft::save(&ad, &m, false, "llama", &out).unwrap();
        let soft = ferrolm_engine::lora::load_prompt(&m, &out).unwrap();
        let ids: Vec<u32> = (0..12).map(|k| (5 + 3 * k) % 128).collect();
        let targets: Vec<Option<u32>> = (0..ids.len()).map(|i| ids.get(i + 1).copied()).collect();
        let (want, n) = ferrolm_train::net::run(&m, &ad, &ids, &targets, 1.0, None, None).unwrap();
        let mut kv = m.new_cache_with(4 + ids.len(), KvPrecision::F32);
        m.prefill_soft(&soft, &mut kv).unwrap();
        let lg: Vec<f32> = m
            .forward(&ids, &mut kv, Logits::All)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let v = m.config.vocab_size;
        let got: f64 = (0..n)
            .map(|i| -log_softmax_at(&lg[i * v..(i + 1) * v], targets[i].unwrap() as usize))
            .sum();
        println!("{hidden:?}: trained loss {want:.5}, at inference {got:.5}");
        assert!((want - got).abs() < 1e-3 * want.abs().max(1.0));
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Full fine-tuning, with AdamW and with LOMO, from an f32 GGUF conversion of the fixture: the
/// held-out loss falls, and the written GGUF runs the trained weights (its logits equal the
/// trained model's).
#[test]
fn full_fine_tuning_learns_and_writes_a_gguf_of_the_trained_model() {
    use ferrolm_train::full::{to_gguf, train_full, Optimizer};
    let base = Arc::new(
        GgufFile::from_bytes(
            &convert(&dir(), parse_type("f32").unwrap())
                .unwrap()
                .to_bytes()
                .unwrap(),
        )
        .unwrap(),
    );
    let tmp = std::env::temp_dir().join(format!("ferrolm-full-{}", std::process::id()));
    for (opt, lr, batch, steps) in [
        (Optimizer::AdamW, 5e-3, 4, 80),
        (Optimizer::Lomo, 1e-1, 1, 240),
    ] {
        let mut m = Model::from_gguf(base.clone()).unwrap();
        m.widen_to_f32().unwrap();
        let mut c = cfg(&tmp);
        (c.lr, c.batch, c.steps) = (lr, batch, Some(steps));
        let (tr, ev) = split(data(), c.eval_split, c.seed);
        let s = train_full(&mut m, &tr, &ev, &c, opt, |_, _, _, _, _| {}).unwrap();
        let (before, after) = (s.eval_before.unwrap(), s.eval_after.unwrap());
        println!(
            "full {opt:?}: held-out loss {before:.3} -> {after:.3} in {} steps",
            s.steps
        );
        assert!(after < 0.5 * before, "{opt:?}: {before} -> {after}");
        let bytes = to_gguf(&mut m, &base).unwrap().to_bytes().unwrap();
        let written = Model::from_gguf(Arc::new(GgufFile::from_bytes(&bytes).unwrap())).unwrap();
        let ids = &data()[0].ids;
        let (a, b) = (logits(&m, ids), logits(&written, ids));
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{opt:?}: written model differs by {d}");
        let orig = logits(&Model::from_gguf(base.clone()).unwrap(), ids);
        assert!(orig.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-2));
    }
}
