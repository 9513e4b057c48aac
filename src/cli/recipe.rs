//! `bertkit finetune --config FILE [--set key=value ...]`: a fine-tuning run as a recipe file
//! (configs/finetune/*.toml), like pretraining's. The file's keys are the command's long flag
//! names (`batch_size` or `batch-size`; HF's names such as `learning_rate` too), one value
//! each (`true` for a switch, a list for a repeatable flag); `--set key=value` changes a key of
//! the file; a flag given on the command line wins over both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args};

/// The subcommands that read recipes this way.
const RECIPE_COMMANDS: [&str; 1] = ["finetune"];

/// `argv` with the settings of `--config FILE` (after its `--set`s) put in as flags, ahead of
/// the command line's own; `--config` and `--set` themselves removed. Returns the recipe file
/// too, when there was one. Other commands' arguments are returned as they are.
pub fn expand(argv: Vec<OsString>) -> Result<(Vec<OsString>, Option<PathBuf>)> {
    let Some(sub) = argv.get(1).and_then(|a| a.to_str()) else {
        return Ok((argv, None));
    };
    if !RECIPE_COMMANDS.contains(&sub) {
        return Ok((argv, None));
    }
    let mut config = None;
    let mut sets = Vec::new();
    let mut rest = Vec::new();
    let mut it = argv[2..].iter();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        let mut take = |name: &str| -> Result<Option<String>> {
            if let Some(v) = text.strip_prefix(&format!("{name}=")) {
                return Ok(Some(v.to_string()));
            }
            if text == name {
                let v = it.next().with_context(|| format!("{name} needs a value"))?;
                return Ok(Some(v.to_string_lossy().into_owned()));
            }
            Ok(None)
        };
        if let Some(v) = take("--config")? {
            config = Some(PathBuf::from(v));
        } else if let Some(v) = take("--set")? {
            sets.push(v);
        } else {
            rest.push(arg.clone());
        }
    }
    let Some(path) = config else {
        if !sets.is_empty() {
            bail!("--set changes a recipe: it needs --config FILE");
        }
        return Ok((argv, None));
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for s in &sets {
        bertkit_train::pretrain::config::apply_override(&mut table, s)?;
    }
    let command = super::finetune::FinetuneArgs::augment_args(clap::Command::new("finetune"));
    let find = |name: &str| {
        command.get_arguments().find(|a| {
            a.get_long() == Some(name)
                || a.get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&name))
        })
    };
    // Flags the command line gives itself.
    let given: Vec<&clap::Id> = rest
        .iter()
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .filter_map(|a| find(a.split('=').next().unwrap_or(a)))
        .map(|a| a.get_id())
        .collect();
    let mut out = argv[..2].to_vec();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let arg = find(&name)
            .filter(|a| !["config", "set"].contains(&a.get_id().as_str()))
            .with_context(|| unknown(&path, key))?;
        if given.contains(&arg.get_id()) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or(&name));
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if *on {
                    out.push(flag.into());
                }
            }
            (ArgAction::SetTrue, _) => {
                bail!("{}: {key} is a switch: true or false", path.display())
            }
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    out.push(flag.clone().into());
                    out.push(scalar(&path, key, item)?.into());
                }
            }
            (_, v) => {
                out.push(flag.into());
                out.push(scalar(&path, key, v)?.into());
            }
        }
    }
    out.extend(rest);
    Ok((out, Some(path)))
}

fn unknown(path: &Path, key: &str) -> String {
    format!(
        "{}: unknown setting {key:?} (the keys are the flags of `bertkit finetune --help`, \
         e.g. batch_size, lr, epochs)",
        path.display()
    )
}

fn scalar(path: &Path, key: &str, v: &toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!("{}: {key} must be one value, not {v}", path.display()),
    })
}
