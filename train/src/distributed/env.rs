//! Where this process sits in a data-parallel job, read from the environment as torchrun and
//! SLURM's srun set it up:
//!
//! - torchrun-style: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`;
//! - under srun (when `RANK` is absent): `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, and the
//!   master address is the first host of `SLURM_JOB_NODELIST` (or `SLURM_NODELIST`), expanded
//!   from SLURM's compressed form (`gpu-[01-03,07],login1`);
//! - neither: a single process (rank 0 of 1).
//!
//! Every problem names the variable and its value.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

/// The default rendezvous port when `MASTER_PORT` is not set (torchrun's).
pub const DEFAULT_PORT: u16 = 29500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Where the values came from: "torchrun", "slurm" or "single".
    pub source: &'static str,
}

impl ProcessEnv {
    /// From this process's environment.
    pub fn from_env() -> Result<ProcessEnv> {
        ProcessEnv::from_vars(&std::env::vars().collect())
    }

    /// From a set of variables (the environment, or a test's).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<ProcessEnv> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let num = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .with_context(|| format!("{k}={v:?} is not a non-negative integer"))
                })
                .transpose()
        };
        let port = match get("MASTER_PORT") {
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .with_context(|| format!("MASTER_PORT={v:?} is not a port number (1-65535)"))?,
            None => DEFAULT_PORT,
        };
        let env = if let Some(rank) = num("RANK")? {
            let world_size = num("WORLD_SIZE")?.context("RANK is set but WORLD_SIZE is not")?;
            ProcessEnv {
                rank,
                world_size,
                local_rank: num("LOCAL_RANK")?.unwrap_or(0),
                master_addr: get("MASTER_ADDR").unwrap_or("127.0.0.1").to_string(),
                master_port: port,
                source: "torchrun",
            }
        } else if let Some(rank) = num("SLURM_PROCID")? {
            let world_size = num("SLURM_NTASKS")?
                .context("SLURM_PROCID is set but SLURM_NTASKS is not (run under srun)")?;
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a.to_string(),
                None => {
                    let (key, list) = ["SLURM_JOB_NODELIST", "SLURM_NODELIST"]
                        .iter()
                        .find_map(|k| get(k).map(|v| (*k, v)))
                        .context("under SLURM without MASTER_ADDR or SLURM_JOB_NODELIST")?;
                    expand_nodelist(list)
                        .with_context(|| format!("{key}={list:?}"))?
                        .into_iter()
                        .next()
                        .with_context(|| format!("{key}={list:?} names no host"))?
                }
            };
            ProcessEnv {
                rank,
                world_size,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                master_addr,
                master_port: port,
                source: "slurm",
            }
        } else {
            ProcessEnv {
                rank: 0,
                world_size: 1,
                local_rank: 0,
                master_addr: get("MASTER_ADDR").unwrap_or("127.0.0.1").to_string(),
                master_port: port,
                source: "single",
            }
        };
        if env.world_size == 0 {
            bail!("the world size ({}) must be at least 1", env.source);
        }
        if env.rank >= env.world_size {
            bail!(
                "rank {} is not below the world size {} ({})",
                env.rank,
                env.world_size,
                env.source
            );
        }
        Ok(env)
    }
}

/// Expands SLURM's compressed host list: comma-separated hosts, each with at most bracketed
/// ranges and numbers (`node[01-03,07]`, `rack[1-2]-gpu[1-2]`), zero padding kept, in order.
pub fn expand_nodelist(list: &str) -> Result<Vec<String>> {
    let mut hosts = Vec::new();
    for item in split_top_level(list)? {
        let mut expanded = vec![String::new()];
        let mut rest = item;
        while !rest.is_empty() {
            let (literal, tail) = match rest.find('[') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            for h in &mut expanded {
                h.push_str(literal);
            }
            if tail.is_empty() {
                break;
            }
            let close = tail
                .find(']')
                .with_context(|| format!("unclosed '[' in {item:?}"))?;
            let values = expand_ranges(&tail[1..close]).with_context(|| format!("in {item:?}"))?;
            expanded = expanded
                .iter()
                .flat_map(|h| values.iter().map(move |v| format!("{h}{v}")))
                .collect();
            rest = &tail[close + 1..];
        }
        hosts.extend(expanded.into_iter().filter(|h| !h.is_empty()));
    }
    Ok(hosts)
}

/// Splits at commas outside brackets.
fn split_top_level(list: &str) -> Result<Vec<&str>> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            bail!("unbalanced brackets in {list:?}");
        }
    }
    if depth != 0 {
        bail!("unbalanced brackets in {list:?}");
    }
    parts.push(list[start..].trim());
    Ok(parts.into_iter().filter(|p| !p.is_empty()).collect())
}

/// `01-03,07` -> `01 02 03 07` (the width of the first bound is kept).
fn expand_ranges(spec: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let width = lo.len();
        let parse = |s: &str| {
            s.parse::<u64>()
                .with_context(|| format!("{s:?} is not a number in range {part:?}"))
        };
        let (a, b) = (parse(lo)?, parse(hi)?);
        if b < a || b - a > 100_000 {
            bail!("bad range {part:?}");
        }
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nodelists_expand_like_scontrol_show_hostnames() {
        assert_eq!(expand_nodelist("gpu01").unwrap(), ["gpu01"]);
        assert_eq!(
            expand_nodelist("gpu-[01-03,07],login1").unwrap(),
            ["gpu-01", "gpu-02", "gpu-03", "gpu-07", "login1"]
        );
        assert_eq!(
            expand_nodelist("rack[1-2]-n[8-9]").unwrap(),
            ["rack1-n8", "rack1-n9", "rack2-n8", "rack2-n9"]
        );
        assert_eq!(
            expand_nodelist("n[098-101]").unwrap(),
            ["n098", "n099", "n100", "n101"]
        );
        for bad in ["n[1-", "n[3-1]", "n[a-b]", "n]1["] {
            assert!(expand_nodelist(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn torchrun_variables() {
        let e = ProcessEnv::from_vars(&vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "12345"),
            // torchrun's variables win over SLURM's when both are there.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ]))
        .unwrap();
        assert_eq!(
            e,
            ProcessEnv {
                rank: 3,
                world_size: 8,
                local_rank: 3,
                master_addr: "10.0.0.1".into(),
                master_port: 12345,
                source: "torchrun"
            }
        );
    }

    #[test]
    fn slurm_variables() {
        let e = ProcessEnv::from_vars(&vars(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "dgx[003-004]"),
        ]))
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank), (9, 16, 1));
        assert_eq!(
            (e.master_addr.as_str(), e.master_port),
            ("dgx003", DEFAULT_PORT)
        );
        assert_eq!(e.source, "slurm");
        let single = ProcessEnv::from_vars(&HashMap::new()).unwrap();
        assert_eq!(
            (single.rank, single.world_size, single.source),
            (0, 1, "single")
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| {
            format!("{:#}", ProcessEnv::from_vars(&vars(pairs)).unwrap_err())
        };
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\""));
        assert!(err(&[("RANK", "0")]).contains("WORLD_SIZE"));
        assert!(err(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("rank 2"));
        assert!(err(&[("MASTER_PORT", "70000")]).contains("MASTER_PORT"));
        assert!(err(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_NODELIST", "n[1-")
        ])
        .contains("SLURM_NODELIST"));
    }
}
