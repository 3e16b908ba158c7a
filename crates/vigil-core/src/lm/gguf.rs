//! Reading GGUF files (llama.cpp's model format) from untrusted bytes.
//!
//! A GGUF file is a header (magic `GGUF`, version 2 or 3, counts), typed metadata key/value
//! pairs, a table of tensor descriptions (name, dimensions, element type, offset) and, after
//! padding to `general.alignment` (32 by default), the tensors' data. Everything is
//! little-endian. The format is documented in ggml's `docs/gguf.md`.
//!
//! Every count and size in the file is a claim: before anything is allocated it is checked
//! against the bytes that remain (an array of `n` elements needs at least `n` times its
//! element's smallest encoding), tensor extents are checked to lie inside the data section and
//! not to overlap, and dimension products use checked arithmetic, so a hostile file is an error,
//! never a panic or an allocation the file cannot back.
//!
//! Quantised tensors are dequantised to f32 here: F32, F16, BF16, Q4_0, Q4_1 and Q8_0 (what
//! SmolLM2's Q4_1 file and most small models use). Other types are named in the error.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

use half::{bf16, f16};

/// Errors reading a GGUF file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    /// The bytes end before a value the header says is there.
    #[error("GGUF file truncated: {0}")]
    Truncated(String),
    /// Not a GGUF file, an unknown version, or a malformed header.
    #[error("not a valid GGUF file: {0}")]
    Format(String),
    /// A tensor is malformed, missing or of a type vigil cannot dequantise.
    #[error("GGUF tensor `{name}`: {reason}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A metadata key is missing or holds another type.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        reason: String,
    },
}

/// Deepest nesting of arrays accepted (GGUF files in use nest none).
const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS` is 4).
const MAX_DIMS: usize = 4;
/// Alignment of the data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// `string` (UTF-8).
    String(String),
    /// `array` of values of one type.
    Array(Vec<Value>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// Element type of a tensor (ggml's `ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: an f16 scale and 32 4-bit values, `d * (q - 8)`.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum and 32 4-bit values, `d * q + m`.
    Q4_1,
    /// Blocks of 32: an f16 scale and 32 signed bytes, `d * q`.
    Q8_0,
    /// A type vigil does not dequantise (its ggml number).
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::Bf16,
            other => Self::Other(other),
        }
    }

    /// `(elements per block, bytes per block)`, for the types vigil reads.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::Bf16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            Self::Other(_) => None,
        }
    }

    /// ggml's name of the type.
    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::Bf16 => "BF16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Other(id) => format!("ggml type {id}"),
        }
    }
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its shape outermost first, as numpy and PyTorch write it: ggml's `ne` reversed, so a
    /// Linear weight `[in, out]` in ggml's order is `[out, in]` here.
    pub shape: Vec<usize>,
    /// Its element type.
    pub kind: GgmlType,
    /// Start of its data, in bytes from the start of the data section.
    pub offset: usize,
    /// Length of its data in bytes (0 for a type vigil cannot read).
    pub bytes: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed GGUF file, holding its bytes.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor descriptions, in file order.
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

impl Gguf {
    /// Reads and parses a file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |e: std::io::Error| GgufError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(io)?;
        Self::read(file).map_err(|e| match e {
            GgufError::Io { reason, .. } => GgufError::Io {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Reads everything from `reader` and parses it.
    pub fn read(mut reader: impl Read) -> Result<Self, GgufError> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|e| GgufError::Io {
            path: "<reader>".into(),
            reason: e.to_string(),
        })?;
        Self::from_vec(bytes)
    }

    /// Parses a file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GgufError> {
        Self::from_vec(bytes.to_vec())
    }

    /// Parses a file's bytes, keeping them.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let mut cursor = Cursor {
            bytes: &bytes,
            at: 0,
        };
        let magic = cursor.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(GgufError::Format(format!(
                "magic is {magic:?}, not \"GGUF\""
            )));
        }
        let version = cursor.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Format(format!(
                "version {version} (vigil reads versions 2 and 3)"
            )));
        }
        let tensor_count = cursor.u64("tensor count")?;
        let kv_count = cursor.u64("metadata count")?;
        // A key/value pair takes at least 12 bytes (key length, type, smallest value).
        cursor.check_count(kv_count, 13, "metadata entries")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = cursor.string("metadata key")?;
            let kind = cursor.u32("metadata type")?;
            let value = cursor.value(kind, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Format(format!("metadata key `{key}` repeated")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Format(format!(
                        "general.alignment {v:?} is not a power of two up to 2^20"
                    )));
                }
            },
        };
        // A tensor description takes at least 8 + 4 + 4 + 8 bytes.
        cursor.check_count(tensor_count, 24, "tensor descriptions")?;
        let mut raw = Vec::new();
        let mut names = HashSet::new();
        for _ in 0..tensor_count {
            let name = cursor.string("tensor name")?;
            if !names.insert(name.clone()) {
                return Err(GgufError::Format(format!("tensor `{name}` repeated")));
            }
            let n_dims = cursor.u32("tensor dimension count")? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(tensor_error(&name, format!("{n_dims} dimensions (1 to 4)")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = cursor.u64("tensor dimension")?;
                let d = usize::try_from(d)
                    .map_err(|_| tensor_error(&name, format!("dimension {d} too large")))?;
                ne.push(d);
            }
            let kind = GgmlType::from_id(cursor.u32("tensor type")?);
            let offset = cursor.u64("tensor offset")?;
            raw.push((name, ne, kind, offset));
        }
        let data_start = align(cursor.at as u64, alignment)
            .filter(|&s| s <= bytes.len() as u64)
            .ok_or_else(|| GgufError::Truncated("no data section".into()))?
            as usize;
        let data_len = bytes.len() - data_start;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, ne, kind, offset) in raw {
            let len = ne
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| tensor_error(&name, format!("dimensions {ne:?} overflow")))?;
            if !offset.is_multiple_of(alignment) {
                return Err(tensor_error(
                    &name,
                    format!("offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            let bytes_needed = match kind.block() {
                Some((block, block_bytes)) => {
                    if !ne[0].is_multiple_of(block) {
                        return Err(tensor_error(
                            &name,
                            format!(
                                "{} needs rows of a multiple of {block} elements, has {}",
                                kind.name(),
                                ne[0]
                            ),
                        ));
                    }
                    (len / block)
                        .checked_mul(block_bytes)
                        .ok_or_else(|| tensor_error(&name, "size overflows".into()))?
                }
                None => 0,
            };
            let offset = usize::try_from(offset)
                .ok()
                .filter(|&o| o.checked_add(bytes_needed).is_some_and(|e| e <= data_len))
                .ok_or_else(|| {
                    tensor_error(
                        &name,
                        format!(
                            "its {bytes_needed} bytes at offset {offset} lie beyond the {data_len} \
                             bytes of the data section"
                        ),
                    )
                })?;
            tensors.push(TensorInfo {
                name,
                shape: ne.iter().rev().copied().collect(),
                kind,
                offset,
                bytes: bytes_needed,
            });
        }
        check_no_overlap(&tensors)?;
        Ok(Self {
            version,
            metadata,
            tensors,
            bytes,
            data_start,
        })
    }

    /// The description of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| tensor_error(name, "not in the file".into()))
    }

    /// Tensor `name` dequantised to f32, row-major in [`TensorInfo::shape`]'s order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name)?;
        let start = self.data_start + info.offset;
        let data = &self.bytes[start..start + info.bytes];
        dequantize(info.kind, data, info.len()).map_err(|reason| tensor_error(name, reason))
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            reason: "missing".into(),
        })
    }

    /// Metadata `key` as an unsigned integer.
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        let value = self.get(key)?;
        value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| metadata_error(key, value, "an unsigned integer"))
    }

    /// Metadata `key` as a float.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let value = self.get(key)?;
        value
            .as_f64()
            .ok_or_else(|| metadata_error(key, value, "a number"))
    }

    /// Metadata `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            other => Err(metadata_error(key, other, "a string")),
        }
    }

    /// Metadata `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.get(key)? {
            Value::Bool(b) => Ok(*b),
            other => Err(metadata_error(key, other, "a bool")),
        }
    }

    /// Metadata `key` as an array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let value = self.get(key)?;
        let Value::Array(items) = value else {
            return Err(metadata_error(key, value, "an array of strings"));
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(metadata_error(key, value, "an array of strings")),
            })
            .collect()
    }

    /// Metadata `key` as an array of integers.
    pub fn get_ints(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let value = self.get(key)?;
        let Value::Array(items) = value else {
            return Err(metadata_error(key, value, "an array of integers"));
        };
        items
            .iter()
            .map(|v| match *v {
                Value::I8(x) => Ok(x.into()),
                Value::I16(x) => Ok(x.into()),
                Value::I32(x) => Ok(x.into()),
                Value::I64(x) => Ok(x),
                Value::U8(x) => Ok(x.into()),
                Value::U16(x) => Ok(x.into()),
                Value::U32(x) => Ok(x.into()),
                Value::U64(x) => {
                    i64::try_from(x).map_err(|_| metadata_error(key, value, "an array of integers"))
                }
                _ => Err(metadata_error(key, value, "an array of integers")),
            })
            .collect()
    }
}

fn tensor_error(name: &str, reason: String) -> GgufError {
    GgufError::Tensor {
        name: name.into(),
        reason,
    }
}

fn metadata_error(key: &str, value: &Value, wanted: &str) -> GgufError {
    let shown = match value {
        Value::Array(items) => format!("an array of {} values", items.len()),
        Value::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
        other => format!("{other:?}"),
    };
    GgufError::Metadata {
        key: key.into(),
        reason: format!("is {shown}, not {wanted}"),
    }
}

fn align(at: u64, alignment: u64) -> Option<u64> {
    at.checked_add(alignment - 1)
        .map(|v| v / alignment * alignment)
}

/// Two tensors sharing bytes would make one file hold two different readings of the same data.
fn check_no_overlap(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut extents: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter(|t| t.bytes > 0)
        .map(|t| (t.offset, t.offset + t.bytes, t.name.as_str()))
        .collect();
    extents.sort_unstable();
    for pair in extents.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(tensor_error(
                pair[1].2,
                format!("its data overlaps tensor `{}`", pair[0].2),
            ));
        }
    }
    Ok(())
}

/// Dequantises `len` elements of type `kind` from exactly the bytes they take.
fn dequantize(kind: GgmlType, data: &[u8], len: usize) -> Result<Vec<f32>, String> {
    let Some((block, block_bytes)) = kind.block() else {
        return Err(format!(
            "type {} cannot be dequantised by vigil (it reads F32, F16, BF16, Q4_0, Q4_1, Q8_0)",
            kind.name()
        ));
    };
    debug_assert_eq!(data.len(), len / block * block_bytes);
    let mut out = Vec::with_capacity(len);
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match kind {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(half)),
        GgmlType::Bf16 => out.extend(
            data.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q4_0 => {
            for b in data.chunks_exact(block_bytes) {
                let d = half(&b[0..2]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| d * ((q & 0x0f) as f32 - 8.0)));
                out.extend(qs.iter().map(|q| d * ((q >> 4) as f32 - 8.0)));
            }
        }
        GgmlType::Q4_1 => {
            for b in data.chunks_exact(block_bytes) {
                let (d, m) = (half(&b[0..2]), half(&b[2..4]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q8_0 => {
            for b in data.chunks_exact(block_bytes) {
                let d = half(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Other(_) => unreachable!("types without a block size returned above"),
    }
    Ok(out)
}

/// A read position in the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                GgufError::Truncated(format!(
                    "{what} needs {n} bytes at byte {}, the file has {}",
                    self.at,
                    self.bytes.len()
                ))
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses a count of items that cannot fit in the bytes left, each at least `min_bytes`.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), GgufError> {
        let left = (self.bytes.len() - self.at) as u64;
        if count.checked_mul(min_bytes).is_none_or(|need| need > left) {
            return Err(GgufError::Truncated(format!(
                "{count} {what} cannot fit in the {left} bytes left"
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        self.check_count(len, 1, what)?;
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| GgufError::Format(format!("{what} at byte {} is not UTF-8: {e}", self.at)))
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::U8(u8::from_le_bytes(self.array(key)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::Format(format!(
                        "metadata `{key}`: bool byte {b} (0 or 1)"
                    )));
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Format(format!(
                        "metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let item = self.u32(key)?;
                let count = self.u64(key)?;
                self.check_count(count, min_value_bytes(item), key)?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(GgufError::Format(format!(
                    "metadata `{key}`: unknown value type {other}"
                )));
            }
        })
    }
}

/// Smallest encoding of a value of type `kind` (a string or array holds at least its length).
fn min_value_bytes(kind: u32) -> u64 {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

#[cfg(test)]
mod tests;
