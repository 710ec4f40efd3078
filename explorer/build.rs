//! Digests the model's source, so shards of one search written by builds of
//! different models are told apart (`explore::MODEL_DIGEST`).

use std::path::{Path, PathBuf};

/// The crates whose code decides what a search explores: this engine, the
/// components, their API and the transport. Siblings in the workspace.
const MODEL: [&str; 6] =
    ["explorer", "nexus-stub", "sim-sled-agent", "watcher", "sled-agent-api", "sledsim-http"];

fn main() {
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = here.parent().unwrap_or(&here).to_path_buf();
    let mut files = Vec::new();
    for krate in MODEL {
        let src = root.join(krate).join("src");
        println!("cargo:rerun-if-changed={}", src.display());
        collect(&src, &mut files);
    }
    files.sort();
    // FNV-1a over each file's path (from the workspace root) and contents: the
    // same source gives the same digest on every machine.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f);
        feed(rel.to_string_lossy().replace('\\', "/").as_bytes());
        feed(&[0]);
        feed(&std::fs::read(f).unwrap_or_default());
        feed(&[0]);
    }
    println!("cargo:rustc-env=SLEDSIM_MODEL_DIGEST={h:016x}");
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}
