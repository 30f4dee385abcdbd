//! Sparse weights as safetensors files: 1-d tensors and string metadata (format, version,
//! dtype, m, k), read back with every field checked.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// A 1-d tensor to save: its name, dtype and little-endian bytes.
pub(super) struct Tensor<'a> {
    name: &'static str,
    dtype: safetensors::Dtype,
    len: usize,
    bytes: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// `data` as the tensor `name` of `dtype` (whose width is `P`'s).
    pub fn of<P: bytemuck::Pod>(
        name: &'static str,
        dtype: safetensors::Dtype,
        data: &'a [P],
    ) -> Self {
        Tensor {
            name,
            dtype,
            len: data.len(),
            bytes: bytemuck::cast_slice(data),
        }
    }
}

/// The safetensors bytes of an `[m, k]` weight of element type `dtype` in `format`
/// (`version`): its `tensors`, and those five as metadata.
pub(super) fn serialize_weight(
    [format, version, dtype]: [&str; 3],
    [m, k]: [usize; 2],
    tensors: &[Tensor<'_>],
) -> Result<Vec<u8>> {
    let metadata = [
        ("format", format.to_string()),
        ("version", version.to_string()),
        ("dtype", dtype.to_string()),
        ("m", m.to_string()),
        ("k", k.to_string()),
    ];
    serialize(tensors, &metadata)
}

/// The safetensors bytes of `tensors` with `metadata`.
pub(super) fn serialize(tensors: &[Tensor<'_>], metadata: &[(&str, String)]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, vec![t.len], t.bytes)
                .map(|view| (t.name, view))
                .map_err(|e| Error::invalid("safetensors", "a writable tensor", e))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect();
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::invalid("safetensors", "a serialisable weight", e))
}

/// The `format` and `dtype` a saved weight's metadata names (nothing else checked), to pick
/// the reader that checks the rest.
#[cfg(feature = "candle")]
pub(crate) fn format_and_dtype(bytes: &[u8]) -> Result<(String, String)> {
    let file = Saved::parse(bytes)?;
    Ok((file.field("format")?.into(), file.field("dtype")?.into()))
}

/// A safetensors file being read.
pub(super) struct Saved<'a> {
    file: safetensors::SafeTensors<'a>,
    metadata: HashMap<String, String>,
}

impl<'a> Saved<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::invalid("safetensors", "a safetensors file", e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::invalid("safetensors", "a safetensors header", e))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(Saved { file, metadata })
    }

    /// The `[m, k]` of a weight saved by [`serialize_weight`], once its format, version (one
    /// of `versions`) and dtype are checked.
    pub fn weight(&self, format: &str, versions: &[&str], dtype: &str) -> Result<[usize; 2]> {
        self.expect("format", &[format])?;
        self.expect("version", versions)?;
        self.expect("dtype", &[dtype])?;
        Ok([self.size("m")?, self.size("k")?])
    }

    /// The metadata entry `name`.
    pub fn field(&self, name: &'static str) -> Result<&str> {
        self.metadata.get(name).map(String::as_str).ok_or_else(|| {
            Error::invalid("safetensors metadata", format!("a `{name}` entry"), "none")
        })
    }

    /// An error unless the metadata entry `name` is one of `expected`.
    pub fn expect(&self, name: &'static str, expected: &[&str]) -> Result<()> {
        let got = self.field(name)?;
        if expected.contains(&got) {
            return Ok(());
        }
        Err(Error::invalid(
            "safetensors metadata",
            format!("{name} = {}", expected.join(" or ")),
            got,
        ))
    }

    /// The metadata entry `name` as a size.
    pub fn size(&self, name: &'static str) -> Result<usize> {
        let text = self.field(name)?;
        text.parse::<usize>().map_err(|_| {
            Error::invalid(
                "safetensors metadata",
                format!("{name} as an integer"),
                text,
            )
        })
    }

    /// The 1-d tensor `name` of `dtype`, each element's little-endian bytes decoded by `one`.
    pub fn tensor<T>(
        &self,
        name: &'static str,
        dtype: safetensors::Dtype,
        one: impl Fn(&[u8]) -> T,
    ) -> Result<Vec<T>> {
        let tensor = self
            .file
            .tensor(name)
            .map_err(|e| Error::invalid("safetensors", format!("a tensor `{name}`"), e))?;
        if tensor.dtype() != dtype || tensor.shape().len() != 1 {
            return Err(Error::invalid(
                "safetensors",
                format!("`{name}` as a 1-d {dtype:?} tensor"),
                format!("{:?} {:?}", tensor.dtype(), tensor.shape()),
            ));
        }
        let width = (dtype.bitsize() / 8).max(1);
        Ok(tensor.data().chunks_exact(width).map(one).collect())
    }
}

/// Writes `bytes` to `path`.
pub(super) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| {
        Error::invalid(
            "path",
            "a writable file",
            format!("{}: {e}", path.display()),
        )
    })
}

/// The bytes of the file at `path`.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid(
            "path",
            "a readable file",
            format!("{}: {e}", path.display()),
        )
    })
}
