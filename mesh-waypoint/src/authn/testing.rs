//! Signing keys and tokens for tests: an ES256 key with its JWK Set, as an identity
//! provider publishes it.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// An issuer's signing key.
pub struct Signer {
    kid: String,
    key: EncodingKey,
}

impl Signer {
    /// A new P-256 key, published under `kid`.
    pub fn new(kid: &str) -> Signer {
        let pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key pair");
        Signer {
            kid: kid.to_owned(),
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
        }
    }

    /// The public key as a JWK Set (JSON), for a rule's `jwks`.
    pub fn jwks(&self) -> String {
        let mut jwk = Jwk::from_encoding_key(&self.key, Algorithm::ES256).expect("a public JWK");
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("JSON")
    }

    /// A token with `claims`, signed by this key and naming its `kid`.
    pub fn token(&self, claims: &Value) -> String {
        self.token_as(&self.kid, claims)
    }

    /// A token with `claims` signed by this key but naming `kid`.
    pub fn token_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("a signed token")
    }
}

/// Istio's "require a JWT" setup in ambient form, for Service `service` (in the namespace
/// the manifest is applied to): a RequestAuthentication with `signer`'s keys inline for
/// `issuer`, and an AuthorizationPolicy that admits only that issuer's tokens.
pub fn require_jwt_manifest(service: &str, issuer: &str, signer: &Signer) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: {service}-jwt}}
spec:
  targetRefs: [{{kind: Service, group: "", name: {service}}}]
  jwtRules: [{{issuer: "{issuer}", jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {service}-require-jwt}}
spec:
  targetRefs: [{{kind: Service, group: "", name: {service}}}]
  action: ALLOW
  rules: [{{from: [{{source: {{requestPrincipals: ["{issuer}/*"]}}}}]}}]
"#,
        jwks = signer.jwks()
    )
}

/// Seconds since the epoch, `offset` from now.
pub fn now_plus(offset: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    i64::try_from(now).expect("a sane clock") + offset
}
