//! The fuzz targets' short run for CI, on stable Rust and without instrumentation: every seed in
//! `fuzz/seeds/<target>/` and every saved crash in `fuzz/regressions/<target>/` goes through its
//! target, then a few hundred seeded mutations of each seed (bit flips, interesting bytes, huge
//! numbers written into headers, truncations, spliced and deleted runs). A target passes when no
//! input panics and none makes the parser ask for one allocation larger than [`ALLOCATION_LIMIT`]
//! (libFuzzer's `-malloc_limit_mb` in the long runs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The largest single allocation a parser may ask for on these inputs (all under 300 KB): far
/// above any honest need, far below what a header claiming 1e15 elements would ask.
const ALLOCATION_LIMIT: usize = 256 << 20;

/// Mutations per seed (the seeds are small, and the targets fast except `pytorch`, which writes
/// each input to a file and builds a network per place a state_dict may sit).
const MUTATIONS_PER_SEED: usize = 300;

/// The system allocator, remembering on each thread the largest request since the last reset.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    // `try_with`: the slot is gone while a thread is being torn down.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A reproducible stream of random numbers (SplitMix64): the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Numbers that break size arithmetic, as little- and big-endian words and as decimal text.
const HUGE: [u64; 6] = [
    u64::MAX,
    1 << 63,
    1 << 32,
    u32::MAX as u64,
    1_000_000_000_000_000,
    0,
];

/// One mutation of `seed`.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let at = rng.below(out.len());
        match rng.below(8) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.below(8),
            1 if !out.is_empty() => out[at] = [0, 0xFF, 0x7F, 0x80, b'9', b'-'][rng.below(6)],
            2 => {
                let n = HUGE[rng.below(HUGE.len())];
                let word = match rng.below(4) {
                    0 => n.to_le_bytes().to_vec(),
                    1 => n.to_be_bytes().to_vec(),
                    2 => (n as u32).to_le_bytes().to_vec(),
                    _ => (n as u32).to_be_bytes().to_vec(),
                };
                let end = (at + word.len()).min(out.len());
                out.splice(at..end, word);
            }
            3 => {
                // A huge decimal where a number was (JSON headers, npy shapes).
                let digits = out
                    .iter()
                    .position(u8::is_ascii_digit)
                    .map(|first| first + rng.below(out.len() - first))
                    .unwrap_or(at);
                let text = HUGE[rng.below(HUGE.len())].to_string();
                out.splice(digits..digits, text.bytes());
            }
            4 => out.truncate(at),
            5 if !out.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            6 if !out.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                let run = out[at..end].to_vec();
                let to = rng.below(out.len());
                out.splice(to..to, run);
            }
            _ => {
                let to = rng.below(out.len() + 1);
                out.insert(to, rng.next() as u8);
            }
        }
    }
    out
}

fn repo_dir(parts: &[&str]) -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for part in parts {
        dir.push(part);
    }
    dir
}

/// The files of `dir`, sorted (none if it does not exist).
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), bytes)
        })
        .collect()
}

/// Runs `input` through `target`: `Some(problem)` if it panicked or asked for too much memory.
fn check(target: vigil_fuzz::Target, input: &[u8]) -> Option<String> {
    LARGEST.with(|l| l.set(0));
    let outcome = catch_unwind(AssertUnwindSafe(|| target(input)));
    let largest = LARGEST.with(Cell::get);
    match outcome {
        Err(panic) => Some(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
        Ok(()) if largest > ALLOCATION_LIMIT => Some(format!(
            "asked for one allocation of {largest} bytes on a {}-byte input",
            input.len()
        )),
        Ok(()) => None,
    }
}

/// Replays the seeds and saved crashes of `name`, then mutations of the seeds; fails listing
/// every input that panicked or over-allocated (mutations by seed and number, to reproduce).
fn replay(name: &str) {
    let target = vigil_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no target {name}"));
    let seeds = files_in(&repo_dir(&["fuzz", "seeds", name]));
    assert!(
        !seeds.is_empty(),
        "no seeds for {name} in fuzz/seeds/{name}"
    );
    let regressions = files_in(&repo_dir(&["fuzz", "regressions", name]));
    let mut failures = Vec::new();
    for (path, bytes) in seeds.iter().chain(&regressions) {
        if let Some(problem) = check(target, bytes) {
            failures.push(format!("{path}: {problem}"));
        }
    }
    for (index, (path, bytes)) in seeds.iter().enumerate() {
        let mut rng = Rng(0x5EED ^ (index as u64) << 20);
        for round in 0..MUTATIONS_PER_SEED {
            let input = mutate(bytes, &mut rng);
            if let Some(problem) = check(target, &input) {
                failures.push(format!("{path}, mutation {round}: {problem}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} input(s) of target {name} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_target_has_seeds_and_a_test() {
    let tested = [
        "safetensors",
        "pytorch",
        "npz",
        "npy",
        "idx",
        "cifar",
        "image",
        "mnist_json",
        "json_records",
        "class_names",
        "backdoor_test",
        "gguf",
        "text",
    ];
    let targets: Vec<&str> = vigil_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(targets, tested);
    for name in targets {
        let binary = repo_dir(&["fuzz", "fuzz_targets", &format!("{name}.rs")]);
        assert!(binary.is_file(), "no libFuzzer binary {}", binary.display());
    }
}

#[test]
fn text_inputs_neither_panic_nor_over_allocate() {
    replay("text");
}

#[test]
fn gguf_inputs_neither_panic_nor_over_allocate() {
    replay("gguf");
}

#[test]
fn safetensors_inputs_neither_panic_nor_over_allocate() {
    replay("safetensors");
}

#[test]
fn pytorch_inputs_neither_panic_nor_over_allocate() {
    replay("pytorch");
}

#[test]
fn npz_inputs_neither_panic_nor_over_allocate() {
    replay("npz");
}

#[test]
fn npy_inputs_neither_panic_nor_over_allocate() {
    replay("npy");
}

#[test]
fn idx_inputs_neither_panic_nor_over_allocate() {
    replay("idx");
}

#[test]
fn cifar_inputs_neither_panic_nor_over_allocate() {
    replay("cifar");
}

#[test]
fn image_inputs_neither_panic_nor_over_allocate() {
    replay("image");
}

#[test]
fn mnist_json_inputs_neither_panic_nor_over_allocate() {
    replay("mnist_json");
}

#[test]
fn json_record_inputs_neither_panic_nor_over_allocate() {
    replay("json_records");
}

#[test]
fn class_name_inputs_neither_panic_nor_over_allocate() {
    replay("class_names");
}

#[test]
fn backdoor_test_set_inputs_neither_panic_nor_over_allocate() {
    replay("backdoor_test");
}

/// Writes the JSON-record seeds vigil's own types serialise to (a calibration, an attack
/// manifest, every attack's default parameters) into `fuzz/seeds/json_records/`. Run by hand
/// when those types change: `cargo test -p vigil-fuzz --test replay -- --ignored`.
#[test]
#[ignore]
fn write_json_record_seeds() {
    use vigil_core::attack::backdoor::record::AttackManifest;
    use vigil_core::attack::backdoor::{ATTACK_NAMES, AttackParams, TargetRule};
    use vigil_core::madfa::{Calibration, CalibrationConfig, ChainConfig};

    let dir = repo_dir(&["fuzz", "seeds", "json_records"]);
    let write = |name: &str, value: serde_json::Value| {
        let text = serde_json::to_vec_pretty(&value).expect("serialisable");
        std::fs::write(dir.join(name), text).expect("seed written");
    };
    let base = ChainConfig::reference();
    let calibration = Calibration {
        config: CalibrationConfig::defaults(base.clone()),
        candidates: Vec::new(),
        chosen: 0,
        recommended: base,
        predicted_reliability: 0.93,
        reference_size: 50,
        probe_size: 50,
        seconds: 12.5,
        vigil_version: "0.1.0".into(),
    };
    write(
        "calibration.json",
        serde_json::to_value(&calibration).expect("calibration"),
    );
    for name in ATTACK_NAMES {
        let params = AttackParams::defaults(name, 0).expect("default parameters");
        let params = serde_json::to_value(&params).expect("parameters");
        if *name == "badnets" {
            let manifest = AttackManifest {
                attack: name.to_string(),
                params: params.clone(),
                rule: TargetRule::AllToOne { target: 0 },
                rate: 0.1,
                seed: 0,
                dataset: "fashion-mnist".into(),
                vigil_version: "0.1.0".into(),
                second: None,
            };
            write(
                "attack.json",
                serde_json::to_value(&manifest).expect("manifest"),
            );
        }
        write(&format!("attack-params-{name}.json"), params);
    }
}

/// Found by the `safetensors` target: a tensor of shape `[2^32, 2^32, 2^32]` made
/// `TensorFile::from_bytes` overflow computing its size (a panic in debug builds; in release the
/// size wrapped to 0 and an empty tensor passed for a huge one). Now refused by name.
#[test]
fn tensor_file_refuses_a_shape_whose_size_overflows() {
    let path = repo_dir(&[
        "fuzz",
        "regressions",
        "safetensors",
        "shape-product-overflow",
    ]);
    let bytes = std::fs::read(&path).expect("regression input");
    let err = vigil_core::checkpoint::TensorFile::from_bytes(&path, &bytes)
        .expect_err("an overflowing shape must be refused");
    let message = err.to_string();
    assert!(
        message.contains("tensor `a`: shape [4294967296, 4294967296, 4294967296]")
            && message.contains("more values than memory can address"),
        "{message}"
    );
}

/// The well-formed seeds load all the way, so the targets reach past the first check (a target
/// whose every seed fails early would fuzz only the header code).
#[test]
fn real_seeds_parse() {
    use std::io::Cursor;
    use vigil_core::checkpoint;
    use vigil_core::data::{cifar, idx, image_folder, mnist_json};
    use vigil_core::madfa::LossTraces;

    let seed = |target: &str, name: &str| {
        let path = repo_dir(&["fuzz", "seeds", target, name]);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (path, bytes)
    };
    let device = vigil_core::device::default_device();

    let (path, bytes) = seed("safetensors", "vigil_checkpoint.safetensors");
    let spec = checkpoint::inspect_bytes(&path, &bytes)
        .expect("header")
        .spec
        .expect("spec in the metadata");
    checkpoint::load_with_spec_bytes(&path, bytes, spec, &device).expect("checkpoint loads");
    let (path, bytes) = seed("safetensors", "tensor_file.safetensors");
    let file = checkpoint::TensorFile::from_bytes(&path, &bytes).expect("tensor file");
    assert_eq!(file.tensors.len(), 2);

    // The pytorch target's scratch-file route, with the target's own spec.
    let (_, bytes) = seed("pytorch", "small_cnn.state_dict.pt");
    let path = std::env::temp_dir().join(format!("vigil-fuzz-seed-{}.pt", std::process::id()));
    std::fs::write(&path, &bytes).expect("scratch file");
    let spec = checkpoint::inspect(&path);
    let loaded = checkpoint::load_pytorch_file(
        &path,
        vigil_core::models::ModelSpec {
            architecture: vigil_core::models::Architecture::SmallCnn {
                width: 4,
                hidden: 16,
            },
            input_shape: [1, 28, 28],
            class_names: (0..10).map(|c| c.to_string()).collect(),
            normalization: None,
        },
        &device,
    );
    let _ = std::fs::remove_file(&path);
    spec.expect(".pt header");
    loaded.expect(".pt state_dict loads");

    for name in [
        "traces_stored.npz",
        "traces_deflated.npz",
        "vigil_traces.npz",
    ] {
        let (path, bytes) = seed("npz", name);
        LossTraces::read_npz(Cursor::new(bytes), &path).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let (_, bytes) = seed("npy", "f8_fortran.npy");
    let available = bytes.len() as u64;
    vigil_core::npy::read_npy::<f32>(&mut Cursor::new(bytes), available).expect("npy");

    for name in ["images.idx3", "images.idx3.gz"] {
        let (path, bytes) = seed("idx", name);
        idx::parse_idx_images(&bytes, &path).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let (path, bytes) = seed("idx", "labels.idx1.gz");
    idx::parse_idx_labels(&bytes, &path).expect("labels");

    let names = |n: usize| (0..n).map(|c| c.to_string()).collect::<Vec<_>>();
    let (path, bytes) = seed("cifar", "cifar10_two.bin");
    cifar::parse_cifar10_batch(&bytes, &path, &names(10)).expect("cifar-10");
    let (path, bytes) = seed("cifar", "cifar100_one.bin");
    cifar::parse_cifar100_batch(&bytes, &path, cifar::Cifar100Labels::Fine, &names(100))
        .expect("cifar-100");

    for name in ["gray_3x3.png", "rgb_4x2.png", "rgba_2x2.png", "python.jpg"] {
        let (path, bytes) = seed("image", name);
        image_folder::decode_image(&bytes, &path).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let (path, bytes) = seed("mnist_json", "two_digits.json");
    assert_eq!(
        mnist_json::parse_mnist_digit_json(&bytes, &path)
            .expect("digits")
            .len(),
        2 * 784
    );

    let (_, bytes) = seed("json_records", "train-state.json");
    serde_json::from_slice::<vigil_core::train::TrainState>(&bytes).expect("train state");
    let (_, bytes) = seed("json_records", "run-identity.sample.json");
    serde_json::from_slice::<vigil_core::identity::RunIdentity>(&bytes).expect("identity");
    let (_, bytes) = seed("json_records", "calibration.json");
    serde_json::from_slice::<vigil_core::madfa::Calibration>(&bytes).expect("calibration");
    let (_, bytes) = seed("backdoor_test", "two_images");
    let set = read_record(&bytes, "seed").expect("triggered test set");
    assert_eq!(set.original_indices, [4, 9]);
    let (_, bytes) = seed("json_records", "attack.json");
    serde_json::from_slice::<vigil_core::attack::backdoor::record::AttackManifest>(&bytes)
        .expect("manifest");
}

/// Found with the `backdoor_test` target's seeds: a record whose images tensor has shape
/// `[0, 2^22, 2^22, 2^22]` (no images, so the tensor's size check passes) made `ImageSet::new`
/// overflow computing one image's size (a panic in debug builds; in release the wrapped size
/// let an absurd shape through). `ImageSet::new` now checks the shape first and names it.
#[test]
fn backdoor_test_set_refuses_a_shape_whose_size_overflows() {
    let input = std::fs::read(repo_dir(&[
        "fuzz",
        "regressions",
        "backdoor_test",
        "zero-images-shape-overflow",
    ]))
    .expect("regression input");
    let Err(err) = read_record(&input, "overflow") else {
        panic!("an overflowing shape must be refused");
    };
    let message = err.to_string();
    assert!(
        message.contains("image shape 4194304x4194304x4194304")
            && message.contains("more values than memory can address"),
        "{message}"
    );
}

/// Reads a `backdoor_test` target's input (u16 JSON length, index JSON, images safetensors) as
/// an attack record's triggered test set, through a scratch folder named after `test`.
fn read_record(
    input: &[u8],
    test: &str,
) -> Result<
    vigil_core::attack::backdoor::TriggeredTestSet,
    vigil_core::attack::backdoor::record::RecordError,
> {
    use vigil_core::attack::backdoor::record;
    let (len, rest) = input.split_at(2);
    let (json, images) = rest.split_at(usize::from(u16::from_le_bytes([len[0], len[1]])));
    let dir = std::env::temp_dir().join(format!("vigil-fuzz-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    std::fs::write(dir.join(record::files::BACKDOOR_TEST_INDEX), json).expect("index");
    std::fs::write(dir.join(record::files::BACKDOOR_TEST_IMAGES), images).expect("images");
    let result = record::read_backdoor_test(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
