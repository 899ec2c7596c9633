//! Bearer-token authentication: verifies the JWT of every call (HS256 with a shared secret, RS256/ES256 with
//! keys from a JWKS file), and signs development tokens. Produces the `Caller` the domain authorizes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::domain::caller::{Caller, shown};
use crate::token_cache::TokenCache;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// Name of the generated secret's file in the data folder.
pub const SECRET_FILE: &str = "jwt-secret";
/// Shortest HS256 secret accepted: a key at least as long as the hash output (RFC 7518 §3.2). A shorter one can
/// be guessed offline from any token it signed.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where verification keys come from, as configured.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens, at least 32 bytes. When neither this nor --jwks-file is set, a random
    /// secret is created in the data folder on first start and reused afterwards.
    #[arg(long, env = "USER_SERVICE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWKS file (JSON Web Key Set) with the RS256/ES256 public keys tokens are checked against, by `kid`.
    #[arg(long, env = "USER_SERVICE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "USER_SERVICE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "USER_SERVICE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Folder for generated state (the development JWT secret).
    #[arg(long, env = "USER_SERVICE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// The claims the service reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Space-separated scopes (RFC 8693).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: one audience or several (RFC 7519 §4.1.3). With --jwt-audience, the configured audience must
/// be one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Verifies tokens. Cheap to share: keys are parsed once.
pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Tokens verified before: a hit skips the signature check, never the `exp`/`nbf` check.
    cache: TokenCache,
}

/// Signs development tokens with the HS256 secret.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

/// Why a token was refused; the text says which check failed and never shows key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub String);

fn read_jwks(path: &Path) -> anyhow::Result<HashMap<String, (DecodingKey, Algorithm)>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a JWKS: {e}", path.display()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{}: every key needs a kid", path.display()))?;
        let algorithm = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => anyhow::bail!(
                "{}: key {kid} is neither RSA nor EC; only RS256 and ES256 are accepted",
                path.display()
            ),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| anyhow::anyhow!("{}: key {kid}: {e}", path.display()))?;
        keys.insert(kid, (key, algorithm));
    }
    Ok(keys)
}

/// Refuses a secret shorter than `MIN_SECRET_BYTES`; `origin` says where it came from. The secret itself is never
/// shown.
fn check_secret_length(secret: &str, origin: &str) -> anyhow::Result<()> {
    if secret.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "the HS256 secret {origin} is {} bytes; at least {MIN_SECRET_BYTES} are needed (RFC 7518 §3.2), \
             for example 32 random bytes in base64: `head -c 32 /dev/urandom | base64`",
            secret.len()
        );
    }
    Ok(())
}

/// The configured secret, or the one in the data folder, created (mode 0600) when absent. Returns it and
/// whether it was generated.
fn secret(config: &AuthConfig, create: bool) -> anyhow::Result<Option<(String, bool)>> {
    if let Some(secret) = config.jwt_secret.as_ref().filter(|s| !s.is_empty()) {
        check_secret_length(secret, "from --jwt-secret (USER_SERVICE_JWT_SECRET)")?;
        return Ok(Some((secret.clone(), false)));
    }
    // With a JWKS file only configured keys are trusted: a secret in the data folder is what an earlier start
    // without configuration left behind, and whoever could read it (or planted it) would mint admin tokens.
    if config.jwks_file.is_some() {
        return Ok(None);
    }
    let path = config.data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            let secret = text.trim();
            check_secret_length(
                secret,
                &format!(
                    "in {} (replace it, or delete it to have a new one generated)",
                    path.display()
                ),
            )?;
            return Ok(Some((secret.to_owned(), false)));
        }
        Ok(_) => anyhow::bail!("{} is empty", path.display()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            anyhow::bail!("reading {}: {e}", path.display())
        }
        Err(_) => {}
    }
    if !create {
        return Ok(None);
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", config.data_dir.display()))?;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let generated = URL_SAFE_NO_PAD.encode(bytes);
    write_private(&path, &generated)?;
    Ok(Some((generated, true)))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))
}

impl Verifier {
    /// Builds the verifier (and the signer, when there is a secret) from the configuration. With no secret and
    /// no JWKS file, a secret is generated in the data folder; `generated` tells the caller to log how to mint
    /// a token.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<(Verifier, Option<Signer>, bool)> {
        let secret = secret(config, true)?;
        let keys = match &config.jwks_file {
            Some(path) => read_jwks(path)?,
            None => HashMap::new(),
        };
        let generated = secret.as_ref().is_some_and(|(_, g)| *g);
        let signer = secret.as_ref().map(|(s, _)| Signer::new(s, config));
        let verifier = Verifier {
            secret: secret.map(|(s, _)| DecodingKey::from_secret(s.as_bytes())),
            keys,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            cache: TokenCache::new(LEEWAY_SECONDS),
        };
        Ok((verifier, signer, generated))
    }

    /// Checks a token and returns who it names. A token verified before is answered from the cache while its
    /// `exp` and `nbf` still allow it; one outside them is verified again, which gives the refusal's reason.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some(caller) = self.cache.get(token, now) {
            return Ok(caller);
        }
        let (caller, exp, nbf) = self.verify_signature(token)?;
        self.cache.insert(token, &caller, exp, nbf);
        Ok(caller)
    }

    /// (entries, bytes) in the verified-token cache.
    pub fn cached(&self) -> (usize, usize) {
        self.cache.size()
    }

    /// The full check: header, key, signature and claims; returns the caller with the token's `exp` and `nbf`.
    fn verify_signature(&self, token: &str) -> Result<(Caller, u64, Option<u64>), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError("the bearer token is not a JWT".into()))?;
        // The service implements no JWS extension, so any `crit` list names one it does not understand; such a
        // token must be refused (RFC 7515 §4.1.11), an empty list included (producers must not send one).
        if header.crit.is_some() {
            return Err(AuthError(
                "the token's header lists critical extensions (crit), which this server does not support".into(),
            ));
        }
        let (key, algorithm) = match header.alg {
            Algorithm::HS256 => (
                self.secret
                    .as_ref()
                    .ok_or_else(|| AuthError("HS256 tokens are not accepted by this server".into()))?,
                Algorithm::HS256,
            ),
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthError("the token has no kid to choose its key".into()))?;
                let (key, algorithm) = self
                    .keys
                    .get(kid)
                    .ok_or_else(|| AuthError(format!("no key with kid {:?} is configured", shown(kid))))?;
                if *algorithm != header.alg {
                    return Err(AuthError(format!("key {:?} is not a {:?} key", shown(kid), header.alg)));
                }
                (key, *algorithm)
            }
            other => {
                return Err(AuthError(format!(
                    "{other:?} tokens are not accepted; use HS256, RS256 or ES256"
                )));
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        // A configured issuer or audience must also be present: a token without the claim is not from them.
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            AuthError(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::InvalidAudience => "the token is for another audience (aud)",
                    ErrorKind::InvalidIssuer => "the token is from another issuer (iss)",
                    ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => "the token has no exp claim",
                    ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => "the token has no sub claim",
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => "the token has no aud claim",
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => "the token has no iss claim",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key",
                    _ => "the bearer token is malformed",
                }
                .to_owned(),
            )
        })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError("the token's sub is empty".into()));
        }
        let caller = Caller {
            subject: data.claims.sub,
            // Scope tokens are separated by ASCII space alone (RFC 6749 §3.3): a token holding any other
            // whitespace (U+00A0, TAB, LF …) is one unknown scope, not two known ones.
            scopes: data
                .claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        Ok((caller, data.claims.exp, data.claims.nbf))
    }
}

impl Signer {
    /// A signer with `secret` that writes the configured issuer and audience into its tokens.
    fn new(secret: &str, config: &AuthConfig) -> Signer {
        Signer {
            key: EncodingKey::from_secret(secret.as_bytes()),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        }
    }

    /// Signs an HS256 token for `subject` with `scopes`, valid for `ttl`.
    pub fn sign(&self, subject: &str, scopes: &[String], ttl: Duration) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            exp: now + ttl.as_secs().max(1),
            nbf: None,
            iat: Some(now),
            scope: scopes.join(" "),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}

/// Signs a token from the configuration alone (the `token` command): the configured or stored secret, never a
/// new one, since a token signed by a secret the server does not know is useless.
pub fn signer_for_cli(config: &AuthConfig) -> anyhow::Result<Signer> {
    let (secret, _) = secret(config, false)?.ok_or_else(|| {
        if config.jwks_file.is_some() {
            anyhow::anyhow!(
                "no secret to sign with: with --jwks-file the server trusts only its JWKS keys and --jwt-secret \
                 (USER_SERVICE_JWT_SECRET), never a secret in the data folder"
            )
        } else {
            anyhow::anyhow!(
                "no secret to sign with: set --jwt-secret (USER_SERVICE_JWT_SECRET), or start `serve` once so it creates {}",
                config.data_dir.join(SECRET_FILE).display()
            )
        }
    })?;
    Ok(Signer::new(&secret, config))
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or_else(|| AuthError("missing Authorization: Bearer token".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError("the Authorization header is not `Bearer <token>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError("the Authorization header is not `Bearer <token>`".into()));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret of the shortest length accepted.
    const SECRET: &str = "unit-test-secret-of-32-bytes-min";

    fn config(secret: Option<&str>) -> AuthConfig {
        AuthConfig {
            jwt_secret: secret.map(str::to_owned),
            data_dir: std::env::temp_dir().join(format!("auth-test-{}", uuid::Uuid::new_v4())),
            ..Default::default()
        }
    }

    #[test]
    fn signed_tokens_verify_and_carry_scopes() {
        let (verifier, signer, generated) = Verifier::from_config(&config(Some(SECRET))).expect("config");
        assert!(!generated);
        let token = signer
            .expect("signer")
            .sign("u1", &["users.read".into(), "x".into()], Duration::from_secs(60))
            .expect("sign");
        let caller = verifier.verify(&token).expect("valid");
        assert_eq!(caller.subject, "u1");
        assert_eq!(caller.scopes, vec!["users.read", "x"]);
    }

    #[test]
    fn a_cached_token_is_never_a_hit_for_a_token_signed_with_another_key() {
        let (verifier, signer, _) = Verifier::from_config(&config(Some(SECRET))).expect("config");
        let (_, other, _) =
            Verifier::from_config(&config(Some("another-unit-test-secret-of-32-bytes"))).expect("config");
        // The same claims (same second) under two keys: the tokens differ only in their signatures.
        let claims = serde_json::json!({"sub": "ops", "exp": now() + 60, "scope": "users.admin"});
        let good = forge(&Header::default(), &claims, SECRET);
        let bad = forge(&Header::default(), &claims, "another-unit-test-secret-of-32-bytes");
        assert_eq!(good.rsplit_once('.').map(|p| p.0), bad.rsplit_once('.').map(|p| p.0));
        for _ in 0..3 {
            assert_eq!(verifier.verify(&good).expect("valid").subject, "ops");
            assert_eq!(
                verifier.verify(&bad),
                Err(AuthError("the token's signature does not verify".into()))
            );
        }
        assert_eq!(verifier.cached().0, 1, "the refused token is not cached");
        let signed = other
            .expect("signer")
            .sign("ops", &[], Duration::from_secs(60))
            .expect("sign");
        assert!(verifier.verify(&signed).is_err());
        drop(signer);
    }

    #[test]
    fn a_cached_token_is_refused_once_expired() {
        let (verifier, _, _) = Verifier::from_config(&config(Some(SECRET))).expect("config");
        // Expired one second from now, counting the leeway: accepted (and cached) at first, refused later.
        loop {
            let exp = now() - LEEWAY_SECONDS + 1;
            let claims = serde_json::json!({"sub": "ops", "exp": exp});
            let token = forge(&Header::default(), &claims, SECRET);
            let Ok(caller) = verifier.verify(&token) else {
                continue; // the second turned between minting and checking: mint again
            };
            assert_eq!(caller.subject, "ops");
            assert_eq!(verifier.verify(&token), Ok(caller), "a hit while still valid");
            while now() <= exp + LEEWAY_SECONDS + 1 {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(verifier.verify(&token), Err(AuthError("the token has expired".into())));
            break;
        }
    }

    #[test]
    fn wrong_secret_and_garbage_are_refused_with_reasons() {
        let (verifier, _, _) = Verifier::from_config(&config(Some(SECRET))).expect("config");
        let (_, other, _) =
            Verifier::from_config(&config(Some("another-unit-test-secret-of-32-bytes"))).expect("config");
        let token = other
            .expect("signer")
            .sign("u1", &[], Duration::from_secs(60))
            .expect("sign");
        assert_eq!(
            verifier.verify(&token),
            Err(AuthError("the token's signature does not verify".into()))
        );
        assert!(verifier.verify("nope").is_err());
        assert!(
            !verifier.verify(&token).expect_err("bad").0.contains(SECRET),
            "no key material in messages"
        );
    }

    #[test]
    fn a_secret_is_generated_once_with_private_permissions() {
        let cfg = config(None);
        let (_, signer, generated) = Verifier::from_config(&cfg).expect("first start");
        assert!(generated);
        let path = cfg.data_dir.join(SECRET_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (verifier, _, generated_again) = Verifier::from_config(&cfg).expect("second start");
        assert!(!generated_again, "reused");
        let token = signer
            .expect("signer")
            .sign("u", &[], Duration::from_secs(60))
            .expect("sign");
        assert!(verifier.verify(&token).is_ok(), "tokens survive a restart");
        let cli = signer_for_cli(&cfg).expect("cli signer");
        assert!(
            verifier
                .verify(&cli.sign("u", &[], Duration::from_secs(5)).expect("sign"))
                .is_ok()
        );
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
        assert!(bearer_token(None).is_err());
        assert!(bearer_token(Some("Basic abc")).is_err());
        assert!(bearer_token(Some("Bearer ")).is_err());
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
    }

    /// Signs any claims and header with `secret`, as a client could.
    fn forge(header: &Header, claims: &serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
    }

    fn jwks_fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwks.json")
    }

    #[test]
    fn secrets_under_32_bytes_are_refused_wherever_they_come_from() {
        assert_eq!(SECRET.len(), MIN_SECRET_BYTES);
        assert!(
            Verifier::from_config(&config(Some(SECRET))).is_ok(),
            "32 bytes are enough"
        );
        for short in ["x", &SECRET[1..]] {
            let err = Verifier::from_config(&config(Some(short)))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains("--jwt-secret") && err.contains("at least 32"), "{err}");
            assert!(
                short.len() < 2 || !err.contains(short),
                "the secret is not shown: {err}"
            );
            let err = signer_for_cli(&config(Some(short)))
                .err()
                .expect("token command refuses too");
            assert!(err.to_string().contains("at least 32"), "{err}");
        }
        // A short secret in the data folder (written by hand, or by an older version) is refused as well.
        let cfg = config(None);
        std::fs::create_dir_all(&cfg.data_dir).expect("dir");
        std::fs::write(cfg.data_dir.join(SECRET_FILE), "tiny\n").expect("write");
        let err = Verifier::from_config(&cfg).err().expect("refused").to_string();
        assert!(err.contains(SECRET_FILE) && err.contains("at least 32"), "{err}");
        assert!(signer_for_cli(&cfg).is_err());
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }

    #[test]
    fn with_a_jwks_file_the_data_folder_secret_is_not_trusted() {
        let cfg = config(None);
        let (_, leftover, generated) = Verifier::from_config(&cfg).expect("a development start");
        assert!(generated);
        let leftover = leftover
            .expect("signer")
            .sign("ops", &["users.admin".into()], Duration::from_secs(60));
        let leftover = leftover.expect("sign");
        let jwks_only = AuthConfig {
            jwks_file: Some(jwks_fixture()),
            ..cfg.clone()
        };
        let (verifier, signer, generated) = Verifier::from_config(&jwks_only).expect("jwks start");
        assert!(signer.is_none() && !generated);
        assert_eq!(
            verifier.verify(&leftover),
            Err(AuthError("HS256 tokens are not accepted by this server".into()))
        );
        let err = signer_for_cli(&jwks_only)
            .err()
            .expect("the token command has nothing to sign with");
        assert!(err.to_string().contains("--jwks-file"), "{err}");
        // An explicit secret beside the JWKS file is configuration, and is trusted.
        let both = AuthConfig {
            jwt_secret: Some(SECRET.into()),
            ..jwks_only
        };
        let (verifier, signer, _) = Verifier::from_config(&both).expect("both");
        let token = signer
            .expect("signer")
            .sign("ops", &[], Duration::from_secs(60))
            .expect("sign");
        assert!(verifier.verify(&token).is_ok());
        assert!(verifier.verify(&leftover).is_err(), "still not the data-folder secret");
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }

    #[test]
    fn a_crit_header_is_refused() {
        let (verifier, _, _) = Verifier::from_config(&config(Some(SECRET))).expect("config");
        let claims = serde_json::json!({"sub": "ops", "exp": now() + 60, "scope": "users.admin"});
        assert!(verifier.verify(&forge(&Header::default(), &claims, SECRET)).is_ok());
        for crit in [vec!["exp".to_owned()], vec!["x-unknown".to_owned()], Vec::new()] {
            let header = Header {
                crit: Some(crit.clone()),
                ..Header::default()
            };
            let err = verifier.verify(&forge(&header, &claims, SECRET)).expect_err("crit");
            assert!(err.0.contains("crit"), "{crit:?}: {}", err.0);
        }
    }

    #[test]
    fn aud_may_be_a_string_or_an_array() {
        let claims = |aud: serde_json::Value| serde_json::json!({"sub": "ops", "exp": now() + 60, "aud": aud});
        let token = |aud: serde_json::Value| forge(&Header::default(), &claims(aud), SECRET);
        let (open, _, _) = Verifier::from_config(&config(Some(SECRET))).expect("config");
        for aud in [
            serde_json::json!("anyone"),
            serde_json::json!(["a", "b"]),
            serde_json::json!([]),
        ] {
            assert!(
                open.verify(&token(aud.clone())).is_ok(),
                "no audience configured: {aud}"
            );
        }
        let cfg = AuthConfig {
            jwt_audience: Some("user-service".into()),
            ..config(Some(SECRET))
        };
        let (verifier, signer, _) = Verifier::from_config(&cfg).expect("config");
        for aud in [
            serde_json::json!("user-service"),
            serde_json::json!(["user-service"]),
            serde_json::json!(["billing", "user-service"]),
        ] {
            assert!(verifier.verify(&token(aud.clone())).is_ok(), "{aud}");
        }
        for aud in [
            serde_json::json!("billing"),
            serde_json::json!(["billing", "audit"]),
            serde_json::json!([]),
        ] {
            assert_eq!(
                verifier.verify(&token(aud.clone())),
                Err(AuthError("the token is for another audience (aud)".into())),
                "{aud}"
            );
        }
        let no_aud = forge(
            &Header::default(),
            &serde_json::json!({"sub": "ops", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(
            verifier.verify(&no_aud),
            Err(AuthError("the token has no aud claim".into()))
        );
        let own = signer
            .expect("signer")
            .sign("ops", &[], Duration::from_secs(60))
            .expect("sign");
        assert!(
            verifier.verify(&own).is_ok(),
            "the signer's own tokens carry the audience"
        );
    }

    #[test]
    fn scopes_are_split_on_ascii_space_only() {
        let (verifier, _, _) = Verifier::from_config(&config(Some(SECRET))).expect("config");
        let scopes = |scope: &str| {
            let claims = serde_json::json!({"sub": "ops", "exp": now() + 60, "scope": scope});
            verifier
                .verify(&forge(&Header::default(), &claims, SECRET))
                .expect("valid")
                .scopes
        };
        assert_eq!(scopes("users.read users.admin"), vec!["users.read", "users.admin"]);
        assert_eq!(scopes(" users.read  users.admin "), vec!["users.read", "users.admin"]);
        for space in [
            '\u{00a0}', '\u{3000}', '\u{2028}', '\t', '\n', '\r', '\u{000b}', '\u{000c}',
        ] {
            let joined = format!("users.read{space}users.admin");
            let caller_scopes = scopes(&joined);
            assert_eq!(caller_scopes, vec![joined.clone()], "{:?}", space);
            let caller = Caller {
                subject: "ops".into(),
                scopes: caller_scopes,
            };
            assert!(!caller.is_admin() && !caller.has_scope("users.read"), "{space:?}");
        }
    }

    #[test]
    fn token_values_in_errors_are_cut_to_200_characters() {
        let (verifier, _, _) = Verifier::from_config(&AuthConfig {
            jwks_file: Some(jwks_fixture()),
            ..config(None)
        })
        .expect("config");
        let kid = "k".repeat(100_000);
        let header = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "RS256", "kid": kid}).to_string());
        let claims = URL_SAFE_NO_PAD.encode(serde_json::json!({"sub": "ops", "exp": now() + 60}).to_string());
        let err = verifier
            .verify(&format!("{header}.{claims}.c2ln"))
            .expect_err("unknown kid");
        assert!(err.0.starts_with("no key with kid"), "{}", &err.0[..80]);
        assert!(err.0.contains(&"k".repeat(200)) && !err.0.contains(&"k".repeat(201)));
        assert!(err.0.len() < 300, "{} bytes", err.0.len());
        // A kid naming a key of the other algorithm is cut the same way (the known kid is short, so shown whole).
        let header = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "ES256", "kid": "test-rsa"}).to_string());
        let err = verifier
            .verify(&format!("{header}.{claims}.c2ln"))
            .expect_err("wrong kind");
        assert_eq!(err.0, "key \"test-rsa\" is not a ES256 key");
    }
}
