//! Body of the `config` fuzz target (and of its corpus replay in
//! `tests/tests/security/fuzz_corpus.rs`): random text as the node's TOML configuration file,
//! read by `media_server::config::NodeConfig::load` as `media-server --config` reads it.
//!
//! Properties: never a panic; a configuration that loads renders (`--print-config`'s TOML, the
//! wall's `/api/wall/config` JSON, the SFU settings), and its rendering loads back to the same
//! configuration (so `--print-config` is a file the node accepts).

use std::path::PathBuf;

use media_server::config::NodeConfig;

/// A file of this process's own (inputs are written to it: `load` reads a path).
fn scratch() -> &'static PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("yiwang-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir.join("node.toml")
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let path = scratch();
    std::fs::write(path, data).expect("scratch file written");
    let Ok(mut config) = NodeConfig::load(path) else {
        return;
    };
    let toml = config.to_toml();
    let _ = config.wall.to_json();
    let _ = config.sfu.to_sfu_config();
    std::fs::write(path, &toml).expect("scratch file written");
    let again = NodeConfig::load(path)
        .unwrap_or_else(|e| panic!("--print-config output does not load: {e}\n{toml}"));
    // The default data dir stays relative to the working directory (documented); written out, it
    // is a key of the file and resolves against the file's folder.
    let base = path.parent().expect("scratch file has a folder");
    config.node.data_dir = base.join(&config.node.data_dir);
    let toml = config.to_toml();
    // Compared as rendered (a NaN is not equal to itself but renders the same).
    assert_eq!(
        again.to_toml(),
        toml,
        "a rendered configuration loads differently"
    );
}
