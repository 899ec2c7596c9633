//! Password hashing: Argon2id with the crate's default (OWASP-recommended) cost; the PHC string is what is
//! stored, and the plain text never leaves this module's callers' stack.
//!
//! Every computation works in caller-supplied [`Memory`], so a bounded pool can keep one block per slot
//! instead of allocating (and leaving to the allocator) 19 MiB per hash.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use super::error::Error;

/// The working memory of one Argon2 computation, kept between computations. It grows to the largest cost it
/// has served (the default cost: 19 MiB) and never shrinks.
#[derive(Default)]
pub struct Memory(Vec<Block>);

impl Memory {
    /// The first `blocks` blocks, allocating them on first use.
    fn blocks(&mut self, blocks: usize) -> &mut [Block] {
        if self.0.len() < blocks {
            self.0.resize(blocks, Block::new());
        }
        &mut self.0[..blocks]
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.0.len() * Block::SIZE
    }
}

fn hasher(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password that already passed the policy. CPU-heavy (tens of milliseconds): call it off the async
/// runtime.
pub fn hash(password: &str, memory: &mut Memory) -> Result<String, Error> {
    let failed = |e: &dyn std::fmt::Display| Error::internal(format!("hashing a password: {e}"));
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
    let params = Params::default();
    let argon2 = hasher(params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_bytes,
            &mut out,
            memory.blocks(params.block_count()),
        )
        .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches a stored PHC hash; a malformed hash never matches. The comparison is constant
/// time (`Output`'s equality).
pub fn verify(password: &str, stored_hash: &str, memory: &mut Memory) -> bool {
    let Ok(parsed) = PasswordHash::new(stored_hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(parsed.algorithm), Params::try_from(&parsed)) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = memory.blocks(params.block_count());
    if Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, blocks)
        .is_err()
    {
        return false;
    }
    Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// Whether a stored hash was made with weaker parameters than the current ones (another algorithm, an older
/// version, less memory or fewer passes), so a correct password should be hashed again. An unreadable hash is
/// left alone: it never verifies anyway.
pub fn needs_rehash(stored_hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored_hash) else {
        return false;
    };
    let current = Params::default();
    let weaker_params = Params::try_from(&parsed)
        .map(|p| p.m_cost() < current.m_cost() || p.t_cost() < current.t_cost())
        .unwrap_or(false);
    let older_version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .is_none_or(|v| v != Version::V0x13);
    Algorithm::try_from(parsed.algorithm) != Ok(Algorithm::Argon2id) || older_version || weaker_params
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let mut memory = Memory::default();
        let a = hash("Correct-Horse-9", &mut memory).expect("hash");
        let b = hash("Correct-Horse-9", &mut memory).expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(!a.contains("Correct-Horse-9"));
        assert!(verify("Correct-Horse-9", &a, &mut memory));
        assert!(!verify("correct-horse-9", &a, &mut memory));
        assert!(!verify("Correct-Horse-9", "not a hash", &mut memory));
        assert_eq!(memory.size(), 19 * 1024 * 1024, "one block of the default cost, reused");
    }

    #[test]
    fn hashes_agree_with_the_crate_s_own_hasher_both_ways() {
        // Hashes stored before the pool existed were made by `PasswordHasher`; both must keep verifying.
        let mut memory = Memory::default();
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"Old-Stored-Pass1", &salt)
            .expect("hash")
            .to_string();
        assert!(verify("Old-Stored-Pass1", &theirs, &mut memory));
        assert!(!verify("Old-Stored-Pass2", &theirs, &mut memory));
        let ours = hash("New-Stored-Pass1", &mut memory).expect("hash");
        let parsed = PasswordHash::new(&ours).expect("a PHC string");
        assert!(Argon2::default().verify_password(b"New-Stored-Pass1", &parsed).is_ok());
        // A cheaper cost than the default verifies in the same (larger) memory.
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).expect("params"),
        )
        .hash_password(b"Cheap-Pass1", &salt)
        .expect("hash")
        .to_string();
        assert!(verify("Cheap-Pass1", &cheap, &mut memory));
        assert!(needs_rehash(&cheap), "less memory and fewer passes than the default");
        assert!(!needs_rehash(&ours), "made at the current cost");
        assert!(!needs_rehash(&theirs), "the crate's default is the current cost");
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::default())
            .hash_password(b"Other-Pass1", &salt)
            .expect("hash")
            .to_string();
        assert!(needs_rehash(&argon2i), "another algorithm");
    }
}
