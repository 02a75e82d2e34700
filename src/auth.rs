//! Access tokens: HS256 JWTs signed with an API secret, as LiveKit users know them. The
//! issuer is the API key; the claims name the identity, display name and room, and the
//! grants say what the peer may do. Without keys the relay runs in development mode and
//! admits unsigned joins.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::wire::{ErrorCode, Grants, ProtocolError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed it.
    pub iss: String,
    /// The peer's identity.
    pub sub: String,
    /// Display name; the identity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The one room this token admits to.
    pub room: String,
    pub exp: u64,
    pub nbf: u64,
    #[serde(default)]
    pub grants: Grants,
    /// May use the admin API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// An API key and its secret.
#[derive(Clone)]
pub struct ApiKey {
    pub key: String,
    pub secret: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl ApiKey {
    /// Mints a token for `identity` in `room`, valid from now for `ttl`.
    pub fn mint(
        &self,
        room: &str,
        identity: &str,
        name: Option<&str>,
        ttl: Duration,
        grants: Grants,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let claims = Claims {
            iss: self.key.clone(),
            sub: identity.to_owned(),
            name: name.map(str::to_owned),
            room: room.to_owned(),
            exp: now + ttl.as_secs(),
            nbf: now,
            grants,
            admin: false,
        };
        self.sign(&claims)
    }

    /// Signs `claims` with this key's secret (HS256).
    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
    }
}

/// Who may join.
#[derive(Debug, Clone, Default)]
pub enum AccessPolicy {
    /// No keys configured: unsigned joins are admitted with every grant.
    #[default]
    Development,
    /// Every join needs a token signed by this key.
    Keys(ApiKey),
}

/// What a successful check admits: the display name to use and the grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub name: String,
    pub grants: Grants,
}

fn unauthorized(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::Unauthorized, message)
}

impl AccessPolicy {
    pub fn from_env_pair(key: Option<String>, secret: Option<String>) -> Result<Self, String> {
        match (key, secret) {
            (Some(key), Some(secret)) if !key.is_empty() && !secret.is_empty() => {
                Ok(AccessPolicy::Keys(ApiKey { key, secret }))
            }
            (None, None) => Ok(AccessPolicy::Development),
            _ => Err("the API key and the API secret go together".into()),
        }
    }

    /// Checks an admin API call: with keys, a current token of ours with the admin claim;
    /// in development mode, only callers on this machine (loopback).
    pub fn admit_admin(
        &self,
        bearer: Option<&str>,
        from_loopback: bool,
    ) -> Result<(), ProtocolError> {
        let AccessPolicy::Keys(key) = self else {
            return if from_loopback {
                Ok(())
            } else {
                Err(unauthorized(
                    "in development mode the admin API answers only on loopback",
                ))
            };
        };
        let token = bearer.ok_or_else(|| {
            unauthorized("an admin token is required (Authorization: Bearer ...)")
        })?;
        if key.decode(token)?.admin {
            Ok(())
        } else {
            Err(ProtocolError::new(
                ErrorCode::Forbidden,
                "this token has no admin grant",
            ))
        }
    }

    /// A token for this relay to join `room` on another relay of the cluster as a relay
    /// (docs/PROTOCOL.md 18); `None` in development mode, where none is needed.
    pub fn relay_token(&self, room: &str, relay_id: &str) -> Option<String> {
        let AccessPolicy::Keys(key) = self else {
            return None;
        };
        let grants = Grants {
            relay: true,
            ..Grants::default()
        };
        key.mint(
            room,
            &format!("relay:{relay_id}"),
            None,
            Duration::from_secs(600),
            grants,
        )
        .ok()
    }

    /// Whether joins need no token (development mode): then anyone may join as a relay.
    pub fn is_development(&self) -> bool {
        matches!(self, AccessPolicy::Development)
    }

    /// Checks a join: in development mode anything goes; with keys, the token must be
    /// signed by our key, current, and for this room.
    pub fn admit(
        &self,
        token: Option<&str>,
        room: &str,
        name: &str,
    ) -> Result<Admission, ProtocolError> {
        let AccessPolicy::Keys(key) = self else {
            return Ok(Admission {
                name: name.to_owned(),
                grants: Grants::default(),
            });
        };
        let token = token.ok_or_else(|| unauthorized("this relay requires an access token"))?;
        let claims = key.decode(token)?;
        if claims.room != room {
            return Err(unauthorized(format!(
                "the access token admits to room {:?}, not {room:?}",
                claims.room
            )));
        }
        Ok(Admission {
            name: claims.name.unwrap_or(claims.sub),
            grants: claims.grants,
        })
    }
}

impl ApiKey {
    /// Mints an admin token: the admin API, no room, no media.
    pub fn mint_admin(
        &self,
        identity: &str,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let claims = Claims {
            iss: self.key.clone(),
            sub: identity.to_owned(),
            name: None,
            room: String::new(),
            exp: now + ttl.as_secs(),
            nbf: now,
            grants: Grants {
                can_publish: false,
                can_subscribe: false,
                kinds: Vec::new(),
                can_publish_data: false,
                sources: Vec::new(),
                relay: false,
            },
            admin: true,
        };
        self.sign(&claims)
    }

    /// Verifies a token of this key: signature, issuer, validity window.
    fn decode(&self, token: &str) -> Result<Claims, ProtocolError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.key]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(self.secret.as_bytes()),
            &validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => unauthorized("the access token has expired"),
                ErrorKind::ImmatureSignature => unauthorized("the access token is not valid yet"),
                ErrorKind::InvalidIssuer => {
                    unauthorized("the access token was issued for another API key")
                }
                ErrorKind::InvalidSignature => {
                    unauthorized("the access token's signature does not match")
                }
                _ => unauthorized(format!("invalid access token: {e}")),
            }
        })
        .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MediaKind;

    fn key() -> ApiKey {
        ApiKey {
            key: "APIdev".into(),
            secret: "a-long-enough-secret-for-hs256-tests".into(),
        }
    }

    #[test]
    fn development_mode_admits_unsigned_joins() {
        let a = AccessPolicy::Development.admit(None, "r", "ada").unwrap();
        assert_eq!(a.name, "ada");
        assert_eq!(a.grants, Grants::default());
    }

    #[test]
    fn a_valid_token_admits_with_its_name_and_grants() {
        let grants = Grants {
            can_publish: true,
            can_subscribe: false,
            kinds: vec![MediaKind::Audio],
            ..Grants::default()
        };
        let token = key()
            .mint(
                "standup",
                "u-1",
                Some("Ada"),
                Duration::from_secs(60),
                grants.clone(),
            )
            .unwrap();
        let policy = AccessPolicy::Keys(key());
        let a = policy.admit(Some(&token), "standup", "ignored").unwrap();
        assert_eq!(a.name, "Ada");
        assert_eq!(a.grants, grants);
    }

    #[test]
    fn bad_tokens_are_refused_with_reasons() {
        let policy = AccessPolicy::Keys(key());
        let code = |r: Result<Admission, ProtocolError>| r.unwrap_err();
        let e = code(policy.admit(None, "r", "x"));
        assert_eq!(e.code, ErrorCode::Unauthorized);
        let token = key()
            .mint("r", "u", None, Duration::from_secs(60), Grants::default())
            .unwrap();
        assert!(
            code(policy.admit(Some(&token), "other", "x"))
                .message
                .contains("room")
        );
        let forged = ApiKey {
            key: "APIdev".into(),
            secret: "somebody-else's-secret-0123456789".into(),
        }
        .mint("r", "u", None, Duration::from_secs(60), Grants::default())
        .unwrap();
        assert!(
            code(policy.admit(Some(&forged), "r", "x"))
                .message
                .contains("signature")
        );
        let other_key = ApiKey {
            key: "APIother".into(),
            secret: key().secret,
        }
        .mint("r", "u", None, Duration::from_secs(60), Grants::default())
        .unwrap();
        assert!(
            code(policy.admit(Some(&other_key), "r", "x"))
                .message
                .contains("another API key")
        );
        // Expired: minted with exp in the past (beyond the leeway).
        let claims = Claims {
            iss: "APIdev".into(),
            sub: "u".into(),
            name: None,
            room: "r".into(),
            exp: unix_now() - 120,
            nbf: unix_now() - 600,
            grants: Grants::default(),
            admin: false,
        };
        let expired = key().sign(&claims).unwrap();
        assert!(
            code(policy.admit(Some(&expired), "r", "x"))
                .message
                .contains("expired")
        );
        assert!(
            code(policy.admit(Some("not.a.jwt"), "r", "x"))
                .message
                .contains("invalid")
        );
    }
}
