//! A batched step (several sequences' rows through one forward) gives every sequence the bits it
//! gets alone: the server's promise that an answer does not depend on what runs beside it.
//! SmolLM2 (Q4_1 and Q8_0 matrices) is checked: prompts of different lengths prefilled together,
//! then greedy decoding of all of them in one batch, against each run alone.

use ferrolm_engine::load;
use ferrolm_model::layers::Scratch;
use ferrolm_model::Logits;

fn argmax(r: &[f32]) -> u32 {
    let mut b = 0;
    for (i, &v) in r.iter().enumerate() {
        if v > r[b] {
            b = i;
        }
    }
    b as u32
}

#[test]
fn batched_steps_equal_single_sequences() {
    let Some(path) = ferrolm_format::test_models::file("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let lm = load(path.to_str().unwrap(), true).unwrap();
    let tok = lm.tok().unwrap();
    let prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "Write a haiku about the sea:",
        "1, 2, 3, 4,",
        "Rust is a language that",
    ]
    .iter()
    .map(|p| tok.encode(p, true, false).unwrap())
    .collect();
    let steps = 12;
    // Alone.
    let mut alone = Vec::new();
    for p in &prompts {
        let mut kv = lm.model.new_cache(256);
        let mut logits: Vec<Vec<f32>> = vec![lm
            .model
            .forward(p, &mut kv, Logits::Last)
            .unwrap()
            .to_vec2()
            .unwrap()
            .remove(0)];
        for _ in 0..steps {
            let t = argmax(logits.last().unwrap());
            logits.push(
                lm.model
                    .forward(&[t], &mut kv, Logits::Last)
                    .unwrap()
                    .to_vec2()
                    .unwrap()
                    .remove(0),
            );
        }
        alone.push(logits);
    }
    // Together.
    let mut caches: Vec<_> = prompts.iter().map(|_| lm.model.new_cache(256)).collect();
    let mut scratch = Scratch::default();
    let mut next: Vec<Vec<u32>> = prompts.clone();
    let mut together: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    for _ in 0..=steps {
        let mut batch: Vec<(&[u32], &mut ferrolm_model::KvCache)> = next
            .iter()
            .map(|v| v.as_slice())
            .zip(caches.iter_mut())
            .collect();
        let rows = lm.model.forward_batch(&mut batch, &mut scratch).unwrap();
        let v = rows.len() / prompts.len();
        for (i, r) in rows.chunks(v).map(|r| r.to_vec()).enumerate() {
            next[i] = vec![argmax(&r)];
            together[i].push(r);
        }
    }
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        for (step, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                x == y,
                "prompt {i}, step {step}: logits differ by {}",
                x.iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max)
            );
        }
    }
}
