//! Where the CLI finds its API key: `--api-key`/`AOB_API_KEY`, then the key saved by
//! `aob login` for this server, then `./aob-data/admin.key` (the key a local
//! `aob serve` writes on first start).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Credentials {
    /// API URL → key.
    #[serde(default)]
    pub servers: BTreeMap<String, String>,
}

pub fn file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("aob").join("credentials.json"))
}

pub fn load() -> Credentials {
    file()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub fn save(c: &Credentials) -> anyhow::Result<PathBuf> {
    let path = file().ok_or_else(|| anyhow::anyhow!("cannot find a config directory (set HOME or XDG_CONFIG_HOME)"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(c)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path)?, text.as_bytes())?;
    Ok(path)
}

pub fn read_key_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The key to use against `api_url`.
pub fn resolve(flag: Option<&str>, api_url: &str) -> Option<String> {
    if let Some(k) = flag.filter(|k| !k.is_empty()) {
        return Some(k.to_string());
    }
    if let Some(k) = load().servers.get(api_url.trim_end_matches('/')) {
        return Some(k.clone());
    }
    read_key_file(&crate::serve::admin_key_path(Path::new("./aob-data")))
}
