//! Hugging Face model directories: `config.json`, memory-mapped safetensors weights (one file,
//! the shards of `model.safetensors.index.json`, or every `*.safetensors` file), and the side
//! files that decide how the model is used (`generation_config.json`, the sentence-transformers
//! files, `tokenizer.json`).
//!
//! Opening validates what the model loader relies on: every header parses, every tensor lies
//! inside its file with `shape x dtype size == byte length`, names are unique across shards and
//! the index agrees with the shards. Tensors of dtypes ferrolm cannot load (`I64` position ids,
//! say) are indexed but refused by [`HfDir::get`] with a message naming the dtype.
//!
//! Layout of a safetensors file: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}}`), then
//! the data; offsets are relative to the end of the header.

mod generation;
mod sentence;

pub use generation::GenerationConfig;
pub use sentence::{pool, Pooling, SentenceConfig};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use safetensors::{Dtype, SafeTensors};

/// Longest error-message fragment taken from a file (names, parser messages), in characters.
const MAX_QUOTE: usize = 200;

/// An opened Hugging Face model directory. Weights stay memory-mapped; [`HfDir::get`] returns
/// views into the maps.
pub struct HfDir {
    pub path: PathBuf,
    /// `config.json`.
    pub config: serde_json::Value,
    shards: Vec<Shard>,
    /// Tensor name -> where it lies; sorted by name.
    index: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for HfDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfDir")
            .field("path", &self.path)
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish_non_exhaustive()
    }
}

struct Shard {
    /// The file, relative to the directory (for messages).
    name: String,
    map: memmap2::Mmap,
}

/// One tensor: its shard and absolute byte range in that shard's map.
#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The element types ferrolm loads from safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfDtype {
    F32,
    F16,
    BF16,
}

impl HfDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            HfDtype::F32 => 4,
            HfDtype::F16 | HfDtype::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HfDtype::F32 => "F32",
            HfDtype::F16 => "F16",
            HfDtype::BF16 => "BF16",
        }
    }

    fn of(dtype: Dtype) -> Option<HfDtype> {
        match dtype {
            Dtype::F32 => Some(HfDtype::F32),
            Dtype::F16 => Some(HfDtype::F16),
            Dtype::BF16 => Some(HfDtype::BF16),
            _ => None,
        }
    }
}

/// A view of one tensor's bytes (little-endian, row-major).
#[derive(Debug, Clone)]
pub struct HfTensor<'a> {
    pub name: &'a str,
    pub dtype: HfDtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl HfTensor<'_> {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values widened to f32 (exact for all three dtypes).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            HfDtype::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            HfDtype::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            HfDtype::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
}

impl HfDir {
    /// Whether `path` is a directory with a `config.json`.
    pub fn is_hf_dir(path: &Path) -> bool {
        path.is_dir() && path.join("config.json").is_file()
    }

    /// Opens a model directory: `config.json` (required), weights from `model.safetensors`, or
    /// every shard named in `model.safetensors.index.json`'s `weight_map`, or (fallback) all
    /// `*.safetensors` files in the directory. Files are memory-mapped and their headers
    /// validated.
    pub fn open(path: &Path) -> Result<HfDir> {
        let shown = path.display();
        if !path.is_dir() {
            bail!(
                "'{shown}' is not a directory; a Hugging Face model is a directory holding \
                 config.json and *.safetensors weights"
            );
        }
        if !path.join("config.json").is_file() {
            bail!(
                "model directory '{shown}' has no config.json; point at the directory that holds \
                 config.json and the *.safetensors weights"
            );
        }
        let config = read_json(&path.join("config.json"))?;
        if !config.is_object() {
            bail!("'{shown}/config.json' is not a JSON object; re-download the model");
        }
        let (files, weight_map) = weight_files(path)?;
        let mut dir = HfDir {
            path: path.to_path_buf(),
            config,
            shards: Vec::with_capacity(files.len()),
            index: BTreeMap::new(),
        };
        for name in files {
            dir.add_shard(name)?;
        }
        if let Some(weight_map) = weight_map {
            for (tensor, file) in &weight_map {
                let found = dir.index.get(tensor).map(|e| &dir.shards[e.shard].name);
                if found != Some(file) {
                    bail!(
                        "'{shown}/model.safetensors.index.json' puts tensor '{}' in '{}', which \
                         does not contain it; re-download the model (the index and shards \
                         disagree)",
                        quote(tensor),
                        quote(file)
                    );
                }
            }
        }
        Ok(dir)
    }

    /// Opens a PEFT adapter directory: `adapter_config.json` (as `config`) and the weights in
    /// `adapter_model.safetensors`, validated like a model's.
    pub fn open_adapter(path: &Path) -> Result<HfDir> {
        let shown = path.display();
        if !path.is_dir() {
            bail!(
                "'{shown}' is not a directory; a LoRA adapter is a directory holding \
                 adapter_config.json and adapter_model.safetensors (as PEFT saves them)"
            );
        }
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            if !path.join(f).is_file() {
                bail!("adapter directory '{shown}' has no {f}; point at the directory PEFT's save_pretrained wrote");
            }
        }
        let config = read_json(&path.join("adapter_config.json"))?;
        if !config.is_object() {
            bail!("'{shown}/adapter_config.json' is not a JSON object");
        }
        let mut dir = HfDir {
            path: path.to_path_buf(),
            config,
            shards: Vec::new(),
            index: BTreeMap::new(),
        };
        dir.add_shard("adapter_model.safetensors".into())?;
        Ok(dir)
    }

    fn add_shard(&mut self, name: String) -> Result<()> {
        let file_path = self.path.join(&name);
        let shown = file_path.display();
        let file = std::fs::File::open(&file_path)
            .map_err(|e| anyhow!("cannot open weights file '{shown}': {e}; check the file"))?;
        let len = file
            .metadata()
            .map_err(|e| anyhow!("cannot read weights file '{shown}': {e}; check the file"))?
            .len();
        if len == 0 {
            bail!("'{shown}' is empty, not a safetensors file; re-download the model");
        }
        // SAFETY: the map is read-only and private to this value. As with every mmap-based
        // loader, a process that truncates or rewrites the file while it is mapped can make reads
        // fault or change; ferrolm never writes to model files it has open.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| anyhow!("cannot map weights file '{shown}': {e}; check the file"))?;
        let shard = self.shards.len();
        let tensors = parse_safetensors(&map).map_err(|reason| {
            anyhow!(
                "'{shown}' is not a valid safetensors file ({reason}); re-download or re-convert \
                 the model"
            )
        })?;
        for (tensor, mut entry) in tensors {
            entry.shard = shard;
            if let Some(other) = self.index.get(&tensor) {
                bail!(
                    "tensor '{}' is in both '{}' and '{name}' of '{}'; remove the stray file",
                    quote(&tensor),
                    self.shards[other.shard].name,
                    self.path.display()
                );
            }
            self.index.insert(tensor, entry);
        }
        self.shards.push(Shard { name, map });
        Ok(())
    }

    /// All tensor names, sorted (including tensors of dtypes [`HfDir::get`] refuses).
    pub fn tensor_names(&self) -> Vec<&str> {
        self.index.keys().map(String::as_str).collect()
    }

    /// The tensor `name`, or `None` if it is absent *or* of a dtype ferrolm cannot load;
    /// [`HfDir::get`] says which.
    pub fn tensor(&self, name: &str) -> Option<HfTensor<'_>> {
        self.get(name).ok()
    }

    /// The tensor `name`, or an error saying it is absent or of an unsupported dtype.
    pub fn get(&self, name: &str) -> Result<HfTensor<'_>> {
        let Some((key, e)) = self.index.get_key_value(name) else {
            bail!(
                "tensor '{}' not found in model directory '{}' ({} tensors); the model's \
                 architecture does not match its weights, or the download is incomplete",
                quote(name),
                self.path.display(),
                self.index.len()
            );
        };
        let dtype = HfDtype::of(e.dtype).ok_or_else(|| {
            anyhow!(
                "tensor '{}' has dtype {}, which ferrolm cannot load (F32, F16, BF16)",
                quote(name),
                e.dtype
            )
        })?;
        Ok(HfTensor {
            name: key,
            dtype,
            shape: e.shape.clone(),
            bytes: &self.shards[e.shard].map[e.start..e.end],
        })
    }

    /// The safetensors dtype name of `name` (`"F32"`, `"I64"`, ...), whatever it is.
    pub fn dtype_name(&self, name: &str) -> Option<String> {
        self.index.get(name).map(|e| e.dtype.to_string())
    }

    /// `generation_config.json`, if present.
    pub fn generation_config(&self) -> Result<Option<GenerationConfig>> {
        let p = self.path.join("generation_config.json");
        if !p.is_file() {
            return Ok(None);
        }
        let v = read_json(&p)?;
        GenerationConfig::from_json(&v)
            .map(Some)
            .map_err(|e| anyhow!("'{}': {e}; fix or delete the file", p.display()))
    }

    /// The sentence-transformers configuration (see [`SentenceConfig::read`] for the rules).
    pub fn sentence_config(&self) -> Result<SentenceConfig> {
        SentenceConfig::read(&self.path, &self.config)
    }

    /// `tokenizer.json`, if present.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        let p = self.path.join("tokenizer.json");
        p.is_file().then_some(p)
    }
}

/// The weight files to map (relative names, sorted) and the index's `weight_map` if there is one.
type WeightFiles = (Vec<String>, Option<BTreeMap<String, String>>);

fn weight_files(dir: &Path) -> Result<WeightFiles> {
    let shown = dir.display();
    if dir.join("model.safetensors").is_file() {
        return Ok((vec!["model.safetensors".into()], None));
    }
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let index = read_json(&index_path)?;
        let bad = |what: &str| anyhow!("'{}' {what}; re-download the model", index_path.display());
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("has no \"weight_map\" object"))?;
        let mut weight_map = BTreeMap::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(&format!("maps tensor '{}' to a non-string", quote(tensor))))?;
            let p = Path::new(file);
            let inside = p
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside || file.is_empty() {
                return Err(bad(&format!(
                    "names shard '{}', which is not a file inside the directory",
                    quote(file)
                )));
            }
            weight_map.insert(tensor.clone(), file.to_string());
        }
        if weight_map.is_empty() {
            return Err(bad("has an empty weight_map"));
        }
        let files: BTreeSet<&String> = weight_map.values().collect();
        for f in &files {
            if !dir.join(f).is_file() {
                bail!(
                    "model directory '{shown}' lacks shard '{}' named in \
                     model.safetensors.index.json; the download is incomplete",
                    quote(f)
                );
            }
        }
        let files = files.into_iter().cloned().collect();
        return Ok((files, Some(weight_map)));
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("cannot list model directory '{shown}': {e}"))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") && entry.path().is_file() {
            files.push(name);
        }
    }
    files.sort();
    if files.is_empty() {
        let hint = if dir.join("pytorch_model.bin").is_file() {
            "; it has pytorch_model.bin, which ferrolm does not read: convert it to safetensors"
        } else {
            "; download the weights too"
        };
        bail!(
            "model directory '{shown}' has no safetensors weights (model.safetensors, \
             model.safetensors.index.json or *.safetensors){hint}"
        );
    }
    Ok((files, None))
}

/// Parses and validates a whole safetensors file held in `bytes`; tensors come back with
/// absolute byte ranges (and `shard` 0). Never panics; the error is a one-line reason.
fn parse_safetensors(bytes: &[u8]) -> std::result::Result<Vec<(String, Entry)>, String> {
    let (n, meta) = SafeTensors::read_metadata(bytes).map_err(|e| quote(&e.to_string()))?;
    let data_start = 8 + n;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let (begin, end) = info.data_offsets;
        // read_metadata checked contiguity, sizes and the total length; re-check the range
        // itself so that an upstream change can never turn into an out-of-bounds slice.
        let start = data_start.checked_add(begin).ok_or("offset overflow")?;
        let end = data_start.checked_add(end).ok_or("offset overflow")?;
        if start > end || end > bytes.len() {
            return Err(format!("tensor '{}' lies outside the file", quote(&name)));
        }
        out.push((
            name,
            Entry {
                shard: 0,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
            },
        ));
    }
    Ok(out)
}

/// Reads and parses a JSON file, with a one-line error naming it.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read '{}': {e}; check the file", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "'{}' is not valid JSON ({e}); re-download the model or fix the file",
            path.display()
        )
    })
}

/// `s` cut to [`MAX_QUOTE`] characters and flattened to one line, for messages.
pub(crate) fn quote(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_QUOTE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > MAX_QUOTE {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests;
