//! vigil: catch neural networks running on anomalous mechanisms.
//!
//! The engine behind the `vigil` command, usable from Rust: data loaders ([`data`]), image
//! classifiers ([`models`]), training ([`train`]), losses ([`loss`]), backdoor attacks and PGD
//! ([`attack`]), MAD-FA ([`madfa`]), robust OOD training ([`halo`]) and OOD scores ([`ood`]), the
//! detectors with thresholds from trusted data ([`detect`]), whole benchmarks ([`benchmark`]),
//! progress and stop requests of long calls ([`progress`]), checkpoints ([`checkpoint`]),
//! evaluation metrics ([`metrics`]) and throughput measurements ([`throughput`]).
//!
//! Tensors come from burn 0.22, whose backend is a property of the [`burn::tensor::Device`]
//! rather than a type parameter: [`device::default_device`] picks the build's backend (the
//! pure-Rust `flex` CPU backend by default, CUDA with the `cuda` feature).

// Every public item is documented: the library is the API a benchmark or a Python package uses.
#![warn(missing_docs)]

pub mod attack;
pub mod benchmark;
pub mod checkpoint;
pub mod data;
pub mod detect;
pub mod device;
pub mod evasion;
pub mod halo;
pub mod identity;
pub mod inference;
pub mod io;
pub mod kernels;
pub mod lm;
pub mod loss;
pub mod madfa;
pub mod mechanisms;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod npy;
pub mod ood;
pub mod optim;
pub mod pool;
pub mod progress;
pub mod report;
pub mod throughput;
pub mod train;
