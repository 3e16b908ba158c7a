//! Attacks on inputs and training data: backdoor poisoning ([`backdoor`]) and projected-gradient
//! input attacks ([`pgd`]).

pub mod backdoor;
pub mod pgd;
