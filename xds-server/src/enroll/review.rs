//! Who a service-account token belongs to, as the API server says.

use crate::identity::Identity;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// Why a token gave no identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    /// The token is not valid, not for our audience, or not a service
    /// account's: the caller is refused (403).
    #[error("the token was not accepted: {0}")]
    Denied(String),
    /// The API server could not be asked or failed: the caller may retry
    /// (503).
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

/// Checks a bearer token and names the identity it proves.
pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, ReviewError>>;
}

/// The Kubernetes TokenReview API (`authentication.k8s.io/v1`), asked for
/// tokens valid for one of `audiences`.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: kube::Client,
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        KubeTokenReviewer { client, audiences }
    }

    async fn ask(&self, token: &str) -> Result<Identity, ReviewError> {
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| ReviewError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer
            .status
            .ok_or_else(|| ReviewError::Unavailable("TokenReview returned no status".into()))?;
        if status.authenticated != Some(true) {
            return Err(ReviewError::Denied(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "the API server did not authenticate it".to_string()),
            ));
        }
        // The API server answers with the audiences both the token and the
        // request name; none in common means the token is for someone else
        // (say, a token minted for another service, replayed here).
        if !self.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Err(ReviewError::Denied(format!(
                    "it is valid for the audiences {granted:?}, none of which is {:?}",
                    self.audiences
                )));
            }
        }
        let user = status
            .user
            .and_then(|u| u.username)
            .ok_or_else(|| ReviewError::Denied("the API server named no user".into()))?;
        identity_of_user(&user).map_err(ReviewError::Denied)
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, ReviewError>> {
        Box::pin(self.ask(token))
    }
}

/// The identity of a service account's user name,
/// `system:serviceaccount:NAMESPACE:NAME`; any other user (a person, a
/// node) is refused: only workloads get workload certificates.
pub fn identity_of_user(user: &str) -> Result<Identity, String> {
    match user.split(':').collect::<Vec<_>>().as_slice() {
        ["system", "serviceaccount", namespace, name]
            if !namespace.is_empty() && !name.is_empty() =>
        {
            Ok(Identity {
                namespace: namespace.to_string(),
                service_account: name.to_string(),
            })
        }
        _ => Err(format!(
            "{user:?} is not a service account (system:serviceaccount:NAMESPACE:NAME)"
        )),
    }
}
