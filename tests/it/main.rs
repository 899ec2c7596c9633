//! Integration tests: the real server over real databases, called with real clients.

mod support;

mod concurrency;
mod masks;
mod process;
mod rpcs;
mod validation;
