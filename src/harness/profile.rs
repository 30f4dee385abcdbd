//! What `tilefuse profile` needs of an op: its flags (the configuration to launch, with
//! defaults) and how to prepare one launch of it on CUDA. The CLI builds its flags from the
//! registry and wraps each launch in an NVTX range for Nsight.

use std::collections::BTreeMap;

use crate::backend::cuda::Cuda;
use crate::error::{Error, Result};

/// An op's part of `tilefuse profile`.
#[derive(Debug, Clone, Copy)]
pub struct ProfileEntry {
    /// The op's flags; their names are unique across the registry.
    pub params: &'static [ProfileParam],
    /// Uploads the configuration that `values` describe and returns its launch.
    pub prepare: for<'a> fn(&'a Cuda, &ProfileValues) -> Result<Prepared<'a>>,
}

/// One flag of `tilefuse profile`.
#[derive(Debug, Clone, Copy)]
pub struct ProfileParam {
    /// The flag's name, `--name`.
    pub name: &'static str,
    /// What it sets.
    pub help: &'static str,
    /// What it takes.
    pub kind: ParamKind,
}

/// The values a flag takes.
#[derive(Debug, Clone, Copy)]
pub enum ParamKind {
    /// A whole number, with its default.
    Count(usize),
    /// A real number, with its default.
    Number(f64),
    /// A switch, off unless given.
    Switch,
}

/// A value given for a flag (or its default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamValue {
    /// Of a [`ParamKind::Count`] flag.
    Count(usize),
    /// Of a [`ParamKind::Number`] flag.
    Number(f64),
    /// Of a [`ParamKind::Switch`] flag.
    Switch(bool),
}

/// The values of the flags, by name.
#[derive(Debug, Clone, Default)]
pub struct ProfileValues(BTreeMap<&'static str, ParamValue>);

impl ProfileValues {
    /// Sets flag `name`.
    pub fn set(&mut self, name: &'static str, value: ParamValue) {
        self.0.insert(name, value);
    }

    /// The whole number of flag `name`.
    pub fn count(&self, name: &str) -> Result<usize> {
        match self.0.get(name) {
            Some(ParamValue::Count(value)) => Ok(*value),
            other => Err(missing(name, "a whole number", other)),
        }
    }

    /// The real number of flag `name`.
    pub fn number(&self, name: &str) -> Result<f64> {
        match self.0.get(name) {
            Some(ParamValue::Number(value)) => Ok(*value),
            other => Err(missing(name, "a number", other)),
        }
    }

    /// Whether switch `name` is on.
    pub fn switch(&self, name: &str) -> Result<bool> {
        match self.0.get(name) {
            Some(ParamValue::Switch(value)) => Ok(*value),
            other => Err(missing(name, "a switch", other)),
        }
    }
}

fn missing(name: &str, expected: &'static str, got: Option<&ParamValue>) -> Error {
    Error::invalid(
        "profile flag",
        format!("--{name}, {expected}"),
        format!("{got:?}"),
    )
}

/// One configuration on the device, ready to launch again and again.
pub struct Prepared<'a> {
    /// What runs, for the NVTX ranges (`spmm m=8192 k=8192 ...`).
    pub label: String,
    /// Enqueues one launch.
    pub launch: Box<dyn FnMut() -> Result<()> + 'a>,
}
