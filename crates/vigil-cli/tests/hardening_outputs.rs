//! Hardening of outputs, signals and the smaller CLI defects (issue 24): no command writes over
//! its own input or writes two outputs to one file, `train` and `calibrate` check --out before
//! the work, SIGTERM checkpoints like Ctrl-C, a closed pipe ends a command quietly, and bad
//! sizes and rates are refused with clear errors.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{idx_data, stderr, vigil, vigil_command};

/// A fresh temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("vigil-hardening-out", name)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `vigil train` of a width-4 small CNN on `data` into `out`: `epochs` epochs of batches of 8.
fn train_args<'a>(data: &'a Path, out: &'a Path, epochs: &'a str) -> [&'a str; 11] {
    [
        "train",
        "--data-dir",
        s(data),
        "--out",
        s(out),
        "--epochs",
        epochs,
        "--batch-size",
        "8",
        "--width",
        "4",
    ]
}

/// Asserts `out` failed with a clear error containing `expected`, not a panic.
fn assert_refused(out: &Output, expected: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(
        err.contains(expected),
        "error should say `{expected}`: {err}"
    );
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// The output guard runs before any input is read, so these inputs need not be valid files: the
// point is that they are left byte for byte as they were and nothing else is written.
const TRACES: &[u8] = b"traces of chain 0";

#[test]
fn score_refuses_to_write_its_scores_over_the_traces() {
    let dir = temp_dir("score-in");
    let traces = dir.join("t.npz");
    std::fs::write(&traces, TRACES).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let link = dir.join("link.npz");
    std::os::unix::fs::symlink(&traces, &link).unwrap();
    for out in [traces.clone(), dir.join("sub/../t.npz"), link.clone()] {
        let o = vigil(&["score", s(&traces), "--out", s(&out)]);
        assert_refused(&o, "it is the input");
        assert!(stderr(&o).contains("t.npz"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&traces).unwrap(), TRACES);
    assert_eq!(names(&dir), ["link.npz", "sub", "t.npz"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn score_refuses_scores_and_attributions_in_one_file() {
    let dir = temp_dir("score-two");
    let traces = dir.join("t.npz");
    std::fs::write(&traces, TRACES).unwrap();
    let out = dir.join("attribution.csv");
    let o = vigil(&["score", s(&traces), "--top-k", "3", "--out", s(&out)]);
    assert_refused(&o, "they are the same file");
    assert_eq!(names(&dir), ["t.npz"], "nothing may be written");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_refuses_to_write_over_one_of_its_parts() {
    let dir = temp_dir("merge");
    let (a, b) = (dir.join("a.npz"), dir.join("b.npz"));
    std::fs::write(&a, TRACES).unwrap();
    std::fs::write(&b, b"traces of chain 1").unwrap();
    let hard = dir.join("hard.npz");
    std::fs::hard_link(&a, &hard).unwrap();
    for out in [&a, &hard] {
        let o = vigil(&["merge", s(&a), s(&b), "--out", s(out)]);
        assert_refused(&o, "it is the input");
    }
    assert_eq!(std::fs::read(&a).unwrap(), TRACES);
    assert_eq!(names(&dir), ["a.npz", "b.npz", "hard.npz"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_commands_refuse_a_written_file_that_is_an_input() {
    let dir = temp_dir("folders");
    let data = idx_data(&dir, 20, 10, 1);
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    let model = out.join("model.safetensors");
    std::fs::write(&model, b"the helper's weights").unwrap();
    // HALO's helper would be replaced by the run's own first checkpoint.
    let o = vigil(&[
        "train",
        "--data-dir",
        s(&data),
        "--objective",
        "halo",
        "--helper",
        s(&model),
        "--out",
        s(&out),
    ]);
    assert_refused(&o, "it is the input");
    // An LC attack's clean model would be replaced by the backdoored one.
    let o = vigil(&[
        "attack",
        "--attack",
        "lc",
        "--clean-model",
        s(&model),
        "--data-dir",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert_refused(&o, "it is the input");
    // MAD-FA's outputs in --out.
    for (command, name) in [("sample", "task.npz"), ("calibrate", "calibration.json")] {
        let input = out.join(name);
        std::fs::write(&input, b"someone's model").unwrap();
        let o = vigil(&[
            command,
            "--model",
            s(&input),
            "--arch",
            "small-cnn",
            "--trusted",
            s(&dir),
            "--sampling",
            s(&dir),
            "--test",
            s(&dir),
            "--out",
            s(&out),
        ]);
        assert_refused(&o, "it is the input");
        assert_eq!(std::fs::read(&input).unwrap(), b"someone's model");
        std::fs::remove_file(&input).unwrap();
    }
    // The OOD benchmark's report.
    let report = out.join("report.json");
    std::fs::write(&report, b"a model").unwrap();
    let o = vigil(&[
        "benchmark",
        "ood",
        "--model",
        &format!("m={}", s(&report)),
        "--out",
        s(&out),
    ]);
    assert_refused(&o, "it is the input");
    std::fs::remove_file(&report).unwrap();
    assert_eq!(std::fs::read(&model).unwrap(), b"the helper's weights");
    assert_eq!(names(&out), ["model.safetensors"], "nothing may be written");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_and_calibrate_check_that_out_is_writable_before_the_work() {
    let dir = temp_dir("writable");
    let data = idx_data(&dir, 40, 10, 1);
    // A folder under a regular file cannot be created, even by root.
    let file = dir.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("run");
    let o = vigil(&train_args(&data, &out, "1"));
    assert_refused(&o, "cannot write into");
    assert!(stderr(&o).contains(s(&out)), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "no epoch may run before the check");
    assert!(
        !stderr(&o).contains("training"),
        "the check comes before the work: {}",
        stderr(&o)
    );
    let o = vigil(&[
        "calibrate",
        "--model",
        s(&dir.join("no-model.safetensors")),
        "--trusted",
        s(&dir),
        "--sampling",
        s(&dir),
        "--out",
        s(&out),
    ]);
    assert_refused(&o, "cannot write into");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // A writable --out that does not exist yet passes and the run goes on.
    let fresh = dir.join("a/b/run");
    let o = vigil(&train_args(&data, &fresh, "1"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fresh.join("model.safetensors").exists());
    assert!(
        !names(&fresh).iter().any(|n| n.contains("probe")),
        "{:?}",
        names(&fresh)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_refuses_non_positive_or_non_finite_rates_before_loading_data() {
    let dir = temp_dir("lr");
    let out = dir.join("run");
    // No data folder: the settings are refused before any data is looked for.
    let missing = dir.join("no-data");
    for (flag, value, expected) in [
        ("--lr", "-1", "learning rate"),
        ("--lr", "0", "learning rate"),
        ("--lr", "nan", "learning rate"),
        ("--lr", "inf", "learning rate"),
        ("--weight-decay", "nan", "weight decay"),
        ("--warmup", "2", "warm-up"),
        ("--momentum", "nan", "momentum"),
    ] {
        let o = vigil(&[
            "train",
            "--data-dir",
            s(&missing),
            "--out",
            s(&out),
            &format!("{flag}={value}"),
        ]);
        assert_refused(&o, expected);
        assert!(
            stderr(&o).contains("invalid training config"),
            "{}",
            stderr(&o)
        );
        assert!(!out.exists(), "{flag} {value}: nothing may be written");
    }
    // A crop padded by the image's side or more can be all padding.
    let data = idx_data(&dir, 20, 10, 1);
    let o = vigil(&[
        "train",
        "--data-dir",
        s(&data),
        "--out",
        s(&out),
        "--crop-padding",
        "28",
        "--width",
        "4",
    ]);
    assert_refused(&o, "crop padding 28 must be smaller");
    assert!(o.stdout.is_empty(), "no epoch may run");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_refuses_a_zero_batch_and_zero_iterations() {
    for (flag, value) in [("--batch", "0"), ("--iters", "0"), ("--batch", "99999999")] {
        let o = vigil(&["throughput", flag, value, "--warmup", "0"]);
        assert_refused(&o, "invalid benchmark settings");
        assert!(
            o.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = temp_dir("pipe");
    let data = idx_data(&dir, 40, 10, 1);
    let run = dir.join("run");
    let o = vigil(&train_args(&data, &run, "1"));
    assert!(o.status.success(), "{}", stderr(&o));
    let model = run.join("model.safetensors");
    for args in [vec!["info", s(&model)], vec!["info", s(&model), "--json"]] {
        let mut child = vigil_command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before vigil prints (as `| head -0` would): every write is EPIPE.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} should end quietly: {err}");
        assert!(
            o.status.success() || o.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            o.status
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts the training `command`, waits for its first epoch's JSON line (the run is training, its
/// signal handler installed), sends it `signal`, and returns the stdout lines after the first
/// and the whole run's output.
fn signal_after_the_first_epoch(mut command: Command, signal: i32) -> (Vec<String>, Output) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("an epoch line").unwrap();
    assert!(first.contains("\"epoch\":1"), "{first}");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let rest = lines.map(|l| l.unwrap()).collect();
    (rest, child.wait_with_output().unwrap())
}

#[test]
fn sigterm_checkpoints_like_ctrl_c_and_the_run_resumes() {
    let dir = temp_dir("sigterm");
    let data = idx_data(&dir, 1000, 20, 1);
    let run = dir.join("run");
    let args = train_args(&data, &run, "4");
    // What Slurm sends before SIGKILL.
    let (rest, o) = signal_after_the_first_epoch(vigil_command(&args), libc::SIGTERM);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "exits as interrupted: {err}");
    assert!(err.contains("stopped at epoch"), "{err}");
    assert!(rest.len() < 3, "the run went on after SIGTERM: {rest:?}");
    assert!(run.join("resume/state.json").exists());

    let o = vigil(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming"), "{err}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_started_under_nohup_ignores_sighup_as_before() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("nohup");
    let data = idx_data(&dir, 1000, 20, 1);
    let run = dir.join("run");
    let mut command = vigil_command(&train_args(&data, &run, "3"));
    // What `nohup` does before it starts the program.
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    // The terminal closes: the run goes on to the end.
    let (rest, o) = signal_after_the_first_epoch(command, libc::SIGHUP);
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    assert_eq!(rest.len(), 2, "{rest:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_command_help_opens_with_its_own_description() {
    // The docs of structs flattened into commands: none may stand in for a command's own.
    let borrowed = [
        "The sampler's settings",
        "Where MAD-FA's model",
        "Settings of `vigil calibrate`",
        "Which dataset",
        "How to read a model file",
        "Model and optimisation options",
        "Robust OOD training",
    ];
    let commands: [(&[&str], &str); 12] = [
        (&["train"], "Train a classifier"),
        (&["attack"], "Mount a backdoor attack"),
        (&["eval"], "Evaluate a checkpoint"),
        (&["info"], "Describe a checkpoint"),
        (&["table"], "Summarise attack records"),
        (&["calibrate"], "Choose MAD-FA's sampler settings"),
        (&["sample"], "Sample parameters around a model"),
        (&["score"], "Score every test sample"),
        (&["merge"], "Join trace files"),
        (&["throughput"], "Measure throughput"),
        (&["benchmark"], "Run a benchmark"),
        (&["benchmark", "ood"], "OOD detection under attack"),
    ];
    for (command, opening) in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let o = vigil(&args);
        assert!(o.status.success(), "{command:?}: {}", stderr(&o));
        let help = String::from_utf8_lossy(&o.stdout);
        let first = help.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(opening),
            "{command:?} opens with: {first}"
        );
        assert!(
            !borrowed.iter().any(|b| first.starts_with(b)),
            "{command:?}: {first}"
        );
    }
}
