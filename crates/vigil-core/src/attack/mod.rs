//! Attacks on inputs and training data. Today: the projected-gradient (PGD) primitives that
//! HALO training, OOD evaluation and the benchmarks share.

pub mod pgd;
