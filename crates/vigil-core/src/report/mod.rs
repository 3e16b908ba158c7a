//! Pictures and summaries for people: image grids of clean and triggered inputs ([`grid`]) and
//! grouped bar charts ([`bars`]).

pub mod bars;
pub mod grid;
