//! Reading numpy `.npz` archives (and the `.npy` arrays inside them) from untrusted files.
//!
//! numpy writes arrays in whatever dtype they have (float64 traces and int32 or int64 labels are
//! numpy's defaults) and `np.savez_compressed` deflates the entries, so this reader accepts
//! stored and deflated entries and converts each array to the element type the caller asks for
//! when the conversion is exact ([`Element`]): floats to f32 (a finite value beyond f32's range
//! is refused), any integer to i64 (a uint64 above `i64::MAX` is refused), `|b1` to bool.
//!
//! A header is a claim, not a fact: before anything is allocated the claimed size (shape times
//! item size) is checked against the bytes the zip entry holds, the entry's size against the
//! bytes the archive holds (at most deflate's largest ratio for a compressed entry), and the
//! allocation against the memory available ([`crate::memory`]). Every error names the array.

use std::io::{Read, Seek, SeekFrom};

use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::memory;

/// Errors reading an `.npz` archive; each names the array it concerns.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NpyError {
    /// The archive itself cannot be read.
    #[error("not a readable .npz (zip) archive: {0}")]
    Archive(String),
    /// No entry of that name.
    #[error("no array `{0}`")]
    Missing(String),
    /// One array is malformed, too large or of the wrong type.
    #[error("array `{name}`: {reason}")]
    Array {
        /// The array's name (without `.npy`).
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Largest npy header accepted (numpy itself refuses headers over 10,000 bytes by default).
const MAX_HEADER_BYTES: usize = 1 << 16;

/// Largest ratio of uncompressed to compressed size deflate can reach (a run of one byte costs
/// at least 2 bits per 258 bytes, about 1032:1), plus slack for the block headers.
const MAX_DEFLATE_RATIO: u64 = 1032;
const DEFLATE_SLACK: u64 = 1024;

/// An element type of a numpy array as its header describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtype {
    /// `b'f'` float, `b'i'` signed, `b'u'` unsigned, `b'b'` bool.
    pub kind: u8,
    /// Bytes per element.
    pub size: usize,
    /// Big-endian (`>`); little-endian, native (`=`, little on every platform vigil runs on)
    /// and not-applicable (`|`) otherwise.
    pub big_endian: bool,
}

impl Dtype {
    /// Parses a simple numpy `descr` string such as `<f4`, `>i8` or `|b1`.
    pub fn parse(descr: &str) -> Result<Self, String> {
        let bytes = descr.as_bytes();
        let unsupported = || format!("dtype `{descr}` is not supported");
        let (&order, rest) = bytes.split_first().ok_or_else(unsupported)?;
        let big_endian = match order {
            b'<' | b'=' | b'|' => false,
            b'>' => true,
            _ => return Err(unsupported()),
        };
        let (&kind, size) = rest.split_first().ok_or_else(unsupported)?;
        let size: usize = std::str::from_utf8(size)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(unsupported)?;
        let ok = match kind {
            b'f' => matches!(size, 4 | 8),
            b'i' | b'u' => matches!(size, 1 | 2 | 4 | 8),
            b'b' => size == 1,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "dtype `{descr}` is not supported (floats of 4 or 8 bytes, integers, bool)"
            ));
        }
        Ok(Self {
            kind,
            size,
            big_endian,
        })
    }

    fn word(&self, bytes: &[u8]) -> u64 {
        let mut buf = [0u8; 8];
        if self.big_endian {
            buf[8 - bytes.len()..].copy_from_slice(bytes);
            u64::from_be_bytes(buf)
        } else {
            buf[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(buf)
        }
    }

    /// The element as a float, when it is one.
    fn float(&self, bytes: &[u8]) -> f64 {
        let w = self.word(bytes);
        if self.size == 4 {
            f64::from(f32::from_bits(w as u32))
        } else {
            f64::from_bits(w)
        }
    }

    /// The element as an integer: `Ok(signed)` or `Err(unsigned above i64::MAX)`.
    fn integer(&self, bytes: &[u8]) -> Result<i64, u64> {
        let w = self.word(bytes);
        if self.kind == b'i' {
            let shift = 64 - 8 * self.size as u32;
            Ok(((w << shift) as i64) >> shift)
        } else {
            i64::try_from(w).map_err(|_| w)
        }
    }
}

/// The parsed header of one `.npy` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Element type.
    pub dtype: Dtype,
    /// Column-major data.
    pub fortran_order: bool,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes of magic, version, length and header text: where the data starts.
    pub data_offset: u64,
}

impl Header {
    /// Elements the header claims (`None` if the count overflows).
    pub fn elements(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
    }
}

/// Reads the header of an `.npy` stream, leaving `reader` at the start of the data.
pub fn read_header(reader: &mut impl Read) -> Result<Header, String> {
    let mut start = [0u8; 8];
    reader
        .read_exact(&mut start)
        .map_err(|e| format!("cannot read the npy header: {e}"))?;
    if &start[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let (len, len_bytes) = match start[6] {
        1 => {
            let mut b = [0u8; 2];
            reader
                .read_exact(&mut b)
                .map_err(|e| format!("truncated npy header: {e}"))?;
            (u64::from(u16::from_le_bytes(b)), 2)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            reader
                .read_exact(&mut b)
                .map_err(|e| format!("truncated npy header: {e}"))?;
            (u64::from(u32::from_le_bytes(b)), 4)
        }
        v => return Err(format!("npy format version {v} is not supported")),
    };
    if len > MAX_HEADER_BYTES as u64 {
        return Err(format!(
            "the npy header claims {len} bytes (at most {MAX_HEADER_BYTES} accepted)"
        ));
    }
    let mut text = vec![0u8; len as usize];
    reader
        .read_exact(&mut text)
        .map_err(|e| format!("truncated npy header: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    let (descr, fortran_order, shape) = parse_header_dict(&text)?;
    Ok(Header {
        dtype: Dtype::parse(&descr)?,
        fortran_order,
        shape,
        data_offset: 8 + len_bytes + len,
    })
}

/// The `descr`, `fortran_order` and `shape` of an npy header dict, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header_dict(text: &str) -> Result<(String, bool, Vec<usize>), String> {
    let mut p = Literal {
        s: text.as_bytes(),
        at: 0,
    };
    let bad = |what: &str| format!("malformed npy header ({what}): {}", text.trim_end());
    p.expect(b'{').map_err(|_| bad("no dict"))?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("key"))?;
        p.expect(b':').map_err(|_| bad("no ':'"))?;
        match key.as_str() {
            "descr" => {
                descr = Some(p.string().ok_or_else(|| {
                    "structured or unusual dtypes are not supported (a plain numeric dtype is)"
                        .to_string()
                })?)
            }
            "fortran_order" => fortran = Some(p.boolean().ok_or_else(|| bad("fortran_order"))?),
            "shape" => shape = Some(p.tuple().ok_or_else(|| bad("shape"))?),
            _ => return Err(bad("unknown key")),
        }
        if !p.eat(b',') {
            p.expect(b'}').map_err(|_| bad("no '}'"))?;
            break;
        }
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err(bad("missing key")),
    }
}

/// A cursor over the Python literal of an npy header.
struct Literal<'a> {
    s: &'a [u8],
    at: usize,
}

impl Literal<'_> {
    fn skip_space(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_space();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ()> {
        if self.eat(c) { Ok(()) } else { Err(()) }
    }

    fn string(&mut self) -> Option<String> {
        self.skip_space();
        let quote = *self.s.get(self.at)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let start = self.at + 1;
        let len = self.s.get(start..)?.iter().position(|&c| c == quote)?;
        self.at = start + len + 1;
        String::from_utf8(self.s[start..start + len].to_vec()).ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        self.skip_space();
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s.get(self.at..)?.starts_with(word) {
                self.at += word.len();
                return Some(value);
            }
        }
        None
    }

    fn tuple(&mut self) -> Option<Vec<usize>> {
        if !self.eat(b'(') {
            return None;
        }
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Some(dims);
            }
            self.skip_space();
            let start = self.at;
            while self.s.get(self.at).is_some_and(u8::is_ascii_digit) {
                self.at += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.at]).ok()?;
            // `L` suffixes come from Python 2's numpy.
            self.eat(b'L');
            dims.push(digits.parse().ok()?);
            if !self.eat(b',') {
                return self.eat(b')').then_some(dims);
            }
        }
    }
}

/// An element type an array can be read as, converting exactly from numpy's dtypes.
pub trait Element: Copy + Default {
    /// Name in errors.
    const NAME: &'static str;
    /// Converts element `index` (`bytes` in `dtype`), or says why it cannot.
    fn convert(dtype: &Dtype, bytes: &[u8], index: usize) -> Result<Self, String>;
    /// Whether `dtype` converts to this type at all.
    fn accepts(dtype: &Dtype) -> bool;
}

impl Element for f32 {
    const NAME: &'static str = "float32";
    fn accepts(dtype: &Dtype) -> bool {
        dtype.kind == b'f'
    }
    fn convert(dtype: &Dtype, bytes: &[u8], index: usize) -> Result<Self, String> {
        let v = dtype.float(bytes);
        let narrow = v as f32;
        if v.is_finite() && !narrow.is_finite() {
            return Err(format!(
                "value {v:e} at flat index {index} overflows float32"
            ));
        }
        Ok(narrow)
    }
}

impl Element for i64 {
    const NAME: &'static str = "int64";
    fn accepts(dtype: &Dtype) -> bool {
        matches!(dtype.kind, b'i' | b'u')
    }
    fn convert(dtype: &Dtype, bytes: &[u8], index: usize) -> Result<Self, String> {
        dtype
            .integer(bytes)
            .map_err(|w| format!("value {w} at index {index} does not fit int64"))
    }
}

impl Element for bool {
    const NAME: &'static str = "bool";
    fn accepts(dtype: &Dtype) -> bool {
        dtype.kind == b'b'
    }
    fn convert(_: &Dtype, bytes: &[u8], index: usize) -> Result<Self, String> {
        match bytes[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("byte {b} at index {index} is not a bool (0 or 1)")),
        }
    }
}

impl Element for u8 {
    const NAME: &'static str = "uint8";
    fn accepts(dtype: &Dtype) -> bool {
        dtype.kind == b'u' && dtype.size == 1
    }
    fn convert(_: &Dtype, bytes: &[u8], _: usize) -> Result<Self, String> {
        Ok(bytes[0])
    }
}

/// Reads one `.npy` array of `available` bytes from `reader` as `T`, checking its claimed size
/// against `available` and the memory before allocating. Errors are plain reasons; the caller
/// adds the array's name.
pub fn read_npy<T: Element>(reader: &mut impl Read, available: u64) -> Result<ArrayD<T>, String> {
    let header = read_header(reader)?;
    let dtype = header.dtype;
    if !T::accepts(&dtype) {
        return Err(format!(
            "dtype {}{} cannot be read as {} without loss",
            dtype.kind as char,
            dtype.size,
            T::NAME
        ));
    }
    let shape_text = format!("{:?}", header.shape);
    let elements = header
        .elements()
        .ok_or_else(|| format!("the header claims shape {shape_text}: too many elements"))?;
    let data_bytes = elements.saturating_mul(dtype.size as u64);
    let present = available.saturating_sub(header.data_offset);
    if data_bytes != present {
        return Err(format!(
            "the header claims shape {shape_text} ({elements} elements, {data_bytes} bytes) but the entry holds {present} bytes of data"
        ));
    }
    // The raw bytes, the converted values and, for Fortran order, their reordered copy.
    let copies = if header.fortran_order { 2 } else { 1 };
    let needed = data_bytes.saturating_add(
        elements
            .saturating_mul(std::mem::size_of::<T>() as u64)
            .saturating_mul(copies),
    );
    memory::check_fits("reading it", needed).map_err(|e| e.to_string())?;
    let mut raw = vec![0u8; data_bytes as usize];
    reader
        .read_exact(&mut raw)
        .map_err(|e| format!("its data cannot be read ({e}): the file is truncated or corrupt"))?;
    // Reading past the end makes the zip reader check the entry's CRC.
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err("the entry holds more bytes than its header claims".into()),
        Err(e) => return Err(format!("its data is corrupt: {e}")),
    }
    let values = raw
        .chunks_exact(dtype.size)
        .enumerate()
        .map(|(i, b)| T::convert(&dtype, b, i))
        .collect::<Result<Vec<T>, String>>()?;
    let shape = IxDyn(&header.shape);
    let array = if header.fortran_order {
        ArrayD::from_shape_vec(shape.f(), values).map(|a| a.as_standard_layout().into_owned())
    } else {
        ArrayD::from_shape_vec(shape, values)
    };
    array.map_err(|e| format!("shape {shape_text}: {e}"))
}

/// An `.npz` archive open for reading.
pub struct NpzReader<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    archive_len: u64,
    names: Vec<String>,
}

impl<R: Read + Seek> NpzReader<R> {
    /// Opens an archive.
    pub fn new(mut reader: R) -> Result<Self, NpyError> {
        let archive_len = reader
            .seek(SeekFrom::End(0))
            .and_then(|len| reader.seek(SeekFrom::Start(0)).map(|_| len))
            .map_err(|e| NpyError::Archive(e.to_string()))?;
        let zip = zip::ZipArchive::new(reader).map_err(|e| NpyError::Archive(e.to_string()))?;
        let names = zip
            .file_names()
            .map(|n| n.map(|n| n.trim_end_matches(".npy").to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NpyError::Archive(e.to_string()))?;
        Ok(Self {
            zip,
            archive_len,
            names,
        })
    }

    /// The arrays' names, without `.npy`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the archive holds array `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// Reads array `name` (entry `name.npy` or `name`) as `T`.
    pub fn array<T: Element>(&mut self, name: &str) -> Result<ArrayD<T>, NpyError> {
        let fail = |reason: String| NpyError::Array {
            name: name.to_string(),
            reason,
        };
        let entry = [format!("{name}.npy"), name.to_string()]
            .into_iter()
            .find(|e| self.zip.index_for_name(e).is_some())
            .ok_or_else(|| NpyError::Missing(name.to_string()))?;
        let archive_len = self.archive_len;
        let mut file = self.zip.by_name(&entry).map_err(|e| fail(e.to_string()))?;
        let (size, packed) = (file.size(), file.compressed_size());
        if packed > archive_len {
            return Err(fail(format!(
                "its zip entry claims {packed} bytes but the archive holds {archive_len}"
            )));
        }
        let most = match file.compression() {
            zip::CompressionMethod::Stored => packed,
            zip::CompressionMethod::Deflated => packed
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(DEFLATE_SLACK),
            other => {
                return Err(fail(format!(
                    "compression method {other} is not supported (stored or deflated, as numpy's savez and savez_compressed write)"
                )));
            }
        };
        if size > most {
            return Err(fail(format!(
                "its zip entry claims {size} bytes uncompressed, more than its {packed} stored bytes can hold"
            )));
        }
        read_npy(&mut file, size).map_err(fail)
    }

    /// Reads array `name` as `T` with exactly `D`'s number of dimensions; `axes` describes them
    /// in errors (e.g. `[chains, draws, samples]`).
    pub fn array_of<T: Element, D: ndarray::Dimension>(
        &mut self,
        name: &str,
        axes: &str,
    ) -> Result<ndarray::Array<T, D>, NpyError> {
        let a = self.array::<T>(name)?;
        let ndim = a.ndim();
        a.into_dimensionality::<D>().map_err(|_| NpyError::Array {
            name: name.to_string(),
            reason: format!("has {ndim} dimensions, expected {axes}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// An npy stream with a hand-written header.
    pub(crate) fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let fortran = if fortran { "True" } else { "False" };
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    /// An npz archive of `entries`, deflated when `compress` (as `np.savez_compressed`).
    pub(crate) fn npz(entries: &[(&str, Vec<u8>)], compress: bool) -> Vec<u8> {
        let mut buffer = Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut buffer);
        let method = if compress {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in entries {
            zip.start_file(format!("{name}.npy"), options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        buffer.into_inner()
    }

    fn le<T: Copy, const N: usize>(values: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| f(v)).collect()
    }

    #[test]
    fn converts_numpys_default_dtypes_exactly() {
        let f64s = le(&[1.5f64, -2.0, 3.25], f64::to_le_bytes);
        let i32s = le(&[0i32, -7, 9], i32::to_le_bytes);
        let be = le(&[258u16], u16::to_be_bytes);
        let bytes = npz(
            &[
                ("f", npy("<f8", false, "(3,)", &f64s)),
                ("i", npy("<i4", false, "(3,)", &i32s)),
                ("u", npy(">u2", false, "(1,)", &be)),
                ("b", npy("|b1", false, "(2,)", &[1, 0])),
            ],
            true,
        );
        let mut r = NpzReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(
            r.array::<f32>("f").unwrap().into_raw_vec_and_offset().0,
            [1.5, -2.0, 3.25]
        );
        assert_eq!(
            r.array::<i64>("i").unwrap().into_raw_vec_and_offset().0,
            [0, -7, 9]
        );
        assert_eq!(
            r.array::<i64>("u").unwrap().into_raw_vec_and_offset().0,
            [258]
        );
        assert_eq!(
            r.array::<bool>("b").unwrap().into_raw_vec_and_offset().0,
            [true, false]
        );
        let err = r.array::<i64>("f").unwrap_err().to_string();
        assert!(
            err.starts_with("array `f`: dtype f8 cannot be read as int64"),
            "{err}"
        );
    }

    #[test]
    fn fortran_order_is_reordered() {
        // [[1, 2, 3], [4, 5, 6]] in column-major order.
        let data = le(&[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0], f32::to_le_bytes);
        let bytes = npz(&[("a", npy("<f4", true, "(2, 3)", &data))], false);
        let a = NpzReader::new(Cursor::new(bytes))
            .unwrap()
            .array::<f32>("a")
            .unwrap();
        assert_eq!(
            a.iter().copied().collect::<Vec<_>>(),
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    }

    #[test]
    fn claimed_sizes_are_checked_before_allocating() {
        // 1e15 elements claimed in a file of a few hundred bytes: refused by the size check,
        // compressed or not, without trying to allocate 4 PB.
        for compress in [false, true] {
            let bytes = npz(
                &[("t", npy("<f4", false, "(1000000000000000,)", &[0; 16]))],
                compress,
            );
            let err = NpzReader::new(Cursor::new(bytes))
                .unwrap()
                .array::<f32>("t")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("array `t`: the header claims shape [1000000000000000]"),
                "{err}"
            );
            assert!(err.contains("holds 16 bytes"), "{err}");
        }
        // Overflowing shapes and huge headers are refused too.
        let overflow = npy("<f4", false, "(4294967296, 4294967296, 4294967296)", &[]);
        let err = read_npy::<f32>(&mut overflow.as_slice(), overflow.len() as u64).unwrap_err();
        assert!(err.contains("too many elements"), "{err}");
        let mut huge = b"\x93NUMPY\x02\x00".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read_npy::<f32>(&mut huge.as_slice(), u64::MAX).unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases: [&[u8]; 4] = [
            b"",
            b"\x93NUMPY\x01\x00\x05\x00{'de",
            b"garbage!",
            b"\x93NUMPY\x09\x00",
        ];
        for case in cases {
            assert!(read_npy::<f32>(&mut &case[..], case.len() as u64).is_err());
        }
        for dict in [
            "{}",
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
            "{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': Nope, 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
        ] {
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            bytes.extend_from_slice(dict.as_bytes());
            bytes.extend_from_slice(&[0; 4]);
            let err = read_npy::<f32>(&mut bytes.as_slice(), bytes.len() as u64);
            assert!(err.is_err(), "{dict}");
        }
        assert!(NpzReader::new(Cursor::new(b"not a zip".to_vec())).is_err());
        let bool_byte = npz(&[("b", npy("|b1", false, "(1,)", &[7]))], false);
        let err = NpzReader::new(Cursor::new(bool_byte))
            .unwrap()
            .array::<bool>("b")
            .unwrap_err();
        assert!(err.to_string().contains("byte 7 at index 0"), "{err}");
        let big = le(&[u64::MAX], u64::to_le_bytes);
        let err = NpzReader::new(Cursor::new(npz(
            &[("u", npy("<u8", false, "(1,)", &big))],
            false,
        )))
        .unwrap()
        .array::<i64>("u")
        .unwrap_err();
        assert!(err.to_string().contains("does not fit int64"), "{err}");
        let wide = le(&[1e300f64], f64::to_le_bytes);
        let err = NpzReader::new(Cursor::new(npz(
            &[("w", npy("<f8", false, "(1,)", &wide))],
            false,
        )))
        .unwrap()
        .array::<f32>("w")
        .unwrap_err();
        assert!(err.to_string().contains("overflows float32"), "{err}");
    }
}
