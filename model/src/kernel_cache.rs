//! bertkit's GPU kernel cache: what burn's CUDA backend compiles and tunes, kept between runs
//! and shared by every rank and job that points at the same folder.
//!
//! 1. The root: `--kernel-cache DIR`, else `$BERTKIT_KERNEL_CACHE`, else
//!    `$XDG_CACHE_HOME/bertkit/kernels`, else `~/.cache/bertkit/kernels` ([`root`]).
//! 2. One folder per GPU architecture and per burn/cubecl version under it
//!    (`sm_90/burn-0.21.0-cubecl-0.10.0`, [`keyed`]): CubeCL keys neither its autotune results nor
//!    its PTX by architecture, so a cache built on another card, or by another version, is never
//!    read. It holds CubeCL's autotune results (`autotune/`) and its PTX cache (`cuda/`, off in
//!    CubeCL unless configured).
//! 3. The CUDA driver's own JIT cache (`CUDA_CACHE_PATH`, which the driver keys by GPU and driver
//!    version itself) goes to `ROOT/cuda-driver`, up to [`DRIVER_CACHE_BYTES`], unless the
//!    environment already sets it ([`driver_cache_env`]; set before the driver starts).
//! 4. Every device ordinal shares one set of autotune entries: CubeCL names its folder after the
//!    ordinal (`device-0-<ordinal>-cuda`), so rank 3 on GPU 3 would miss rank 0's results; the
//!    other ordinals' folders are links to ordinal 0's ([`share_ordinals`]).
//!
//! 5. `--kernel-log FILE` ([`choose_log`]): CubeCL writes a line to FILE for every kernel it
//!    compiles (on CUDA: every NVRTC compilation, not the PTX cache's hits), and
//!    [`NewKernels`] counts them, so that a run can say which steps compiled what.
//!
//! Several processes may use one cache at once: CubeCL guards each autotune file and the PTX
//! index with a lock file (a lock older than 30 s is taken over); the PTX data file is appended
//! without a lock, so a job pre-warms the cache once (`bertkit pretrain --warmup-kernels`) before
//! many ranks read it. [`install`] (feature `cuda`) configures CubeCL before its first use.

use std::path::{Path, PathBuf};

/// The environment variable naming the cache root.
pub const ENV: &str = "BERTKIT_KERNEL_CACHE";
/// burn and CubeCL as built into this bertkit (pinned in Cargo.toml).
pub const BURN_VERSION: &str = "0.21.0";
pub const CUBECL_VERSION: &str = "0.10.0";
/// The CUDA driver's JIT cache limit (its maximum; the default is 256 MiB).
pub const DRIVER_CACHE_BYTES: u64 = 4 << 30;

/// The cache root: `flag`, else [`ENV`], else the user's cache folder; `None` without a home.
pub fn root(flag: Option<&Path>) -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    flag.map(Path::to_path_buf)
        .or_else(|| var(ENV))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("bertkit/kernels")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/bertkit/kernels")))
}

/// The folder of one GPU architecture (compute capability `major.minor`) and of this build's
/// burn and CubeCL versions.
pub fn keyed(root: &Path, major: i32, minor: i32) -> PathBuf {
    root.join(format!("sm_{major}{minor}"))
        .join(format!("burn-{BURN_VERSION}-cubecl-{CUBECL_VERSION}"))
}

/// The CUDA driver's JIT cache settings for `root`: `CUDA_CACHE_PATH` and `CUDA_CACHE_MAXSIZE`,
/// each only when the environment does not set it already.
pub fn driver_cache_env(root: &Path) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if std::env::var_os("CUDA_CACHE_PATH").is_none() {
        env.push((
            "CUDA_CACHE_PATH",
            root.join("cuda-driver").display().to_string(),
        ));
    }
    if std::env::var_os("CUDA_CACHE_MAXSIZE").is_none() {
        env.push(("CUDA_CACHE_MAXSIZE", DRIVER_CACHE_BYTES.to_string()));
    }
    env
}

/// Where CubeCL keeps the autotune results of device `ordinal` under a cache folder `dir`.
pub fn autotune_dir(dir: &Path, ordinal: usize) -> PathBuf {
    dir.join("autotune")
        .join(CUBECL_VERSION)
        .join(format!("device-0-{ordinal}-cuda"))
}

/// Makes the autotune folders of ordinals `1..count` links to ordinal 0's under `dir`, so every
/// GPU of a node reads and writes the same entries. A real folder that an earlier run made for
/// another ordinal is merged into ordinal 0's first (its files moved unless ordinal 0 has the
/// same file, whose entries win) and replaced by the link.
pub fn share_ordinals(dir: &Path, count: usize) -> std::io::Result<()> {
    let first = autotune_dir(dir, 0);
    std::fs::create_dir_all(&first)?;
    for ordinal in 1..count {
        let path = autotune_dir(dir, ordinal);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => continue,
            Ok(m) if m.is_dir() => {
                for entry in std::fs::read_dir(&path)? {
                    let entry = entry?;
                    let target = first.join(entry.file_name());
                    if !target.exists() {
                        std::fs::rename(entry.path(), target)?;
                    }
                }
                std::fs::remove_dir_all(&path)?;
            }
            Ok(_) => std::fs::remove_file(&path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        link(Path::new("device-0-0-cuda"), &path)?;
    }
    Ok(())
}

#[cfg(unix)]
fn link(target: &Path, path: &Path) -> std::io::Result<()> {
    match std::os::unix::fs::symlink(target, path) {
        // Another rank made it at the same moment.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

#[cfg(not(unix))]
fn link(_target: &Path, path: &Path) -> std::io::Result<()> {
    // Without symlinks each ordinal keeps its own entries.
    std::fs::create_dir_all(path)
}

/// The root chosen for this process by [`choose`].
static CHOSEN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Chooses this process's cache root ([`root`] of the `--kernel-cache` flag) once, at start,
/// before any other thread exists: a CUDA build also sets the CUDA driver's JIT cache
/// ([`driver_cache_env`]) in the environment, which the driver reads when it starts.
pub fn choose(flag: Option<&Path>) -> Option<PathBuf> {
    let chosen = CHOSEN.get_or_init(|| root(flag)).clone();
    #[cfg(feature = "cuda")]
    if let Some(r) = &chosen {
        for (k, v) in driver_cache_env(r) {
            std::env::set_var(k, v);
        }
    }
    chosen
}

/// The root [`choose`] chose, else the default one.
pub fn chosen() -> Option<PathBuf> {
    CHOSEN.get().cloned().unwrap_or_else(|| root(None))
}

/// The file CubeCL writes a line to for every kernel it compiles, chosen by [`choose_log`].
static KERNEL_LOG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Chooses this process's kernel log (`--kernel-log FILE`) once, at start, before a CubeCL
/// backend starts, and empties the file (CubeCL appends to it).
pub fn choose_log(path: &Path) -> Result<(), String> {
    empty_file(path, "kernel log")?;
    KERNEL_LOG
        .set(path.to_path_buf())
        .map_err(|_| "the kernel log is chosen once per process".to_string())
}

/// The kernel log [`choose_log`] chose.
pub fn kernel_log() -> Option<&'static Path> {
    KERNEL_LOG.get().map(PathBuf::as_path)
}

/// Counts the kernels CubeCL compiles, from the kernel log: each [`NewKernels::take`] reads what
/// the log gained since the last one.
#[derive(Debug, Default)]
pub struct NewKernels {
    /// The log's bytes read so far.
    read: u64,
}

impl NewKernels {
    /// Kernels compiled since the last call (since the process started, at the first); `None`
    /// without a kernel log.
    pub fn take(&mut self) -> Option<usize> {
        let (text, end) = appended_since(KERNEL_LOG.get()?, self.read);
        self.read = end;
        Some(count_compilations(&text))
    }
}

/// What CubeCL's logging thread has written to `path` after byte `offset`, once it has settled
/// ([`settled_len`]), and where the file then ends.
fn appended_since(path: &Path, offset: u64) -> (String, u64) {
    use std::io::{Read, Seek};
    let end = settled_len(path);
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f
            .seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| f.take(end.saturating_sub(offset)).read_to_end(&mut bytes));
    }
    let read = offset + bytes.len() as u64;
    (String::from_utf8_lossy(&bytes).into_owned(), read)
}

/// The length of a file CubeCL's logging thread writes to, once it has stopped growing for
/// 30 ms (at most 2 s): the thread writes (and flushes) each line just after the event.
fn settled_len(path: &Path) -> u64 {
    let len = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let started = std::time::Instant::now();
    let mut last = len();
    while started.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(30));
        let now = len();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// The file CubeCL's profiler writes each kernel launch's device time to, chosen by
/// [`choose_profile`].
static KERNEL_PROFILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Chooses this process's kernel profile (`--kernel-profile FILE`) once, at start, and empties
/// the file: CubeCL's profiler then runs every kernel on its own (synchronously) and writes its
/// device time there.
pub fn choose_profile(path: &Path) -> Result<(), String> {
    empty_file(path, "kernel profile")?;
    KERNEL_PROFILE
        .set(path.to_path_buf())
        .map_err(|_| "the kernel profile is chosen once per process".to_string())
}

/// The kernel profile [`choose_profile`] chose.
pub fn kernel_profile() -> Option<&'static Path> {
    KERNEL_PROFILE.get().map(PathBuf::as_path)
}

/// Where the kernel profile ends now (its events so far written); `None` without one.
pub fn profile_offset() -> Option<u64> {
    KERNEL_PROFILE.get().map(|p| settled_len(p))
}

/// The kernel launches profiled since `offset` ([`profile_offset`]), by kernel; `None` without
/// a profile.
pub fn profile_since(offset: u64) -> Option<Vec<KernelTime>> {
    let (text, _) = appended_since(KERNEL_PROFILE.get()?, offset);
    Some(parse_profile(&text))
}

/// One kernel's launches and their device time in a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// CubeCL's short name: the kernel type and its operation, e.g. `KernelBinop | AddOp`.
    pub name: String,
    pub launches: usize,
    pub seconds: f64,
}

/// The launches of a CubeCL profile (`| 1.327ms | FullKernel | WgpuRuntime` a line; the summary
/// tables CubeCL adds are skipped), summed by kernel, longest total first.
pub fn parse_profile(text: &str) -> Vec<KernelTime> {
    let mut by_name: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    for line in text.lines() {
        let mut fields = line.split('|').map(str::trim);
        let (Some(""), Some(duration), Some(first)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(seconds) = parse_duration(duration) else {
            continue;
        };
        // The name's parts, without the runtime (the last field) and the line's empty end.
        let mut parts: Vec<&str> = std::iter::once(first)
            .chain(fields)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() > 1 && parts.last().is_some_and(|p| p.ends_with("Runtime")) {
            parts.pop();
        }
        let entry = by_name.entry(parts.join(" | ")).or_default();
        entry.0 += 1;
        entry.1 += seconds;
    }
    let mut out: Vec<KernelTime> = by_name
        .into_iter()
        .map(|(name, (launches, seconds))| KernelTime {
            name,
            launches,
            seconds,
        })
        .collect();
    out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    out
}

/// A `Duration`'s `Debug` form (`1.5s`, `1.327015ms`, `859.71µs`, `120ns`) in seconds.
fn parse_duration(s: &str) -> Option<f64> {
    let (number, scale) = [("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)]
        .iter()
        .find_map(|(unit, scale)| s.strip_suffix(unit).map(|n| (n, *scale)))?;
    number.parse::<f64>().ok().map(|v| v * scale)
}

/// Creates `path` (and its folder) empty.
fn empty_file(path: &Path, what: &str) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("{what} folder {}: {e}", parent.display()))?;
    }
    std::fs::write(path, "").map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The kernels a CubeCL compilation log names: one `[Compiling kernel]` line each (CubeCL's
/// basic level), or one `[START_KERNEL_COMPILATION]` block each (its full level, which
/// `CUBECL_DEBUG_LOG` turns on).
pub fn count_compilations(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.starts_with("[Compiling kernel]") || l.starts_with("[START_KERNEL_COMPILATION]")
        })
        .count()
}

/// CubeCL's settings (`cubecl.toml` from the working directory up, `CUBECL_*`) with the
/// autotune and compilation caches in `cache` and compilations logged to the kernel log,
/// installed before the first CubeCL backend starts.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn set_cubecl_config(cache: Option<&Path>) -> Result<(), String> {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::compilation::CompilationLogLevel;
    use cubecl_runtime::config::profiling::ProfilingLogLevel;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if let Some(dir) = cache {
        config.autotune.cache = CacheConfig::File(dir.to_path_buf());
        config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
    }
    if let Some(log) = KERNEL_LOG.get() {
        if matches!(
            config.compilation.logger.level,
            CompilationLogLevel::Disabled
        ) {
            config.compilation.logger.level = CompilationLogLevel::Basic;
        }
        config.compilation.logger.file = Some(log.clone());
        config.compilation.logger.append = true;
    }
    if let Some(profile) = KERNEL_PROFILE.get() {
        config.profiling.logger.level = ProfilingLogLevel::Basic;
        config.profiling.logger.file = Some(profile.clone());
        config.profiling.logger.append = true;
    }
    std::panic::catch_unwind(|| CubeClRuntimeConfig::set(config)).map_err(|_| {
        "the kernel cache and log must be chosen before a CubeCL backend starts (CubeCL's \
         configuration was already read)"
            .to_string()
    })
}

/// CubeCL's settings for the wgpu backend (its kernel log; wgpu keeps no kernel cache on disk),
/// once per process, before the backend starts.
#[cfg(feature = "wgpu")]
pub fn install_wgpu() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| set_cubecl_config(None)).clone()
}

/// [`install`] under [`chosen`]'s root (nothing without one).
#[cfg(feature = "cuda")]
pub fn install_chosen(index: usize) -> Result<Option<PathBuf>, String> {
    match chosen() {
        Some(r) => install(&r, index).map(Some),
        None => Ok(None),
    }
}

/// The cache folder this process's CUDA backend uses, once [`install`]ed.
#[cfg(feature = "cuda")]
static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Points CubeCL's autotune and PTX caches at the folder of CUDA device `index`'s architecture
/// under `root` (made, with the ordinals shared), before burn's CUDA backend first starts.
/// CubeCL's own settings (`cubecl.toml` from the working directory up, `CUBECL_*`) are kept
/// apart from the two cache locations. Once per process: later calls return the first folder.
#[cfg(feature = "cuda")]
pub fn install(root: &Path, index: usize) -> Result<PathBuf, String> {
    use cudarc::driver::{result, sys};
    if let Some(dir) = INSTALLED.get() {
        return Ok(dir.clone());
    }
    let probe = || -> Result<(i32, i32, usize), cudarc::driver::DriverError> {
        result::init()?;
        let count = usize::try_from(result::device::get_count()?).unwrap_or(0);
        let dev = result::device::get(index as i32)?;
        // SAFETY: `dev` is a valid device handle from cuDeviceGet; attributes are plain reads.
        let (major, minor) = unsafe {
            (
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )?,
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )?,
            )
        };
        Ok((major, minor, count))
    };
    let (major, minor, count) =
        probe().map_err(|e| format!("reading cuda:{index}'s compute capability: {e}"))?;
    let dir = keyed(root, major, minor);
    share_ordinals(&dir, count.max(index + 1))
        .map_err(|e| format!("kernel cache {}: {e}", dir.display()))?;
    set_cubecl_config(Some(&dir))?;
    Ok(INSTALLED.get_or_init(|| dir).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_comes_from_the_flag_then_the_environment_then_home() {
        let flag = Path::new("/flag/cache");
        assert_eq!(root(Some(flag)).as_deref(), Some(flag));
        // The environment variables are read, not set, here (tests share the process).
        match std::env::var_os(ENV) {
            Some(v) if !v.is_empty() => assert_eq!(root(None), Some(PathBuf::from(v))),
            _ => {
                let want = std::env::var_os("XDG_CACHE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(|c| PathBuf::from(c).join("bertkit/kernels"))
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .map(|h| PathBuf::from(h).join(".cache/bertkit/kernels"))
                    });
                assert_eq!(root(None), want);
            }
        }
    }

    #[test]
    fn each_architecture_and_version_has_its_own_folder() {
        let r = Path::new("/c");
        let h100 = keyed(r, 9, 0);
        assert_eq!(h100, Path::new("/c/sm_90/burn-0.21.0-cubecl-0.10.0"));
        assert_ne!(
            h100,
            keyed(r, 8, 0),
            "an A100 never reads an H100's kernels"
        );
        assert_ne!(keyed(r, 8, 6), keyed(r, 8, 0));
        // The versions in the key are the ones this binary is built with.
        let lock = include_str!("../../Cargo.lock");
        for (name, version) in [
            ("burn-cuda", BURN_VERSION),
            ("cubecl-runtime", CUBECL_VERSION),
        ] {
            let entry = format!("name = \"{name}\"\nversion = \"{version}\"");
            assert!(lock.contains(&entry), "Cargo.lock has no {entry}");
        }
    }

    #[test]
    fn every_ordinal_shares_ordinal_zeros_autotune_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = keyed(tmp.path(), 9, 0);
        // An earlier run without sharing left ordinal 2 with its own file.
        let old = autotune_dir(&dir, 2);
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("matmul.json.log"), "{\"from\": 2}\n").unwrap();
        share_ordinals(&dir, 4).unwrap();
        // Again, as a second rank would: nothing changes, nothing fails.
        share_ordinals(&dir, 4).unwrap();
        std::fs::write(autotune_dir(&dir, 3).join("reduce.json.log"), "{}\n").unwrap();
        for ordinal in 0..4 {
            let d = autotune_dir(&dir, ordinal);
            assert_eq!(
                std::fs::read_to_string(d.join("matmul.json.log")).unwrap(),
                "{\"from\": 2}\n",
                "ordinal {ordinal}"
            );
            assert!(d.join("reduce.json.log").exists(), "ordinal {ordinal}");
        }
        assert!(std::fs::symlink_metadata(autotune_dir(&dir, 2))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn compilations_are_counted_at_either_of_cubecls_log_levels() {
        let basic = "[Compiling kernel] burn_cubecl::kernel::binary::KernelBinop\n\
                     [Compiling kernel] cubek_matmul::MatmulEntry\n";
        assert_eq!(count_compilations(basic), 2);
        let full = "[START_KERNEL_COMPILATION]\nname: x\nsource:\n```\nfn main() {}\n```\n\
                    [END_KERNEL_COMPILATION]\n[START_KERNEL_COMPILATION]\n";
        assert_eq!(count_compilations(full), 2);
        assert_eq!(count_compilations(""), 0);
    }

    #[test]
    fn a_profile_is_summed_by_kernel_longest_first() {
        let text = "| 1.5ms      | MatmulEntry | CudaRuntime\n\
                    | 859.71µs   | KernelBinop | AddOp | WgpuRuntime\n\
                    | 140.29µs   | KernelBinop | AddOp | WgpuRuntime\n\
                    | 120ns      | FullKernel | WgpuRuntime\n\
                    | 1.25s      | ReduceKernel | CudaRuntime\n\
                    | Name         | Total  |\n\
                    | KernelBinop  | 1ms    |\n\
                    name: x\n";
        let p = parse_profile(text);
        let names: Vec<&str> = p.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ReduceKernel",
                "MatmulEntry",
                "KernelBinop | AddOp",
                "FullKernel"
            ]
        );
        assert_eq!(p[2].launches, 2);
        assert!((p[2].seconds - 1e-3).abs() < 1e-12, "{p:?}");
        assert!((p[0].seconds - 1.25).abs() < 1e-12);
        assert!((p[3].seconds - 120e-9).abs() < 1e-18);
        assert!(parse_profile("").is_empty());
    }

    #[test]
    fn a_kernel_log_that_cannot_be_written_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        // Its folder is a file.
        let bad = file.join("kernels.log");
        let e = choose_log(&bad).unwrap_err();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(kernel_log().is_none(), "a failed choice chose nothing");
    }

    #[test]
    fn the_driver_cache_goes_under_the_root_unless_set() {
        let env = driver_cache_env(Path::new("/c"));
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        match std::env::var("CUDA_CACHE_PATH") {
            Ok(_) => assert_eq!(get("CUDA_CACHE_PATH"), None),
            Err(_) => assert_eq!(get("CUDA_CACHE_PATH").as_deref(), Some("/c/cuda-driver")),
        }
        if std::env::var_os("CUDA_CACHE_MAXSIZE").is_none() {
            assert_eq!(get("CUDA_CACHE_MAXSIZE").as_deref(), Some("4294967296"));
        }
    }
}
