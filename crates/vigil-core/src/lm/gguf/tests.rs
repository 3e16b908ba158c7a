use super::*;

/// Bytes of a GGUF file, written by hand for the hostile-input tests (the fixture test reads
/// one written by gguf-py).
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn new(version: u32, tensors: u64, kvs: u64) -> Self {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(version.to_le_bytes());
        bytes.extend(tensors.to_le_bytes());
        bytes.extend(kvs.to_le_bytes());
        Self { bytes }
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.bytes.extend((s.len() as u64).to_le_bytes());
        self.bytes.extend(s.as_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend(v.to_le_bytes());
        self
    }
    fn tensor(&mut self, name: &str, ne: &[u64], kind: u32, offset: u64) -> &mut Self {
        self.string(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(kind).u64(offset)
    }
    /// Pads to 32 bytes and appends `data`.
    fn data(&mut self, data: &[u8]) -> Vec<u8> {
        while !self.bytes.len().is_multiple_of(32) {
            self.bytes.push(0);
        }
        self.bytes.extend(data);
        self.bytes.clone()
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn a_small_file_parses_and_its_f32_tensor_reads_back_row_major() {
    let mut w = Writer::new(3, 1, 2);
    w.string("general.architecture").u32(8).string("llama");
    w.string("llama.block_count").u32(4).u32(7);
    // ggml ne = [3, 2]: 2 rows of 3 contiguous values, numpy shape [2, 3].
    w.tensor("t", &[3, 2], 0, 0);
    let bytes = w.data(&f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    let g = Gguf::from_bytes(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_usize("llama.block_count").unwrap(), 7);
    assert_eq!(g.tensor("t").unwrap().shape, vec![2, 3]);
    assert_eq!(
        g.dequantize("t").unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    // The same file through a reader.
    let again = Gguf::read(&bytes[..]).unwrap();
    assert_eq!(again.tensors, g.tensors);
    // Wrong metadata types and missing keys are errors naming the key.
    let err = g.get_usize("general.architecture").unwrap_err();
    assert!(err.to_string().contains("general.architecture"), "{err}");
    let err = g.get_str("missing.key").unwrap_err();
    assert!(err.to_string().contains("missing.key"), "{err}");
    let err = g.dequantize("absent").unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn hostile_headers_are_errors_not_panics_or_huge_allocations() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("bad magic", b"GGML\x03\0\0\0".to_vec()),
        ("version 1", Writer::new(1, 0, 0).data(&[])),
        ("huge kv count", Writer::new(3, 0, u64::MAX).data(&[])),
        ("huge tensor count", Writer::new(3, u64::MAX, 0).data(&[])),
        ("huge string", {
            let mut w = Writer::new(3, 0, 1);
            w.u64(u64::MAX);
            w.data(&[])
        }),
        ("huge array", {
            let mut w = Writer::new(3, 0, 1);
            w.string("a").u32(9).u32(8).u64(1 << 60);
            w.data(&[])
        }),
        ("unknown value type", {
            let mut w = Writer::new(3, 0, 1);
            w.string("a").u32(99);
            w.data(&[])
        }),
        ("bool byte 2", {
            let mut w = Writer::new(3, 0, 1);
            w.string("a").u32(7);
            w.bytes.push(2);
            w.data(&[])
        }),
        ("deep arrays", {
            let mut w = Writer::new(3, 0, 1);
            w.string("a");
            for _ in 0..10 {
                w.u32(9).u32(9).u64(1);
            }
            w.data(&[0; 64])
        }),
        ("tensor beyond the data", {
            let mut w = Writer::new(3, 1, 0);
            w.tensor("t", &[4], 0, 0);
            w.data(&[0; 8])
        }),
        ("dimension overflow", {
            let mut w = Writer::new(3, 1, 0);
            w.tensor("t", &[u64::MAX, 4], 0, 0);
            w.data(&[0; 8])
        }),
        ("zero dimensions", {
            let mut w = Writer::new(3, 1, 0);
            w.tensor("t", &[], 0, 0);
            w.data(&[0; 8])
        }),
        ("quantised row not a block multiple", {
            let mut w = Writer::new(3, 1, 0);
            w.tensor("t", &[31], 8, 0);
            w.data(&[0; 64])
        }),
        ("misaligned offset", {
            let mut w = Writer::new(3, 1, 0);
            w.tensor("t", &[1], 0, 4);
            w.data(&[0; 64])
        }),
        ("overlapping tensors", {
            let mut w = Writer::new(3, 2, 0);
            w.tensor("a", &[16], 0, 0).tensor("b", &[16], 0, 32);
            w.data(&[0; 96])
        }),
        ("repeated tensor", {
            let mut w = Writer::new(3, 2, 0);
            w.tensor("a", &[1], 0, 0).tensor("a", &[1], 0, 32);
            w.data(&[0; 64])
        }),
        ("repeated key", {
            let mut w = Writer::new(3, 0, 2);
            w.string("k").u32(4).u32(1).string("k").u32(4).u32(2);
            w.data(&[])
        }),
        ("bad alignment", {
            let mut w = Writer::new(3, 0, 1);
            w.string("general.alignment").u32(4).u32(3);
            w.data(&[])
        }),
        ("invalid UTF-8 key", {
            let mut w = Writer::new(3, 0, 1);
            w.u64(2);
            w.bytes.extend([0xff, 0xfe]);
            w.u32(4).u32(1);
            w.data(&[])
        }),
    ];
    for (what, bytes) in cases {
        assert!(Gguf::from_bytes(&bytes).is_err(), "{what} was accepted");
    }
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let mut w = Writer::new(3, 2, 1);
    w.string("general.name").u32(8).string("x");
    w.tensor("a", &[32], 8, 0).tensor("b", &[2], 0, 64);
    let mut data = vec![0u8; 64];
    data[..34].copy_from_slice(&[0x00, 0x3c].repeat(17)); // d = 1.0 and bytes 0x3c
    data.extend(f32_bytes(&[1.5, -2.0]));
    let bytes = w.data(&data);
    let whole = Gguf::from_bytes(&bytes).unwrap();
    assert_eq!(whole.dequantize("b").unwrap(), vec![1.5, -2.0]);
    for len in 0..bytes.len() {
        assert!(
            Gguf::from_bytes(&bytes[..len]).is_err(),
            "truncated to {len} of {} bytes was accepted",
            bytes.len()
        );
    }
}

#[test]
fn an_unknown_tensor_type_is_listed_but_not_dequantised() {
    let mut w = Writer::new(3, 1, 0);
    w.tensor("k", &[256], 14, 0); // Q6_K
    let g = Gguf::from_bytes(&w.data(&[0; 256])).unwrap();
    let err = g.dequantize("k").unwrap_err().to_string();
    assert!(err.contains("ggml type 14"), "{err}");
}

/// Dequantised values of every supported type against gguf-py's `quants.dequantize`
/// (`tests/fixtures/lm/make_fixtures.py` wrote both files).
#[test]
fn dequantisation_matches_gguf_py() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/lm");
    let g = Gguf::open(&dir.join("quants.gguf")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("quants.json")).unwrap()).unwrap();
    let tensors = expected["tensors"].as_array().unwrap();
    assert!(tensors.len() >= 5);
    let mut kinds = std::collections::BTreeSet::new();
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let info = g.tensor(name).unwrap();
        kinds.insert(info.kind.name());
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.shape, shape, "{name}");
        assert_eq!(info.kind.name(), t["ggml_type"].as_str().unwrap(), "{name}");
        let values = g.dequantize(name).unwrap();
        let want: Vec<f64> = t["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(values.len(), want.len(), "{name}");
        for (i, (&got, &want)) in values.iter().zip(&want).enumerate() {
            assert!(
                (got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{name}[{i}]: {got} vs {want}"
            );
        }
    }
    for kind in ["F32", "F16", "Q4_0", "Q4_1", "Q8_0"] {
        assert!(kinds.contains(kind), "no {kind} tensor in the fixture");
    }
    // Metadata of every value type, as gguf-py wrote it.
    for (key, want) in expected["metadata"].as_object().unwrap() {
        let got = g.get(key).unwrap();
        let same = match (got, want) {
            (Value::String(s), serde_json::Value::String(w)) => s == w,
            (Value::Bool(b), serde_json::Value::Bool(w)) => b == w,
            (Value::Array(items), serde_json::Value::Array(w)) => {
                items.len() == w.len()
                    && items.iter().zip(w).all(|(i, w)| match (i, w) {
                        (Value::String(s), serde_json::Value::String(w)) => s == w,
                        (i, w) => i.as_f64() == w.as_f64(),
                    })
            }
            // Integers exactly (u64 and i64 beyond f64's 53 bits included), floats to f32's
            // precision.
            (v, w) if w.is_u64() => v.as_u64() == w.as_u64(),
            (v, w) if w.is_i64() => match *v {
                Value::I8(x) => Some(i64::from(x)) == w.as_i64(),
                Value::I16(x) => Some(i64::from(x)) == w.as_i64(),
                Value::I32(x) => Some(i64::from(x)) == w.as_i64(),
                Value::I64(x) => Some(x) == w.as_i64(),
                _ => false,
            },
            (v, w) => v
                .as_f64()
                .zip(w.as_f64())
                .is_some_and(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)),
        };
        assert!(same, "{key}: {got:?} vs {want}");
    }
}
