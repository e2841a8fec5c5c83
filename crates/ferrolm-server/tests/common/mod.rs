//! Test support: servers on ephemeral loopback ports, in this process, over the real models,
//! and a minimal blocking HTTP/1.1 client (so the tests see the bytes a client sees).

#![allow(dead_code)]

use ferrolm_engine::serve::ServeConfig;
use ferrolm_engine::LoadedModel;
use ferrolm_server::{AppState, Limits};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1";
pub const MINILM: &str = "all-minilm-l6-v2";
/// Request bodies above this answer 413 in these servers.
pub const MAX_BODY: usize = 1 << 20;

fn load(file: &str) -> Option<Arc<LoadedModel>> {
    let path = ferrolm_format::test_models::file(file)?;
    Some(Arc::new(
        ferrolm_engine::load(path.to_str().unwrap(), true).unwrap(),
    ))
}

/// SmolLM2, loaded once per test binary (`None`: not in the model cache, skip).
pub fn smol() -> Option<Arc<LoadedModel>> {
    static M: OnceLock<Option<Arc<LoadedModel>>> = OnceLock::new();
    M.get_or_init(|| load(&format!("{SMOL}.gguf"))).clone()
}

/// all-MiniLM-L6-v2 (an encoder: embeddings only).
pub fn minilm() -> Option<Arc<LoadedModel>> {
    static M: OnceLock<Option<Arc<LoadedModel>>> = OnceLock::new();
    M.get_or_init(|| load(MINILM)).clone()
}

/// The engine limits the tests use unless they say otherwise: a small context and pool.
pub fn test_config() -> ServeConfig {
    ServeConfig {
        n_ctx: 2048,
        kv_blocks: 2048,
        ..ServeConfig::default()
    }
}

/// A server running on its own thread and runtime until stopped (or the process ends).
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub fn start(models: Vec<(Arc<LoadedModel>, ServeConfig)>, grace: Duration) -> Server {
        Server::start_with(models, Vec::new(), Vec::new(), grace)
    }

    /// With per-request LoRA adapters `(name, model index, route)` (`AppState::adapters`)
    /// and prompt adapters `(name, model index, virtual tokens)`.
    pub fn start_with(
        models: Vec<(Arc<LoadedModel>, ServeConfig)>,
        adapters: Vec<(String, usize, usize)>,
        prompt_adapters: Vec<(String, usize, Arc<Vec<f32>>)>,
        grace: Duration,
    ) -> Server {
        let mut state = AppState::new(models, Limits::default()).unwrap();
        state.adapters = adapters;
        state.prompt_adapters = prompt_adapters;
        let state = Arc::new(state);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let stop = async {
                    let _ = rx.await;
                };
                ferrolm_server::serve(listener, st, MAX_BODY, stop, grace).await
            })
        });
        Server {
            addr,
            state,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        request(self.addr, "POST", path, Some(body.to_string().as_bytes()))
    }

    /// One value from `/metrics` for the model `model`.
    pub fn metric(&self, name: &str, model: &str) -> f64 {
        let text = self.get("/metrics").body;
        let prefix = format!("{name}{{model=\"{model}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
            .parse()
            .unwrap()
    }
}

/// The server that most tests share: SmolLM2 and all-MiniLM-L6-v2 side by side.
pub fn shared() -> Option<&'static Server> {
    static S: OnceLock<Option<Server>> = OnceLock::new();
    S.get_or_init(|| {
        let mut models = vec![(smol()?, test_config())];
        if let Some(m) = minilm() {
            models.push((m, test_config()));
        }
        Some(Server::start(models, Duration::from_secs(2)))
    })
    .as_ref()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of an event stream, checking its framing on the way.
    pub fn events(&self) -> Vec<String> {
        assert!(
            self.body.ends_with("\n\n"),
            "a stream ends with a blank line: {:?}",
            self.body
        );
        self.body
            .trim_end_matches('\n')
            .split("\n\n")
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("event without 'data: ': {e:?}"))
                    .to_string()
            })
            .collect()
    }
}

/// Sends a request head (and body) on a fresh connection.
pub fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body; stop writing then.
    let _ = s.write_all(body);
    s
}

pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    let mut s = send(addr, method, path, body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            panic!("truncated chunked body");
        };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// A chat request body for the SmolLM2 server.
pub fn chat_body(content: &str, extra: Value) -> Value {
    let mut v = serde_json::json!({
        "model": SMOL,
        "messages": [{"role": "user", "content": content}],
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}
