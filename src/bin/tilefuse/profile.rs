//! `tilefuse profile`: one configuration, N launches after warm-up, each inside an NVTX range
//! named after the case, so that `nsys profile` and `ncu --nvtx` show named ranges around the
//! stable kernel names. The ops and their flags come from the registry
//! ([`OpEntry::profile`]).

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use tilefuse::backend::cuda::Cuda;
use tilefuse::harness::profile::{ParamKind, ParamValue, ProfileEntry, ProfileValues};
use tilefuse::harness::{self, OpEntry};

/// The registered ops that `profile` runs, with their entries.
fn profiled() -> impl Iterator<Item = (&'static OpEntry, &'static ProfileEntry)> {
    harness::ops()
        .iter()
        .filter_map(|op| Some((op, op.profile?)))
}

/// The configuration to profile.
#[derive(Debug, Clone)]
pub struct ProfileArgs {
    op: &'static OpEntry,
    iters: usize,
    backend: String,
    values: ProfileValues,
}

impl Args for ProfileArgs {
    fn augment_args(command: Command) -> Command {
        let ops: Vec<&str> = profiled().map(|(op, _)| op.name).collect();
        let mut command = command
            .arg(
                Arg::new("op")
                    .value_name("OP")
                    .required(true)
                    .value_parser(clap::builder::PossibleValuesParser::new(ops))
                    .help("The op"),
            )
            .arg(
                Arg::new("iters")
                    .long("iters")
                    .value_parser(clap::value_parser!(usize))
                    .default_value("20")
                    .help("Timed launches, each in its own NVTX range"),
            )
            .arg(
                Arg::new("backend")
                    .long("backend")
                    .default_value("cuda")
                    .help("The backend: cuda (Nsight profiles CUDA kernels)"),
            );
        // Ops may share a flag (the attention forward and backward: --len, --heads, ...).
        let mut added = std::collections::HashSet::new();
        for (_, entry) in profiled() {
            for param in entry.params {
                if !added.insert(param.name) {
                    continue;
                }
                let arg = Arg::new(param.name).long(param.name).help(param.help);
                command = command.arg(match param.kind {
                    ParamKind::Count(default) => arg
                        .value_parser(clap::value_parser!(usize))
                        .default_value(default.to_string()),
                    ParamKind::Number(default) => arg
                        .value_parser(clap::value_parser!(f64))
                        .default_value(default.to_string()),
                    ParamKind::Switch => arg.action(ArgAction::SetTrue),
                });
            }
        }
        command
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for ProfileArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let missing = || clap::Error::new(clap::error::ErrorKind::MissingRequiredArgument);
        let name = matches.get_one::<String>("op").ok_or_else(missing)?;
        let (op, _) = profiled()
            .find(|(op, _)| op.name == name)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue))?;
        let mut values = ProfileValues::default();
        for (_, entry) in profiled() {
            for param in entry.params {
                let value = match param.kind {
                    ParamKind::Count(_) => matches
                        .get_one::<usize>(param.name)
                        .map(|&v| ParamValue::Count(v)),
                    ParamKind::Number(_) => matches
                        .get_one::<f64>(param.name)
                        .map(|&v| ParamValue::Number(v)),
                    ParamKind::Switch => Some(ParamValue::Switch(matches.get_flag(param.name))),
                };
                values.set(param.name, value.ok_or_else(missing)?);
            }
        }
        Ok(ProfileArgs {
            op,
            iters: *matches.get_one::<usize>("iters").ok_or_else(missing)?,
            backend: matches
                .get_one::<String>("backend")
                .cloned()
                .ok_or_else(missing)?,
            values,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// Runs the configuration; returns a line describing what ran.
pub fn profile(args: &ProfileArgs) -> Result<String, String> {
    if args.backend != "cuda" {
        return Err(format!(
            "--backend {}: profile runs CUDA kernels for Nsight (--backend cuda)",
            args.backend
        ));
    }
    let entry = args
        .op
        .profile
        .ok_or_else(|| format!("{} has nothing to profile", args.op.name))?;
    let cuda = Cuda::new(0).map_err(|e| e.to_string())?;
    let ranges = Ranges::new();
    let mut prepared = (entry.prepare)(&cuda, &args.values).map_err(|e| e.to_string())?;
    let label = prepared.label.clone();
    launches(&cuda, &ranges, &label, args.iters, &mut prepared.launch)?;
    Ok(format!(
        "{label}: {} launches on {} ({})",
        args.iters,
        cuda.info().name,
        if ranges.enabled {
            "each in an NVTX range"
        } else {
            "no NVTX library (libnvToolsExt) found: no ranges"
        }
    ))
}

/// Three untimed launches, then `iters` launches each in a range `label #i`, then a wait.
fn launches(
    cuda: &Cuda,
    ranges: &Ranges,
    label: &str,
    iters: usize,
    launch: &mut dyn FnMut() -> tilefuse::Result<()>,
) -> Result<(), String> {
    for _ in 0..3 {
        launch().map_err(|e| e.to_string())?;
    }
    cuda.synchronize().map_err(|e| e.to_string())?;
    for i in 0..iters {
        let _range = ranges
            .enabled
            .then(|| cudarc::nvtx::safe::scoped_range(format!("{label} #{i}")));
        launch().map_err(|e| e.to_string())?;
    }
    cuda.synchronize().map_err(|e| e.to_string())
}

/// Whether NVTX ranges can be emitted (cudarc loads libnvToolsExt and panics without it).
struct Ranges {
    enabled: bool,
}

impl Ranges {
    fn new() -> Self {
        Ranges {
            enabled: tilefuse::backend::cuda::CudaLibrary::Nvtx.present(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flag name means one flag: ops share a name only with the same help and values (the
    /// attention forward and backward share their declarations), so one command line takes
    /// them all.
    #[test]
    fn flag_names_mean_one_flag_across_the_registry() {
        let mut seen: std::collections::HashMap<&str, String> = ["op", "iters", "backend"]
            .map(|name| (name, String::new()))
            .into();
        for (_, entry) in profiled() {
            for param in entry.params {
                let flag = format!("{param:?}");
                let declared = seen.entry(param.name).or_insert_with(|| flag.clone());
                assert_eq!(*declared, flag, "flag --{} is declared twice", param.name);
            }
        }
    }

    /// The registry's flags parse, with their defaults, into the values its entries read.
    #[test]
    fn flags_parse_into_values() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ProfileArgs,
        }
        let cli =
            <Cli as clap::Parser>::try_parse_from(["profile", "scan", "--time", "100", "--real"])
                .unwrap();
        assert_eq!(cli.args.op.name, "scan");
        assert_eq!(cli.args.values.count("time").unwrap(), 100);
        assert_eq!(cli.args.values.count("batch").unwrap(), 16);
        assert!(cli.args.values.switch("real").unwrap());
        assert_eq!(cli.args.values.number("sparsity").unwrap(), 0.8);
        let cli = <Cli as clap::Parser>::try_parse_from([
            "profile",
            "attention-backward",
            "--len",
            "512",
        ])
        .unwrap();
        assert_eq!(cli.args.values.count("len").unwrap(), 512);
        assert_eq!(cli.args.values.count("heads").unwrap(), 32);
        assert!(<Cli as clap::Parser>::try_parse_from(["profile", "smoke"]).is_err());
        assert!(<Cli as clap::Parser>::try_parse_from(["profile", "spmm", "--m", "x"]).is_err());
    }
}
