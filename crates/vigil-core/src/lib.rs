//! vigil: catch neural networks running on anomalous mechanisms.
//!
//! The engine behind the `vigil` command, usable from Rust: data loaders ([`data`]), image
//! classifiers ([`models`]), training ([`train`]), losses ([`loss`]), MAD-FA ([`madfa`]), checkpoints
//! ([`checkpoint`]), evaluation metrics ([`metrics`]) and throughput measurements ([`throughput`]).
//!
//! Tensors come from burn 0.22, whose backend is a property of the [`burn::tensor::Device`]
//! rather than a type parameter: [`device::default_device`] picks the build's backend (the
//! pure-Rust `flex` CPU backend by default, CUDA with the `cuda` feature).

pub mod attack;
pub mod benchmark;
pub mod checkpoint;
pub mod data;
pub mod detect;
pub mod device;
pub mod halo;
pub mod identity;
pub mod inference;
pub mod io;
pub mod kernels;
pub mod loss;
pub mod madfa;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod npy;
pub mod ood;
pub mod optim;
pub mod progress;
pub mod report;
pub mod throughput;
pub mod train;
