//! Integration tests: the real server over real databases, called with real clients.

mod support;

mod auth;
mod concurrency;
mod connect;
mod decode_limits;
mod durability;
mod feed;
mod group_commit;
mod http;
mod limits;
mod masks;
mod pages;
mod parity;
mod process;
mod reliability;
mod replicas;
mod rest;
mod rpcs;
mod sign_in;
mod smtp;
mod snapshots;
mod validation;
mod verification;
mod wal;
