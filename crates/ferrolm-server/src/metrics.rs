//! `/metrics` in Prometheus' text format: the engines' counters per model, plus what only the
//! HTTP layer sees: requests by endpoint and status, and latency histograms (time to first
//! token, time per output token, request duration).

use ferrolm_engine::serve::Metrics;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// A cumulative histogram over fixed upper bounds (seconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

const TTFT: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TPOT: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const DURATION: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, seconds: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *b {
                *c += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Latencies of one model's finished generations, as the HTTP layer saw them.
#[derive(Clone, Debug)]
pub struct Latency {
    pub ttft: Histogram,
    pub tpot: Histogram,
    pub duration: Histogram,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            ttft: Histogram::new(TTFT),
            tpot: Histogram::new(TPOT),
            duration: Histogram::new(DURATION),
        }
    }
}

/// What the HTTP layer measures.
#[derive(Default)]
pub struct HttpMetrics {
    latency: Mutex<BTreeMap<String, Latency>>,
    /// (endpoint, status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

/// One generation's timings.
pub struct Timing {
    pub first_token: Option<Duration>,
    pub last_token: Option<Duration>,
    pub tokens: usize,
    pub total: Duration,
}

impl HttpMetrics {
    pub fn observe(&self, model: &str, t: &Timing) {
        let Ok(mut map) = self.latency.lock() else {
            return;
        };
        let l = map.entry(model.to_string()).or_default();
        if let Some(first) = t.first_token {
            l.ttft.observe(first.as_secs_f64());
            if let (Some(last), true) = (t.last_token, t.tokens > 1) {
                l.tpot
                    .observe((last - first).as_secs_f64() / (t.tokens - 1) as f64);
            }
        }
        l.duration.observe(t.total.as_secs_f64());
    }

    pub fn count_request(&self, endpoint: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }

    /// The whole exposition: HTTP counters, then per model the engine's counters and gauges
    /// and the latency histograms.
    pub fn render(&self, engines: &[(String, Metrics)]) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "ferrolm_http_requests_total",
            "counter",
            "HTTP requests by endpoint and status.",
        );
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "ferrolm_http_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        type Get = fn(&Metrics) -> f64;
        let series: [(&str, &str, &str, Get); 16] = [
            (
                "ferrolm_requests_total",
                "counter",
                "Generation jobs admitted (one per choice).",
                |m| m.requests_total as f64,
            ),
            (
                "ferrolm_requests_finished_total",
                "counter",
                "Jobs that ended with stop or length.",
                |m| m.requests_finished as f64,
            ),
            (
                "ferrolm_requests_cancelled_total",
                "counter",
                "Jobs cancelled (client gone, timeout, shutdown).",
                |m| m.requests_cancelled as f64,
            ),
            (
                "ferrolm_requests_rejected_total",
                "counter",
                "Submissions refused (queue full, too long, shutting down).",
                |m| m.requests_rejected as f64,
            ),
            (
                "ferrolm_prompt_tokens_total",
                "counter",
                "Prompt tokens of finished jobs.",
                |m| m.prompt_tokens_total as f64,
            ),
            (
                "ferrolm_generation_tokens_total",
                "counter",
                "Tokens generated.",
                |m| m.generated_tokens_total as f64,
            ),
            (
                "ferrolm_queue_depth",
                "gauge",
                "Jobs waiting to run.",
                |m| m.queue_depth as f64,
            ),
            ("ferrolm_running", "gauge", "Jobs running.", |m| {
                m.running as f64
            }),
            (
                "ferrolm_kv_blocks_used",
                "gauge",
                "KV blocks in use (running sequences and the prefix cache).",
                |m| m.kv_blocks_used as f64,
            ),
            (
                "ferrolm_kv_blocks_cached",
                "gauge",
                "Of the KV blocks in use, those in the prefix cache (shared with the sequences reading them; the unread ones are given up when sequences need room).",
                |m| m.kv_blocks_cached as f64,
            ),
            (
                "ferrolm_kv_blocks_total",
                "gauge",
                "KV blocks in the pool.",
                |m| m.kv_blocks_total as f64,
            ),
            (
                "ferrolm_prefix_cache_queries_total",
                "counter",
                "Prompts looked up in the prefix cache.",
                |m| m.prefix_cache_queries as f64,
            ),
            (
                "ferrolm_prefix_cache_hits_total",
                "counter",
                "Prompts that found a cached prefix.",
                |m| m.prefix_cache_hits as f64,
            ),
            (
                "ferrolm_prefix_cache_tokens_total",
                "counter",
                "Prompt tokens served from the prefix cache.",
                |m| m.prefix_cache_tokens as f64,
            ),
            (
                "ferrolm_engine_steps_total",
                "counter",
                "Batched forward steps.",
                |m| m.steps as f64,
            ),
            (
                "ferrolm_preemptions_total",
                "counter",
                "Sequences pushed out for KV room and recomputed later.",
                |m| m.preemptions as f64,
            ),
        ];
        for (name, kind, help, get) in series {
            header(&mut out, name, kind, help);
            for (model, m) in engines {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", escape(model), get(m));
            }
        }
        let latency = self.latency.lock().map(|m| m.clone()).unwrap_or_default();
        type Pick = fn(&Latency) -> &Histogram;
        let hists: [(&str, &str, Pick); 3] = [
            (
                "ferrolm_time_to_first_token_seconds",
                "From the request's arrival to its first generated token.",
                |l| &l.ttft,
            ),
            (
                "ferrolm_time_per_output_token_seconds",
                "Between a generation's first and last tokens, per token after the first.",
                |l| &l.tpot,
            ),
            (
                "ferrolm_request_duration_seconds",
                "From the request's arrival to its generation's end.",
                |l| &l.duration,
            ),
        ];
        for (name, help, get) in hists {
            header(&mut out, name, "histogram", help);
            for (model, _) in engines {
                let labels = format!("model=\"{}\"", escape(model));
                let empty = Latency::default();
                get(latency.get(model).unwrap_or(&empty)).write(&mut out, name, &labels);
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with Prometheus' escapes.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut out = String::new();
        h.write(&mut out, "x", "model=\"m\"");
        assert!(out.contains("x_bucket{model=\"m\",le=\"0.1\"} 1\n"));
        assert!(out.contains("x_bucket{model=\"m\",le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{model=\"m\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{model=\"m\"} 3\n"));
    }
}
