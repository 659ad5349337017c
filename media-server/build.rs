//! Embeds the wall's static files (`web/*.html|js|css|svg|png` and everything under `web/vendor/`,
//! the npm libraries `scripts/build-web.sh` copies there) into the binary: writes
//! `$OUT_DIR/web_files.rs`, a table of (URL path, content type, bytes) that `http.rs` serves.
//! A missing `web/vendor/` (build-web.sh not run) is a warning: the wall then says its map
//! library is missing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn content_type(path: &Path) -> Option<&'static str> {
    Some(match path.extension()?.to_str()? {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let web = manifest
        .join("../web")
        .canonicalize()
        .expect("web/ beside media-server/");
    println!("cargo:rerun-if-changed={}", web.display());
    let mut files = Vec::new();
    let mut top: Vec<_> = std::fs::read_dir(&web)
        .expect("read web/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("package"))
        })
        .collect();
    top.sort();
    files.extend(top);
    let vendor = web.join("vendor");
    if vendor.join("leaflet/leaflet.js").is_file() {
        walk(&vendor, &mut files);
    } else {
        println!("cargo:warning=web/vendor/leaflet is missing: run scripts/build-web.sh (or scripts/install-deps.sh) so the wall's map is embedded");
    }
    let mut code = String::from("/// The wall's static files: (URL path, content type, bytes).\npub const WEB_FILES: &[(&str, &str, &[u8])] = &[\n");
    for f in &files {
        let Some(ct) = content_type(f) else { continue };
        let rel = f
            .strip_prefix(&web)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        writeln!(
            code,
            "    ({:?}, {:?}, include_bytes!({:?})),",
            format!("/{rel}"),
            ct,
            f.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("web_files.rs");
    std::fs::write(out, code).unwrap();
}
