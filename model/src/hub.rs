//! Models by name: `sentence-transformers/all-MiniLM-L6-v2` read from the local Hugging Face hub
//! cache, offline, as `transformers` does with `local_files_only=True`.
//!
//! The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
//! else `~/.cache/huggingface/hub`. A model `ORG/NAME` lives in `models--ORG--NAME/`: `refs/main`
//! names the commit whose files are in `snapshots/COMMIT/` (links into `blobs/`). `NAME@REV`
//! picks another ref or a commit.

use std::path::{Path, PathBuf};

/// The hub cache folder this process would read.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// Whether `name` can be a hub id (`NAME` or `ORG/NAME`, optionally `@REV`) rather than a path.
pub fn is_repo_id(name: &str) -> bool {
    let id = name.split('@').next().unwrap_or("");
    let parts: Vec<&str> = id.split('/').collect();
    (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The cache folder of the repository `name` (`models--ORG--NAME`), whether or not it exists.
pub fn repo_dir(cache: &Path, name: &str) -> PathBuf {
    let id = name.split('@').next().unwrap_or(name);
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// The snapshot folder of the model `name` in `cache`, if it is there.
pub fn snapshot_in(cache: &Path, name: &str) -> Option<PathBuf> {
    if !is_repo_id(name) {
        return None;
    }
    let repo = repo_dir(cache, name);
    let rev = name.split_once('@').map(|(_, r)| r).unwrap_or("main");
    let commit = std::fs::read_to_string(repo.join("refs").join(rev))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| rev.to_string());
    let snap = repo.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

/// The snapshot folder of `name` in this process's hub cache (see [`cache_dir`]).
pub fn snapshot(name: &str) -> Option<PathBuf> {
    snapshot_in(&cache_dir()?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        for id in [
            "bert-base-uncased",
            "sentence-transformers/all-MiniLM-L6-v2",
            "a/b@v1.0",
        ] {
            assert!(is_repo_id(id), "{id}");
        }
        for path in ["./m", "/abs/m", "a/b/c", "../m", "a//b", "", "m dir"] {
            assert!(!is_repo_id(path), "{path}");
        }
    }

    #[test]
    fn refs_and_commits_resolve() {
        let cache = tempfile::tempdir().unwrap();
        let repo = repo_dir(cache.path(), "org/m");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/def456")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        let snap = |n: &str| snapshot_in(cache.path(), n);
        assert_eq!(snap("org/m"), Some(repo.join("snapshots/abc123")));
        assert_eq!(snap("org/m@def456"), Some(repo.join("snapshots/def456")));
        assert_eq!(snap("org/m@v2"), None);
        assert_eq!(snap("org/other"), None);
    }
}
