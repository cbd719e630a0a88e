//! Bearer-token authentication (HS256 JWTs with `sub` and `roles`) and role checks.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use chronicle_domain::{Actor, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::AppError;

/// The claims Chronicle issues and accepts.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
}

/// Signs and verifies tokens with one shared secret.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    /// Keys for HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `subject` with `roles`, valid for `ttl`.
    pub fn issue(
        &self,
        subject: &str,
        roles: &[Role],
        ttl: chrono::Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now();
        let claims = Claims {
            sub: subject.to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            exp: (now + ttl).timestamp(),
            iat: now.timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The actor a token stands for. Unknown roles are ignored; `system` is never
    /// granted by a token, it belongs to Chronicle's own processes.
    pub fn verify(&self, token: &str) -> Result<Actor, AppError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AppError::unauthorized(format!("invalid bearer token: {e}")))?
            .claims;
        if claims.sub.trim().is_empty() || claims.sub.len() > 200 {
            return Err(AppError::unauthorized(
                "the token's subject is empty or too long",
            ));
        }
        let roles = claims
            .roles
            .iter()
            .filter_map(|name| Role::parse(name))
            .filter(|role| *role != Role::System);
        Ok(Actor::new(claims.sub, roles))
    }
}

/// The authenticated principal of a request.
#[derive(Clone, Debug)]
pub struct Principal(pub Actor);

impl Principal {
    /// Refuses (403) unless the principal holds one of `roles`.
    pub fn require_any(&self, roles: &[Role]) -> Result<(), AppError> {
        if roles.iter().any(|role| self.0.has(*role)) {
            Ok(())
        } else {
            let names: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
            Err(AppError::forbidden(format!(
                "this needs one of the roles: {}",
                names.join(", ")
            )))
        }
    }

    /// Commands are for clients (on their own aggregates) and admins.
    pub fn require_commander(&self) -> Result<(), AppError> {
        self.require_any(&[Role::Client, Role::Admin])
    }
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Arc<JwtKeys>: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| AppError::unauthorized("missing bearer token"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AppError::unauthorized("the Authorization header is not a bearer token")
            })?;
        let keys = Arc::<JwtKeys>::from_ref(state);
        let actor = keys.verify(token)?;
        tracing::Span::current().record("principal", actor.subject.as_str());
        Ok(Self(actor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forged_ones_do_not() {
        let keys = JwtKeys::hs256(b"0123456789abcdef0123456789abcdef");
        let token = keys
            .issue("alice", &[Role::Client], chrono::Duration::hours(1))
            .unwrap();
        let actor = keys.verify(&token).unwrap();
        assert_eq!(actor.subject, "alice");
        assert!(actor.has(Role::Client));

        let other = JwtKeys::hs256(b"another secret, another signature");
        assert_eq!(other.verify(&token).unwrap_err().code, "unauthorized");
        assert_eq!(keys.verify("not.a.jwt").unwrap_err().code, "unauthorized");
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = JwtKeys::hs256(b"0123456789abcdef0123456789abcdef");
        let token = keys
            .issue("alice", &[Role::Client], chrono::Duration::hours(-1))
            .unwrap();
        assert!(keys.verify(&token).is_err());
    }

    #[test]
    fn tokens_never_grant_the_system_role() {
        let keys = JwtKeys::hs256(b"0123456789abcdef0123456789abcdef");
        let token = keys
            .issue(
                "mallory",
                &[Role::System, Role::Client],
                chrono::Duration::hours(1),
            )
            .unwrap();
        let actor = keys.verify(&token).unwrap();
        assert!(!actor.has(Role::System));
        assert!(actor.has(Role::Client));
    }
}
