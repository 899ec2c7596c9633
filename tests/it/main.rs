//! Integration tests: the real server over real databases, called with real clients.

mod support;

mod auth;
mod concurrency;
mod group_commit;
mod http;
mod limits;
mod masks;
mod parity;
mod process;
mod reliability;
mod rest;
mod rpcs;
mod validation;
