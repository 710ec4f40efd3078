//! `cargo xtask openapi`: the OpenAPI documents of both servers, generated from the
//! code and checked in under `openapi/`, and the trimmed copies of omicron's that
//! the `omicron-clients` crate generates omicron's clients from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// omicron's documents (copied into `openapi/omicron/`), and the operations of
/// each that sledsim serves: the trimmed copy keeps those and every schema they
/// reach, so progenitor generates only what the test needs.
const OMICRON: [(&str, &str, &[&str]); 2] = [
    (
        "omicron/sled-agent-48.0.0-808ec1.json",
        "omicron/trimmed/sled-agent.json",
        &["vmm_register", "vmm_unregister", "vmm_put_state", "vmm_get_state"],
    ),
    (
        "omicron/nexus-internal-1.0.0-6d8ade.json",
        "omicron/trimmed/nexus-internal.json",
        &["cpapi_instances_put"],
    ),
];

/// `doc` with only the paths of `operations`, the shared responses, and the
/// schemas those reach through `$ref`s.
fn trim(doc: &Value, operations: &[&str]) -> Value {
    let mut paths = serde_json::Map::new();
    for (path, methods) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in methods.as_object().into_iter().flatten() {
            if op["operationId"].as_str().is_some_and(|id| operations.contains(&id)) {
                let entry =
                    paths.entry(path.clone()).or_insert_with(|| Value::Object(Default::default()));
                entry[method] = op.clone();
            }
        }
    }
    let responses = doc["components"]["responses"].clone();
    let schemas = &doc["components"]["schemas"];
    let mut keep = BTreeSet::new();
    let mut todo = vec![Value::Object(paths.clone()), responses.clone()];
    while let Some(v) = todo.pop() {
        visit_refs(&v, &mut |name| {
            if keep.insert(name.to_string()) {
                todo.push(schemas[name].clone());
            }
        });
    }
    let mut out = doc.clone();
    out["paths"] = Value::Object(paths);
    out["components"] = serde_json::json!({
        "schemas": keep.iter().map(|k| (k.clone(), schemas[k.as_str()].clone())).collect::<serde_json::Map<_, _>>(),
        "responses": responses,
    });
    out
}

/// Calls `f` with the schema name of every `$ref` in `v`.
fn visit_refs(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::Object(m) => {
            if let Some(name) = m.get("$ref").and_then(Value::as_str) {
                if let Some(name) = name.strip_prefix("#/components/schemas/") {
                    f(name);
                }
            }
            m.values().for_each(|v| visit_refs(v, f));
        }
        Value::Array(a) => a.iter().for_each(|v| visit_refs(v, f)),
        _ => {}
    }
}

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
    let mut docs = vec![
        Document { file: "sim-sled-agent.json", text: pretty(&sim)? },
        Document { file: "nexus-stub.json", text: pretty(&nexus)? },
    ];
    for (full, trimmed, operations) in OMICRON {
        let path = dir().join(full);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        docs.push(Document { file: trimmed, text: pretty(&trim(&doc, operations))? });
    }
    Ok(docs)
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
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        if std::fs::read_to_string(&path).ok().as_deref() != Some(doc.text.as_str()) {
            std::fs::write(&path, &doc.text)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            changed.push(doc.file);
        }
    }
    Ok(changed)
}
