//! exec-server: the table of contents. Parse flags, set up logging, pick the mode, run it,
//! and turn the outcome into an exit code (PROTOCOL.md §8.8).

mod config;
mod envpolicy;
mod process;
mod pty;
mod rpc;

fn main() {}
