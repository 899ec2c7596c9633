//! The domain core: the user model and every rule about it, as pure functions with no I/O.

pub mod caller;
pub mod change;
pub mod command;
pub mod error;
pub mod event;
pub mod field_mask;
pub mod field_table;
pub mod filter;
pub mod password;
pub mod permission;
pub mod query;
pub mod revision;
pub mod sign_in;
pub mod user;
pub mod validate;
pub mod verification;

pub use error::{Error, FieldViolation};
