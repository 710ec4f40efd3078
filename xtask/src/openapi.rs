//! `cargo xtask openapi`: the OpenAPI documents of both servers, generated from the
//! code and checked in under `openapi/`.

use std::path::{Path, PathBuf};

/// A document: its file name, and the text the code produces now.
pub struct Document {
    pub file: &'static str,
    pub text: String,
}

pub fn generate() -> Result<Vec<Document>, String> {
    let sim = sim_sled_agent::http::openapi().map_err(|e| e.to_string())?;
    let nexus = nexus_stub::http::openapi().map_err(|e| e.to_string())?;
    let pretty = |v: &serde_json::Value| {
        serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| e.to_string())
    };
    Ok(vec![
        Document { file: "sim-sled-agent.json", text: pretty(&sim)? },
        Document { file: "nexus-stub.json", text: pretty(&nexus)? },
    ])
}

/// The workspace's `openapi/` directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("openapi")
}

/// Writes every document; returns the files that changed.
pub fn write() -> Result<Vec<&'static str>, String> {
    let dir = dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut changed = Vec::new();
    for doc in generate()? {
        let path = dir.join(doc.file);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(doc.text.as_str()) {
            std::fs::write(&path, &doc.text)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            changed.push(doc.file);
        }
    }
    Ok(changed)
}
