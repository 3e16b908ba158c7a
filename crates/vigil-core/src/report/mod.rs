//! Pictures and summaries for people: image grids of clean and triggered inputs ([`grid`]).

pub mod grid;
