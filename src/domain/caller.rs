//! Who is calling: the identity an authentication layer puts in the request extensions.

/// The authenticated caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`; recorded as the `actor` of every revision the call writes.
    pub subject: String,
    pub scopes: Vec<String>,
}

impl Caller {
    /// The caller of a server that runs without authentication.
    pub fn anonymous() -> Caller {
        Caller {
            subject: "anonymous".to_owned(),
            scopes: Vec::new(),
        }
    }
}
