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

use crate::domain::caller::Caller;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// Name of the generated secret's file in the data folder.
pub const SECRET_FILE: &str = "jwt-secret";

/// Where verification keys come from, as configured.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens. When neither this nor --jwks-file is set, a random secret is created in
    /// the data folder on first start and reused afterwards.
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
    pub aud: Option<String>,
}

/// Verifies tokens. Cheap to share: keys are parsed once.
pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    issuer: Option<String>,
    audience: Option<String>,
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

/// The configured secret, or the one in the data folder, created (mode 0600) when absent. Returns it and
/// whether it was generated.
fn secret(config: &AuthConfig, create: bool) -> anyhow::Result<Option<(String, bool)>> {
    if let Some(secret) = config.jwt_secret.as_ref().filter(|s| !s.is_empty()) {
        return Ok(Some((secret.clone(), false)));
    }
    let path = config.data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(Some((text.trim().to_owned(), false))),
        Ok(_) => anyhow::bail!("{} is empty", path.display()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            anyhow::bail!("reading {}: {e}", path.display())
        }
        Err(_) => {}
    }
    if !create || config.jwks_file.is_some() {
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
        let signer = secret.as_ref().map(|(s, _)| Signer {
            key: EncodingKey::from_secret(s.as_bytes()),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        });
        let verifier = Verifier {
            secret: secret.map(|(s, _)| DecodingKey::from_secret(s.as_bytes())),
            keys,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        };
        Ok((verifier, signer, generated))
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError("the bearer token is not a JWT".into()))?;
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
                    .ok_or_else(|| AuthError(format!("no key with kid {kid:?} is configured")))?;
                if *algorithm != header.alg {
                    return Err(AuthError(format!("key {kid:?} is not a {:?} key", header.alg)));
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
        Ok(Caller {
            subject: data.claims.sub,
            scopes: data.claims.scope.split_whitespace().map(str::to_owned).collect(),
        })
    }
}

impl Signer {
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
            aud: self.audience.clone(),
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
        anyhow::anyhow!(
            "no secret to sign with: set --jwt-secret (USER_SERVICE_JWT_SECRET), or start `serve` once so it creates {}",
            config.data_dir.join(SECRET_FILE).display()
        )
    })?;
    Ok(Signer {
        key: EncodingKey::from_secret(secret.as_bytes()),
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
    })
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

    fn config(secret: Option<&str>) -> AuthConfig {
        AuthConfig {
            jwt_secret: secret.map(str::to_owned),
            data_dir: std::env::temp_dir().join(format!("auth-test-{}", uuid::Uuid::new_v4())),
            ..Default::default()
        }
    }

    #[test]
    fn signed_tokens_verify_and_carry_scopes() {
        let (verifier, signer, generated) = Verifier::from_config(&config(Some("s3cret"))).expect("config");
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
    fn wrong_secret_and_garbage_are_refused_with_reasons() {
        let (verifier, _, _) = Verifier::from_config(&config(Some("right"))).expect("config");
        let (_, other, _) = Verifier::from_config(&config(Some("wrong"))).expect("config");
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
            !verifier.verify(&token).expect_err("bad").0.contains("right"),
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
}
